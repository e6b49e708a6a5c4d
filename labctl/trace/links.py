"""Which syscall return each packet caused, and whether the two clocks agree (labctl/trace/timeline.py).

For each packet that reaches the server and can wake it (the ACK that completes a handshake, a
segment of a request, a FIN, a RST): the first return, after the packet's time, of a call a packet
can end (syscalls.NETWORK_WAITS: accept, receive, poll/select/epoll) that concerns its connection:
an accept that returned it, a receive on its descriptor, a poll/select/epoll that named its
descriptor (or the listener, for a handshake) or whose answer names none labctl knows. Its latency
is measured, packet to return; `woke` says whether the call was already waiting when the packet
came (entered before it) and this was the first packet for it since: a wake-up, whose latency is
the kernel waking the thread plus strace noticing (a packet that came while the call was already
waking is `shared`). The SYN itself wakes nobody: the kernel answers it (SYN-ACK) alone, and a connection is
ready for accept only when the handshake's ACK arrives.

A return is strace's entry time plus its duration, a little early when strace was slow to start the
call's stopwatch (strace.py); the latest it can be is its thread's next line (`latest_return`). Some
pairs cannot be in the wrong order (`certain_pairs`): they hold a link whose return strace put before
its packet (its latency is then only bounded), and they check the clocks (`check_clock`).

Descriptors are followed per process from strace's own lines: accept returns a descriptor and the
client's port (the sockaddr strace decodes), close ends it, a fork copies them; threads share them.
"""

from __future__ import annotations

import bisect
import dataclasses
from dataclasses import dataclass

from labctl import syscalls
from labctl.trace import strace
from labctl.trace.packets import WAKING, Packet
from labctl.trace.strace import Call

#: How a link was made, for people.
HOW_WORDS = {"accepted": "returned this connection", "received": "on this connection's descriptor",
             "ready": "named this connection's descriptor ready", "listener": "named the listening socket ready",
             "any": "(its answer names no descriptor labctl knows)"}
#: The families of waiting calls latencies are reported for.
FAMILIES = {"accept": syscalls.ACCEPTS, "receive": syscalls.RECEIVES, "multiplexer": syscalls.MULTIPLEXERS}
#: The most candidate calls looked at for one packet (a bound on hostile traces).
SCAN_LIMIT = 5000


def family(name: str) -> str | None:
    """"accept", "receive" or "multiplexer" for a call a packet can end; None for any other."""
    return next((word for word, names in FAMILIES.items() if name in names), None)


@dataclass(frozen=True)
class Link:
    """A packet that reached the server, and the return of the waiting call that it ended."""

    packet: int                     # Packet.index
    call: int                       # Call.index
    tid: int
    latency: float                  # seconds, the packet's time to the call's return
    woke: bool                      # the call was waiting when the packet came
    how: str                        # a key of HOW_WORDS
    accepted: int | None = None     # a handshake seen by poll/select/epoll: the accept that then took it
    bounded: bool = False           # the latency is the most it can be (see link())
    shared: bool = False            # it came while the call was waking for an earlier packet: the same return


@dataclass(frozen=True)
class ClockCheck:
    """The pairs that cannot be in the wrong order, and how close they came."""

    pairs: int = 0                  # packet before return: handshake -> accept, request -> receive
    closest: float | None = None    # the smallest return - packet: the observer's clock is ahead by less, if at all
    wrong: int = 0
    early: int = 0                  # pairs whose return strace put before the packet (its stopwatch started late)
    sends: int = 0                  # send before packet: sendto's entry -> the response's first segment
    closest_send: float | None = None
    wrong_sends: int = 0

    @property
    def words(self) -> str:
        if not self.pairs and not self.sends:
            return "no pair of packet and syscall to check the clocks with"
        parts = []
        if self.pairs:
            parts.append(f"{self.pairs - self.wrong} of {self.pairs} returns came after the packet that caused them"
                         + (f" (the closest {_us(self.closest)} after)" if self.closest is not None else "")
                         + (f", {self.early} of them only at the latest they can have been (strace's stopwatch "
                            "started late: a busy machine)" if self.early else ""))
        if self.sends:
            parts.append(f"{self.sends - self.wrong_sends} of {self.sends} answers were seen after their send began"
                         + (f" (the closest {_us(self.closest_send)} after)" if self.closest_send is not None else ""))
        return "; ".join(parts)


