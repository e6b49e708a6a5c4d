"""Harness command: one step of a load curve (load_step): N connections at once, each making requests one
after the other, every request timed.

Runs INSIDE the client container: stdlib only. One thread and one epoll set drive every connection, so the
harness is not what limits a step: a thread per connection (concurrent_clients' way) spends the client's one
CPU on switching between threads once there are hundreds, and the server's throughput would be measured
through the client's. The requests themselves are the ones every command makes (client.get_request), read
by the one reader of answers (client.Response), and their endings are wire.Ending words (client.ending_of).

Each connection slot loops: connect, send the request, read the answer's first bytes, wait `read_delay`
seconds before reading the rest (a client on a slow link takes its answer slowly), read it all (its latency
is from the start of the connect to the last byte of the body), wait for the server's close, and again, each
request starting at least `interval` seconds after the slot's previous one (the load a server is offered
stays within what one can serve on a shared machine however many slots there are), until `seconds` have
passed since the step began. Requests in flight then are finished (each within connect_timeout +
request_timeout), so that a slow server's latencies are measured, not cut.

Why the client waits once its answer has begun, and not before it sends: a request, or a part of one, that
a client sends late waits in the kernel while its connection waits in the listen backlog, and a server that
serves one connection at a time finds it whole when it gets to it: it keeps up with such clients as well as
an event loop does (measured: its p50 stayed at the delay from 1 to 32 slots). Once the answer has begun,
the server has accepted the connection; an answer larger than the kernel's buffers between the two (the
server's send buffer, about 70 KB here, and the client's receive buffer, which `rcvbuf` keeps small) cannot
be taken before the client reads again, so a server that writes it with a blocking send is held for the whole
delay and everyone behind it waits: a one-at-a-time server's latencies grow with the slots, an event loop's
and a thread per client's do not.
"""

from __future__ import annotations

import collections
import errno
import heapq
import os
import select
import socket
import time
from typing import Any

from . import client
from .concurrency import SYN_RETRY, _address, _raise_nofile
from .wire import LoadStep

#: Descriptors kept back for the harness itself (the epoll set, resolving, its output) when a step is clamped
#: to the client's nofile limit.
RESERVE = 64
#: The most latencies a step answers: more are thinned to this many evenly spaced order statistics of the
#: sorted list (the percentiles stay where they were; the JSON stays small).
MAX_LATENCIES = 10000
#: Seconds an answered connection is kept open for the server to close it (HTTP/1.0) before the client
#: closes it itself. The side that closes first keeps the connection in TIME_WAIT for a minute: tens of
#: thousands of requests a minute would use up the client's ports if it were the client. Its slot does
#: not wait for that: its next request begins at once (the answer's latency is measured already).
CLOSE_WAIT = 1.0
#: Seconds a slot waits after a failed request before its next one: a server that is gone (refused at
#: once) is not hammered in a tight loop.
FAIL_PAUSE = 0.05
#: The largest segment a client with a small receive buffer asks the server for: Ethernet's. A window smaller
#: than a segment is advertised as zero, so over loopback (64 KiB segments: the local backend) a client that
#: paused would stay shut until the server's persist timer probed it, 0.2 s later (measured).
SEGMENT = 1448
#: The receive buffer (and window clamp) a connection reads the rest of its answer with, after its read_delay.
DRAIN_RCVBUF = 1 << 18
#: Timer and epoll waits are rounded up to the millisecond epoll counts in.
_MS = 0.001

# A slot's phases.
_CONNECTING, _SENDING, _DELAY, _READING, _IDLE = range(5)
# What a timer does when it fires.
_START, _DEADLINE, _READ = range(3)


class _Slot:
    """One connection slot: the request it is making now, and where that request is."""

    __slots__ = ("index", "sock", "fd", "generation", "phase", "began", "response", "pending", "connected",
                 "answered", "delayed")

    def __init__(self, index: int):
        self.index = index
        self.sock: socket.socket | None = None
        self.fd = -1
        self.generation = 0          # which request: a timer set for an earlier one is stale
        self.phase = _IDLE
        self.began = 0.0
        self.response = client.Response()
        self.pending = b""           # what is left to send
        self.connected = False
        self.answered = False
        self.delayed = False         # its read_delay is over (or under way)


