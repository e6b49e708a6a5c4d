"""The harness: runs INSIDE the lab's client, injector and observer containers.

Stdlib and scapy only; it imports nothing else of labctl, because labctl copies this
folder alone into the containers (/opt/labctl/harness). Every command takes JSON
parameters and prints one JSON object on its last line of stdout:

    python3 -m harness COMMAND --params '{"host": "server", "port": 8080}'

The harness measures and reports facts; deciding pass or fail is the grader's job, on
the host, where it can be unit-tested.
"""