def _us(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e6:,.0f} µs"


@dataclass(frozen=True)
class Opened:
    """A client connection's descriptor in one process, from its accept's return to its close."""

    pid: int
    fd: int
    port: int
    since: float
    until: float


class Descriptors:
    """Which descriptor of which process was which client connection, and when; the listeners."""

    def __init__(self, opened: list[Opened], listeners: dict[int, set[int]], pid_of: dict[int, int]):
        self.opened = opened
        self.listeners = listeners
        self.pid_of = pid_of

    @classmethod
    def follow(cls, calls: list[Call], pid_of: dict[int, int]) -> Descriptors:
        pid_of = dict(pid_of)
        events: list[tuple[float, int, Call]] = []
        for call in calls:
            if call.name in syscalls.ACCEPTS and call.returned is not None:
                events.append((call.returned, 1, call))
            elif call.name == "close":
                events.append((call.entered, 0, call))
            elif strace.child_of(call) is not None and call.returned is not None:
                events.append((call.returned, 2, call))
        open_: dict[tuple[int, int], tuple[int, float]] = {}
        opened: list[Opened] = []
        listeners: dict[int, set[int]] = {}

        def shut(key: tuple[int, int], at: float) -> None:
            port, since = open_.pop(key)
            opened.append(Opened(key[0], key[1], port, since, at))

        for at, _, call in sorted(events, key=lambda event: (event[0], event[1])):
            pid = pid_of.get(call.tid, call.tid)
            if call.name in syscalls.ACCEPTS:
                if call.fd is not None:
                    listeners.setdefault(pid, set()).add(call.fd)
                port = strace.peer_port(call)
                if port is not None and call.ret is not None:
                    if (pid, call.ret) in open_:
                        shut((pid, call.ret), at)
                    open_[(pid, call.ret)] = (port, at)
            elif call.name == "close":
                if call.fd is not None and (pid, call.fd) in open_:
                    shut((pid, call.fd), at)
            else:
                child = strace.child_of(call)
                if child is None:
                    continue
                tid, thread = child
                pid_of[tid] = pid if thread else tid
                if not thread:  # a new process: its own copy of every descriptor, the listeners too
                    for (owner, fd), (port, _) in list(open_.items()):
                        if owner == pid:
                            open_[(tid, fd)] = (port, at)
                    if pid in listeners:
                        listeners[tid] = set(listeners[pid])
        for key in list(open_):
            shut(key, float("inf"))
        return cls(opened, listeners, pid_of)

    def port_of(self, pid: int, fd: int | None, at: float) -> int | None:
        """The client port of descriptor `fd` of process `pid` at time `at`, or None."""
        if fd is None:
            return None
        return next((item.port for item in self.opened
                     if item.pid == pid and item.fd == fd and item.since <= at <= item.until), None)

    def fd_of(self, pid: int, port: int, at: float) -> int | None:
        """The descriptor process `pid` holds the connection from client port `port` by at `at`, or None."""
        return next((item.fd for item in self.opened
                     if item.pid == pid and item.port == port and item.since <= at <= item.until), None)

    def known(self, pid: int, at: float) -> set[int]:
        """The descriptors of `pid` labctl knows at `at`: its listeners and its open connections."""
        return set(self.listeners.get(pid, set())) | {item.fd for item in self.opened
                                                      if item.pid == pid and item.since <= at <= item.until}

    def held(self, port: int, at: float) -> bool:
        """Does any process hold the connection from `port` at `at`?"""
        return any(item.port == port and item.since <= at <= item.until for item in self.opened)