def load_step(host: str, port: int, connections: int = 1, seconds: float = 2.0, path: str = "/index.html",
              read_delay: float = 0.0, rcvbuf: int = 0, interval: float = 0.0, ramp: float = 0.2,
              request_timeout: float = 5.0, connect_timeout: float = 4.0, budget: float = 30.0,
              max_latencies: int = MAX_LATENCIES, max_examples: int = 5) -> LoadStep:
    """`connections` slots at once for `seconds`, each making requests one after the other on fresh
    connections (HTTP/1.0 GET `path`); the slots start evenly over `ramp` seconds, or `interval` if longer (a
    burst of SYNs larger than the server's listen backlog would overflow it whenever the server is slow to
    accept: a verdict on the machine's load, not on the server). `rcvbuf` (bytes, 0: the kernel's default)
    is each connection's SO_RCVBUF until its read_delay is over, set before it connects.

    The client's soft nofile limit is raised to its hard limit first; `connections` is clamped (and
    `clamped` says so) when even that leaves fewer than RESERVE descriptors to spare. Everything ends
    within `budget` seconds: requests still unfinished then are counted in `unfinished`.
    """
    limits = _raise_nofile()
    began = time.monotonic()
    hard_end = began + max(client.MIN_WAIT, budget)
    target = connections
    if limits["hard"] != -1 and limits["soft"] - RESERVE < connections:
        target = max(1, limits["soft"] - RESERVE)
    address = _address(host, hard_end)
    request = client.get_request(path, address)

    latencies: list[float] = []
    errors: dict[str, int] = {}
    client_errors: dict[str, int] = {}
    examples: list[dict[str, Any]] = []
    counts = {"started": 0, "retried": 0, "early": 0, "order": 0}
    by_fd: dict[int, _Slot] = {}
    timers: list[tuple[float, int, int, int, int]] = []   # (when, order, slot, generation, what)
    poller = select.epoll()
    closing: dict[int, socket.socket] = {}              # answered connections the server is to close
    closing_since: collections.deque[tuple[float, int, socket.socket]] = collections.deque()
    slots = [_Slot(index) for index in range(target)]
    t0 = time.monotonic()
    last_answer = t0
    stop_at = t0 + seconds

    waiting: set[int] = set()           # slots whose next request is due at a timer (none open a socket now)

    def at(when: float, slot: _Slot, what: int) -> None:
        counts["order"] += 1
        heapq.heappush(timers, (when, counts["order"], slot.index, slot.generation, what))
        if what == _START:
            waiting.add(slot.index)

    def close(slot: _Slot) -> None:
        if slot.sock is not None:
            by_fd.pop(slot.fd, None)
            slot.sock.close()                # closing also takes it out of the epoll set
            slot.sock, slot.fd = None, -1

    def next_request(slot: _Slot, pause: float = 0.0) -> None:
        """This request is over (answered, failed): the slot's next one `interval` after this one began (and
        `pause` after now), while the step lasts."""
        close(slot)
        slot.phase = _IDLE
        slot.generation += 1
        now = time.monotonic()
        when = max(slot.began + interval, now + pause)
        if when < stop_at:
            if when > now:
                at(when, slot, _START)
            else:
                start(slot)

    def fail(slot: _Slot, kind: str) -> None:
        errors[kind] = errors.get(kind, 0) + 1
        if len(examples) < max_examples:
            examples.append({"error": kind, "status_line": slot.response.status()[1],
                             "bytes": slot.response.received, "connected": slot.connected,
                             "elapsed": round(time.monotonic() - slot.began, 6)})
        next_request(slot, FAIL_PAUSE)

    def finish(slot: _Slot) -> None:
        """The answer is all there (by its length, or the server closed): count it, then wait for the close."""
        nonlocal last_answer
        response = slot.response
        if not slot.answered:
            slot.answered = True
            code = response.status()[0]
            if not response.complete:
                fail(slot, _problem(response))
                return
            if code != 200:
                fail(slot, f"status {code}" if code is not None else "bad-status")
                return
            last_answer = time.monotonic()
            latencies.append(last_answer - slot.began)
        if not response.eof and slot.sock is not None:
            # Answered; the server closes next: its close is awaited aside (CLOSE_WAIT), the slot goes on.
            by_fd.pop(slot.fd, None)
            closing[slot.fd] = slot.sock
            closing_since.append((time.monotonic(), slot.fd, slot.sock))
            slot.sock, slot.fd = None, -1
        next_request(slot)

    def start(slot: _Slot) -> None:
        slot.generation += 1
        slot.response = client.Response()
        slot.connected = slot.answered = slot.delayed = False
        slot.began = time.monotonic()
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        except OSError as error:    # out of descriptors or memory on the client's side: not the server's doing
            kind = "client: " + errno.errorcode.get(error.errno or 0, "error").lower()
            client_errors[kind] = client_errors.get(kind, 0) + 1
            slot.phase = _IDLE
            if slot.began + FAIL_PAUSE < stop_at:
                at(slot.began + FAIL_PAUSE, slot, _START)
            return
        sock.setblocking(False)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, SEGMENT)
        counts["started"] += 1
        slot.sock, slot.fd, slot.phase = sock, sock.fileno(), _CONNECTING
        by_fd[slot.fd] = slot
        code = sock.connect_ex((address, port))
        if code not in (0, errno.EINPROGRESS):
            fail(slot, client.ending_of(OSError(code, os.strerror(code)), connecting=True))
            return
        poller.register(slot.fd, select.EPOLLOUT)
        at(slot.began + connect_timeout, slot, _DEADLINE)

    def connected(slot: _Slot) -> None:
        assert slot.sock is not None
        code = slot.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            fail(slot, client.ending_of(OSError(code, os.strerror(code)), connecting=True))
            return
        slot.connected = True
        if time.monotonic() - slot.began >= SYN_RETRY:
            counts["retried"] += 1
        slot.generation += 1                     # the connect's deadline is over; the whole request's begins
        at(slot.began + connect_timeout + request_timeout, slot, _DEADLINE)
        slot.pending, slot.phase = request, _SENDING
        send(slot)

    def send(slot: _Slot) -> None:
        """Send what is left of the request; once it is all sent, read the answer."""
        assert slot.sock is not None
        try:
            sent = slot.sock.send(slot.pending)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as error:
            fail(slot, client.ending_of(error))
            return
        slot.pending = slot.pending[sent:]
        if slot.pending:
            poller.modify(slot.fd, select.EPOLLOUT)
        else:
            slot.phase = _READING
            poller.modify(slot.fd, select.EPOLLIN)

    def readable(slot: _Slot) -> None:
        assert slot.sock is not None
        try:
            chunk = slot.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            fail(slot, client.ending_of(error))
            return
        if slot.phase in (_SENDING, _DELAY):
            counts["early"] += 1                 # the connection broke while the client was not reading
            slot.phase = _READING
        if not chunk:
            slot.response.eof = True
            finish(slot)
            return
        slot.response.feed(chunk)
        if slot.response.by_length:
            slot.response.eof = _closed_already(slot.sock)
            finish(slot)
        elif slot.response.received >= client.READ_LIMIT:
            fail(slot, "limit")
        elif read_delay > 0 and not slot.delayed:
            slot.delayed = True                  # the answer has begun: now take the rest slowly
            slot.phase = _DELAY
            poller.modify(slot.fd, 0)
            at(time.monotonic() + read_delay, slot, _READ)

    def fire(slot: _Slot, what: int) -> None:
        if what == _START:
            waiting.discard(slot.index)
            if time.monotonic() < stop_at:
                start(slot)
        elif what == _READ:
            if slot.phase == _DELAY:
                if rcvbuf and slot.sock is not None:
                    _widen(slot.sock)
                slot.phase = _READING
                poller.modify(slot.fd, select.EPOLLIN)
        elif slot.phase == _CONNECTING:
            fail(slot, "connect-timeout")
        else:
            fail(slot, "timeout")

    # The slots' first requests are spread over the ramp, or over one interval if that is longer: paced
    # clients that all began in the ramp would ask together again at every interval, in bursts.
    spread = max(ramp, interval)
    for slot in slots:
        at(t0 + spread * slot.index / max(1, target), slot, _START)
    try:
        while waiting or by_fd:          # timers of requests that are over are stale: they do not count
            now = time.monotonic()
            if now >= hard_end:
                break
            while timers and timers[0][0] <= now:
                _, _, index, generation, what = heapq.heappop(timers)
                if generation == slots[index].generation:
                    fire(slots[index], what)
            if not (waiting or by_fd):
                break
            wait = min(timers[0][0] - now if timers else 1.0, hard_end - now)
            for fd, events in poller.poll(max(0.0, wait) + _MS if wait > 0 else 0):
                ready = by_fd.get(fd)
                if ready is None:
                    if fd in closing:
                        _await_close(closing, fd)
                    continue
                if ready.phase == _CONNECTING:
                    connected(ready)
                elif ready.phase == _SENDING and events & select.EPOLLOUT:
                    send(ready)
                elif events & (select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP):
                    readable(ready)
            while closing_since and closing_since[0][0] + CLOSE_WAIT <= now:
                _, fd, sock = closing_since.popleft()
                if closing.get(fd) is sock:      # the server did not close it in time: the client does
                    del closing[fd]
                    sock.close()
    finally:
        for sock in closing.values():
            sock.close()
        unfinished = sum(1 for slot in slots if slot.sock is not None and not slot.answered)
        for slot in slots:
            close(slot)
        poller.close()
    ordered = sorted(latencies)
    return {
        "connections_asked": connections, "connections": target, "clamped": target < connections,
        "nofile": limits, "seconds": seconds, "read_delay": read_delay, "interval": interval,
        "requests": counts["started"], "answered": len(ordered), "errors": errors, "client_errors": client_errors,
        "error_examples": examples, "unfinished": unfinished, "syn_retried": counts["retried"],
        "answered_early": counts["early"],
        "wall_seconds": round(max(1e-6, (last_answer if ordered else time.monotonic()) - t0), 6),
        "latencies": [round(value, 6) for value in _thin(ordered, max_latencies)],
        "latencies_thinned": len(ordered) > max_latencies}


