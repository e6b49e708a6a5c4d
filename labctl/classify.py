"""How a server serves clients, from what its threads wait on: the I/O-model classifier.

The observer's looks (labctl/observe.py: per thread, the syscall it sleeps in and what the
descriptors of that syscall are) are taken twice: with the server idle, and while the client holds
connections with unfinished requests. The answer is one word of labctl.models, decided by ordered,
named rules: the first that matches decides, and every step is kept in the evidence ("rules"), so
a surprising verdict can be traced to the rule that made it.

1. no-process            no server process was seen: unknown.
2. stopped               most of its threads are stopped (state T): stopped.
3. idle-cpu              idle, it uses >= busy_fraction of a CPU (its cgroup): busy-polling.
4. running-idle          idle, a thread is running in most looks: busy-polling.
Then, while the client holds N connections, the threads that wait on clients serve them. Zombies
are not tasks; processes that hold no client and wait for a child, a signal, a pipe or a timer are
masters, and threads that wait on locks, pipes, timers or files are helpers (a runtime's I/O or GC
threads): both are set aside, and named.
5. event loops           a thread waits on many sockets (select, poll, epoll with clients in it):
   loop-without-answer     a new client got no answer meanwhile: blocking;
   loops-in-processes      such loops in two or more processes: event-loop-workers;
   loop-and-threads        one process, and other threads serve clients too: event-loop-threads;
   one-loop                one loop: event-loop.
6. one client each       threads wait on one client each:
   more-threads-than-idle  two or more in one process, more of them than it had threads when idle
                           (it made threads for the clients; a runtime that keeps finished threads
                           for reuse, like Ruby's, still shows this, as the check holds more clients
                           than the server had threads): thread-per-connection;
   new-thread-per-client   two or more in one process, most of them new: thread-per-connection;
   pool-of-threads         two or more in one process that were there before any client came, no
                           more than it had threads idle: thread-pool (a pool made as clients come
                           looks like a thread per client until it is full);
   new-process-per-client  in two or more processes, most of them new: fork-per-connection;
   pool-of-processes       in two or more processes that were there idle: prefork;
   one-client-at-a-time    only one: the other clients wait in the listen queue: blocking.
7. answers-at-once       nobody waited on a client because the server answered or closed every held
                         client at once, and its one thread sleeps in accept(): blocking.
8. nobody-serves         no thread waited on a client while they were held: unknown.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from labctl import syscalls
from labctl.observe import SERVING, WAIT_WORDS, Sample, ThreadWatch, steady_threads, watch


@dataclass(frozen=True)
class Facts:
    """What the classifier looks at: the server idle, and (better) while it holds `connections` clients.

    `hold` is the client's hold_connections answer (its "probe": did a new client get an
    answer while the others were held?).
    """

    idle: Sample
    loaded: Sample | None = None
    connections: int = 0
    hold: dict | None = None
    busy_fraction: float = 0.2        # idle CPU at or above this (of one CPU) is busy-polling


@dataclass(frozen=True)
class Classification:
    model: str                        # a word of labctl.models (MODELS or NOT_MODELS)
    reason: str                       # the evidence that decided it, in words
    facts: dict[str, Any]             # the numbers behind it, and "rules": how it was decided


def steady(sample: Sample) -> list[ThreadWatch]:
    """The threads seen in more than half of the looks, zombies left out (they are not tasks)."""
    return [entry for entry in steady_threads(sample) if entry.wait != "zombie"]


def summary(entries: list[ThreadWatch]) -> str:
    """'waits on a lock x9, waits for a new connection x1': what the threads wait on, counted."""
    seen = Counter(WAIT_WORDS[entry.wait] for entry in entries)
    return ", ".join(f"{what} x{count}" for what, count in seen.most_common(5)) or "nothing"


@dataclass
class Case:
    """One classification in progress: the facts, what the rules derive from them, and the steps taken."""

    facts: Facts
    steps: list[str]
    record: dict[str, Any]
    idle: Sample = field(init=False)
    loaded: Sample = field(init=False)
    held: int = field(init=False)
    probe: dict | None = field(init=False)
    entries: list[ThreadWatch] = field(init=False)      # the steady threads while loaded
    servers: list[ThreadWatch] = field(init=False)      # those that wait on clients
    multiplexers: list[ThreadWatch] = field(init=False)  # those that wait on many sockets
    readers: list[ThreadWatch] = field(init=False)      # those that wait on one client
    while_held: str = field(init=False)

    def __post_init__(self) -> None:
        facts = self.facts
        self.idle = facts.idle
        self.loaded = facts.loaded if facts.loaded is not None else facts.idle
        self.held = (facts.hold or {}).get("connected", facts.connections if facts.loaded is not None else 0)
        self.probe = (facts.hold or {}).get("probe")
        self.entries = steady(self.loaded)
        self.servers = [entry for entry in self.entries if entry.wait in SERVING]
        self.multiplexers = [entry for entry in self.servers if entry.wait == "many-sockets"]
        self.readers = [entry for entry in self.servers if entry.wait == "one-client"]
        self.while_held = f"while {self.held} clients were held" if facts.loaded is not None else "when idle"

    def result(self, model: str, rule: str, reason: str) -> Classification:
        self.steps.append(f"{rule}: {model}")
        return Classification(model, reason, self.record)

    @property
    def unanswered(self) -> bool:
        """A new client got no answer while the others were held."""
        return self.probe is not None and not self.probe.get("answered")


Rule = Callable[[Case], "Classification | None"]


def classify(facts: Facts) -> Classification:
    """How the server serves clients: the first of RULES that matches decides (see the module's doc)."""
    steps: list[str] = []
    case = Case(facts, steps, {})
    case.record.update(_record(case))
    for rule in RULES:
        found = rule(case)
        if found is not None:
            return found
    raise AssertionError("the last rule always decides")  # pragma: no cover


def _record(case: Case) -> dict[str, Any]:
    idle, loaded = case.idle, case.loaded
    record: dict[str, Any] = {
        "idle_cpu_percent": round(100 * idle.cpu_fraction, 1),
        "idle_processes": idle.peak_processes, "idle_threads": idle.peak_threads,
        "idle_waits": summary(steady(idle)), "connections_held": case.held,
        "rules": case.steps,
    }
    if case.facts.loaded is not None:
        record.update({"loaded_processes": loaded.peak_processes, "loaded_threads": loaded.peak_threads,
                       "loaded_waits": summary(case.entries)})
    if case.probe is not None:
        record["probe"] = case.probe
    return record


# -- the rules, in order ----------------------------------------------------------------------------

def no_process(case: Case) -> Classification | None:
    if case.idle.peak_processes == 0:
        return case.result("unknown", "no-process", "no server process was seen (did the server exit?)")
    return None


def stopped(case: Case) -> Classification | None:
    for sample in (case.idle, case.loaded):
        frozen = [entry for entry in steady(sample) if entry.wait == "stopped"]
        if frozen and 2 * len(frozen) >= len(steady(sample)):
            return case.result("stopped", "stopped", f"{frozen[0].label} is stopped (state {frozen[0].seen[-1].state}: "
                                                     f"SIGSTOP, or a debugger): a stopped server serves nobody")
    case.steps.append("not stopped")
    return None


def busy_by_cpu(case: Case) -> Classification | None:
    idle = case.idle
    if idle.cpu_fraction >= case.facts.busy_fraction:
        return case.result("busy-polling", "idle-cpu", f"with no client it used {100 * idle.cpu_fraction:.0f}% of a "
                                                       f"CPU over {idle.elapsed:.1f} s: it spins instead of sleeping")
    return None


def busy_by_running(case: Case) -> Classification | None:
    idle = case.idle
    looks = len(idle.snapshots)
    spinning = [entry for entry in watch(idle) if looks >= 3 and 2 * entry.running_count > looks]
    if spinning:
        return case.result("busy-polling", "running-idle",
                           f"with no client {spinning[0].label} was running in {spinning[0].running_count} of "
                           f"{looks} looks (and the server used {100 * idle.cpu_fraction:.0f}% of a CPU): it spins "
                           f"instead of sleeping")
    case.steps.append(f"asleep when idle ({100 * idle.cpu_fraction:.1f}% of a CPU)")
    _set_aside(case)
    case.record["serving"] = [f"{entry.label}: {WAIT_WORDS[entry.wait]}" for entry in case.servers[:8]]
    return None


def event_loops(case: Case) -> Classification | None:
    if not case.multiplexers:
        return None
    first = case.multiplexers[0]
    case.steps.append(f"{len(case.multiplexers)} thread(s) wait on many sockets")
    where = first.seen[-1].waiting
    if case.unanswered:
        return case.result("blocking", "loop-without-answer",
                           f"{case.while_held} it was {where}, yet a new client got no answer within "
                           f"{(case.probe or {}).get('seconds', 0):.1f} s: one client at a time")
    loops = [entry for entry in case.entries if entry.wait in ("many-sockets", "new-connection")
             and entry.seen[-1].syscall_name in syscalls.MULTIPLEXERS]
    loop_pids = {entry.pid for entry in loops}
    if len(loop_pids) >= 2:
        return case.result("event-loop-workers", "loops-in-processes",
                           f"{case.while_held} {len(loop_pids)} processes each waited on many sockets ({where}): "
                           "several event loops, one per process")
    if case.readers or len(case.multiplexers) >= 2:
        others = len(case.readers) + len(case.multiplexers) - 1
        return case.result("event-loop-threads", "loop-and-threads",
                           f"{case.while_held} {first.label} was {where}, and {others} other thread(s) served "
                           "clients too: an event loop with threads")
    answered = f"; a new client was answered in {case.probe['seconds'] * 1000:.0f} ms" if case.probe else ""
    return case.result("event-loop", "one-loop", f"{case.while_held} {first.label} was {where}: one thread waits "
                                                 f"on many sockets{answered}")


def threads_of_one_process(case: Case) -> Classification | None:
    """Two or more threads of one process wait on one client each: a thread per client, or a pool."""
    if not case.readers:
        return None
    per_pid = Counter(entry.pid for entry in case.readers)
    case.steps.append(f"{len(case.readers)} thread(s) wait on one client each, in {len(per_pid)} process(es)")
    pid, most = per_pid.most_common(1)[0]
    if most < 2:
        return None
    idle_tids = {entry.tid for entry in watch(case.idle)}
    group = [entry for entry in case.readers if entry.pid == pid]
    new = [entry for entry in group if entry.tid not in idle_tids]
    had = case.idle.threads_of(pid)
    if len(group) > had:
        return case.result("thread-per-connection", "more-threads-than-idle",
                           f"{case.while_held} {len(group)} threads of one process waited on one client each, more "
                           f"than the {had} it had in all when idle: a thread per client")
    if 2 * len(new) >= len(group):
        return case.result("thread-per-connection", "new-thread-per-client",
                           f"{case.while_held} {len(group)} threads of one process waited on one client each, "
                           f"{len(new)} of them made since it was idle: a thread per client")
    return case.result("thread-pool", "pool-of-threads",
                       f"{case.while_held} {len(group)} threads of one process waited on one client each, and "
                       f"{len(group) - len(new)} of them were there before any client came: a pool of threads")


def processes(case: Case) -> Classification | None:
    """Two or more processes wait on one client each: a process per client, or a pool of processes."""
    per_pid = Counter(entry.pid for entry in case.readers)
    if len(per_pid) < 2:
        return None
    idle_pids = {entry.pid for entry in watch(case.idle)}
    new = [pid for pid in per_pid if pid not in idle_pids]
    if 2 * len(new) >= len(per_pid):
        return case.result("fork-per-connection", "new-process-per-client",
                           f"{case.while_held} {len(per_pid)} processes waited on one client each, {len(new)} of "
                           "them started since it was idle: a process per client")
    return case.result("prefork", "pool-of-processes",
                       f"{case.while_held} {len(per_pid)} processes waited on one client each, and "
                       f"{len(per_pid) - len(new)} of them were there before any client came: a pool of processes")


def one_client_at_a_time(case: Case) -> Classification | None:
    if not case.readers:
        return None
    reader = case.readers[0]
    unanswered = (f", and a new client got no answer within {(case.probe or {}).get('seconds', 0):.1f} s"
                  if case.unanswered else "")
    return case.result("blocking", "one-client-at-a-time",
                       f"{case.while_held} only {reader.label} served a client ({reader.seen[-1].waiting})"
                       f"{unanswered}: one client at a time, the others wait in the listen queue")


def answers_at_once(case: Case) -> Classification | None:
    hold = case.facts.hold or {}
    finished = hold.get("answered", 0) + hold.get("closed_by_server", 0)
    if not (case.held and finished >= case.held and not hold.get("still_open")):
        return None
    accepting = [entry for entry in case.entries if entry.wait == "new-connection"]
    if len(accepting) == 1 and accepting[0].seen[-1].syscall_name in syscalls.ACCEPTS:
        return case.result("blocking", "answers-at-once",
                           f"{case.while_held} the server answered or closed every one without waiting for the rest "
                           f"of its request, and its one thread ({accepting[0].label}) sleeps in "
                           f"{accepting[0].seen[-1].waiting}: one client at a time")
    case.steps.append("every held client was answered or closed at once")
    return None


def nobody_serves(case: Case) -> Classification:
    return case.result("unknown", "nobody-serves", f"{case.while_held} no thread waited on a client (its threads: "
                                                   f"{summary(case.entries)})")


RULES: list[Rule] = [no_process, stopped, busy_by_cpu, busy_by_running, event_loops, threads_of_one_process,
                     processes, one_client_at_a_time, answers_at_once, nobody_serves]


def _set_aside(case: Case) -> None:
    """Name the masters (processes holding no client, waiting for children, signals, pipes or timers)
    and helpers (threads waiting on locks, pipes, timers or files) that the rules leave out."""
    serving_pids = {entry.pid for entry in case.servers}
    last = case.loaded.snapshots[-1] if case.loaded.snapshots else None
    holds = {process.pid: process.clients for process in last.processes} if last else {}
    masters: list[str] = []
    for pid in sorted({entry.pid for entry in case.entries} - serving_pids):
        mine = [entry for entry in case.entries if entry.pid == pid]
        if not holds.get(pid) and all(entry.wait in ("child", "timed-sleep", "pipe", "lock") for entry in mine):
            masters.append(f"process {pid} ({mine[0].comm}): {summary(mine)}")
    master_pids = {int(text.split()[1]) for text in masters}
    helpers = [f"{entry.label}: {WAIT_WORDS[entry.wait]}" for entry in case.entries
               if entry.pid not in master_pids and entry.wait in ("lock", "pipe", "timed-sleep", "file", "child", "other")]
    if masters:
        case.record["set_aside_masters"] = masters
    if helpers:
        case.record["set_aside_helpers"] = helpers[:8] + ([f"and {len(helpers) - 8} more"] if len(helpers) > 8 else [])