def certain_pairs(packets: list[Packet], calls: list[Call], descriptors: Descriptors) -> list[tuple[Packet, Call]]:
    """The (packet, call) pairs in which the call cannot have returned before the packet came:
    - a connection's handshake ACK, and the accept that returned that connection;
    - the segment that carried the last byte a receive returned, and that receive (bytes counted by
      their sequence numbers, so that a segment sent again counts once);
    - a poll/select/epoll that named a connection ready although everything that connection had sent
      before it began had been read, and the first segment (or FIN, RST) of it after that beginning;
      the same for a listener ready with no connection waiting to be accepted, and the next handshake.
    The links and the clock check stand on them."""
    handshakes: dict[int, Packet] = {}
    arriving: dict[int, list[Packet]] = {}  # client port -> its segments to the server with bytes, FIN or RST
    for packet in packets:
        if packet.inbound and packet.kind == "handshake":
            handshakes.setdefault(packet.client_port, packet)
        elif packet.inbound and (packet.length or packet.kind in ("fin", "rst")):
            arriving.setdefault(packet.client_port, []).append(packet)
    pairs: list[tuple[Packet, Call]] = []
    accepts: dict[int, Call] = {}
    consumed: dict[int, list[tuple[float, int]]] = {}  # client port -> [(a receive's latest return, bytes by then)]
    ordered = sorted((call for call in calls if call.returned is not None and call.ret is not None and call.ret >= 0),
                     key=lambda call: (call.returned or 0.0, call.index))
    for call in ordered:
        if call.name in syscalls.ACCEPTS:
            port = strace.peer_port(call)
            if port is not None and port in handshakes and port not in accepts:
                accepts[port] = call
                pairs.append((handshakes[port], call))
        elif call.name in syscalls.RECEIVES and (call.ret or 0) > 0:
            port = descriptors.port_of(descriptors.pid_of.get(call.tid, call.tid), call.fd, call.entered)
            if port is None:
                continue
            total = (consumed[port][-1][1] if port in consumed else 0) + (call.ret or 0)
            consumed.setdefault(port, []).append((latest_return(call) or 0.0, total))
            last = next((packet for packet in arriving.get(port, []) if (packet.end or 0) >= total), None)
            if last is not None:
                pairs.append((last, call))
    for call in ordered:
        if call.name not in syscalls.MULTIPLEXERS:
            continue
        pid = descriptors.pid_of.get(call.tid, call.tid)
        ready = (strace.ready_fds(call) or set()) & descriptors.known(pid, call.returned or 0.0)
        for fd in sorted(ready):
            cause = None
            if fd in descriptors.listeners.get(pid, set()):
                waiting = [port for port, packet in handshakes.items() if packet.time < call.entered
                           and not (port in accepts and (latest_return(accepts[port]) or 0.0) <= call.entered)]
                if not waiting:
                    cause = min((packet for packet in handshakes.values() if packet.time >= call.entered),
                                key=lambda packet: packet.time, default=None)
            else:
                port = descriptors.port_of(pid, fd, call.returned or 0.0)
                if port is None:
                    continue
                came = [packet for packet in arriving.get(port, []) if packet.time < call.entered]
                read = max((total for at, total in consumed.get(port, []) if at <= call.entered), default=0)
                if all(packet.length and (packet.end or 0) <= read for packet in came):
                    cause = next((packet for packet in arriving.get(port, []) if packet.time >= call.entered), None)
            if cause is not None and cause.time <= (latest_return(call) or 0.0):
                pairs.append((cause, call))
    return pairs


def latest_return(call: Call) -> float | None:
    """The latest the call can have returned: strace saw it return before its thread's next line."""
    return call.next_seen if call.next_seen is not None else call.returned


def link(packets: list[Packet], calls: list[Call], descriptors: Descriptors) -> list[Link]:
    """Each waking packet to the server -> the first return of a waiting call of its connection after it.

    A return is strace's entry time plus its duration, which comes a little early when strace was slow
    to start the call's stopwatch (a busy machine: see strace.py). When that puts the return of a call
    that cannot have returned before the packet (certain_pairs) before it, the link still holds, and its
    latency is the most it can be: to the thread's next line (`bounded`)."""
    waits = sorted((call for call in calls if call.name in syscalls.NETWORK_WAITS and call.returned is not None),
                   key=lambda call: (call.returned, call.index))
    returns = [call.returned or 0.0 for call in waits]
    accepts = {port: call for call in waits if call.name in syscalls.ACCEPTS
               for port in [strace.peer_port(call)] if port is not None}
    certain: dict[int, Call] = {}
    for packet, call in certain_pairs(packets, calls, descriptors):
        known = certain.get(packet.index)
        if known is None or (latest_return(call) or 0.0) < (latest_return(known) or 0.0):
            certain[packet.index] = call
    links = []
    for packet in packets:
        if not packet.inbound or packet.kind not in WAKING:
            continue
        found: tuple[Call, str] | None = None
        if packet.kind == "handshake" or descriptors.held(packet.client_port, packet.time) or (
                packet.client_port in accepts and (accepts[packet.client_port].returned or 0.0) >= packet.time):
            start = bisect.bisect_left(returns, packet.time)
            for call in waits[start:start + SCAN_LIMIT]:
                how = _concerns(call, packet, descriptors)
                if how is not None:
                    found = (call, how)
                    break
        sure = certain.get(packet.index)
        early = sure is not None and (sure.returned or 0.0) < packet.time <= (latest_return(sure) or 0.0)
        if sure is not None and early and (found is None or (latest_return(sure) or 0.0) <= (found[0].returned or 0.0)):
            found = (sure, _concerns(sure, packet, descriptors, early=True) or "any")
        if found is None:
            continue
        call, how = found
        bounded = call.bounded or (call.returned or 0.0) < packet.time
        returned = (latest_return(call) if (call.returned or 0.0) < packet.time else call.returned) or 0.0
        accepted = None
        if packet.kind == "handshake" and how != "accepted":
            taker = accepts.get(packet.client_port)
            accepted = taker.index if taker is not None else None
        links.append(Link(packet.index, call.index, call.tid, returned - packet.time, woke=call.entered < packet.time,
                          how=how, accepted=accepted, bounded=bounded))
    # One return can answer several packets (an epoll_wait that names four connections): the first packet
    # that came while the call waited woke it; the others came while it was waking, and share its return.
    woken: set[int] = set()
    for index, made in enumerate(links):
        if made.woke:
            if made.call in woken:
                links[index] = dataclasses.replace(made, woke=False, shared=True)
            woken.add(made.call)
    return links


