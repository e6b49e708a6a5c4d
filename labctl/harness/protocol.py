"""Harness commands: HTTP exchanges as a client sees them (plain, trickled, malformed, reset).

Runs inside the client/injector container: stdlib only (the SYN flood, which needs scapy,
lives in raw.py and is imported only when used). Every command returns facts; the host
decides what they mean. Every socket has a timeout and every loop is bounded in count and
in time by the command's `budget` (seconds).

Bytes travel as base64 (`data`), responses come back as:
  head   the bytes up to and including the blank line ending the headers (latin-1 text),
         or everything received when no blank line came (capped);
  body   base64 of the first `max_body` bytes after the head, its full length and sha256.
"""

from __future__ import annotations

import base64
import hashlib
import random
import select
import socket
import struct
import threading
import time
from typing import Callable

HEAD_LIMIT = 16 * 1024          # bytes of response head kept
READ_LIMIT = 256 * 1024 * 1024  # a response is read at most this far (a runaway server)


def _error(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _content_length(head: bytes) -> int | None:
    """The Content-Length of a response head, or None (absent, repeated differently, invalid)."""
    values = set()
    for line in head.split(b"\r\n")[1:]:
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() == b"content-length":
            values.add(value.strip())
    if len(values) != 1:
        return None
    value = values.pop()
    return int(value) if value.isascii() and value.isdigit() else None  # not "²": isdigit() alone says yes


class _Reader:
    """Accumulates a response: head, then a hashed and (up to max_body) kept body."""

    def __init__(self, max_body: int):
        self.max_body = max_body
        self.buffer = b""            # until the head is complete
        self.head: bytes | None = None
        self.body = bytearray()
        self.body_bytes = 0
        self.sha = hashlib.sha256()
        self.received = 0

    def feed(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if self.head is None:
            self.buffer += chunk
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            self.head, chunk = self.buffer[:end + 4], self.buffer[end + 4:]
            self.buffer = b""
        self.body_bytes += len(chunk)
        self.sha.update(chunk)
        room = self.max_body - len(self.body)
        if room > 0:
            self.body += chunk[:room]

    def complete_by_length(self) -> bool:
        if self.head is None:
            return False
        length = _content_length(self.head)
        return length is not None and self.body_bytes >= length

    def facts(self) -> dict:
        if self.head is None:   # no blank line: whatever came is reported as the head
            head, complete = self.buffer, False
        else:
            head, complete = self.head, True
        return {"head": head[:HEAD_LIMIT].decode("latin-1"), "head_complete": complete,
                "head_bytes": len(head), "received": self.received, "body_bytes": self.body_bytes,
                "body_sha256": self.sha.hexdigest() if complete else None,
                "body": base64.b64encode(bytes(self.body)).decode(),
                "body_truncated": self.body_bytes > len(self.body)}


def _read_response(sock: socket.socket, reader: _Reader, deadline: float, started: float, facts: dict) -> None:
    """Read until the server closes, Content-Length bytes of body came, the deadline, or an error."""
    end = "timeout"
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            break
        except ConnectionResetError as error:
            end, facts["read_error"] = "reset", _error(error)
            break
        except OSError as error:
            end, facts["read_error"] = "error", _error(error)
            break
        if facts.get("first_byte_seconds") is None and chunk:
            facts["first_byte_seconds"] = round(time.monotonic() - started, 4)
        if not chunk:
            end = "closed"
            break
        reader.feed(chunk)
        if reader.complete_by_length():
            end = "content-length"
            break
        if reader.received >= READ_LIMIT:
            end = "limit"
            break
    facts["end"] = end


def _segments(data: bytes, segment_min: int, segment_max: int, seed: int) -> list[bytes]:
    if segment_max <= 0:
        return [data] if data else []
    rng = random.Random(seed)
    pieces, at = [], 0
    while at < len(data):
        size = rng.randint(max(1, segment_min), max(1, segment_min, segment_max))
        pieces.append(data[at:at + size])
        at += size
    return pieces


def _connect(host: str, port: int, timeout: float, facts: dict) -> socket.socket | None:
    started = time.monotonic()
    try:
        sock = socket.create_connection((host, port), timeout=max(0.05, timeout))
    except socket.timeout as error:
        facts.update(connected=False, connect_error=f"timeout: {error}")
    except OSError as error:
        facts.update(connected=False, connect_error=_error(error))
    else:
        facts.update(connected=True, connect_seconds=round(time.monotonic() - started, 4))
        return sock
    facts["connect_seconds"] = round(time.monotonic() - started, 4)
    return None


def exchange(host: str, port: int, data: bytes, timeout: float, max_body: int = 1 << 20,
             segment_min: int = 0, segment_max: int = 0, delay: float = 0.0, seed: int = 1,
             nodelay: bool = False, shutdown_write: bool = False) -> dict:
    """Connect, send `data` (whole, or in segments of segment_min..segment_max bytes with `delay`
    between them), read the response until the server closes (or Content-Length is reached)."""
    started = time.monotonic()
    deadline = started + max(0.05, timeout)
    facts: dict = {"action": "exchange", "request_bytes": len(data), "sent": 0, "segments": 0,
                   "first_byte_seconds": None}
    sock = _connect(host, port, timeout, facts)
    if sock is None:
        facts["seconds"] = round(time.monotonic() - started, 4)
        return facts
    reader = _Reader(max_body)
    with sock:
        if nodelay:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pieces = _segments(data, segment_min, segment_max, seed)
        facts["planned_segments"] = len(pieces)
        send_started = time.monotonic()
        for index, piece in enumerate(pieces):
            if time.monotonic() >= deadline:
                facts["send_error"] = "the time budget ran out while sending"
                break
            if index and segment_max:
                # Did the server answer (or close) before it had the whole request?
                readable, _, _ = select.select([sock], [], [], 0)
                if readable:
                    facts["answered_early"] = True
                    break
                time.sleep(delay)
            try:
                sock.settimeout(max(0.05, deadline - time.monotonic()))
                sock.sendall(piece)
            except OSError as error:
                facts["send_error"] = _error(error)
                break
            facts["sent"] += len(piece)
            facts["segments"] += 1
        facts["send_seconds"] = round(time.monotonic() - send_started, 4)
        if shutdown_write and facts["sent"] == len(data):
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        _read_response(sock, reader, deadline, started, facts)
    facts.update(reader.facts())
    facts["seconds"] = round(time.monotonic() - started, 4)
    return facts


def reset(host: str, port: int, data: bytes, timeout: float, pause: float = 0.05) -> dict:
    """Connect, send part of a request, wait `pause`, then close with SO_LINGER 0 (the kernel sends RST)."""
    started = time.monotonic()
    facts: dict = {"action": "reset", "sent": 0}
    sock = _connect(host, port, timeout, facts)
    if sock is None:
        facts["seconds"] = round(time.monotonic() - started, 4)
        return facts
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(data)
        facts["sent"] = len(data)
        time.sleep(max(0.0, min(pause, timeout)))
        # Did the server say anything before the reset? (it should still be waiting for the rest)
        readable, _, _ = select.select([sock], [], [], 0)
        facts["server_spoke_first"] = bool(readable)
    except OSError as error:
        facts["send_error"] = _error(error)
    finally:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    facts["seconds"] = round(time.monotonic() - started, 4)
    return facts


def resolve(host: str, timeout: float) -> tuple[str | None, str | None]:
    """(address, None) or (None, why): getaddrinfo bounded in time (it has no timeout of its own, and
    the engine's DNS answers slowly for the name of a container that has exited)."""
    found: dict = {}

    def lookup() -> None:
        try:
            found["address"] = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
        except OSError as error:
            found["error"] = _error(error)

    worker = threading.Thread(target=lookup, daemon=True)
    worker.start()
    worker.join(max(0.05, timeout))
    if "address" in found:
        return found["address"], None
    return None, found.get("error", f"resolving {host!r} took longer than {timeout:g} s")


def http_sequence(host: str, port: int, steps: list[dict], budget: float = 10.0,
                  stop_after_connect_failure: bool = True) -> dict:
    """Run `steps` in order, each one connection; the whole sequence stays within `budget` s.

    A step: {"name", "action": "exchange"|"reset", "data": base64, "timeout": s, "pause_after": s,
    "always": run it even after a connect failure; for exchange: "max_body", "segment_min",
    "segment_max", "delay", "seed", "nodelay"; for reset: "pause"}.
    Steps that the budget leaves no time for, or that follow a failed connect (a server that has
    gone makes every connect wait its whole timeout), are reported as skipped, with the reason.
    """
    started = time.monotonic()
    deadline = started + max(0.1, budget)
    results = []
    # Resolve once: every step goes to the same address, and a dead server's name cannot eat the budget.
    address, problem = resolve(host, min(5.0, max(0.1, budget / 2)))
    if address is None:
        return {"resolve_error": problem, "steps": [{"name": step.get("name", f"step{i + 1}"), "connected": False,
                                                     "action": step.get("action", "exchange"),
                                                     "connect_error": f"cannot resolve {host!r}: {problem}"}
                                                    for i, step in enumerate(steps[:1000])],
                "seconds": round(time.monotonic() - started, 4)}
    connect_failed = False
    for step in steps[:1000]:
        name = step.get("name", f"step{len(results) + 1}")
        left = deadline - time.monotonic()
        skip = None
        if left <= 0.05:
            skip = "the time budget ran out"
        elif connect_failed and stop_after_connect_failure and not step.get("always"):
            skip = "an earlier connection to the server failed"
        if skip:
            results.append({"name": name, "action": step.get("action", "exchange"), "skipped": True,
                            "skip_reason": skip})
            continue
        timeout = min(float(step.get("timeout", 5.0)), left)
        data = base64.b64decode(step.get("data", ""))
        if step.get("action", "exchange") == "reset":
            facts = reset(address, port, data, timeout, pause=float(step.get("pause", 0.05)))
        else:
            facts = exchange(address, port, data, timeout, max_body=int(step.get("max_body", 1 << 20)),
                             segment_min=int(step.get("segment_min", 0)), segment_max=int(step.get("segment_max", 0)),
                             delay=float(step.get("delay", 0.0)), seed=int(step.get("seed", 1)),
                             nodelay=bool(step.get("nodelay", False)))
        facts["name"] = name
        results.append(facts)
        connect_failed = connect_failed or not facts.get("connected")
        pause = min(float(step.get("pause_after", 0.0)), max(0.0, deadline - time.monotonic()))
        if pause > 0:
            time.sleep(pause)
    return {"address": address, "steps": results, "seconds": round(time.monotonic() - started, 4)}


# -- the server's TCP state, read from the observer (it shares the server's PID namespace) ---------

_TCP_STATES = {"01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1", "05": "FIN_WAIT2",
               "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT", "09": "LAST_ACK", "0A": "LISTEN",
               "0B": "CLOSING"}
_COUNTERS = ("SyncookiesSent", "SyncookiesRecv", "SyncookiesFailed", "ListenOverflows", "ListenDrops",
             "TCPReqQFullDoCookies", "TCPReqQFullDrop")


def _netstat_counters(text: str) -> dict[str, int]:
    lines = [line.split() for line in text.splitlines() if line.startswith("TcpExt:")]
    if len(lines) < 2:
        return {}
    table = dict(zip(lines[0][1:], lines[1][1:]))
    return {name: int(table[name]) for name in _COUNTERS if name in table}


def tcp_port_stats(port: int, pid: int = 1) -> dict:
    """The TCP sockets of `port` in the network namespace of process `pid`, by state, and the
    SYN-queue / SYN-cookie counters of that namespace (/proc/<pid>/net/{tcp,tcp6,netstat}).

    For a LISTEN socket, /proc/net/tcp's rx_queue is the accept queue length.
    """
    facts: dict = {"pid": pid, "port": port}
    states: dict[str, int] = {}
    accept_queue = None
    seen = False
    for name in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{name}") as file:
                lines = file.read().splitlines()[1:200001]
        except OSError as error:
            facts[f"{name}_error"] = _error(error)
            continue
        seen = True
        for line in lines:
            fields = line.split()
            if len(fields) < 5 or ":" not in fields[1]:
                continue
            if int(fields[1].rsplit(":", 1)[1], 16) != port:
                continue
            state = _TCP_STATES.get(fields[3], fields[3])
            states[state] = states.get(state, 0) + 1
            if state == "LISTEN":
                accept_queue = int(fields[4].split(":")[1], 16)
    facts.update(readable=seen, states=states, accept_queue=accept_queue)
    try:
        with open(f"/proc/{pid}/net/netstat") as file:
            facts["counters"] = _netstat_counters(file.read())
    except OSError as error:
        facts["netstat_error"] = _error(error)
    return facts


def _syn_flood(**params) -> dict:
    from harness import raw  # scapy is imported only when a flood is asked for

    return raw.syn_flood(**params)


def _syn_flood_cleanup(**params) -> dict:
    from harness import raw

    return raw.syn_flood_cleanup(**params)


COMMANDS: dict[str, Callable[..., dict]] = {
    "http_sequence": http_sequence,
    "tcp_port_stats": tcp_port_stats,
    "syn_flood": _syn_flood,
    "syn_flood_cleanup": _syn_flood_cleanup,
}
