"""A trace in the terminal (rich): what woke the server, how fast, and the timeline of its threads.

Text objects only, never markup parsed from the trace: a thread's name, a request or an answer is
the server's (or the client's) text, shown through labctl.untrusted.shown. The terminal shows the
calls that wait or talk to the network and the packets; the HTML page and the JSON hold every call.
"""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from labctl import syscalls
from labctl.trace.links import HOW_WORDS, Link, family
from labctl.trace.packets import PACKET_WORDS
from labctl.trace.timeline import Lane, Timeline
from labctl.untrusted import shown

#: The most rows of the chronological table (the page and the JSON have all).
MAX_ROWS = 80
#: The most links listed.
MAX_LINKS = 40
#: The most threads listed (a server may start hundreds).
MAX_THREADS = 40
#: Calls shown in the chronological table besides the waiting ones.
TALKING = syscalls.SENDS | frozenset({"close", "shutdown", "clone", "clone3", "fork", "vfork", "exit", "exit_group"})
#: Calls in which a thread sleeps (for "asleep" time).
SLEEPING = syscalls.NETWORK_WAITS | syscalls.LOCKS | syscalls.SLEEPS | syscalls.CHILD_WAITS


def ms(timeline: Timeline, at: float) -> str:
    """A time as milliseconds since the scenario began."""
    return f"{(at - timeline.began) * 1e3:9.3f}"


def latency_words(link: Link) -> str:
    micro = f"{link.latency * 1e6:,.0f} µs"
    return f"≤ {micro}" if link.bounded else micro


def link_sentence(timeline: Timeline, link: Link) -> str:
    """"ACK (handshake done) arrived at 12.301 ms; accept4 returned 38 µs later in thread 7 (python3, main)"."""
    packet, call = timeline.packets[link.packet], timeline.calls[link.call]
    lane = timeline.lane(link.tid)
    where = lane.label if lane else f"thread {link.tid}"
    state = ("it was asleep in it" if link.woke else "it was already waking for an earlier packet" if link.shared
             else "it was not waiting yet: the data was there when it asked")
    said = (f"{PACKET_WORDS[packet.kind]} (client port {packet.client_port}) arrived at "
            f"{ms(timeline, packet.time).strip()} ms; {call.name} returned {latency_words(link)} later in {where}, "
            f"{HOW_WORDS[link.how]}; {state}")
    if link.accepted is not None:
        taker = timeline.calls[link.accepted]
        if taker.returned is not None and call.returned is not None:
            said += f"; {taker.name} took the connection {(taker.returned - call.returned) * 1e6:,.0f} µs after"
    return said


def asleep_share(timeline: Timeline, lane: Lane) -> float:
    """The share of the trace this thread spent in calls that sleep (waits for the network, locks, sleeps)."""
    span = max(1e-9, timeline.ended - timeline.began)
    asleep = 0.0
    for index in lane.calls:
        call = timeline.calls[index]
        if call.name in SLEEPING:
            start = max(call.entered, timeline.began)
            end = call.returned if call.returned is not None else timeline.ended
            asleep += max(0.0, min(end, timeline.ended) - start)
    return min(1.0, asleep / span)


def renderable(timeline: Timeline) -> RenderableType:
    parts: list[RenderableType] = []
    processes = len({lane.pid for lane in timeline.lanes})
    title = Text.assemble(("labctl trace ", "bold"), (shown(timeline.scenario), "bold cyan"),
                          f"  the server {shown(timeline.server)}:{timeline.port}: {processes} process(es), "
                          f"{len(timeline.lanes)} thread(s), {len(timeline.calls)} syscalls, "
                          f"{len(timeline.packets)} packets in {(timeline.ended - timeline.began):.2f} s "
                          "(times in ms since the scenario began)")
    parts.append(title)
    parts.append(_links(timeline))
    parts.append(_latencies(timeline))
    parts.append(_threads(timeline))
    parts.append(_chronology(timeline))
    clock = Text("clocks: ", style="bold")
    clock.append(timeline.clock.words, style="red" if timeline.clock.wrong or timeline.clock.wrong_sends else "")
    parts.append(clock)
    for note in timeline.notes:
        parts.append(Text(f"note: {shown(note)}", style="yellow"))
    return Group(*parts)


