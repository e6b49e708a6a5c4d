"""The load_curve's harness command (labctl/harness/load.py) against real sockets on 127.0.0.1: what a step
measures from a one-at-a-time server and from a thread per client, how it counts what went wrong, and that
it ends within its budget whatever the server does."""

from __future__ import annotations

import socket
import threading
import time

from labctl.checks.concurrency import percentile
from labctl.harness import load
from unit.loopback import LocalServer, read_request

BODY = bytes(range(256)) * 1024          # 256 KiB: more than the kernel's buffers hold with the ones set here


def answer_slowly_taken(conn: socket.socket) -> None:
    """Read a request, answer BODY with a blocking sendall through a small send buffer (loopback's own are
    large enough to hold all of it, which a lab's network interface's are not)."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    data = read_request(conn)
    if data is None:
        return
    if b" /missing " in data:
        conn.sendall(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        return
    conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY)


class ThreadPerClient(LocalServer):
    """The same answers, a thread for each connection."""

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self.one, args=(conn,), daemon=True).start()

    def one(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(3)
            try:
                self.handle(conn)
            except OSError as error:
                self.errors.append(type(error).__name__)


def step(port: int, connections: int, **params) -> dict:
    settings = {"seconds": 0.4, "read_delay": 0.05, "rcvbuf": 4096, "ramp": 0.0, "request_timeout": 3.0,
                "connect_timeout": 1.0, "budget": 8.0, **params}
    return load.load_step("127.0.0.1", port, connections=connections, **settings)


def test_a_one_at_a_time_server_makes_everyone_wait_and_a_thread_per_client_does_not():
    blocking, threaded = LocalServer(answer_slowly_taken), ThreadPerClient(answer_slowly_taken)
    try:
        alone, crowd = step(blocking.port, 1), step(blocking.port, 4)
        served = step(threaded.port, 4)
    finally:
        blocking.close()
        threaded.close()
    for facts in (alone, crowd, served):
        assert facts["errors"] == {} and facts["answered"] >= 4 and facts["unfinished"] == 0, facts
    # Each client holds a one-at-a-time server for its read_delay: four of them wait for each other.
    assert percentile(alone["latencies"], 50) < 0.15
    assert percentile(crowd["latencies"], 50) > 0.15
    assert percentile(served["latencies"], 50) < 0.15
    assert served["answered"] / served["wall_seconds"] > 1.5 * crowd["answered"] / crowd["wall_seconds"]
    assert crowd["latencies"] == sorted(crowd["latencies"]) and crowd["read_delay"] == 0.05


def test_interval_paces_each_client():
    server = ThreadPerClient(answer_slowly_taken)
    try:
        paced = step(server.port, 1, read_delay=0.0, rcvbuf=0, interval=0.1, seconds=0.45)
    finally:
        server.close()
    assert 4 <= paced["answered"] <= 5 and paced["requests"] == paced["answered"]


def test_errors_are_counted_in_the_wires_words():
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    refused = step(port, 2, seconds=0.3)
    assert refused["answered"] == 0 and set(refused["errors"]) == {"refused"}
    # A client that failed waits FAIL_PAUSE before it tries again: a gone server is not hammered.
    assert refused["requests"] <= 2 * (0.3 / load.FAIL_PAUSE + 1)
    server = ThreadPerClient(answer_slowly_taken)
    try:
        missing = step(server.port, 1, path="/missing", seconds=0.2)
    finally:
        server.close()
    assert missing["answered"] == 0 and set(missing["errors"]) == {"status 404"}
    assert missing["error_examples"][0]["status_line"] == "HTTP/1.0 404 Not Found"


def test_a_server_that_never_answers_times_out_within_the_budget():
    with socket.create_server(("127.0.0.1", 0)) as mute:    # listens (the backlog), never accepts
        started = time.monotonic()
        timed_out = step(mute.getsockname()[1], 2, seconds=0.2, request_timeout=0.3, connect_timeout=0.2)
        assert time.monotonic() - started < 2.0
        assert timed_out["answered"] == 0 and timed_out["errors"] == {"timeout": 2}
        started = time.monotonic()
        cut = step(mute.getsockname()[1], 2, seconds=0.2, request_timeout=30, budget=0.6)
        assert time.monotonic() - started < 1.5 and cut["unfinished"] == 2


def test_a_step_above_the_clients_nofile_is_clamped(monkeypatch):
    monkeypatch.setattr(load, "_raise_nofile", lambda: {"soft_before": 100, "hard": 100, "soft": 100})
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    facts = step(port, 1000, seconds=0.1)
    assert facts["clamped"] and facts["connections"] == 100 - load.RESERVE and facts["connections_asked"] == 1000


def test_many_latencies_are_thinned_keeping_their_percentiles():
    values = [i / 100000 for i in range(100000)]
    thinned = load._thin(values, 1000)
    assert len(thinned) == 1000 and thinned[0] == values[0] and thinned[-1] == values[-1]
    for q in (50, 90, 99):
        assert abs(percentile(thinned, q) - percentile(values, q)) < 0.002
    assert load._thin(values[:10], 1000) == values[:10]


def test_a_server_that_keeps_answered_connections_open_does_not_stall_its_clients():
    """The close of an answered connection is awaited aside: the client's next request begins at once, and the
    step ends with its last request, not CLOSE_WAIT later."""
    def answer_and_linger(conn: socket.socket) -> None:
        if read_request(conn) is None:
            return
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
        conn.recv(1)        # until the client closes (CLOSE_WAIT) or goes

    server = ThreadPerClient(answer_and_linger)
    try:
        started = time.monotonic()
        facts = step(server.port, 1, read_delay=0.0, rcvbuf=0, seconds=0.3)
        took = time.monotonic() - started
    finally:
        server.close()
    assert facts["errors"] == {} and facts["answered"] > 10, facts
    assert took < 0.3 + load.CLOSE_WAIT / 2
