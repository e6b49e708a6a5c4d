"""Harness commands: concurrency (slow clients, many clients, idle connections, slow readers).

Runs INSIDE the client container: stdlib only, imports nothing of labctl. Each command
measures and returns facts (a JSON-able dict); the host decides pass or fail.

Every socket has a timeout, every loop is bounded in count and in time: each command
takes a `budget` (seconds) and stops what it is doing when that runs out, returning
what it saw so far.
"""

from __future__ import annotations

import errno
import hashlib
import resource
import select
import socket
import threading
import time
from typing import Callable

#: Never wait less than this on one socket operation (a deadline in the past is not a reason to hang).
MIN_WAIT = 0.05
#: A connect that took this long waited for the kernel to send its SYN again (first retry after 1 s).
SYN_RETRY = 0.9


def _request_bytes(path: str, host: str) -> bytes:
    return f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode()


def _partial_request_bytes(path: str) -> bytes:
    """The first line of a request and no blank line: the server must wait for more."""
    return f"GET {path} HTTP/1.0\r\n".encode()


def _error_name(error: BaseException) -> str:
    """A short, stable name of a socket error (its kind, for counting)."""
    if isinstance(error, (socket.timeout, TimeoutError)):
        return "timeout"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, ConnectionResetError):
        return "connection reset"
    if isinstance(error, BrokenPipeError):
        return "broken pipe"
    if isinstance(error, socket.gaierror):
        return "name not resolved"
    if isinstance(error, OSError) and error.errno:
        return errno.errorcode.get(error.errno, str(error.errno)).lower()
    return type(error).__name__


class _Response:
    """An HTTP/1.0 response read from a socket: status, headers, body length and digest."""

    def __init__(self) -> None:
        self.head = b""
        self.headers_done = False
        self.status: int | None = None
        self.content_length: int | None = None
        self.body_bytes = 0
        self.total_bytes = 0
        self.eof = False
        self.digest = hashlib.sha256()

    def feed(self, data: bytes) -> None:
        self.total_bytes += len(data)
        if self.headers_done:
            self.body_bytes += len(data)
            self.digest.update(data)
            return
        self.head += data
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            if len(self.head) > 65536:  # no end of headers in 64 KiB: treat the rest as body
                self.headers_done = True
            return
        head, body = self.head[:end], self.head[end + 4:]
        self.head = head
        self.headers_done = True
        lines = head.split(b"\r\n")
        parts = lines[0].split()
        if len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit():
            self.status = int(parts[1])
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length" and value.strip().isdigit():
                self.content_length = int(value.strip())
        self.body_bytes = len(body)
        self.digest.update(body)

    @property
    def complete(self) -> bool:
        if not self.headers_done:
            return False
        if self.content_length is not None:
            return self.body_bytes >= self.content_length
        return self.eof

    def facts(self) -> dict:
        return {"status": self.status, "content_length": self.content_length, "body_bytes": self.body_bytes,
                "bytes": self.total_bytes, "complete": self.complete, "closed_by_server": self.eof,
                "sha256": self.digest.hexdigest() if self.complete else None,
                "status_line": self.head.split(b"\r\n", 1)[0][:200].decode(errors="replace") or None}


def timed_request(host: str, port: int, path: str = "/index.html", timeout: float = 5.0,
                  connect_timeout: float | None = None) -> dict:
    """One full HTTP/1.0 request on a fresh connection, timed.

    `seconds` is the time from the start of connect until the whole response arrived
    (None when it did not in time); `connect_seconds` and `first_byte_seconds` tell where
    the time went. A connect succeeds through the listen backlog even when the server is
    busy, so the response time is what shows a server that is not serving.

    Without `connect_timeout` the whole request has `timeout` seconds. With it, the whole
    request has `connect_timeout + timeout` seconds, however they are spent: when a listen
    queue overflows, the kernel sends a SYN again after 1, 3, 7 s, and a connect that the
    client saw complete may still wait on the server's side for its SYN-ACK to be sent again
    (1, 3, 7 s too) before the request is read. Slow, not wrong.
    """
    started = time.monotonic()
    deadline = started + timeout + (connect_timeout or 0)
    facts: dict = {"path": path, "timeout": timeout, "seconds": None, "connect_seconds": None,
                   "first_byte_seconds": None, "error": None}
    response = _Response()
    sock = None
    try:
        sock = socket.create_connection((host, port), timeout=connect_timeout or timeout)
        facts["connect_seconds"] = round(time.monotonic() - started, 6)
        sock.settimeout(max(MIN_WAIT, deadline - time.monotonic()))
        sock.sendall(_request_bytes(path, host))
        while not response.complete:
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("timed out")
            sock.settimeout(max(MIN_WAIT, left))
            data = sock.recv(65536)
            if facts["first_byte_seconds"] is None and data:
                facts["first_byte_seconds"] = round(time.monotonic() - started, 6)
            if not data:
                response.eof = True
                break
            response.feed(data)
        if response.complete:
            facts["seconds"] = round(time.monotonic() - started, 6)
        elif not response.headers_done:
            facts["error"] = "closed without a response" if response.total_bytes == 0 else "incomplete headers"
        else:
            facts["error"] = "incomplete body"
    except (OSError, ValueError) as error:
        facts["error"] = _error_name(error)
    finally:
        if sock is not None:
            sock.close()
    facts["elapsed"] = round(time.monotonic() - started, 6)
    facts.update(response.facts())
    return facts


def _raise_nofile() -> dict:
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
            state = _error_name(error)
        finally:
            sock.settimeout(timeout)
        if state is not None:
            counts[state] = counts.get(state, 0) + 1
    return counts


# -- slow_client ----------------------------------------------------------------------------------