def _links(timeline: Timeline) -> RenderableType:
    if not timeline.links:
        return Text("No packet to the server was followed by a waiting call's return (see the timeline below).",
                    style="yellow")
    table = Table(title="What woke the server", title_justify="left", box=None, padding=(0, 2), show_edge=False)
    for column, justify in (("at ms", "right"), ("packet", "left"), ("thread", "left"), ("returned", "left"),
                            ("latency", "right"), ("", "left")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for link in timeline.links[:MAX_LINKS]:
        packet, call = timeline.packets[link.packet], timeline.calls[link.call]
        lane = timeline.lane(link.tid)
        note = "woke it" if link.woke else "with an earlier packet's wake-up" if link.shared else \
            "not asleep: returned at once"
        if link.accepted is not None:
            note += f", then {timeline.calls[link.accepted].name} took it"
        table.add_row(ms(timeline, packet.time), f"{PACKET_WORDS[packet.kind]} :{packet.client_port}",
                      Text(lane.label if lane else str(link.tid)), call.name,
                      latency_words(link), Text(note, style="green" if link.woke else "dim"))
    if len(timeline.links) > MAX_LINKS:
        table.caption = f"... {len(timeline.links) - MAX_LINKS} more in the HTML page and the JSON"
    return table


def _latencies(timeline: Timeline) -> RenderableType:
    found = timeline.latencies()
    if not found:
        if timeline.wake_ups:
            return Text(f"{len(timeline.wake_ups)} wake-up(s), whose latency strace could only bound (its stopwatch "
                        "started late): see the links above.", style="yellow")
        return Text("No wake-up: no call was asleep when its packet came.", style="dim")
    table = Table(title="Wake-up latency", title_justify="left", box=None, padding=(0, 2), show_edge=False,
                  caption="a packet to the return of the call that was asleep when it came", caption_justify="left")
    for column in ("waiting call", "wake-ups", "median", "max"):
        table.add_column(column, justify="left" if column == "waiting call" else "right")
    for name, stats in found.items():
        table.add_row(name, str(stats.count), f"{stats.median * 1e6:,.0f} µs", f"{stats.maximum * 1e6:,.0f} µs")
    bounded = sum(stats.bounded for stats in found.values())
    if bounded:
        table.caption = f"{table.caption}; {bounded} more only bounded (strace's stopwatch started late)"
    return table


def _threads(timeline: Timeline) -> RenderableType:
    table = Table(title="Threads", title_justify="left", box=None, padding=(0, 2), show_edge=False)
    for column in ("thread", "process", "began", "ended", "syscalls", "asleep"):
        table.add_column(column, justify="left" if column in ("thread", "began", "ended") else "right")
    for lane in timeline.lanes[:MAX_THREADS]:
        began = "before the trace" if lane.existed else (
            f"{ms(timeline, lane.born).strip()} ms (made by {lane.parent})" if lane.born is not None else "?")
        ended = f"{ms(timeline, lane.ended).strip()} ms: {lane.how_ended}" if lane.ended is not None else "-"
        table.add_row(Text(lane.label), str(lane.pid), began, ended, str(len(lane.calls)),
                      f"{asleep_share(timeline, lane):.0%}")
    if len(timeline.lanes) > MAX_THREADS:
        table.caption = f"... {len(timeline.lanes) - MAX_THREADS} more threads in the HTML page and the JSON"
    return table


def _chronology(timeline: Timeline) -> RenderableType:
    """Packets and the calls that wait or talk, in time order."""
    rows: list[tuple[float, int, str, Text]] = []
    for packet in timeline.packets:
        what = Text(f"{'→' if packet.inbound else '←'} {PACKET_WORDS[packet.kind]}", style="cyan")
        what.append(f" {packet.flags} :{packet.client_port}")
        if packet.length:
            what.append(f" {packet.length} B ")
            what.append(shown(packet.payload.split("\r\n", 1)[0])[:60], style="dim")
        rows.append((packet.time, 0, "packets", what))
    for lane in timeline.lanes:
        for index in lane.calls:
            call = timeline.calls[index]
            waits = call.name in syscalls.NETWORK_WAITS or call.name in syscalls.LOCKS
            if not waits and call.name not in TALKING:
                continue
            if waits:
                start = max(call.entered, timeline.began)
                since = "" if call.entered >= timeline.began else " (since before the scenario)"
                rows.append((start, 1, lane.label, Text(f"waits in {call.name}{since}", style="dim")))
                if call.returned is not None:
                    text = Text(f"{call.name} returned {shown(call.result)[:40]}",
                                style="green" if family(call.name) else "")
                    text.append(f" after {(call.returned - call.entered) * 1e3:,.3f} ms", style="dim")
                    rows.append((call.returned, 2, lane.label, text))
            else:
                rows.append((call.entered, 1, lane.label, Text(f"{call.name} = {shown(call.result)[:40]}")))
    for exit_ in timeline.exits:
        gone = timeline.lane(exit_.tid)
        rows.append((exit_.time, 3, gone.label if gone else str(exit_.tid), Text(exit_.how, style="magenta")))
    rows.sort(key=lambda row: (row[0], row[1]))
    table = Table(title="Timeline (the calls that wait or talk, and the packets)", title_justify="left", box=None,
                  padding=(0, 2), show_edge=False)
    table.add_column("at ms", justify="right")
    table.add_column("where")
    table.add_column("what")
    for at, _, where, what in rows[:MAX_ROWS]:
        table.add_row(ms(timeline, at), Text(where), what)
    if len(rows) > MAX_ROWS:
        table.caption = f"... {len(rows) - MAX_ROWS} more rows in the HTML page and the JSON"
    return table
