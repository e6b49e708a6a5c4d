"""A server's threads, seen from the observer: what each waits in, how much CPU it uses, and
what that says about how the server serves clients. Host side; pure interpretation.

Two sources, neither visible to the server: the observer's sampler (labctl/harness/agent.py)
looks at /proc all the time, at moments that vary, and writes its looks to its log; the host
reads the server's CPU from its cgroup (`Backend.usage`) at both ends of a window, and the looks
in between from the log. `Window` is that pair. This module turns them into:

- `Snapshot`, `Process`, `Thread`, `Sample`: typed views of those facts
  (`Snapshot.from_json`, `Sample.from_json`), with each thread's syscall NAME taken from
  the one table (labctl/syscalls.py) for the architecture the observer reported;
- `Thread.waiting`: "asleep in accept4 (288)", "running", ... in words;
- `watch(sample)`: per thread, what it was seen doing across a sample (`ThreadWatch`);
- `blocked_in(sample, names)`: per thread, whether it sleeps in one of the named syscalls;
- `io_model(Facts(...))`: blocking / threaded / forking / event-driven / busy-polling
  (or unknown), with the one piece of evidence that decided it (`Classification`);
- `render(snapshot)`: a `ps`-like table for people; `snapshot(lab)`: take one (for `labctl observe`).

wchan (the kernel function a thread sleeps in) is carried and shown, never graded: its
names differ between kernel builds. Syscall NUMBERS are what is graded.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

from labctl import syscalls
from labctl.errors import LabctlError
from labctl.harness import agent
from labctl.untrusted import printable



#: What a thread waits on: one word each (Thread.wait), and the words people read. The one
#: vocabulary of waits for observe's table, the checks' evidence and the classifier.
WAIT_WORDS = {
    "new-connection": "waits for a new connection",
    "one-client": "waits on one client",
    "many-sockets": "waits on many sockets",
    "timed-sleep": "timed sleep",
    "child": "waits for a child or a signal",
    "lock": "waits on a lock",
    "pipe": "waits on a pipe or an event",
    "file": "waits on a file",
    "other": "waits in another syscall",
    "runs": "runs",
    "stopped": "stopped",
    "zombie": "zombie",
    "unknown": "not known",
}
#: Waits that serve clients: a thread in one of them holds a client while the check holds clients.
SERVING = frozenset({"one-client", "many-sockets"})
#: Kinds of descriptors that reach the network. A unix socket is local, like a pipe: a socketpair to
#: a child (socat's relay to its shell) or a log socket, never one of the lab's clients.
_SOCKETS = ("listen", "client", "tcp", "udp")
_EVENTS = ("pipe", "unix", "eventfd", "signalfd", "timerfd", "epoll", "inotify", "io_uring")


# -- typed views of the harness's facts -------------------------------------------------------------

@dataclass(frozen=True)
class Thread:
    """One task (thread) of a server process, as one snapshot saw it."""

    pid: int
    tid: int
    comm: str
    state: str                       # R running, S sleeping, D uninterruptible, T stopped, Z zombie, ...
    syscall: int | str | None        # number; "running"; -1 blocked outside a syscall; None unreadable
    machine: str
    arg0: int | None = None
    wchan: str = ""
    ticks: int = 0
    voluntary: int | None = None
    nonvoluntary: int | None = None
    uid: int | None = None
    args: tuple[int, ...] = ()
    waits_on: dict | None = None     # the descriptors its syscall waits on: {"fds", "count", "kinds"}

    @property
    def wait(self) -> str:
        """What it waits on, in one word of WAIT_WORDS: from its state, its syscall, and the kinds
        of the descriptors that syscall names (a poll() on one client socket is "one-client", not
        "many-sockets"; a read() on a pipe is "pipe", not a client)."""
        if self.state == "Z":
            return "zombie"
        if self.state in ("T", "t"):
            return "stopped"
        if self.running:
            return "runs"
        name = self.syscall_name
        if name is None:
            return "unknown"
        if name in syscalls.LOCKS:
            return "lock"
        if name in syscalls.CHILD_WAITS:
            return "child"
        if name in syscalls.SLEEPS:
            return "timed-sleep"
        on = self.waits_on
        if on is not None and not on.get("unread"):
            return _wait_of_descriptors(on)
        # Without the descriptors (an older observer, unreadable memory): by the syscall alone.
        if name in syscalls.ACCEPTS:
            return "new-connection"
        if name in syscalls.RECEIVES:
            return "one-client"
        if name in syscalls.MULTIPLEXERS:
            return "many-sockets"
        return "other"

    @property
    def syscall_name(self) -> str | None:
        """The name of the syscall the thread is blocked in (None: running, outside one, unknown)."""
        if isinstance(self.syscall, int) and self.syscall >= 0:
            return syscalls.name(self.syscall, self.machine)
        return None

    @property
    def running(self) -> bool:
        return self.state == "R" or self.syscall == "running"

    @property
    def asleep(self) -> bool:
        """Asleep in a syscall: state S (interruptible sleep) and a syscall number."""
        return self.state == "S" and isinstance(self.syscall, int) and self.syscall >= 0

    def asleep_in(self, names: Iterable[str]) -> bool:
        return self.asleep and self.syscall_name in set(names)

    @property
    def waiting(self) -> str:
        """What the thread is doing, in words: "asleep in accept4 (288)", "running", ..."""
        if self.running:
            return "running"
        if self.syscall is None:
            return f"in state {self.state} (its syscall file was unreadable)"
        if self.syscall == -1:
            return f"in state {self.state} outside a syscall"
        where = syscalls.label(int(self.syscall), self.machine)
        if self.state == "S":
            return f"asleep in {where}"
        return f"in state {self.state} in {where}"

    @property
    def label(self) -> str:
        return f"thread {self.tid} ({self.comm})" if self.tid != self.pid else f"thread {self.tid} ({self.comm}, main)"


def _wait_of_descriptors(on: dict) -> str:
    """The wait word of a blocked syscall from what its descriptors are. Many sockets: two clients or
    more, a client and a listener, or an epoll set holding a client beside anything else (an event
    loop that has one client now: memcached's worker threads). One client: a single socket, even in
    poll() (Python's settimeout), or a poll() of a client and a wake-up pipe (a thread per client)."""
    kinds: dict[str, int] = on.get("kinds") or {}
    if not on.get("count"):
        return "timed-sleep"  # select()/poll() with no descriptor: a sleep
    clients, listeners = kinds.get("client", 0), kinds.get("listen", 0)
    sockets = sum(kinds.get(kind, 0) for kind in _SOCKETS)
    loop_with_a_client = on.get("via") == "epoll" and clients and on.get("count", 0) >= 2
    if clients >= 2 or (clients and listeners) or (sockets >= 2 and sockets > listeners) or loop_with_a_client:
        return "many-sockets"
    if clients or sockets > listeners:
        return "one-client"
    if listeners:
        return "new-connection"
    if any(kinds.get(kind) for kind in _EVENTS):
        return "pipe"
    if kinds.get("file"):
        return "file"
    return "other"


@dataclass(frozen=True)
class Process:
    pid: int
    ppid: int
    comm: str
    uid: int | None
    cmdline: str
    ticks: int
    child_ticks: int
    threads: tuple[Thread, ...]
    holds: dict[str, int] | None = None  # its descriptors by kind ("client": its client connections)

    @property
    def clients(self) -> int | None:
        """How many client connections it holds (None: not known)."""
        return None if self.holds is None else self.holds.get("client", 0)


@dataclass(frozen=True)
class Snapshot:
    """The server's processes and threads at one moment (proc_snapshot's answer)."""

    machine: str
    clk_tck: int
    time: float
    processes: tuple[Process, ...]
    init: dict | None = None
    errors: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, data: dict) -> "Snapshot":
        machine = syscalls.arch(data["machine"])
        processes = tuple(
            Process(pid=p["pid"], ppid=p["ppid"], comm=p["comm"], uid=p.get("uid"), cmdline=p.get("cmdline", ""),
                    ticks=p.get("ticks", 0), child_ticks=p.get("child_ticks", 0), holds=p.get("holds"),
                    threads=tuple(Thread(pid=p["pid"], tid=t["tid"], comm=t["comm"], state=t["state"],
                                         syscall=t.get("syscall"), machine=machine, arg0=t.get("arg0"),
                                         wchan=t.get("wchan") or "", ticks=t.get("ticks", 0),
                                         voluntary=t.get("voluntary"), nonvoluntary=t.get("nonvoluntary"),
                                         uid=t.get("uid"), args=tuple(t.get("args") or ()),
                                         waits_on=t.get("waits_on"))
                                  for t in p["threads"]))
            for p in data["processes"])
        return cls(machine=machine, clk_tck=int(data.get("clk_tck") or 100), time=float(data.get("time", 0.0)),
                   processes=processes, init=data.get("init"),
                   errors=tuple(data.get("errors") or ()))

    @property
    def threads(self) -> list[Thread]:
        return [thread for process in self.processes for thread in process.threads]

    @property
    def process_count(self) -> int:
        return len(self.processes)

    @property
    def thread_count(self) -> int:
        """Threads of all server processes together."""
        return len(self.threads)

    @property
    def max_threads(self) -> int:
        """The most threads any one server process has (a forking server's processes have 1 each)."""
        return max((len(process.threads) for process in self.processes), default=0)


@dataclass(frozen=True)
class Sample:
    """The server over a window: the observer's looks at its threads, and the CPU its cgroup counted."""

    snapshots: tuple[Snapshot, ...]
    elapsed: float                    # seconds between the two CPU readings
    cpu_seconds: float                # CPU every task of the server used in them, reaped children included
    precise: bool = True              # False: the engine's once-a-second statistics (a remote engine)

    @classmethod
    def from_json(cls, data: dict) -> "Sample":
        snapshots = tuple(Snapshot.from_json(item) for item in data["snapshots"])
        return cls(snapshots=snapshots, elapsed=float(data["elapsed"]), cpu_seconds=float(data["cpu_seconds"]),
                   precise=bool(data.get("precise", True)))

    @property
    def machine(self) -> str:
        return self.snapshots[0].machine if self.snapshots else "x86_64"

    @property
    def clk_tck(self) -> int:
        """Ticks per second of the threads' own counters (ThreadWatch.cpu_ticks)."""
        return self.snapshots[0].clk_tck if self.snapshots else 100

    @property
    def cpu_fraction(self) -> float:
        """CPU used over the window as a fraction of one CPU (1.0: one CPU busy all the time)."""
        return self.cpu_seconds / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def cpu_percent(self) -> float:
        return 100.0 * self.cpu_fraction

    @property
    def peak_processes(self) -> int:
        return max((snapshot.process_count for snapshot in self.snapshots), default=0)

    @property
    def peak_threads(self) -> int:
        """The most threads one server process had in any snapshot."""
        return max((snapshot.max_threads for snapshot in self.snapshots), default=0)

    def threads_of(self, pid: int) -> int:
        """The most threads process `pid` had in any snapshot (0: not seen)."""
        return max((len(process.threads) for snapshot in self.snapshots for process in snapshot.processes
                    if process.pid == pid), default=0)

    @property
    def peak_thread_total(self) -> int:
        return max((snapshot.thread_count for snapshot in self.snapshots), default=0)

    @property
    def errors(self) -> list[str]:
        return sorted({error for snapshot in self.snapshots for error in snapshot.errors})

    def syscalls_seen(self) -> dict[str, int]:
        """How often each "waiting" description was seen, over all threads and snapshots."""
        return dict(Counter(thread.waiting for snapshot in self.snapshots for thread in snapshot.threads))


# -- per thread over a sample -----------------------------------------------------------------------

@dataclass
class ThreadWatch:
    """What one thread was seen doing in the snapshots of a sample."""

    pid: int
    tid: int
    comm: str
    seen: list[Thread] = field(default_factory=list)
    snapshots: int = 0                # how many snapshots the sample had

    @property
    def label(self) -> str:
        return self.seen[-1].label if self.seen else f"thread {self.tid} ({self.comm})"

    @property
    def counts(self) -> Counter:
        return Counter(thread.waiting for thread in self.seen)

    @property
    def usual(self) -> str:
        """What it was doing most often."""
        return self.counts.most_common(1)[0][0] if self.seen else "not seen"

    @property
    def wait(self) -> str:
        """What it waited on most often, one word of WAIT_WORDS. Looks that could not tell ("unknown":
        blocked outside a syscall, as in a page fault) do not vote while any other look can."""
        waits = Counter(thread.wait for thread in self.seen)
        if len(waits) > 1:
            waits.pop("unknown", None)
        return waits.most_common(1)[0][0] if waits else "unknown"

    @property
    def running_count(self) -> int:
        return sum(1 for thread in self.seen if thread.running)

    @property
    def cpu_ticks(self) -> int:
        return self.seen[-1].ticks - self.seen[0].ticks if len(self.seen) > 1 else 0

    @property
    def wchans(self) -> list[str]:
        return sorted({thread.wchan for thread in self.seen if thread.wchan})

    def evidence(self) -> dict[str, Any]:
        return {"pid": self.pid, "tid": self.tid, "comm": self.comm, "seen": dict(self.counts),
                "in_snapshots": f"{len(self.seen)}/{self.snapshots}", "cpu_ticks": self.cpu_ticks,
                "wchan": ", ".join(self.wchans) or "-"}


def watch(sample: Sample) -> list[ThreadWatch]:
    """Per thread (by tid), its observations across the sample's snapshots, in tid order."""
    watches: dict[int, ThreadWatch] = {}
    for snapshot in sample.snapshots:
        for thread in snapshot.threads:
            entry = watches.setdefault(thread.tid, ThreadWatch(thread.pid, thread.tid, thread.comm,
                                                               snapshots=len(sample.snapshots)))
            entry.seen.append(thread)
    return [watches[tid] for tid in sorted(watches)]


def steady_threads(sample: Sample) -> list[ThreadWatch]:
    """The threads seen in more than half of the snapshots (not one that came and went)."""
    return [entry for entry in watch(sample) if 2 * len(entry.seen) > len(sample.snapshots)]


@dataclass(frozen=True)
class Verdict:
    """blocked_in's finding about one thread."""

    thread: ThreadWatch
    ok: bool
    why: str                          # a sentence about this thread


#: Waits of threads that do not serve the network: a master's (children, signals, timers, pipes) and a
#: runtime's helpers' (locks, pipes, timers). blocked_in names them and does not judge them.
NOT_SERVING = frozenset({"lock", "child", "timed-sleep", "pipe"})


def judged_threads(sample: Sample, set_aside: bool = True) -> tuple[list[ThreadWatch], list[ThreadWatch]]:
    """(the steady threads to judge, those set aside): waiters in NOT_SERVING are set aside, unless
    every thread is one (a server whose only wait is a sleep is judged by it)."""
    steady = [entry for entry in steady_threads(sample) if entry.wait != "zombie"]
    if not set_aside:
        return steady, []
    judged = [entry for entry in steady if entry.wait not in NOT_SERVING]
    if not judged:
        return steady, []
    return judged, [entry for entry in steady if entry.wait in NOT_SERVING]


def blocked_in(sample: Sample, names: Iterable[str], set_aside: bool = True) -> list[Verdict]:
    """Per steady thread that serves the network (judged_threads): is it asleep (state S) in one of
    `names` in most snapshots?

    Most, not all: a correct idle server may wake for a moment (a timer, a signal), and a
    snapshot may catch that. A busy loop is running in nearly every snapshot, and a server
    waiting in the wrong syscall is asleep there in every one.
    """
    allowed = [name for name in names if syscalls.number(name, sample.machine) is not None]
    expected = ", ".join(allowed)
    verdicts = []
    for entry in judged_threads(sample, set_aside)[0]:
        good = sum(1 for thread in entry.seen if thread.asleep_in(allowed))
        ok = 2 * good > len(entry.seen)
        usual = entry.usual
        if ok:
            why = f"{entry.label} is {usual}"
        elif usual == "running":
            why = (f"{entry.label} is running, not asleep ({entry.running_count} of {len(entry.seen)} "
                   f"looks): a busy loop?")
        else:
            why = f"{entry.label} is {usual}, expected one of {expected}"
        verdicts.append(Verdict(entry, ok, why))
    return verdicts


# -- the I/O model ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Facts:
    """What io_model looks at: the server idle, and (better) while it holds `connections` clients.

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


def _steady(sample: Sample) -> list[ThreadWatch]:
    """The threads seen in more than half of the looks, zombies left out (they are not tasks)."""
    return [entry for entry in steady_threads(sample) if entry.wait != "zombie"]


def _summary(entries: list[ThreadWatch]) -> str:
    seen = Counter(WAIT_WORDS[entry.wait] for entry in entries)
    return ", ".join(f"{what} x{count}" for what, count in seen.most_common(5)) or "nothing"


def io_model(facts: Facts) -> Classification:
    """How the server serves clients, from what its threads wait on while it holds clients (and idle).

    Ordered rules; the first that matches decides (each step is kept in facts["rules"]):
    1. unknown             no server process was seen.
    2. stopped             most of its threads are stopped (state T).
    3. busy-polling        idle, it uses >= busy_fraction of a CPU (its cgroup), or a thread is
                           running in most looks: it spins instead of sleeping.
    Then, while the client holds N connections: the threads that wait on clients serve them.
    Zombies are not tasks; processes that hold no client and wait for a child, a signal, a pipe
    or a timer are masters, and threads that wait on locks, pipes, timers or files are helpers
    (a runtime's I/O or GC threads): both are set aside, and named.
    4. event loops         a thread waits on many sockets (select, poll, epoll with clients in it):
       event-loop-workers    such loops in two or more processes;
       event-loop-threads    one process, and other threads serve clients too (more loops, or
                             threads on one client each);
       event-loop            one loop; but if a new client got no answer meanwhile: blocking.
    5. one client each     threads wait on one client each:
       thread-per-connection two or more in one process, more of them than the process had threads
                             when idle (it made threads for the clients: a runtime that keeps finished
                             threads for reuse, like Ruby's, still shows this, as the check holds more
                             clients than the server had threads), or most of them new;
       thread-pool           two or more in one process that existed before any client came, no more
                             than it had threads when idle (a pool made as clients come looks like a
                             thread per client until it is full);
       fork-per-connection   in two or more processes, most of them new;
       prefork               in two or more processes that existed before any client came;
       blocking              only one: the other clients wait in the listen queue.
    6. blocking            nobody waited on a client because the server answered or closed every held
                           client at once (it does not read the whole request), and its one thread
                           sleeps in accept(): one client at a time, just a quick one.
    7. unknown             no thread waited on a client while they were held.
    """
    idle, loaded = facts.idle, facts.loaded if facts.loaded is not None else facts.idle
    held = (facts.hold or {}).get("connected", facts.connections if facts.loaded is not None else 0)
    probe = (facts.hold or {}).get("probe")
    steps: list[str] = []
    record: dict[str, Any] = {
        "idle_cpu_percent": round(100 * idle.cpu_fraction, 1),
        "idle_processes": idle.peak_processes, "idle_threads": idle.peak_threads,
        "idle_waits": _summary(_steady(idle)), "connections_held": held,
        "rules": steps,
    }
    if facts.loaded is not None:
        record.update({"loaded_processes": loaded.peak_processes, "loaded_threads": loaded.peak_threads,
                       "loaded_waits": _summary(_steady(loaded))})
    if probe is not None:
        record["probe"] = probe

    def result(model: str, rule: str, reason: str) -> Classification:
        steps.append(f"{rule}: {model}")
        return Classification(model, reason, record)

    if idle.peak_processes == 0:
        return result("unknown", "no-process", "no server process was seen (did the server exit?)")
    for sample in (idle, loaded):
        stopped = [entry for entry in _steady(sample) if entry.wait == "stopped"]
        if stopped and 2 * len(stopped) >= len(_steady(sample)):
            return result("stopped", "stopped", f"{stopped[0].label} is stopped (state {stopped[0].seen[-1].state}: "
                                                f"SIGSTOP, or a debugger): a stopped server serves nobody")
    steps.append("not stopped")
    if idle.cpu_fraction >= facts.busy_fraction:
        return result("busy-polling", "idle-cpu", f"with no client it used {100 * idle.cpu_fraction:.0f}% of a CPU "
                                                  f"over {idle.elapsed:.1f} s: it spins instead of sleeping")
    looks = len(idle.snapshots)
    spinning = [entry for entry in watch(idle) if looks >= 3 and 2 * entry.running_count > looks]
    if spinning:
        return result("busy-polling", "running-idle",
                      f"with no client {spinning[0].label} was running in {spinning[0].running_count} of {looks} "
                      f"looks (and the server used {100 * idle.cpu_fraction:.0f}% of a CPU): it spins instead of "
                      f"sleeping")
    steps.append(f"asleep when idle ({100 * idle.cpu_fraction:.1f}% of a CPU)")

    entries = _steady(loaded)
    idle_tids = {entry.tid for entry in watch(idle)}
    idle_pids = {entry.pid for entry in watch(idle)}
    servers = [entry for entry in entries if entry.wait in SERVING]
    multiplexers = [entry for entry in servers if entry.wait == "many-sockets"]
    readers = [entry for entry in servers if entry.wait == "one-client"]
    loops = [entry for entry in entries if entry.wait in ("many-sockets", "new-connection")
             and entry.seen[-1].syscall_name in syscalls.MULTIPLEXERS]
    _set_aside(entries, servers, loaded, record)
    while_held = f"while {held} clients were held" if facts.loaded is not None else "when idle"
    record["serving"] = [f"{entry.label}: {WAIT_WORDS[entry.wait]}" for entry in servers[:8]]

    if multiplexers:
        steps.append(f"{len(multiplexers)} thread(s) wait on many sockets")
        where = multiplexers[0].seen[-1].waiting
        if probe is not None and not probe.get("answered"):
            return result("blocking", "loop-without-answer",
                          f"{while_held} it was {where}, yet a new client got no answer within "
                          f"{probe.get('seconds', 0):.1f} s: one client at a time")
        loop_pids = {entry.pid for entry in loops}
        if len(loop_pids) >= 2:
            return result("event-loop-workers", "loops-in-processes",
                          f"{while_held} {len(loop_pids)} processes each waited on many sockets ({where}): "
                          "several event loops, one per process")
        if readers or len(multiplexers) >= 2:
            others = len(readers) + len(multiplexers) - 1
            return result("event-loop-threads", "loop-and-threads",
                          f"{while_held} {multiplexers[0].label} was {where}, and {others} other thread(s) "
                          "served clients too: an event loop with threads")
        answered = f"; a new client was answered in {probe['seconds'] * 1000:.0f} ms" if probe else ""
        return result("event-loop", "one-loop", f"{while_held} {multiplexers[0].label} was {where}: one thread "
                                                f"waits on many sockets{answered}")
    if readers:
        per_pid = Counter(entry.pid for entry in readers)
        steps.append(f"{len(readers)} thread(s) wait on one client each, in {len(per_pid)} process(es)")
        pid, most = per_pid.most_common(1)[0]
        if most >= 2:
            group = [entry for entry in readers if entry.pid == pid]
            new = [entry for entry in group if entry.tid not in idle_tids]
            had = idle.threads_of(pid)
            if len(group) > had:
                return result("thread-per-connection", "more-threads-than-idle",
                              f"{while_held} {len(group)} threads of one process waited on one client each, more "
                              f"than the {had} it had in all when idle: a thread per client")
            if 2 * len(new) >= len(group):
                return result("thread-per-connection", "new-thread-per-client",
                              f"{while_held} {len(group)} threads of one process waited on one client each, "
                              f"{len(new)} of them made since it was idle: a thread per client")
            return result("thread-pool", "pool-of-threads",
                          f"{while_held} {len(group)} threads of one process waited on one client each, and "
                          f"{len(group) - len(new)} of them were there before any client came: a pool of threads")
        if len(per_pid) >= 2:
            new = [pid for pid in per_pid if pid not in idle_pids]
            if 2 * len(new) >= len(per_pid):
                return result("fork-per-connection", "new-process-per-client",
                              f"{while_held} {len(per_pid)} processes waited on one client each, {len(new)} of "
                              "them started since it was idle: a process per client")
            return result("prefork", "pool-of-processes",
                          f"{while_held} {len(per_pid)} processes waited on one client each, and "
                          f"{len(per_pid) - len(new)} of them were there before any client came: a pool of processes")
        unanswered = (f", and a new client got no answer within {probe.get('seconds', 0):.1f} s"
                      if probe is not None and not probe.get("answered") else "")
        return result("blocking", "one-client-at-a-time",
                      f"{while_held} only {readers[0].label} served a client ({readers[0].seen[-1].waiting}){unanswered}: "
                      "one client at a time, the others wait in the listen queue")
    hold = facts.hold or {}
    finished = hold.get("answered", 0) + hold.get("closed_by_server", 0)
    if held and finished >= held and not hold.get("still_open"):
        accepting = [entry for entry in entries if entry.wait == "new-connection"]
        if len(accepting) == 1 and accepting[0].seen[-1].syscall_name in syscalls.ACCEPTS:
            return result("blocking", "answers-at-once",
                          f"{while_held} the server answered or closed every one without waiting for the rest "
                          f"of its request, and its one thread ({accepting[0].label}) sleeps in "
                          f"{accepting[0].seen[-1].waiting}: one client at a time")
        steps.append("every held client was answered or closed at once")
    return result("unknown", "nobody-serves", f"{while_held} no thread waited on a client (its threads: "
                                              f"{_summary(entries)})")


def _set_aside(entries: list[ThreadWatch], servers: list[ThreadWatch], loaded: Sample, record: dict) -> None:
    """Name the masters (processes holding no client, waiting for children, signals, pipes or timers)
    and helpers (threads waiting on locks, pipes, timers or files) that the rules leave out."""
    serving_pids = {entry.pid for entry in servers}
    last = loaded.snapshots[-1] if loaded.snapshots else None
    holds = {process.pid: process.clients for process in last.processes} if last else {}
    masters, helpers = [], []
    for pid in sorted({entry.pid for entry in entries} - serving_pids):
        mine = [entry for entry in entries if entry.pid == pid]
        if not holds.get(pid) and all(entry.wait in ("child", "timed-sleep", "pipe", "lock") for entry in mine):
            masters.append(f"process {pid} ({mine[0].comm}): {_summary(mine)}")
    master_pids = {int(text.split()[1]) for text in masters}
    for entry in entries:
        if entry.pid not in master_pids and entry.wait in ("lock", "pipe", "timed-sleep", "file", "child", "other"):
            helpers.append(f"{entry.label}: {WAIT_WORDS[entry.wait]}")
    if masters:
        record["set_aside_masters"] = masters
    if helpers:
        record["set_aside_helpers"] = helpers[:8] + ([f"and {len(helpers) - 8} more"] if len(helpers) > 8 else [])


# -- for people ------------------------------------------------------------------------------------

def render(snapshot: Snapshot) -> str:
    """A `ps`-like table of the server's threads: the syscall each sleeps in, what that waits on (a new
    connection, one client, many sockets, a lock...), CPU ticks, context switches; per process, the
    client connections it holds."""
    header = (f"{'PID':>6} {'TID':>6}  {'COMM':<15} {'ST':<2}  {'WAITING':<30} {'WAITS ON':<27} "
              f"{'WCHAN (not graded)':<20} {'TICKS':>6} {'CTXSW vol/invol':>16}")
    lines = [header]
    for process in snapshot.processes:
        for thread in process.threads:
            ctx = f"{thread.voluntary if thread.voluntary is not None else '?'}/" \
                  f"{thread.nonvoluntary if thread.nonvoluntary is not None else '?'}"
            # comm is the server's to choose (prctl, pthread_setname_np): shown, never trusted.
            lines.append(f"{thread.pid:>6} {thread.tid:>6}  {printable(thread.comm)[:15]:<15} "
                         f"{printable(thread.state):<2}  {thread.waiting[:30]:<30} {WAIT_WORDS[thread.wait][:27]:<27} "
                         f"{printable(thread.wchan or '-')[:20]:<20} {thread.ticks:>6} {ctx:>16}")
    held = [f"{process.pid}: {process.clients}" for process in snapshot.processes if process.clients]
    lines.append(f"{snapshot.process_count} process(es), {snapshot.thread_count} thread(s); "
                 + (f"client connections held by process {', '.join(held)}; " if held else "")
                 + f"architecture {snapshot.machine}")
    return "\n".join(lines)


def snapshot(lab, observer: str = "observer", timeout: float = 15.0) -> Snapshot:
    """One snapshot of the server of a running lab, read by its observer node."""
    answer = lab.harness(observer, "proc_snapshot", {"fd_rules": syscalls.fd_rules()}, timeout=timeout)
    if "error" in answer:
        raise LabctlError(f"the observer could not read the server's processes: {answer['error']}")
    try:
        return Snapshot.from_json(answer)
    except syscalls.UnknownArchitecture as error:
        raise LabctlError(str(error)) from error


class Window:
    """A stretch of the server's life that the host marks: `Window(lab, ...)`, let things happen, `close()`.

    Opening and closing read the server's CPU from its cgroup, on the host; closing reads the looks
    the observer's sampler took in between from the observer's log, through the engine. Nothing
    is started in the lab at either end, so the server cannot tell it is being measured.
    The readings' times are the engine's clock (the host's own, or its statistics' timestamps on a
    remote engine), the clock the sampler stamps its looks with.
    """

    def __init__(self, lab, observer: str = "observer", server: str = "server"):
        self.lab, self.observer, self.server = lab, observer, server
        self.first = lab.usage(server)

    def close(self) -> Sample:
        last = self.lab.usage(self.server)
        # The engine stamps a log line when it receives it, a little after the look: read a margin.
        text = b"".join(self.lab.logs(self.observer, since=self.first.at - 1, until=last.at + 2))
        looks = agent.looks_between(text.decode(errors="replace"), self.first.at, last.at)
        try:
            snapshots = tuple(Snapshot.from_json(look) for look in looks)
        except syscalls.UnknownArchitecture as error:
            raise LabctlError(f"the server runs on a kernel labctl cannot read syscalls of: {error}") from error
        if not snapshots:
            raise LabctlError(f"the observer took no look at the server in {last.at - self.first.at:.1f} s: "
                              "did the server exit? (the observer's log: `labctl logs observer`)")
        return Sample(snapshots, elapsed=last.at - self.first.at, cpu_seconds=last.cpu_seconds - self.first.cpu_seconds,
                      precise=self.first.precise and last.precise)
