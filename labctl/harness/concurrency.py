"""Harness commands: concurrency (slow clients, many clients, idle connections, slow readers).

Runs INSIDE the client container: stdlib only, imports nothing of labctl. Each command
measures and returns facts (a JSON-able dict); the host decides pass or fail.

Every socket has a timeout, every loop is bounded in count and in time: each command
takes a `budget` (seconds) and stops what it is doing when that runs out, returning
what it saw so far.
"""

from __future__ import annotations

import errno
import os
import resource
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from . import client
from .client import MIN_WAIT, timed_request
from .wire import ConcurrentClients, IdleConnections, Nofile, SlowClient, SlowReader, TimedRequest

#: A connect that took this long waited for the kernel to send its SYN again (first retry after 1 s).
SYN_RETRY = 0.9


def _partial_request_bytes(path: str) -> bytes:
    """The first line of a request and no blank line: the server must wait for more."""
    return f"GET {path} HTTP/1.0\r\n".encode()


def _address(host: str, deadline: float) -> str:
    """The server's address, resolved within the time left (OSError when it does not resolve)."""
    address, problem = client.resolve(host, min(5.0, max(MIN_WAIT, deadline - time.monotonic())))
    if address is None:
        raise OSError(f"cannot resolve {host!r}: {problem}")
    return address


