"""One timeline: the server's threads (strace) and the client's packets (capture) on one clock, linked.

Both halves carry the wall-clock time (CLOCK_REALTIME) of the engine's host: strace -ttt reads it in
the observer, the capture takes the kernel's timestamp of each packet in the client, and both
containers run on that host's one kernel. So a packet and a syscall compare as they are. The
clocks are not trusted blindly: links.check_clock holds them to the pairs that cannot be in the
wrong order (an accept never returns a connection before its handshake's ACK came; a receive never
returns bytes before the segment that carried them; a packet the server sends is never seen before
its send began) and says by how much they could disagree, at most; the client's warm-up proves its
capture's stamps are the kernel's (harness/scenarios.py).

`build` makes the Timeline of one recording: the lanes (one per server thread: there when the
trace began, or born of a clone), the calls from the scenario's start on, the packets
(packets.py), the links and the clock check (links.py), and notes on whatever was cut or doubtful.
`Timeline.to_json` is the documented shape (labctl/schemas/trace.schema.json).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from labctl import syscalls
from labctl.harness.wire import ScenarioRun, StraceRun
from labctl.trace import links, strace
from labctl.trace.links import ClockCheck, Descriptors, Link, family, latest_return
from labctl.trace.packets import Packet, classify_packets
from labctl.trace.strace import Call
from labctl.untrusted import printable

#: The version of the JSON shape (Timeline.to_json; labctl/schemas/trace.schema.json).
JSON_VERSION = 1
#: strace's message when it cannot signal a tracee it lets go of (the observer has no CAP_KILL): harmless.
_HARMLESS = ("strace: detach: tkill(",)


@dataclass
class Lane:
    """One server thread over the trace."""

    tid: int
    pid: int                        # its process
    comm: str                       # the server's name for it: escape to show
    existed: bool                   # there when the trace began
    born: float | None = None       # when the call that made it returned
    parent: int | None = None
    ended: float | None = None
    how_ended: str | None = None
    calls: list[int] = field(default_factory=list)

    @property
    def label(self) -> str:
        main = ", main" if self.tid == self.pid else ""
        return f"thread {self.tid} ({printable(self.comm)[:15]}{main})"


@dataclass(frozen=True)
class Stats:
    """Latencies of one family of waiting call, in seconds: measured ones only (`bounded` more were only
    bounded from above, see link())."""

    count: int
    median: float
    maximum: float
    minimum: float
    bounded: int = 0

    @classmethod
    def of(cls, values: list[float], bounded: int = 0) -> Stats | None:
        if not values:
            return None
        return cls(len(values), statistics.median(values), max(values), min(values), bounded)


@dataclass
class Timeline:
    scenario: str
    server: str
    port: int
    client: str | None
    began: float                    # every thread held by strace from here (wall clock)
    ended: float
    lanes: list[Lane]
    calls: list[Call]
    packets: list[Packet]
    links: list[Link]
    signals: list[strace.Signal]
    exits: list[strace.Exit]
    clock: ClockCheck
    notes: list[str]

    def lane(self, tid: int) -> Lane | None:
        return next((lane for lane in self.lanes if lane.tid == tid), None)

    @property
    def wake_ups(self) -> list[Link]:
        return [link for link in self.links if link.woke]

    def latencies(self, woke_only: bool = True) -> dict[str, Stats]:
        """Per family of waiting call (FAMILIES), the measured latencies of its links (wake-ups only by
        default); links whose latency is only bounded are counted, not measured."""
        found: dict[str, list[float]] = {}
        bounded: dict[str, int] = {}
        for link in self.links:
            if link.woke or not woke_only:
                name = family(self.calls[link.call].name) or "other"
                if link.bounded:
                    bounded[name] = bounded.get(name, 0) + 1
                else:
                    found.setdefault(name, []).append(link.latency)
        return {name: stats for name, values in found.items()
                if (stats := Stats.of(values, bounded.get(name, 0))) is not None}

    def to_json(self) -> dict[str, Any]:
        """The documented shape (labctl/schemas/trace.schema.json, README "Seeing a server wake up"): times in seconds
        since `began` (itself the wall clock's), latencies in microseconds, the server's strings escaped."""
        def t(value: float | None) -> float | None:
            return None if value is None else round(value - self.began, 6)

        return {
            "labctl_trace": JSON_VERSION,
            "scenario": self.scenario,
            "server": {"address": self.server, "port": self.port},
            "client": self.client,
            "began": round(self.began, 6),
            "ended": t(self.ended),
            "threads": [{
                "tid": lane.tid, "pid": lane.pid, "comm": printable(lane.comm), "existed": lane.existed,
                "born": t(lane.born), "parent": lane.parent, "ended": t(lane.ended),
                "how_ended": lane.how_ended,
                "calls": [{"index": call.index, "syscall": call.name, "entered": t(call.entered),
                           "returned": t(call.returned), "latest_return": t(latest_return(call)),
                           "running_at_end": call.running_at_end, "fd": call.fd, "result": printable(call.result),
                           "waits_for_network": call.name in syscalls.NETWORK_WAITS, "args": printable(call.args)}
                          for call in (self.calls[index] for index in lane.calls)],
            } for lane in self.lanes],
            "packets": [{"index": packet.index, "time": t(packet.time),
                         "direction": "to-server" if packet.inbound else "from-server",
                         "client_port": packet.client_port, "flags": packet.flags, "kind": packet.kind,
                         "length": packet.length, "seq": packet.seq, "ack": packet.ack,
                         "payload": printable(packet.payload)} for packet in self.packets],
            "links": [{"packet": link.packet, "packet_kind": self.packets[link.packet].kind,
                       "packet_time": t(self.packets[link.packet].time),
                       "client_port": self.packets[link.packet].client_port,
                       "thread": link.tid, "call": link.call, "syscall": self.calls[link.call].name,
                       "returned": t(self.calls[link.call].returned), "latency_us": round(link.latency * 1e6, 1),
                       "woke": link.woke, "shared": link.shared, "how": link.how, "bounded": link.bounded,
                       "accepted_by": link.accepted}
                      for link in self.links],
            "wake_up_latency_us": {name: {"count": stats.count, "median": round(stats.median * 1e6, 1),
                                          "max": round(stats.maximum * 1e6, 1), "min": round(stats.minimum * 1e6, 1),
                                          "bounded": stats.bounded}
                                   for name, stats in self.latencies().items()},
            "clock_check": {"pairs": self.clock.pairs, "wrong_order": self.clock.wrong, "early": self.clock.early,
                            "closest_us": None if self.clock.closest is None else round(self.clock.closest * 1e6, 1),
                            "sends": self.clock.sends, "wrong_sends": self.clock.wrong_sends,
                            "closest_send_us": (None if self.clock.closest_send is None
                                                else round(self.clock.closest_send * 1e6, 1))},
            "notes": [printable(note) for note in self.notes],
        }


# -- building it --------------------------------------------------------------------------------------

def build(traced: StraceRun, played: ScenarioRun) -> Timeline:
    """The timeline of one recording (labctl.trace.record), from the scenario's start to the trace's end.

    What the server did before the scenario began (the client's warm-up request: see
    harness/scenarios.py) is left out, but for the calls it was in when the scenario began."""
    parsed = strace.parse(traced.get("text") or "")
    attached = float(traced.get("attached_at") or (parsed.calls[0].entered if parsed.calls else 0.0))
    began = max(attached, float(played.get("began") or attached))
    ended = float(traced.get("stopped_at") or began)
    _bound_first_calls(parsed, traced)
    lanes = _lanes(traced, parsed)
    descriptors = Descriptors.follow(parsed.calls, {lane.tid: lane.pid for lane in lanes})
    calls = [call for call in parsed.calls
             if (call.returned if call.returned is not None else call.entered) >= began or call.running_at_end]
    for index, call in enumerate(calls):
        call.index = index
    for lane in lanes:
        lane.calls = [call.index for call in calls if call.tid == lane.tid]
    lanes = [lane for lane in lanes if lane.calls or (lane.ended or began) >= began]
    server, port = str(played.get("server") or ""), int(played.get("port") or 0)
    packets = classify_packets(played.get("packets") or [], server, port)
    return Timeline(scenario=str(played.get("scenario") or ""), server=server, port=port, client=played.get("client"),
                    began=began, ended=ended, lanes=lanes, calls=calls, packets=packets,
                    links=links.link(packets, calls, descriptors),
                    signals=[signal for signal in parsed.signals if signal.time >= began],
                    exits=[exit_ for exit_ in parsed.exits if exit_.time >= began],
                    clock=links.check_clock(packets, calls, descriptors), notes=_notes(traced, played, parsed))


def _bound_first_calls(parsed: strace.Parsed, traced: StraceRun) -> None:
    """The first call of a thread that was there when strace attached: most often the call it was asleep
    in, which strace restarts and stamps, but whose stopwatch it starts only once done with the attach
    (up to 15 ms later here), so that entered + duration came before the packet that ended it. Its
    return is taken as the time of its thread's next line instead: never before the true return (strace
    saw the return before it printed that line), a little after it. The client's warm-up request makes
    these calls end before the scenario begins (harness/scenarios.py)."""
    existing = {int(tid) for threads in (traced.get("threads") or {}).values() for tid, _ in threads}
    seen: set[int] = set()
    for call in parsed.calls:
        if call.tid in seen:
            continue
        seen.add(call.tid)
        if call.tid in existing and call.returned is not None and call.next_seen is not None:
            call.returned, call.bounded = max(call.returned, call.next_seen), True


def _lanes(traced: StraceRun, parsed: strace.Parsed) -> list[Lane]:
    lanes: dict[int, Lane] = {}
    for pid, threads in (traced.get("threads") or {}).items():
        for tid, comm in threads:
            lanes[int(tid)] = Lane(int(tid), int(pid), str(comm), existed=True)
    # A new thread's first line may come before its parent's clone returned: clones first, in order.
    for call in sorted(parsed.calls, key=lambda call: call.returned or call.entered):
        child = strace.child_of(call)
        if child is None or child[0] in lanes:
            continue
        parent = lanes.get(call.tid) or lanes.setdefault(call.tid, Lane(call.tid, call.tid, "?", existed=False))
        tid, thread = child
        lanes[tid] = Lane(tid, parent.pid if thread else tid, parent.comm, existed=False, born=call.returned,
                          parent=call.tid)
    for call in parsed.calls:  # a task strace followed that no clone line announced (made while attaching)
        lanes.setdefault(call.tid, Lane(call.tid, call.tid, "?", existed=False))
    for exit_ in parsed.exits:
        lane = lanes.setdefault(exit_.tid, Lane(exit_.tid, exit_.tid, "?", existed=False))
        lane.ended, lane.how_ended = exit_.time, exit_.how
    return sorted(lanes.values(), key=lambda lane: (lane.pid, lane.born or 0.0, lane.tid))


def _notes(traced: StraceRun, played: ScenarioRun, parsed: strace.Parsed) -> list[str]:
    notes = []
    if traced.get("truncated"):
        notes.append(f"strace wrote {traced.get('bytes', 0)} bytes; the trace keeps the first "
                     f"{len((traced.get('text') or '').encode())}: it ends early")
    if parsed.cut:
        notes.append(f"only the first {strace.MAX_LINES} lines of strace's output were read")
    if parsed.unparsed:
        notes.append(f"{parsed.unparsed} line(s) of strace's output fit no form and were left out, e.g. "
                     + " | ".join(parsed.examples[:2]))
    stopped = traced.get("stopped_by")
    if stopped and stopped != "stop":
        why = {"time": "its time ran out", "size": "its output reached its limit",
               "strace-exit": "strace ended by itself (did the server exit?)"}.get(str(stopped), str(stopped))
        notes.append(f"the trace stopped before the scenario's end: {why}")
    if played.get("truncated"):
        notes.append("the capture stopped at its packet limit")
    if played.get("stamped") is False:
        notes.append(f"the capture's timestamps could not be shown to be the kernel's ({len(played.get('warm_ups') or [])} "
                     "warm-up requests: their SYN was stamped outside their connect(), as when the stamps are taken "
                     "when the capture reads a packet, late): the packets' times, and the latencies, are not to be "
                     "trusted")
    messages = [line for line in (traced.get("strace_messages") or "").splitlines()
                if line.strip() and not line.startswith(_HARMLESS)]
    if messages:
        notes.append("strace said: " + " | ".join(messages[:3]))
    return notes
