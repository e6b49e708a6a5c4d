"""`labctl trace`: a running lab's server traced while the client plays a scenario, as one timeline.

A room of its own on top of the lab, never inside grading (no check traces: strace slows every
syscall of the server and the server can see it):

    record.py     the recording: strace in the observer (harness/tracer.py) while the client plays
                  a scenario and captures the packets (harness/scenarios.py), bounded, always stopped
    strace.py     strace's output parsed as the hostile text it is
    packets.py    the capture's segments, each with its kind
    links.py      which return each packet caused, how fast; whether the clocks agree
    timeline.py   the Timeline of a recording, and its JSON (labctl/schemas/trace.schema.json)
    terminal.py   the terminal view (rich)
    page.py       the self-contained HTML page (matplotlib SVG)
"""
