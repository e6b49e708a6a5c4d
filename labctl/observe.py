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

#: The models io_model can name. "busy-polling", "stopped" and "unknown" are never right answers.
MODELS = ("blocking", "threaded", "forking", "event-driven", "busy-polling", "stopped", "unknown")
EXPECTABLE_MODELS = ("blocking", "threaded", "forking", "event-driven")


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
                    ticks=p.get("ticks", 0), child_ticks=p.get("child_ticks", 0),
                    threads=tuple(Thread(pid=p["pid"], tid=t["tid"], comm=t["comm"], state=t["state"],
                                         syscall=t.get("syscall"), machine=machine, arg0=t.get("arg0"),
                                         wchan=t.get("wchan") or "", ticks=t.get("ticks", 0),
                                         voluntary=t.get("voluntary"), nonvoluntary=t.get("nonvoluntary"),
                                         uid=t.get("uid"))
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


def blocked_in(sample: Sample, names: Iterable[str]) -> list[Verdict]:
    """Per steady thread: is it asleep (state S) in one of `names` in most snapshots?

    Most, not all: a correct idle server may wake for a moment (a timer, a signal), and a
    snapshot may catch that. A busy loop is running in nearly every snapshot, and a server
    waiting in the wrong syscall is asleep there in every one.
    """
    allowed = [name for name in names if syscalls.number(name, sample.machine) is not None]
    expected = ", ".join(allowed)
    verdicts = []
    for entry in steady_threads(sample):
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
    model: str                        # one of MODELS
    reason: str                       # the evidence that decided it, in words
    facts: dict[str, Any]             # the numbers behind it


def _majority(snapshots: tuple[Snapshot, ...], test) -> list[Thread]:
    """Threads (by tid, last seen) for which `test(thread)` held in more than half of their looks."""
    looks: dict[int, list[Thread]] = {}
    for snapshot in snapshots:
        for thread in snapshot.threads:
            looks.setdefault(thread.tid, []).append(thread)
    return [seen[-1] for seen in looks.values() if 2 * sum(1 for t in seen if test(t)) > len(seen)]


def _most_receiving(snapshots: tuple[Snapshot, ...], by_process: bool) -> int:
    """The most threads (or processes) asleep in a receive syscall at one moment."""
    best = 0
    for snapshot in snapshots:
        receiving = [thread for thread in snapshot.threads if thread.asleep_in(syscalls.RECEIVES)]
        best = max(best, len({thread.pid for thread in receiving}) if by_process else
                   max(Counter(thread.pid for thread in receiving).values(), default=0))
    return best


def _waits(snapshots: tuple[Snapshot, ...]) -> str:
    seen = Counter(thread.waiting for snapshot in snapshots for thread in snapshot.threads)
    return ", ".join(f"{what} x{count}" for what, count in seen.most_common(4)) or "nothing"


def io_model(facts: Facts) -> Classification:
    """Classify how the server waits for clients; the first rule that matches decides.

    1. unknown       no server process was seen.
       stopped       most of its threads are stopped (state T), idle or holding clients.
    2. busy-polling  idle, it uses >= busy_fraction of a CPU, or a thread is running (R: on a
                     CPU or waiting for one) in most looks: on a crowded host a spinning
                     server gets little CPU, but it is still never asleep.
    3. forking       holding N clients, it has >= ceil(N/2) more processes than idle, or
                     >= 2 processes are asleep receiving at once (a pre-forked pool).
    4. threaded      holding N clients, one process has >= ceil(N/2) more threads than idle,
                     or >= 2 threads of one process are asleep receiving at once (a pool).
    5. event-driven  holding N clients, a thread sleeps in select/poll/epoll (not in a
                     receive), and a new client got an answer meanwhile (when probed).
    6. blocking      one process, one thread at a time: holding clients it sleeps
                     receiving from one of them, or a new client got no answer.
    Without a loaded sample the same rules run on the idle one (weaker evidence).
    """
    idle, loaded, n = facts.idle, facts.loaded, facts.connections
    probe = (facts.hold or {}).get("probe")
    record: dict[str, Any] = {
        "idle_cpu_percent": round(idle.cpu_percent, 1),
        "idle_processes": idle.peak_processes, "idle_threads": idle.peak_threads,
        "idle_waits": _waits(idle.snapshots),
        "connections_held": (facts.hold or {}).get("connected", n if loaded else 0),
    }
    if loaded is not None:
        record.update({"loaded_processes": loaded.peak_processes, "loaded_threads": loaded.peak_threads,
                       "loaded_cpu_percent": round(loaded.cpu_percent, 1), "loaded_waits": _waits(loaded.snapshots)})
    if probe is not None:
        record["probe"] = probe

    def result(model: str, reason: str) -> Classification:
        return Classification(model, reason, record)

    if idle.peak_processes == 0:
        return result("unknown", "no server process was seen (did the server exit?)")
    for sample in (idle, loaded):
        stopped = _majority(sample.snapshots, lambda thread: thread.state in ("T", "t")) if sample else []
        if stopped and 2 * len(stopped) >= len(watch(sample)):
            return result("stopped", f"{stopped[0].label} is stopped (state {stopped[0].state}: SIGSTOP, or a "
                                     "debugger): a stopped server waits for nothing and serves nobody")
    if idle.cpu_fraction >= facts.busy_fraction:
        return result("busy-polling", f"with no client it used {idle.cpu_percent:.0f}% of a CPU "
                                      f"over {idle.elapsed:.1f} s: it spins instead of sleeping")
    looks = len(idle.snapshots)
    spinning = [entry for entry in watch(idle) if looks >= 3 and 2 * entry.running_count > looks]
    if spinning:
        return result("busy-polling", f"with no client {spinning[0].label} was running in "
                                      f"{spinning[0].running_count} of {looks} looks (and the server used "
                                      f"{idle.cpu_percent:.0f}% of a CPU): it spins instead of sleeping")
    base = loaded if loaded is not None else idle
    held = record["connections_held"]
    need = max(1, math.ceil(held / 2)) if loaded is not None else 1
    extra_processes = base.peak_processes - idle.peak_processes if loaded is not None else 0
    extra_threads = base.peak_threads - idle.peak_threads if loaded is not None else 0
    record.update({"extra_processes": extra_processes, "extra_threads": extra_threads})
    while_held = f"while {held} clients were held" if loaded is not None else "when idle"

    if loaded is not None and held and extra_processes >= need:
        return result("forking", f"{while_held} it had {base.peak_processes} processes, "
                                 f"{extra_processes} more than idle: a process per client")
    receiving_processes = _most_receiving(base.snapshots, by_process=True)
    if receiving_processes >= 2 or (loaded is None and idle.peak_processes >= 2):
        return result("forking", f"{while_held} {max(receiving_processes, idle.peak_processes)} processes "
                                 f"served clients at once (a pool of processes)")
    if loaded is not None and held and extra_threads >= need:
        return result("threaded", f"{while_held} one process had {base.peak_threads} threads, "
                                  f"{extra_threads} more than idle: a thread per client")
    receiving_threads = _most_receiving(base.snapshots, by_process=False)
    if receiving_threads >= 2 or (loaded is None and idle.peak_threads >= 2):
        return result("threaded", f"{while_held} {max(receiving_threads, idle.peak_threads)} threads "
                                  f"of one process served clients at once (a pool of threads)")
    multiplexing = _majority(base.snapshots, lambda thread: thread.asleep_in(syscalls.MULTIPLEXERS))
    if multiplexing:
        where = multiplexing[0].waiting
        if probe is not None and not probe.get("answered"):
            return result("blocking", f"{while_held} it was {where}, yet a new client got no answer "
                                      f"within {probe.get('seconds', 0):.1f} s: one client at a time")
        answered = f"; a new client was answered in {probe['seconds'] * 1000:.0f} ms" if probe else ""
        return result("event-driven", f"{while_held} its only thread was {where}, "
                                      f"not in a receive{answered}: one thread waits for many sockets")
    usual = _waits(base.snapshots)
    if probe is not None and not probe.get("answered"):
        return result("blocking", f"{while_held} its one thread was {usual.split(' x')[0]} and a new client got "
                                  f"no answer within {probe.get('seconds', 0):.1f} s: one client at a time")
    return result("blocking", f"one process with one thread, {while_held} {usual.split(' x')[0]}")


# -- for people ------------------------------------------------------------------------------------

def render(snapshot: Snapshot) -> str:
    """A `ps`-like table of the server's threads: what each waits in, CPU ticks, context switches."""
    header = f"{'PID':>6} {'TID':>6}  {'COMM':<15} {'ST':<2}  {'WAITING':<34} {'WCHAN (not graded)':<24} " \
             f"{'TICKS':>6} {'CTXSW vol/invol':>16}"
    lines = [header]
    for thread in snapshot.threads:
        ctx = f"{thread.voluntary if thread.voluntary is not None else '?'}/" \
              f"{thread.nonvoluntary if thread.nonvoluntary is not None else '?'}"
        # comm is the server's to choose (prctl, pthread_setname_np): shown, never trusted.
        lines.append(f"{thread.pid:>6} {thread.tid:>6}  {printable(thread.comm)[:15]:<15} {printable(thread.state):<2}  "
                     f"{thread.waiting[:34]:<34} {printable(thread.wchan or '-')[:24]:<24} {thread.ticks:>6} {ctx:>16}")
    lines.append(f"{snapshot.process_count} process(es), {snapshot.thread_count} thread(s); "
                 f"architecture {snapshot.machine}")
    return "\n".join(lines)


def snapshot(lab, observer: str = "observer", timeout: float = 15.0) -> Snapshot:
    """One snapshot of the server of a running lab, read by its observer node."""
    answer = lab.harness(observer, "proc_snapshot", {}, timeout=timeout)
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
