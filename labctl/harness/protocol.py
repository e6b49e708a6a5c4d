"""Harness commands: HTTP exchanges as a client sees them (plain, trickled, malformed, reset).

Runs inside the client/injector container: stdlib only (the SYN flood, which needs scapy,
lives in raw.py and is imported only when used). Every command returns facts; the host
decides what they mean. Every socket has a timeout and every loop is bounded in count and
in time by the command's `budget` (seconds).

Bytes travel as base64 (`data`); answers come back as wire.Exchange facts (harness/client.py):
  head   the bytes up to and including the blank line ending the headers (latin-1 text),
         or everything received when no blank line came (capped);
  body   base64 of the first `max_body` bytes after the head, its full length and sha256;
  end    how the connection ended, one word of wire.Ending.
"""

from __future__ import annotations

import base64
import random
import select
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

from . import client
from .wire import Exchange, HttpSequence, Step, TcpPortStats


def _segments(data: bytes, segment_min: int, segment_max: int, seed: int) -> list[bytes]:
    """`data` cut in pieces of segment_min..segment_max bytes (a seeded draw); whole without segment_max."""
    if segment_max <= 0:
        return [data] if data else []
    rng = random.Random(seed)
    pieces, at = [], 0
    while at < len(data):
        size = rng.randint(max(1, segment_min), max(1, segment_min, segment_max))
        pieces.append(data[at:at + size])
        at += size
    return pieces


def exchange(host: str, port: int, data: bytes, timeout: float, max_body: int = 1 << 20,
             segment_min: int = 0, segment_max: int = 0, delay: float = 0.0, seed: int = 1,
             nodelay: bool = False, shutdown_write: bool = False) -> Exchange:
    """Connect, send `data` (whole, or in segments of segment_min..segment_max bytes with `delay`
    between them), read the response until the server closes (or Content-Length is reached)."""
    pieces = _segments(data, segment_min, segment_max, seed)
    facts = client.exchange(host, port, data, timeout, max_body=max_body, pieces=pieces,
                            delay=delay if segment_max else 0.0, nodelay=nodelay, shutdown_write=shutdown_write)
    facts["action"] = "exchange"
    return facts


def reset(host: str, port: int, data: bytes, timeout: float, pause: float = 0.05) -> Exchange:
    """Connect, send part of a request, wait `pause`, then close with SO_LINGER 0 (the kernel sends RST)."""
    started = time.monotonic()
    facts: Exchange = {"action": "reset", "sent": 0}
    sock = client.connect(host, port, timeout, facts)
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
        facts["send_error"] = client.error_text(error)
    finally:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    facts["seconds"] = round(time.monotonic() - started, 4)
    return facts


def http_sequence(host: str, port: int, steps: list[Step], budget: float = 10.0,
                  stop_after_connect_failure: bool = True) -> HttpSequence:
    """Run `steps` in order, each one connection; the whole sequence stays within `budget` s.

    A step: {"name", "action": "exchange"|"reset", "data": base64, "timeout": s, "pause_after": s,
    "always": run it even after a connect failure; for exchange: "max_body", "segment_min",
    "segment_max", "delay", "seed", "nodelay"; for reset: "pause"}.
    Steps that the budget leaves no time for, or that follow a failed connect (a server that has
    gone makes every connect wait its whole timeout), are reported as skipped, with the reason.
    """
    started = time.monotonic()
    deadline = started + max(0.1, budget)
    results: list[Exchange] = []
    # Resolve once: every step goes to the same address, and a dead server's name cannot eat the budget.
    address, problem = client.resolve(host, min(5.0, max(0.1, budget / 2)))
    if address is None:
        return {"resolve_error": problem or "", "steps": [{"name": step.get("name", f"step{i + 1}"), "connected": False,
                                                     "action": step.get("action", "exchange"),
                                                     "connect_error": f"cannot resolve {host!r}: {problem}",
                                                     "end": "unresolved"}
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
    table = dict(zip(lines[0][1:], lines[1][1:], strict=False))
    return {name: int(table[name]) for name in _COUNTERS if name in table}


def tcp_port_stats(port: int, pid: int = 1) -> TcpPortStats:
    """The TCP sockets of `port` in the network namespace of process `pid`, by state, and the
    SYN-queue / SYN-cookie counters of that namespace (/proc/<pid>/net/{tcp,tcp6,netstat}).

    For a LISTEN socket, /proc/net/tcp's rx_queue is the accept queue length.
    """
    facts: TcpPortStats = {"pid": pid, "port": port}
    states: dict[str, int] = {}
    accept_queue = None
    seen = False
    for name in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{name}") as file:
                lines = file.read().splitlines()[1:200001]
        except OSError as error:
            if name == "tcp":
                facts["tcp_error"] = client.error_text(error)
            else:
                facts["tcp6_error"] = client.error_text(error)
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
    facts["readable"], facts["states"], facts["accept_queue"] = seen, states, accept_queue
    try:
        with open(f"/proc/{pid}/net/netstat") as file:
            facts["counters"] = _netstat_counters(file.read())
    except OSError as error:
        facts["netstat_error"] = client.error_text(error)
    return facts


def _syn_flood(**params) -> dict:
    from harness import raw  # scapy is imported only when a flood is asked for

    return raw.syn_flood(**params)


def _syn_flood_cleanup(**params) -> dict:
    from harness import raw

    return raw.syn_flood_cleanup(**params)


COMMANDS: dict[str, Callable[..., Any]] = {
    "http_sequence": http_sequence,
    "tcp_port_stats": tcp_port_stats,
    "syn_flood": _syn_flood,
    "syn_flood_cleanup": _syn_flood_cleanup,
}
