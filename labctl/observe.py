"""A server's threads, seen from the observer: what each waits in, what on, how much CPU it uses.
Host side; pure interpretation (what that says about how the server serves clients is
labctl/classify.py's).

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
- `render(snapshot, previous)`: a `ps`-like table for people, with each thread's CPU % since the
  previous look; `refresh_json(previous, snapshot)`: the same as one JSON object (`labctl observe
  --json`, one a line); `snapshot(lab)`: take one; `refreshes(lab, ...)`: take them, each with the
  one before it (`labctl observe`).

wchan (the kernel function a thread sleeps in) is carried and shown, never graded: its
names differ between kernel builds. Syscall NUMBERS are what is graded.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

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
#: Seconds a window's reader waits for the sampler's log to catch up with the window's end.
CATCH_UP = 3.0

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
    def from_json(cls, data: dict) -> Snapshot:
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
    def from_json(cls, data: dict) -> Sample:
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


# -- for people ------------------------------------------------------------------------------------

def cpu_percent(previous: Snapshot | None, current: Snapshot) -> dict[tuple[int, int], float | None]:
    """(pid, tid) -> the share of one CPU (in %) each thread of `current` used since `previous`: its CPU
    ticks between the two looks over the time between them (the observer's own clock). None for a thread
    the previous look did not see (it is new) or without a previous look. Ticks are 1/clk_tck s, so over
    a second the figure is good to about 1 %."""
    before = {(thread.pid, thread.tid): thread.ticks for thread in previous.threads} if previous else {}
    elapsed = current.time - previous.time if previous else 0.0
    found: dict[tuple[int, int], float | None] = {}
    for thread in current.threads:
        key = (thread.pid, thread.tid)
        if key not in before or elapsed <= 0:
            found[key] = None
        else:
            found[key] = round(100.0 * max(0, thread.ticks - before[key]) / current.clk_tck / elapsed, 1)
    return found


def render(snapshot: Snapshot, previous: Snapshot | None = None) -> str:
    """A `ps`-like table of the server's threads: the syscall each sleeps in, what that waits on (a new
    connection, one client, many sockets, a lock...), its CPU % since the previous look, CPU ticks,
    context switches; per process, the client connections it holds."""
    shares = cpu_percent(previous, snapshot)
    header = (f"{'PID':>6} {'TID':>6}  {'COMM':<15} {'ST':<2}  {'WAITING':<30} {'WAITS ON':<27} "
              f"{'WCHAN (not graded)':<20} {'CPU%':>6} {'TICKS':>6} {'CTXSW vol/invol':>16}")
    lines = [header]
    for process in snapshot.processes:
        for thread in process.threads:
            ctx = f"{thread.voluntary if thread.voluntary is not None else '?'}/" \
                  f"{thread.nonvoluntary if thread.nonvoluntary is not None else '?'}"
            share = shares.get((thread.pid, thread.tid))
            cpu = "new" if share is None and previous is not None else "-" if share is None else f"{share:.1f}"
            # comm is the server's to choose (prctl, pthread_setname_np): shown, never trusted.
            lines.append(f"{thread.pid:>6} {thread.tid:>6}  {printable(thread.comm)[:15]:<15} "
                         f"{printable(thread.state):<2}  {thread.waiting[:30]:<30} {WAIT_WORDS[thread.wait][:27]:<27} "
                         f"{printable(thread.wchan or '-')[:20]:<20} {cpu:>6} {thread.ticks:>6} {ctx:>16}")
    held = [f"{process.pid}: {process.clients}" for process in snapshot.processes if process.clients]
    over = f"CPU % over the last {snapshot.time - previous.time:.1f} s; " if previous is not None else ""
    lines.append(f"{snapshot.process_count} process(es), {snapshot.thread_count} thread(s); "
                 + (f"client connections held by process {', '.join(held)}; " if held else "")
                 + over + f"architecture {snapshot.machine}")
    return "\n".join(lines)


def refresh_json(previous: Snapshot | None, current: Snapshot, at: float | None = None) -> dict[str, Any]:
    """One look as JSON (`labctl observe --json`, one object a line): per process and thread, its state,
    the syscall it is in, what that waits on (a word of WAIT_WORDS and its words), and its CPU % since the
    previous look (None: a new thread, or no previous look). The server's strings are made printable."""
    shares = cpu_percent(previous, current)
    return {
        "at": at if at is not None else time.time(),
        "interval": round(current.time - previous.time, 3) if previous is not None else None,
        "machine": current.machine,
        "process_count": current.process_count,
        "thread_count": current.thread_count,
        "processes": [{
            "pid": process.pid, "ppid": process.ppid, "comm": printable(process.comm),
            "cmdline": printable(process.cmdline), "clients": process.clients,
            "threads": [{
                "tid": thread.tid, "comm": printable(thread.comm), "state": printable(thread.state),
                "syscall": thread.syscall if isinstance(thread.syscall, int) else None,
                "syscall_name": thread.syscall_name, "running": thread.running, "waiting": thread.waiting,
                "wait": thread.wait, "wait_words": WAIT_WORDS[thread.wait], "wchan": printable(thread.wchan),
                "cpu_percent": shares.get((thread.pid, thread.tid)), "ticks": thread.ticks,
                "voluntary": thread.voluntary, "nonvoluntary": thread.nonvoluntary,
            } for thread in process.threads],
        } for process in current.processes],
        "errors": [printable(error) for error in current.errors],
    }


