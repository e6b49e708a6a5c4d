"""The harness's one HTTP client (labctl/harness/client.py) against real sockets on 127.0.0.1: how it
reads answers, how it says a connection ended, and that every wait is bounded."""

from __future__ import annotations

import hashlib
import socket
import time

from labctl.harness import client
from unit.loopback import LocalServer


def test_response_reader_handles_split_headers_and_content_length():
    response = client.Response()
    for piece in (b"HTTP/1.0 200 OK\r\nContent-Le", b"ngth: 5\r\n\r", b"\nhel", b"lo"):
        assert not response.complete
        response.feed(piece)
    facts = response.facts()
    assert facts["status"] == 200 and facts["content_length"] == 5 and facts["body_bytes"] == 5
    assert facts["complete"] and facts["body_sha256"] == hashlib.sha256(b"hello").hexdigest()


def test_response_without_length_is_complete_at_eof_only():
    response = client.Response()
    response.feed(b"HTTP/1.0 200 OK\r\n\r\nabc")
    assert not response.complete
    response.eof = True
    assert response.complete


def test_timed_request_measures_a_whole_response():
    server = LocalServer(body=b"x" * 100_000)
    try:
        facts = client.timed_request("127.0.0.1", server.port, "/", timeout=5)
    finally:
        server.close()
    assert facts["error"] is None and facts["status"] == 200 and facts["body_bytes"] == 100_000
    assert 0 < facts["connect_seconds"] <= facts["first_byte_seconds"] <= facts["seconds"] < 5


def test_timed_request_refused_and_timeout():
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    assert client.timed_request("127.0.0.1", port, "/", timeout=1)["error"] == "refused"
    with socket.create_server(("127.0.0.1", 0)) as mute:      # listens (backlog), never accepts
        started = time.monotonic()
        facts = client.timed_request("127.0.0.1", mute.getsockname()[1], "/", timeout=0.3)
        assert facts["error"] == "timeout" and facts["connect_seconds"] is not None
        assert time.monotonic() - started < 1.0


def test_every_harness_command_answers_the_facts_the_wire_names():
    from labctl.harness import agent, concurrency, impair, load, net, packets, proc, protocol, scenarios, tracer, wire

    commands = {}
    for module in (net, protocol, concurrency, load, proc, agent, packets, impair, tracer, scenarios):
        commands.update(module.COMMANDS)
    assert set(commands) == set(wire.FACTS)
    for name, function in commands.items():
        # the modules use `from __future__ import annotations`: the return annotation is its name
        assert function.__annotations__.get("return") == wire.FACTS[name], name
        if wire.FACTS[name] != "dict":
            assert isinstance(getattr(wire, wire.FACTS[name]), type), name


def test_every_ending_has_words_and_every_error_ends_in_one():
    import errno
    import typing

    from labctl.harness import wire

    assert set(typing.get_args(wire.Ending)) == set(wire.ENDING_WORDS)
    for error in (TimeoutError(), ConnectionRefusedError(), ConnectionResetError(), BrokenPipeError(),
                  socket.gaierror(), OSError(errno.EHOSTUNREACH, "no route"), OSError(errno.EIO, "io")):
        assert client.ending_of(error, connecting=True) in wire.ENDING_WORDS
        assert client.ending_of(error) in wire.ENDING_WORDS
    assert client.ending_of(TimeoutError(), connecting=True) == "connect-timeout"
    assert client.ending_of(TimeoutError()) == "timeout"