def _concerns(call: Call, packet: Packet, descriptors: Descriptors, early: bool = False) -> str | None:
    """How `call`'s return concerns `packet`'s connection (a key of HOW_WORDS), or None. `early`: the
    call's return as strace put it came before the packet (see link()): looked at from its latest."""
    pid = descriptors.pid_of.get(call.tid, call.tid)
    name, at = call.name, (latest_return(call) if early else call.returned) or call.entered
    if name in syscalls.ACCEPTS:
        return "accepted" if packet.kind == "handshake" and strace.peer_port(call) == packet.client_port else None
    if name in syscalls.RECEIVES:
        if packet.kind == "handshake":
            return None
        return "received" if descriptors.port_of(pid, call.fd, call.entered) == packet.client_port else None
    ready = strace.ready_fds(call)
    if ready is not None:
        known = descriptors.known(pid, at)
        if ready & known:
            if packet.kind == "handshake":
                return "listener" if ready & descriptors.listeners.get(pid, set()) else None
            mine = descriptors.fd_of(pid, packet.client_port, at)
            return "ready" if mine is not None and mine in ready else None
        if ready:
            return "any"  # data words that are not descriptors labctl knows (pointers)
        return None        # a timeout: nothing was ready
    if packet.kind != "handshake" and descriptors.fd_of(pid, packet.client_port, at) is None:
        return None
    return "any"


def check_clock(packets: list[Packet], calls: list[Call], descriptors: Descriptors) -> ClockCheck:
    """Hold the two clocks to the pairs that cannot be in the wrong order (see the module's docstring).

    A return is held at the latest it can be (latest_return), so that a pair in the wrong order is the
    clocks' doing, never strace's slow stopwatch; a send at its entry, the earliest."""
    gaps = [(latest_return(call) or 0.0) - packet.time for packet, call in certain_pairs(packets, calls, descriptors)]
    early = sum(1 for packet, call in certain_pairs(packets, calls, descriptors) if (call.returned or 0.0) < packet.time)
    first_answer: dict[int, Packet] = {}
    for packet in packets:
        if not packet.inbound and packet.kind == "response":
            first_answer.setdefault(packet.client_port, packet)
    send_gaps: list[float] = []
    seen: set[int] = set()
    for call in calls:
        if call.name not in syscalls.SENDS or call.ret is None or call.ret <= 0:
            continue
        port = descriptors.port_of(descriptors.pid_of.get(call.tid, call.tid), call.fd, call.entered)
        reply = first_answer.get(port) if port is not None else None
        if reply is not None and port not in seen:
            seen.add(reply.client_port)
            send_gaps.append(reply.time - call.entered)
    return ClockCheck(pairs=len(gaps), closest=min(gaps) if gaps else None, wrong=sum(gap < 0 for gap in gaps),
                      early=early, sends=len(send_gaps), closest_send=min(send_gaps) if send_gaps else None,
                      wrong_sends=sum(gap < 0 for gap in send_gaps))
