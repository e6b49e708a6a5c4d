"""The harness's one HTTP client: resolve, connect, send, read an answer, say how it ended.

Every harness command that talks to the server goes through here: http_sequence's exchanges,
the timed requests of the concurrency commands, hold_connections' probe. One reader of answers
(Response), one way to say how a connection ended (wire.Ending), one bound on every wait: each
function takes a timeout or a deadline and never blocks past it (name resolution included: the
engine's DNS answers slowly for the name of a container that has exited).

Stdlib only; runs inside the client and injector containers.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import select
import socket
import threading
import time

from .wire import Ending, Exchange, TimedRequest

#: Never wait less than this on one socket operation (a deadline in the past is not a reason to hang).
MIN_WAIT = 0.05
#: Bytes of an answer's head kept, and looked through for its blank line: a server that sends more
#: without one never ends its head.
HEAD_LIMIT = 64 * 1024
#: Bytes of an answer's head reported (its start is what a student needs to see).
HEAD_SHOWN = 16 * 1024
#: An answer is read at most this far (a runaway server); the rest is not waited for.
READ_LIMIT = 256 * 1024 * 1024
#: Seconds of silence after the first bytes that end an answer of a server that keeps the connection
#: open (another protocol than HTTP/1.0): a probe reads to there, never closing on a server that is
#: still writing (one that does not ignore SIGPIPE would die of it).
QUIET = 0.25


def error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def ending_of(error: BaseException, connecting: bool = False) -> Ending:
    """How a socket error ended a connection, in one word of wire.Ending."""
    if isinstance(error, (socket.timeout, TimeoutError)):
        return "connect-timeout" if connecting else "timeout"
    if isinstance(error, socket.gaierror):
        return "unresolved"
    if isinstance(error, ConnectionRefusedError):
        return "refused"
    if isinstance(error, ConnectionResetError):
        return "reset"
    if isinstance(error, BrokenPipeError):
        return "broken-pipe"
    if connecting and isinstance(error, OSError) and error.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH,
                                                                      errno.ENETDOWN, errno.EHOSTDOWN):
        return "unreachable"
    return "error"


def resolve(host: str, timeout: float) -> tuple[str | None, str | None]:
    """(address, None) or (None, why): getaddrinfo bounded in time (it has no timeout of its own)."""
    found: dict = {}

    def lookup() -> None:
        try:
            found["address"] = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
        except OSError as error:
            found["error"] = error_text(error)

    worker = threading.Thread(target=lookup, daemon=True)
    worker.start()
    worker.join(max(MIN_WAIT, timeout))
    if "address" in found:
        return found["address"], None
    return None, found.get("error", f"resolving {host!r} took longer than {timeout:g} s")


def connect(address: str, port: int, timeout: float, facts: Exchange) -> socket.socket | None:
    """A connected socket, or None with facts["end"] saying why (and the error's text)."""
    started = time.monotonic()
    try:
        sock = socket.create_connection((address, port), timeout=max(MIN_WAIT, timeout))
    except OSError as error:
        facts["connected"], facts["connect_error"] = False, error_text(error)
        facts["end"] = ending_of(error, connecting=True)
        facts["connect_seconds"] = round(time.monotonic() - started, 6)
        return None
    facts["connected"], facts["connect_seconds"] = True, round(time.monotonic() - started, 6)
    return sock


def content_length(head: bytes) -> int | None:
    """The Content-Length of an answer's head, or None (absent, given twice differently, invalid)."""
    values = set()
    for line in head.split(b"\r\n")[1:]:
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() == b"content-length":
            values.add(value.strip())
    if len(values) != 1:
        return None
    value = values.pop()
    return int(value) if value.isascii() and value.isdigit() else None  # not "²": isdigit() alone says yes


class Response:
    """An answer as it comes in: its head (up to the blank line), then a counted, hashed body of
    which the first `max_body` bytes are kept."""

    def __init__(self, max_body: int = 0):
        self.max_body = max_body
        self.buffer = b""               # until the head is complete
        self.head: bytes | None = None
        self.body = bytearray()
        self.body_bytes = 0
        self.received = 0
        self.eof = False
        self.sha = hashlib.sha256()
        self.length: int | None = None  # the head's Content-Length

    def feed(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if self.head is None:
            if len(self.buffer) >= HEAD_LIMIT:
                return                  # a head that never ends: counted, not kept
            self.buffer += chunk
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            self.head, chunk = self.buffer[:end + 4], self.buffer[end + 4:]
            self.buffer = b""
            self.length = content_length(self.head)
        self.body_bytes += len(chunk)
        self.sha.update(chunk)
        room = self.max_body - len(self.body)
        if room > 0:
            self.body += chunk[:room]

    @property
    def by_length(self) -> bool:
        """The head came and the body is as long as its Content-Length says."""
        return self.head is not None and self.length is not None and self.body_bytes >= self.length

    @property
    def complete(self) -> bool:
        """A head, and the whole body: by Content-Length, or (without one) up to the server's close."""
        return self.by_length or (self.head is not None and self.length is None and self.eof)

    def status(self) -> tuple[int | None, str | None]:
        """(status code, status line) of the answer so far."""
        text = (self.head if self.head is not None else self.buffer).split(b"\r\n", 1)[0]
        line = text[:200].decode("latin-1") or None
        parts = text.split()
        code = int(parts[1]) if (self.head is not None and len(parts) >= 2 and parts[0].startswith(b"HTTP/")
                                 and parts[1].isascii() and parts[1].isdigit()) else None
        return code, line

    def facts(self) -> Exchange:
        head, complete = (self.head, True) if self.head is not None else (self.buffer, False)
        code, line = self.status()
        return {"head": head[:HEAD_SHOWN].decode("latin-1"), "head_complete": complete, "head_bytes": len(head),
                "received": self.received, "status": code, "status_line": line, "content_length": self.length,
                "body_bytes": self.body_bytes, "body_sha256": self.sha.hexdigest() if complete else None,
                "body": base64.b64encode(bytes(self.body)).decode(), "body_truncated": self.body_bytes > len(self.body),
                "complete": self.complete}


def read_answer(sock: socket.socket, response: Response, deadline: float, started: float, facts: Exchange,
                quiet: float | None = None) -> None:
    """Read until the server closes, the whole body (by Content-Length) came, the deadline, an error,
    or (with `quiet`) that many seconds of silence after the first bytes; facts["end"] says which."""
    end: Ending = "timeout"
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        wait = left if quiet is None or not response.received else min(left, quiet)
        sock.settimeout(max(0.01, wait))
        try:
            chunk = sock.recv(65536)
        except OSError as error:
            end = ending_of(error)
            if end != "timeout":
                facts["read_error"] = error_text(error)
            break
        if chunk and facts.get("first_byte_seconds") is None:
            facts["first_byte_seconds"] = round(time.monotonic() - started, 6)
        if not chunk:
            response.eof = True
            end = "closed"
            break
        response.feed(chunk)
        if response.by_length:
            end = "content-length"
            break
        if response.received >= READ_LIMIT:
            end = "limit"
            break
    facts["end"] = end


def exchange(address: str, port: int, data: bytes, timeout: float, max_body: int = 1 << 20,
             pieces: list[bytes] | None = None, delay: float = 0.0, nodelay: bool = False,
             shutdown_write: bool = False, quiet: float | None = None) -> Exchange:
    """Connect, send `data` (or `pieces` of it with `delay` s between them, noticing an answer that comes
    before the last one), read the answer; all within `timeout` seconds."""
    started = time.monotonic()
    deadline = started + max(MIN_WAIT, timeout)
    facts: Exchange = {"request_bytes": len(data), "sent": 0, "segments": 0, "first_byte_seconds": None}
    sock = connect(address, port, timeout, facts)
    if sock is None:
        facts["seconds"] = round(time.monotonic() - started, 6)
        return facts
    response = Response(max_body)
    with sock:
        if nodelay:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _send(sock, pieces if pieces is not None else [data] if data else [], delay, deadline, facts)
        if shutdown_write and facts["sent"] == len(data):
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        read_answer(sock, response, deadline, started, facts, quiet)
    facts.update(response.facts())
    facts["seconds"] = round(time.monotonic() - started, 6)
    return facts


def _send(sock: socket.socket, pieces: list[bytes], delay: float, deadline: float, facts: Exchange) -> None:
    facts["planned_segments"] = len(pieces)
    began = time.monotonic()
    for index, piece in enumerate(pieces):
        if time.monotonic() >= deadline:
            facts["send_error"] = "the time budget ran out while sending"
            break
        if index:
            # Did the server answer (or close) before it had the whole request?
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                facts["answered_early"] = True
                break
            time.sleep(delay)
        try:
            sock.settimeout(max(MIN_WAIT, deadline - time.monotonic()))
            sock.sendall(piece)
        except OSError as error:
            facts["send_error"] = error_text(error)
            break
        facts["sent"] = facts.get("sent", 0) + len(piece)
        facts["segments"] = facts.get("segments", 0) + 1
    facts["send_seconds"] = round(time.monotonic() - began, 6)


def get_request(path: str, host: str) -> bytes:
    return f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode()


def timed_request(address: str, port: int, path: str = "/index.html", timeout: float = 5.0,
                  connect_timeout: float | None = None, max_body: int = 0) -> TimedRequest:
    """One whole HTTP/1.0 GET on a fresh connection, timed.

    `seconds` is the time from the start of connect until the whole answer arrived, None unless it
    was a whole 200 answer (`error` then says what it was instead: an Ending or a wire.Problem);
    `connect_seconds` and `first_byte_seconds` tell where the time went. A connect succeeds through
    the listen backlog even when the server is busy, so the answer's time is what shows a server
    that is not serving.

    Without `connect_timeout` the whole request has `timeout` seconds. With it, the whole request
    has `connect_timeout + timeout` seconds, however they are spent: when a listen queue overflows,
    the kernel sends a SYN again after 1, 3, 7 s, and a connect that the client saw complete may
    still wait on the server's side for its SYN-ACK to be sent again before the request is read.
    Slow, not wrong.
    """
    limit = timeout + (connect_timeout or 0)
    facts: TimedRequest = {"path": path, "timeout": timeout, **exchange(address, port, get_request(path, address),
                                                                         limit, max_body=max_body)}
    facts["elapsed"] = facts.pop("seconds") or 0.0
    facts["error"] = request_problem(facts)
    facts["seconds"] = facts["elapsed"] if facts["error"] is None else None
    return facts


def request_problem(facts: Exchange) -> str | None:
    """Why an exchange is not a whole 200 answer, as an Ending or a wire.Problem; None when it is."""
    end = facts.get("end")
    if not facts.get("connected"):
        return end or "error"
    if facts.get("complete"):
        return None if facts.get("status") == 200 else "bad-status"
    if end in ("timeout", "reset", "broken-pipe", "error", "limit"):
        return end
    if not facts.get("received"):
        return "no-answer"
    return "incomplete-body" if facts.get("head_complete") else "incomplete-headers"