#: Seconds between the first look and the look before it that its CPU % is measured against.
BASELINE = 1.0


def refreshes(lab, observer: str = "observer", interval: float | None = None, count: int | None = None,
              sleep: Callable[[float], None] = time.sleep) -> Iterator[tuple[Snapshot, Snapshot, float]]:
    """Looks at the server, each with the one before it and the host's time of it: `count` of them (default:
    one without `interval`, endless with it), a look every `interval` seconds (a look itself takes a moment:
    the pause is what is left). The first is measured against a look taken `interval` (or BASELINE)
    seconds before it, so that every look has its CPU %."""
    count = count if count is not None else (None if interval else 1)
    step = interval or BASELINE
    began = time.monotonic()
    previous = snapshot(lab, observer)
    done = 0
    while count is None or done < count:
        sleep(max(0.0, began + step - time.monotonic()))
        began = time.monotonic()
        current = snapshot(lab, observer)
        yield previous, current, time.time()
        done += 1
        previous = current


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

    def close(self, looks_from: float | None = None, looks_until: float | None = None) -> Sample:
        """The sample of the window: its CPU from the two readings, and the looks between them, or only
        those from `looks_from` to `looks_until` (the engine's clock) when given: the stretch in which
        what was being watched for really happened."""
        last = self.lab.usage(self.server)
        since = self.first.at if looks_from is None else max(self.first.at, looks_from)
        until = last.at if looks_until is None else min(last.at, looks_until)
        looks = self._looks(since, until, open_ended=looks_until is None)
        try:
            snapshots = tuple(Snapshot.from_json(look) for look in looks)
        except syscalls.UnknownArchitecture as error:
            raise LabctlError(f"the server runs on a kernel labctl cannot read syscalls of: {error}") from error
        if not snapshots:
            raise LabctlError(f"the observer took no look at the server in {max(0.0, until - since):.1f} s: "
                              "did the server exit? (the observer's log: `labctl logs observer`)")
        return Sample(snapshots, elapsed=last.at - self.first.at, cpu_seconds=last.cpu_seconds - self.first.cpu_seconds,
                      precise=self.first.precise and last.precise)

    def _looks(self, since: float, until: float, open_ended: bool = False) -> list[dict]:
        """The sampler's looks from `since` to `until`. Its log may lag behind its looks (a busy machine, a
        log that goes through a pipe): while none of the window is in it, it is read again, for at most
        CATCH_UP seconds (a sampler that stopped with its server never writes one).

        An `open_ended` window (nothing in it ends at `until`: the server is just being watched) also takes
        the first look after `until` when none fell inside: on a machine loaded enough, the sampler can be
        kept off the CPU for the whole of a short window (seen: none in 1 s, with a load of 13 on 2 cores),
        and the look it takes next still shows the state the window asked about."""
        give_up = time.monotonic() + CATCH_UP
        while True:
            # The engine stamps a log line when it receives it, a little after the look: read a margin.
            reach = until + (CATCH_UP if open_ended else 0.0)
            text = b"".join(self.lab.logs(self.observer, since=since - 1, until=reach + 2))
            looks = agent.looks_between(text.decode(errors="replace"), since, reach)
            inside = [look for look in looks if look["at"] <= until]
            if inside:
                return inside
            if looks:  # open-ended, none inside: the first one after
                return looks[:1]
            if time.monotonic() >= give_up:
                return []
            time.sleep(0.1)