def _widen(sock: socket.socket) -> None:
    """Open the receive window wide for the rest of the answer. A window kept at `rcvbuf` would take a
    256 KiB answer in about 90 reads, each of which makes the kernel send a window update (measured: 7 ms
    of the client's CPU per request, the harness then slower than the server it measures). A receive
    buffer set before the connect also clamps the window for the connection's life: the clamp goes too."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, DRAIN_RCVBUF)
        sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, "TCP_WINDOW_CLAMP", 10), DRAIN_RCVBUF)
    except OSError:
        pass


def _await_close(closing: dict[int, socket.socket], fd: int) -> None:
    """An answered connection became readable: the server's close (or bytes past the answer, ignored)."""
    sock = closing[fd]
    try:
        if sock.recv(65536):
            return
    except (BlockingIOError, InterruptedError):
        return
    except OSError:
        pass
    del closing[fd]
    sock.close()


def _closed_already(sock: socket.socket) -> bool:
    """The server's close came with its answer (one look now saves a wake-up per request at full speed)."""
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True


def _problem(response: client.Response) -> str:
    """Why an answer that ended is not whole: the words of client.request_problem."""
    if not response.received:
        return "no-answer"
    return "incomplete-body" if response.head is not None else "incomplete-headers"


def _thin(ordered: list[float], most: int) -> list[float]:
    """At most `most` of these sorted values, evenly spaced by rank (the first and the last kept)."""
    if len(ordered) <= most or most < 2:
        return ordered
    step = (len(ordered) - 1) / (most - 1)
    return [ordered[round(i * step)] for i in range(most)]


COMMANDS = {"load_step": load_step}