def _raise_nofile() -> Nofile:
    """Raise the soft limit of open files to the hard one; say what the limits are."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    raised = soft
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            raised = target
        except (ValueError, OSError):
            pass
    return {"soft_before": soft, "hard": hard if hard != resource.RLIM_INFINITY else -1, "soft": raised}


def _count_closed(socks: list[socket.socket]) -> dict[str, int]:
    """Without waiting: how many of these idle sockets the server closed, reset, or wrote to."""
    by_fd = {sock.fileno(): sock for sock in socks}
    poller = select.poll()
    for fd in by_fd:
        poller.register(fd, select.POLLIN | select.POLLERR | select.POLLHUP)
    counts: dict[str, int] = {}
    for fd, _events in poller.poll(0):
        sock = by_fd[fd]
        timeout = sock.gettimeout()
        sock.setblocking(False)
        try:
            data = sock.recv(1, socket.MSG_PEEK)
            state = "closed" if not data else "sent data"
        except (BlockingIOError, InterruptedError):
            state = None
        except OSError as error:
            state = client.ending_of(error)
        finally:
            sock.settimeout(timeout)
        if state is not None:
            counts[state] = counts.get(state, 0) + 1
    return counts


# -- slow_client ----------------------------------------------------------------------------------

def slow_client(host: str, port: int, slow_clients: int = 1, path: str = "/index.html", timeout: float = 3.0,
                settle: float = 0.3, budget: float = 20.0) -> SlowClient:
    """Hold `slow_clients` connections with an unfinished request, then time a full request.

    The slow connections send the first line of a request and no blank line, so a server
    that reads one client to the end before it looks at another waits for them forever.
    After the timed request, the slow requests are finished and their answers read (the
    server is left as it was found), which also shows whether the server kept them.
    """
    deadline = time.monotonic() + budget
    address = _address(host, deadline)
    slow: list[socket.socket] = []
    connect_errors: dict[str, int] = {}
    facts: SlowClient = {"slow_clients": slow_clients}
    try:
        for _ in range(slow_clients):
            if time.monotonic() >= deadline:
                break
            try:
                sock = socket.create_connection((address, port),
                                                timeout=max(MIN_WAIT, min(3.0, deadline - time.monotonic())))
                sock.sendall(_partial_request_bytes(path))
                slow.append(sock)
            except OSError as error:
                name = client.ending_of(error, connecting=True)
                connect_errors[name] = connect_errors.get(name, 0) + 1
        facts["slow_connected"] = len(slow)
        facts["slow_connect_errors"] = connect_errors
        time.sleep(max(0.0, min(settle, deadline - time.monotonic())))
        facts["slow_closed_before_probe"] = _count_closed(slow)
        probe_timeout = max(MIN_WAIT, min(timeout, deadline - time.monotonic() - 0.5))
        facts["probe"] = timed_request(address, port, path, probe_timeout)
        facts["slow_closed_after_probe"] = _count_closed(slow)
        # Finish the slow requests so the server is not left waiting; read what comes back.
        answered = 0
        finish_deadline = min(deadline, time.monotonic() + 2.0)
        for sock in slow:
            try:
                sock.sendall(b"\r\n")
            except OSError:
                pass
        for sock in slow:
            if finish_deadline - time.monotonic() <= 0:
                break
            # Read each answer to its end (closing on a server still writing could kill it: SIGPIPE).
            answer = client.Response()
            client.read_answer(sock, answer, finish_deadline, time.monotonic(), {}, quiet=client.QUIET)
            if (answer.status()[1] or "").startswith("HTTP/"):
                answered += 1
        facts["slow_answered_after_finishing"] = answered
    finally:
        for sock in slow:
            sock.close()
    return facts


# -- concurrent_clients -----------------------------------------------------------------------------

def concurrent_clients(host: str, port: int, clients: int = 20, requests: int = 10, path: str = "/index.html",
                       request_timeout: float = 5.0, connect_timeout: float = 10.0, ramp: float = 0.0,
                       budget: float = 50.0, max_examples: int = 5) -> ConcurrentClients:
    """`clients` threads at once, each making `requests` requests (a fresh connection each).

    The clients start one after the other over `ramp` seconds, so they run at once without
    all connecting in the same millisecond: a burst of SYNs larger than a small listen backlog
    overflows it whenever the server is slow to accept (a busy machine), and the kernel's
    retransmissions, all in step, can outlast any timeout: the verdict would depend on the
    machine's load, not on the server. Returns the latency of every successful request (status 200, whole body) and the
    errors by kind; requests not started when the budget ran out are counted, not made.
    """
    _raise_nofile()
    deadline = time.monotonic() + budget
    address = _address(host, deadline)
    lock = threading.Lock()
    latencies: list[float] = []
    errors: dict[str, int] = {}
    examples: list[dict] = []
    not_run = [0]
    retried = [0]  # connects that took a SYN retransmission: the listen queue was full for a moment
    start = threading.Barrier(clients + 1)

    def worker(index: int) -> None:
        try:
            start.wait(timeout=10)
        except threading.BrokenBarrierError:
            pass
        time.sleep(ramp * index / max(1, clients))  # the clients arrive over `ramp` s, not in one instant
        for done in range(requests):
            left = deadline - time.monotonic()
            if left <= MIN_WAIT:
                with lock:
                    not_run[0] += requests - done
                return
            result = timed_request(address, port, path, min(request_timeout, left), min(connect_timeout, left))
            with lock:
                if result.get("connected") and result.get("connect_seconds", 0) >= SYN_RETRY:
                    retried[0] += 1
                problem = result.get("error")
                if problem is None:
                    latencies.append(result.get("seconds") or 0.0)
                else:
                    kind = f"status {result.get('status')}" if problem == "bad-status" else problem
                    errors[kind] = errors.get(kind, 0) + 1
                    if len(examples) < max_examples:
                        examples.append({"error": problem, "status_line": result.get("status_line"),
                                         "elapsed": result.get("elapsed"), "bytes": result.get("received")})

    threads = [threading.Thread(target=worker, args=(index,), daemon=True) for index in range(clients)]
    started_threads = 0
    for thread in threads:
        try:
            thread.start()
            started_threads += 1
        except RuntimeError:  # no more threads in this container: measure with those there are
            break
    if started_threads < clients:
        start.abort()
    else:
        try:
            start.wait(timeout=10)
        except threading.BrokenBarrierError:
            pass
    began = time.monotonic()
    for thread in threads[:started_threads]:
        thread.join(timeout=max(MIN_WAIT, deadline - time.monotonic() + connect_timeout + request_timeout))
    wall = time.monotonic() - began
    with lock:
        return {"clients": clients, "clients_started": started_threads, "requests_per_client": requests,
                "syn_retried": retried[0],
                "attempted": len(latencies) + sum(errors.values()), "ok": len(latencies), "errors": dict(errors),
                "error_examples": list(examples), "not_run": not_run[0] + (clients - started_threads) * requests,
                "latencies": [round(value, 6) for value in latencies], "wall_seconds": round(wall, 6)}


# -- idle_connections -------------------------------------------------------------------------------

def _open_batch(address: str, port: int, count: int, timeout: float) -> tuple[list[socket.socket], dict[str, int]]:
    """Open `count` connections at once (non-blocking connects, waited on with poll)."""
    opened: list[socket.socket] = []
    failed: dict[str, int] = {}
    pending: dict[int, socket.socket] = {}
    poller = select.poll()

    def fail(kind: str) -> None:
        failed[kind] = failed.get(kind, 0) + 1

    for _ in range(count):
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        except OSError as error:  # out of descriptors on our side
            fail("client: " + errno.errorcode.get(error.errno or 0, "error").lower())
            break
        sock.setblocking(False)
        code = sock.connect_ex((address, port))
        if code in (0, errno.EINPROGRESS):
            pending[sock.fileno()] = sock
            poller.register(sock.fileno(), select.POLLOUT)
        else:
            fail(errno.errorcode.get(code, str(code)).lower())
            sock.close()
    deadline = time.monotonic() + timeout
    while pending:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        for fd, _events in poller.poll(max(1, int(left * 1000))):
            if fd not in pending:
                continue
            sock = pending.pop(fd)
            poller.unregister(fd)
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code == 0:
                opened.append(sock)
            else:
                fail(client.ending_of(OSError(code, os.strerror(code)), connecting=True))
                sock.close()
    for sock in pending.values():
        fail("connect-timeout")
        sock.close()
    return opened, failed


def idle_connections(host: str, port: int, connections: int = 2000, batch: int = 100, pause: float = 0.05,
                     connect_timeout: float = 3.0, hold: float = 1.0, path: str = "/index.html",
                     timeout: float = 3.0, budget: float = 50.0, reserve: int = 64) -> IdleConnections:
    """Open `connections` idle connections in paced batches, keep them, then time a request.

    The client's soft nofile limit is raised to its hard limit first; the number asked is
    clamped (and `clamped` says so) when even that is too low. Opening stops at the first
    batch in which a connection failed (the server stopped accepting). Connections the
    server closed (or reset) while they were held are counted before and after the request.
    """
    deadline = time.monotonic() + budget
    limits = _raise_nofile()
    facts: IdleConnections = {"asked": connections, "nofile": limits}
    target = connections
    if limits["hard"] != -1 and limits["soft"] - reserve < connections:
        target = max(0, limits["soft"] - reserve)
    facts["target"] = target
    facts["clamped"] = target < connections
    address = _address(host, deadline)
    held: list[socket.socket] = []
    failed: dict[str, int] = {}
    first_failure_after: int | None = None
    batches = 0
    started = time.monotonic()
    stopped = None
    try:
        # Leave time for the hold, the request and the goodbye.
        open_deadline = deadline - hold - timeout - 2.0
        while len(held) < target:
            if time.monotonic() >= open_deadline:
                stopped = "time budget"
                break
            count = min(batch, target - len(held))
            wait = max(MIN_WAIT, min(connect_timeout, open_deadline - time.monotonic()))
            opened, batch_failed = _open_batch(address, port, count, wait)
            batches += 1
            held.extend(opened)
            if batch_failed and first_failure_after is None:
                first_failure_after = len(held)  # connections held when the first failure was seen
            for kind, number in batch_failed.items():
                failed[kind] = failed.get(kind, 0) + number
            if batch_failed:  # the server stopped accepting: more batches would only wait longer
                stopped = "connections failed" if opened else "a whole batch failed to connect"
                break
            if len(held) < target:
                time.sleep(pause)
        facts.update({"connected": len(held), "connect_failures": failed, "first_failure_after": first_failure_after,
                      "batches": batches, "open_seconds": round(time.monotonic() - started, 6), "stopped": stopped})
        time.sleep(max(0.0, min(hold, deadline - time.monotonic() - timeout - 1.0)))
        closed_before = _count_closed(held)
        facts["closed_before_probe"] = closed_before
        probe_timeout = max(MIN_WAIT, min(timeout, deadline - time.monotonic() - 0.5))
        facts["probe"] = timed_request(address, port, path, probe_timeout)
        facts["closed_after_probe"] = _count_closed(held)
    finally:
        for sock in held:
            sock.close()
    return facts


# -- slow_reader ------------------------------------------------------------------------------------

def slow_reader(host: str, port: int, path: str = "/large.bin", probe_path: str = "/index.html",
                timeout: float = 3.0, rcvbuf: int = 4096, read_size: int = 1024, read_pause: float = 0.05,
                settle: float = 0.5, drain_timeout: float = 10.0, budget: float = 25.0) -> SlowReader:
    """A client asks for a large file and reads it slowly; meanwhile time another request.

    The slow reader's tiny receive buffer and small, paced reads fill the server's send
    buffer, so a server that writes with a blocking send()/sendall() is stuck there. After
    the timed request the slow reader drains the rest fast (the server finishes its work),
    and reports how many bytes it got and their digest: a server that drops what send()
    did not take delivers a short or corrupt file.
    """
    deadline = time.monotonic() + budget
    address = _address(host, deadline)
    facts: SlowReader = {"path": path, "rcvbuf_asked": rcvbuf}
    response = client.Response()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    started = time.monotonic()
    first_byte_at: float | None = None
    probe_result: TimedRequest = {}

    def read(size: int, wait: float) -> bool:
        """One recv; False when the stream ended (EOF, error) or nothing came within `wait`."""
        nonlocal first_byte_at
        sock.settimeout(max(MIN_WAIT, wait))
        try:
            data = sock.recv(size)
        except TimeoutError:
            return True
        except OSError as error:
            facts["slow_error"] = client.ending_of(error)
            return False
        if not data:
            response.eof = True
            return False
        if first_byte_at is None:
            first_byte_at = time.monotonic()
        response.feed(data)
        return not response.complete

    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        facts["rcvbuf"] = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        sock.settimeout(max(MIN_WAIT, min(5.0, deadline - time.monotonic())))
        try:
            sock.connect((address, port))
            sock.sendall(client.get_request(path, host))
        except OSError as error:
            facts["slow_error"] = client.ending_of(error, connecting=True)
            facts["slow"] = response.facts()
            return facts
        # Phase 1: read slowly until the file has started to come, then `settle` more.
        going = True
        phase_end = min(deadline, time.monotonic() + timeout)
        while going and first_byte_at is None and time.monotonic() < phase_end:
            going = read(read_size, phase_end - time.monotonic())
        facts["slow_first_byte_seconds"] = None if first_byte_at is None else round(first_byte_at - started, 6)
        settle_end = min(deadline, time.monotonic() + settle)
        while going and time.monotonic() < settle_end:
            time.sleep(read_pause)
            going = read(read_size, read_pause)
        facts["slow_bytes_before_probe"] = response.received
        # Phase 2: the other client's request, while the slow reader keeps reading slowly.
        probe_timeout = max(MIN_WAIT, min(timeout, deadline - time.monotonic() - 1.0))

        def probe() -> None:
            probe_result.update(timed_request(address, port, probe_path, probe_timeout))

        prober = threading.Thread(target=probe, daemon=True)
        prober.start()
        probe_end = time.monotonic() + probe_timeout + 1.0
        while prober.is_alive() and time.monotonic() < probe_end:
            if going:
                time.sleep(read_pause)
                going = read(read_size, read_pause)
            else:
                prober.join(timeout=read_pause)
        prober.join(timeout=max(MIN_WAIT, probe_end - time.monotonic()))
        facts["slow_bytes_during_probe"] = response.received - facts["slow_bytes_before_probe"]
        # Phase 3: drain the rest fast, so the server finishes what it started.
        drain_end = min(deadline, time.monotonic() + drain_timeout)
        drained_at = time.monotonic()
        while going and time.monotonic() < drain_end:
            going = read(262144, drain_end - time.monotonic())
        facts["drain_seconds"] = round(time.monotonic() - drained_at, 6)
    finally:
        sock.close()
    facts["slow"] = response.facts()
    facts["probe"] = probe_result or {"error": "error", "connect_error": "not run", "seconds": None}
    return facts


COMMANDS: dict[str, Callable[..., Any]] = {
    "slow_client": slow_client,
    "concurrent_clients": concurrent_clients,
    "idle_connections": idle_connections,
    "slow_reader": slow_reader,
}