def slow_client(host: str, port: int, slow_clients: int = 1, path: str = "/index.html", timeout: float = 3.0,
                settle: float = 0.3, budget: float = 20.0) -> dict:
    """Hold `slow_clients` connections with an unfinished request, then time a full request.

    The slow connections send the first line of a request and no blank line, so a server
    that reads one client to the end before it looks at another waits for them forever.
    After the timed request, the slow requests are finished and their answers read (the
    server is left as it was found), which also shows whether the server kept them.
    """
    deadline = time.monotonic() + budget
    address = socket.gethostbyname(host)
    slow: list[socket.socket] = []
    connect_errors: dict[str, int] = {}
    facts: dict = {"slow_clients": slow_clients}
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
                name = _error_name(error)
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
            left = finish_deadline - time.monotonic()
            if left <= 0:
                break
            try:
                sock.settimeout(max(MIN_WAIT, left))
                if sock.recv(64).startswith(b"HTTP/"):
                    answered += 1
            except OSError:
                pass
        facts["slow_answered_after_finishing"] = answered
    finally:
        for sock in slow:
            sock.close()
    return facts


# -- concurrent_clients -----------------------------------------------------------------------------

def concurrent_clients(host: str, port: int, clients: int = 20, requests: int = 10, path: str = "/index.html",
                       request_timeout: float = 5.0, connect_timeout: float = 10.0, ramp: float = 0.0,
                       budget: float = 50.0, max_examples: int = 5) -> dict:
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
    address = socket.gethostbyname(host)
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
            ok = result["error"] is None and result["status"] == 200 and result["complete"]
            with lock:
                if result["connect_seconds"] is not None and result["connect_seconds"] >= SYN_RETRY:
                    retried[0] += 1
                if ok:
                    latencies.append(result["seconds"])
                else:
                    kind = result["error"] or f"status {result['status']}"
                    errors[kind] = errors.get(kind, 0) + 1
                    if len(examples) < max_examples:
                        examples.append({key: result[key] for key in ("error", "status_line", "elapsed", "bytes")})

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
            fail("client: " + _error_name(error))
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
            sock = pending.pop(fd, None)
            if sock is None:
                continue
            poller.unregister(fd)
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code == 0:
                opened.append(sock)
            else:
                fail({errno.ECONNREFUSED: "connection refused", errno.ECONNRESET: "connection reset",
                      errno.ETIMEDOUT: "timeout"}.get(code, errno.errorcode.get(code, str(code)).lower()))
                sock.close()
    for sock in pending.values():
        fail("connect timed out")
        sock.close()
    return opened, failed


def idle_connections(host: str, port: int, connections: int = 2000, batch: int = 100, pause: float = 0.05,
                     connect_timeout: float = 3.0, hold: float = 1.0, path: str = "/index.html",
                     timeout: float = 3.0, budget: float = 50.0, reserve: int = 64) -> dict:
    """Open `connections` idle connections in paced batches, keep them, then time a request.

    The client's soft nofile limit is raised to its hard limit first; the number asked is
    clamped (and `clamped` says so) when even that is too low. Opening stops at the first
    batch in which a connection failed (the server stopped accepting). Connections the
    server closed (or reset) while they were held are counted before and after the request.
    """
    deadline = time.monotonic() + budget
    limits = _raise_nofile()
    facts: dict = {"asked": connections, "nofile": limits}
    target = connections
    if limits["hard"] != -1 and limits["soft"] - reserve < connections:
        target = max(0, limits["soft"] - reserve)
    facts["target"] = target
    facts["clamped"] = target < connections
    address = socket.gethostbyname(host)
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
                settle: float = 0.5, drain_timeout: float = 10.0, budget: float = 25.0) -> dict:
    """A client asks for a large file and reads it slowly; meanwhile time another request.

    The slow reader's tiny receive buffer and small, paced reads fill the server's send
    buffer, so a server that writes with a blocking send()/sendall() is stuck there. After
    the timed request the slow reader drains the rest fast (the server finishes its work),
    and reports how many bytes it got and their digest: a server that drops what send()
    did not take delivers a short or corrupt file.
    """
    deadline = time.monotonic() + budget
    address = socket.gethostbyname(host)
    facts: dict = {"path": path, "rcvbuf_asked": rcvbuf}
    response = _Response()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    started = time.monotonic()
    first_byte_at: float | None = None
    probe_result: dict = {}

    def read(size: int, wait: float) -> bool:
        """One recv; False when the stream ended (EOF, error) or nothing came within `wait`."""
        nonlocal first_byte_at
        sock.settimeout(max(MIN_WAIT, wait))
        try:
            data = sock.recv(size)
        except socket.timeout:
            return True
        except OSError as error:
            facts["slow_error"] = _error_name(error)
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
            sock.sendall(_request_bytes(path, host))
        except OSError as error:
            facts["slow_error"] = _error_name(error)
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
        facts["slow_bytes_before_probe"] = response.total_bytes
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
        facts["slow_bytes_during_probe"] = response.total_bytes - facts["slow_bytes_before_probe"]
        # Phase 3: drain the rest fast, so the server finishes what it started.
        drain_end = min(deadline, time.monotonic() + drain_timeout)
        drained_at = time.monotonic()
        while going and time.monotonic() < drain_end:
            going = read(262144, drain_end - time.monotonic())
        facts["drain_seconds"] = round(time.monotonic() - drained_at, 6)
    finally:
        sock.close()
    facts["slow"] = response.facts()
    facts["probe"] = probe_result or {"error": "not run", "seconds": None}
    return facts


COMMANDS: dict[str, Callable[..., dict]] = {
    "slow_client": slow_client,
    "concurrent_clients": concurrent_clients,
    "idle_connections": idle_connections,
    "slow_reader": slow_reader,
}
