"""Checks of the catalog: process side. They look at the server from the observer sidecar.

- `threads`: how many threads / processes the server has while the client holds N connections;
- `blocked_in`: when idle, every server thread sleeps in one of the named syscalls;
- `idle_cpu`: with no client (or only idle ones) the server uses almost no CPU: no busy loop;
- `io_model`: blocking / threaded / forking / event-driven, as the exercise expects.

Facts come from the observer's sampler (its looks at /proc over a window, see observe.Window),
the host (the server's CPU from its cgroup: every task, reaped children included, and nothing
in the lab sees it read) and the client (hold_connections); labctl/observe.py interprets them;
this module decides and words it. While the client holds connections (one harness exec, run in
a host thread) the window is open; everything is bounded by the check's remaining budget.
"""

from __future__ import annotations

import difflib
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

from pydantic import Field, field_validator, model_validator

from labctl import models, observe, syscalls
from labctl.checks import CheckContext, CheckParams, Outcome, check
from labctl.checks.common import decode_escapes, plural, run_harness
from labctl.classify import Facts, classify
from labctl.errors import BudgetTooShort, LabctlError

#: Seconds from the start of the client's hold (in the client) to the first look used: the connects, the
#: probe (at 60% of it) and the server settling in what it waits on.
HOLD_LEAD = 1.0
#: Seconds io_model's warm-up request may take (its answer is evidence, not judged).
WARM_UP = 2.0
#: Seconds the hold lasts past the end of the observer's window.
HOLD_TAIL = 0.8
#: Seconds the idle server is watched to count its threads before the client comes (~5 looks).
IDLE_COUNT_WINDOW = 0.5
#: Seconds a window needs beyond its length: two cgroup readings and one read of the observer's log.
WINDOW_SLACK = 1.5


# -- expectations like "1", ">= N", "<= 8" ------------------------------------------------------

_EXPECTATION = re.compile(r"^(==|>=|<=|>|<)?\s*(?:(\d+)|N(?:\s*([+-])\s*(\d+))?)$")
_OPS = {"==": lambda a, b: a == b, ">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b,
        ">": lambda a, b: a > b, "<": lambda a, b: a < b}


@dataclass(frozen=True)
class Expectation:
    """A count expectation: `[op] term`; op one of == >= <= > < (none: ==); term a whole number,
    or N, N+k, N-k where N is the number of connections the check holds open.

    Strict: "=> 3", "= 3", "1.5", "-1", "n", ">= N*2" are errors, not guesses.
    """

    op: str
    value: int                        # the number, or the offset from N
    symbolic: bool                    # True: value is relative to N

    @classmethod
    def parse(cls, text: str | int) -> Expectation:
        if isinstance(text, bool) or not isinstance(text, (str, int)):
            raise ValueError(f"expected a count like 1, '>= N' or '<= 8', found {text!r}")
        if isinstance(text, int):
            if text < 0:
                raise ValueError(f"a count cannot be negative: {text}")
            return cls("==", text, False)
        match = _EXPECTATION.match(text.strip())
        if not match:
            raise ValueError(f"expected a count like 1, '>= 4', '<= 8' or '>= N' (N: the connections held), "
                             f"found {text!r}")
        op, number, sign, offset = match.groups()
        if number is not None:
            return cls(op or "==", int(number), False)
        delta = int(offset or 0) * (-1 if sign == "-" else 1)
        return cls(op or "==", delta, True)

    def target(self, n: int) -> int:
        return n + self.value if self.symbolic else self.value

    def holds(self, count: int, n: int = 0) -> bool:
        return _OPS[self.op](count, self.target(n))

    def describe(self, n: int = 0) -> str:
        """">= 4 (N = 4 connections held)", "== 1"."""
        if not self.symbolic:
            return f"{self.op} {self.value}"
        term = "N" if self.value == 0 else f"N {'+' if self.value > 0 else '-'} {abs(self.value)}"
        return f"{self.op} {self.target(n)} ({term}, N = {n} connections held)"


def _expectation_field(value: Any) -> Any:
    if value is None:
        return None
    Expectation.parse(value)
    return str(value).strip()


def _observer_errors(sample: observe.Sample, offers: frozenset[str] = frozenset({"thread_waits"})) -> None:
    """A check that reads /proc fails when the observer could not read it, except for what the backend says it
    cannot give: without `thread_waits` (the local backend with no CAP_SYS_PTRACE) each task's syscall file is
    unreadable by design, and the checks that need it are set aside before they run; a thread count or a CPU
    time does not need it."""
    errors = sample.errors if "thread_waits" in offers else [
        error for error in sample.errors if not error.split(":", 1)[0].endswith("/syscall")]
    if errors:
        raise LabctlError("the observer could not read the server's /proc (does it have SYS_PTRACE and "
                          "DAC_READ_SEARCH, and does it share the server's PID namespace?): "
                          + "; ".join(errors[:3]))


def sample(ctx: CheckContext, window: float) -> observe.Sample:
    """The server over the next `window` seconds: the observer's looks, and its CPU from its cgroup.

    Nothing is started in the lab to take them (see observe.Window).
    """
    if ctx.observer not in ctx.lab.spec.nodes:
        raise LabctlError(f"this check looks at the server's threads from an observer node, and lab.yaml has "
                          f"no node {ctx.observer!r} (role: observer, watches: {ctx.server})")
    if ctx.remaining < window + WINDOW_SLACK:
        raise BudgetTooShort(f"the check's time budget ({ctx.remaining:.1f} s left) is too short to watch the server "
                          f"for {window:.1f} s: give the check a longer timeout")
    opened = observe.Window(ctx.lab, ctx.observer, ctx.server)
    time.sleep(window)
    result = opened.close()
    _observer_errors(result, ctx.lab.backend.offers())
    return result


#: What each held connection sends: the start of a request, so the server waits for the rest.
PARTIAL_REQUEST = "GET / HTTP/1.0\r\n"


def sample_while_holding(ctx: CheckContext, connections: int, window: float, probe: bool = False,
                         request: str = PARTIAL_REQUEST,
                         probe_request: str | None = None) -> tuple[observe.Sample, dict]:
    """Sample the server while the client holds `connections` connections with partial requests.

    The client's hold runs in a host thread (one harness exec) for HOLD_LEAD + window + HOLD_TAIL s from
    when it really begins in the client, which a busy machine delays by an unknown time (docker exec's
    start, Python's): the looks sampled are those from HOLD_LEAD after that beginning (`started_at`, the
    clock the sampler stamps its looks with) for `window` s, never those of a fixed time after the host
    asked. The server's CPU is read over the whole hold (two cgroup readings around it).
    """
    hold = HOLD_LEAD + window + HOLD_TAIL
    needed = hold + 1.0
    if ctx.remaining < needed:
        raise BudgetTooShort(f"the check's time budget ({ctx.remaining:.1f} s left) is too short to hold "
                          f"connections for {hold:.1f} s: give the check a longer timeout")
    if ctx.observer not in ctx.lab.spec.nodes:
        raise LabctlError(f"this check looks at the server's threads from an observer node, and lab.yaml has "
                          f"no node {ctx.observer!r} (role: observer, watches: {ctx.server})")
    params = {"host": ctx.host, "port": ctx.port, "connections": connections, "hold": hold,
              "probe": probe, "probe_after": HOLD_LEAD * 0.6, "probe_timeout": 1.0, "request": request,
              "probe_request": probe_request}
    outcome: dict[str, Any] = {}

    def hold_them() -> None:
        try:
            outcome["answer"] = run_harness(ctx, ctx.client, "hold_connections", params, work=hold)
        except BaseException as error:  # re-raised in the check's thread
            outcome["error"] = error

    opened = observe.Window(ctx.lab, ctx.observer, ctx.server)
    holder = threading.Thread(target=hold_them, name="labctl-hold", daemon=True)
    holder.start()
    holder.join(timeout=ctx.remaining)
    if holder.is_alive():
        raise LabctlError("the client's hold of connections did not end within the check's budget")
    if "error" in outcome:
        raise outcome["error"]
    answer = outcome["answer"]
    began = answer.get("started_at")
    if not isinstance(began, (int, float)):
        began = opened.first.at
    # Watched once every connection is made (a slow connect can take longer than the lead), for the window.
    since = began + max(HOLD_LEAD, float(answer.get("connected_after") or 0.0) + 0.1)
    seen = opened.close(looks_from=since, looks_until=since + window)
    _observer_errors(seen, ctx.lab.backend.offers())
    return seen, answer


def warm_up(ctx: CheckContext, request: str | None = None) -> dict:
    """One request before watching: what a server does on its first request (a runtime paging in its
    HTTP code, starting its I/O helpers) is over before it is watched, whichever checks ran before.
    Its answer is evidence, never judged."""
    return run_harness(ctx, ctx.client, "probe", {"host": ctx.host, "port": ctx.port, "timeout": WARM_UP,
                                               "request": request}, work=WARM_UP)


def _hold_evidence(hold: dict) -> dict:
    """The client's side of a hold, for the evidence: how many connected, errors, the probe."""
    shown = {"connected": hold.get("connected", 0)}
    for key in ("requested", "connect_errors", "closed_by_server", "answered", "probe"):
        if hold.get(key) not in (None, [], {}):
            shown[key] = hold[key]
    return shown


# -- threads -----------------------------------------------------------------------------------

class ThreadsParams(CheckParams):
    connections: int = Field(4, ge=0, le=2000, description="Connections the client holds open (N), each "
                                                           "with a partial request, while the server is counted.")
    threads: str | int | None = Field(None, description="Expected threads of the server's (largest) process: "
                                                        "'1', '>= N', '<= 8', 'N + 1' ...")
    processes: str | int | None = Field(None, description="Expected number of server processes, same syntax.")
    grow_by: str | int | None = Field(None, description=(
        "Expected growth of the (largest) process's threads from idle to while the connections are held: "
        "'>= N' for a thread per client, '0' for a pool made up front. Unlike `threads`, it does not count "
        "the threads a server (or its runtime) had before any client came."))
    window: float = Field(1.0, ge=0.2, le=10, description="Seconds the server is watched while they are held.")

    @field_validator("threads", "processes", "grow_by", mode="before")
    @classmethod
    def _counts(cls, value: Any) -> Any:
        return _expectation_field(value)

    @model_validator(mode="after")
    def _one_expectation(self) -> ThreadsParams:
        if self.threads is None and self.processes is None and self.grow_by is None:
            raise ValueError("give `threads`, `processes`, `grow_by` or several (e.g. grow_by: '>= N')")
        return self


@check("threads", ThreadsParams,
       "Counts the server's threads and processes while the client holds N connections open: a thread-per-"
       "client server grows with its clients, a blocking or event-driven one stays at one.",
       default_timeout=30.0)
def threads_check(ctx: CheckContext, params: ThreadsParams) -> Outcome:
    n = params.connections
    idle = sample(ctx, IDLE_COUNT_WINDOW)
    if n:
        seen, hold = sample_while_holding(ctx, n, params.window)
    else:
        seen, hold = sample(ctx, params.window), {}
    if seen.peak_processes == 0:
        return Outcome(False, "no server process was seen: did the server exit?", {})
    while_ = f"while {n} connections were held" if n else "with no client"
    growth = seen.peak_threads - idle.peak_threads
    counts = {"threads": seen.peak_threads, "processes": seen.peak_processes, "grow_by": growth}
    evidence: dict[str, Any] = {
        "connections": n, "idle_threads": idle.peak_threads, "idle_processes": idle.peak_processes,
        "threads": seen.peak_threads, "processes": seen.peak_processes, "grew_by": growth,
        "thread_total": seen.peak_thread_total,
        "per_look": [{"processes": s.process_count, "threads": s.max_threads} for s in seen.snapshots],
    }
    if hold:
        evidence["hold"] = _hold_evidence(hold)
    failures, found = [], []
    for what, word in (("threads", "thread"), ("processes", "process"), ("grow_by", "thread")):
        text = getattr(params, what)
        if text is None:
            continue
        expectation = Expectation.parse(text)
        count = counts[what]
        evidence[f"expected_{what}"] = expectation.describe(n)
        if what == "grow_by":
            # Said with what was compared: the threads idle, and while the clients were held.
            found.append(f"{growth:+d} threads from idle ({idle.peak_threads} -> {seen.peak_threads}; expected "
                         f"a growth of {expectation.describe(n)})")
        else:
            found.append(f"{plural(count, word)} (expected {expectation.describe(n)}; idle: "
                         f"{idle.peak_threads if what == 'threads' else idle.peak_processes})")
        if expectation.holds(count, n):
            continue
        if what == "grow_by":
            failure = (f"{while_} the server's threads went from {idle.peak_threads} (idle) to {seen.peak_threads}, "
                       f"a growth of {growth}; expected a growth of {expectation.describe(n)}")
            failure += (": it does not start a thread per client" if expectation.op in (">", ">=")
                        else ": it starts threads per client")
            failures.append(failure)
            continue
        idle_count = idle.peak_threads if what == "threads" else idle.peak_processes
        failure = (f"{while_} the server had {plural(count, word)} (idle: {idle_count}); "
                   f"expected {what} {expectation.describe(n)}")
        if expectation.op in (">", ">=") and count <= idle_count:
            failure += f": it does not start a {word} per client"
        elif expectation.op in ("<", "<="):
            failure += f": it starts more {what} than allowed"
        failures.append(failure)
    note = ""
    if hold and hold.get("connected", n) < n:
        note = f" Only {hold.get('connected')} of the {n} connections were made."
    if failures:
        return Outcome(False, "; ".join(failures) + "." + note, evidence)
    return Outcome(True, f"{while_} the server had " + " and ".join(found) + "." + note, evidence)


# -- blocked_in --------------------------------------------------------------------------------

def _known_syscall(name: str) -> str:
    if name not in syscalls.ALL_NAMES:
        close = difflib.get_close_matches(name, sorted(syscalls.ALL_NAMES), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"unknown syscall {name!r}{hint}")
    return name


class BlockedInParams(CheckParams):
    syscalls: list[str] = Field(min_length=1, description="Syscall names a waiting thread may sleep in, "
                                                          "e.g. [accept4] or [epoll_wait, epoll_pwait].")
    window: float = Field(1.0, ge=0.3, le=10, description="Seconds the idle server is watched (the observer "
                                                          "looks about ten times a second, at moments that vary).")
    busy_percent: float = Field(20.0, gt=0, le=400, description="CPU (% of one CPU, from the server's cgroup) "
                                                                "the idle server may use in the window: more means "
                                                                "something runs between the looks, whatever they "
                                                                "show.")
    set_aside: bool = Field(True, description=(
        "Leave out (and name) the threads that do not serve the network: a master process waiting for its "
        "children or signals, a runtime's helper threads waiting on locks, pipes or timers. A server whose "
        "every thread is such a waiter is judged whole."))

    @field_validator("syscalls")
    @classmethod
    def _names(cls, names: list[str]) -> list[str]:
        return [_known_syscall(name) for name in names]


@check("blocked_in", BlockedInParams,
       "When no client is connected, every server thread is asleep (state S) in one of the named syscalls "
       "(checked by number for the kernel's architecture); a thread that runs is a busy loop.",
       default_timeout=20.0, needs=frozenset({"thread_waits"}))
def blocked_in_check(ctx: CheckContext, params: BlockedInParams) -> Outcome:
    seen = sample(ctx, params.window)
    arch = seen.machine
    numbers = syscalls.numbers(params.syscalls, arch)
    if not numbers:
        raise LabctlError(f"none of {', '.join(params.syscalls)} exists on {arch}: the exercise should name "
                          f"syscalls of this architecture (e.g. epoll_pwait, ppoll, pselect6 on aarch64)")
    verdicts = observe.blocked_in(seen, params.syscalls, params.set_aside)
    aside = observe.judged_threads(seen, params.set_aside)[1]
    evidence: dict[str, Any] = {
        "architecture": arch, "expected": {name: number for name, number in numbers.items()},
        "not_on_this_architecture": [name for name in params.syscalls if name not in numbers],
        "threads": [dict(v.thread.evidence(), ok=v.ok) for v in verdicts],
        "not_judged": [f"{entry.label}: {observe.WAIT_WORDS[entry.wait]}" for entry in aside],
        "looks": len(seen.snapshots), "window": round(seen.elapsed, 2),
    }
    if not verdicts:
        return Outcome(False, "no server thread was seen: did the server exit?", evidence)
    percent = 100 * seen.cpu_fraction
    evidence["cpu_percent"] = round(percent, 1)
    return judge_blocked_in(verdicts, aside, percent, seen.elapsed, params, evidence)


def judge_blocked_in(verdicts: list[observe.Verdict], aside: list[observe.ThreadWatch], percent: float,
                     elapsed: float, params: BlockedInParams, evidence: dict[str, Any]) -> Outcome:
    """Every judged thread asleep where expected, and the server's CPU low: pass; else the first bad thread."""
    bad = [v for v in verdicts if not v.ok]
    if not bad and percent >= params.busy_percent:
        return Outcome(False, f"every look found the server's threads asleep where expected, yet the server used "
                              f"{percent:.0f}% of a CPU over {elapsed:.1f} s (limit {params.busy_percent:g}%): "
                              f"something runs between the looks (short-lived child processes, or a thread that "
                              f"sleeps only while watched).", evidence)
    if bad:
        more = f" (and {len(bad) - 1} more {'threads' if len(bad) > 2 else 'thread'} like it)" if len(bad) > 1 else ""
        why = bad[0].why
        return Outcome(False, why + more + ("" if why.endswith("?") and not more else "."), evidence)
    shown = "; ".join(v.why for v in verdicts[:3]) + (f"; and {len(verdicts) - 3} more" if len(verdicts) > 3 else "")
    aside_text = ""
    if aside:
        others = "other threads" if len(aside) > 1 else "other thread"
        aside_text = (f" ({len(aside)} {others} that do not serve the network, not judged: "
                      f"{observe.WAIT_WORDS[aside[0].wait]}{', ...' if len(aside) > 1 else ''})")
    return Outcome(True, f"idle, every server thread sleeps where expected: {shown}.{aside_text}", evidence)


# -- idle_cpu ----------------------------------------------------------------------------------

class IdleCpuParams(CheckParams):
    max_percent: float = Field(5.0, gt=0, le=400, description="Most CPU the idle server may use, in percent "
                                                              "of one CPU.")
    window: float = Field(5.0, ge=0.5, le=60, description=(
        "Seconds of quiet over which the CPU is measured (from the server's cgroup: every process and thread "
        "counts). A server that starts to spin only after a longer silence than the checks before this one "
        "and this window leave is not seen: a longer window looks further, at the cost of grading time."))
    connections: int = Field(0, ge=0, le=2000, description="Idle connections held open meanwhile (0: none); "
                                                           "a server must not spin on idle clients either.")


@check("idle_cpu", IdleCpuParams,
       "The server uses (almost) no CPU while it waits: a server that busy-polls a non-blocking socket "
       "burns a whole CPU doing nothing.", default_timeout=20.0)
def idle_cpu_check(ctx: CheckContext, params: IdleCpuParams) -> Outcome:
    hold: dict = {}
    if params.connections:
        seen, hold = sample_while_holding(ctx, params.connections, params.window)
    else:
        seen = sample(ctx, params.window)
    percent = seen.cpu_percent
    busiest = sorted(observe.watch(seen), key=lambda entry: -entry.cpu_ticks)[:3]
    evidence: dict[str, Any] = {
        "cpu_percent": round(percent, 1), "max_percent": params.max_percent,
        "cpu_seconds": round(seen.cpu_seconds, 4), "window": round(seen.elapsed, 2),
        "measured": "the server container's cgroup, read by the host" + ("" if seen.precise else
                                                                          " (the engine's 1 s statistics)"),
        "busiest_threads": [entry.evidence() for entry in busiest],
    }
    if hold:
        evidence["hold"] = _hold_evidence(hold)
    while_ = (f"while {params.connections} idle connections were held" if params.connections
              else "while no client was connected")
    if seen.peak_processes == 0:
        return Outcome(False, "no server process was seen: did the server exit?", evidence)
    if percent > params.max_percent:
        top = busiest[0] if busiest and busiest[0].cpu_ticks > 0 else None
        who = (f"; {top.label} used {100 * top.cpu_ticks / seen.clk_tck / seen.elapsed:.0f}% and was "
               f"{top.usual}" if top else "")
        return Outcome(False, f"{while_} the server used {percent:.0f}% of a CPU over {seen.elapsed:.1f} s "
                              f"(limit {params.max_percent:g}%){who}: it spins instead of sleeping until a "
                              f"client sends something (busy-polling?).", evidence)
    return Outcome(True, f"{while_} the server used {percent:.1f}% of a CPU over {seen.elapsed:.1f} s "
                         f"(limit {params.max_percent:g}%).", evidence)


# -- io_model ----------------------------------------------------------------------------------

class IoModelParams(CheckParams):
    expect: models.Expected | list[models.Expected] = Field(description=(
        "The I/O model (or models) the exercise asks for: blocking, thread-per-connection, thread-pool, "
        "fork-per-connection, prefork, event-loop, event-loop-workers, event-loop-threads; or a family of them: "
        "threaded, forking, event-driven."))
    connections: int = Field(4, ge=1, le=200, description=(
        "Connections held (partial requests) while watching; more when the server has more threads idle (two "
        "more than its biggest process, up to 64), so that a pool is seen full."))
    window: float = Field(1.0, ge=0.2, le=10, description="Seconds watched idle, and again while loaded.")
    busy_percent: float = Field(20.0, gt=0, le=400, description="Idle CPU (% of one CPU) from which the "
                                                                "server counts as busy-polling.")
    request: str = Field(PARTIAL_REQUEST, description=(
        "What each held connection sends, so the server waits for the rest: the start of an HTTP request; "
        "'' sends nothing (a server of another protocol, which may close a connection that speaks HTTP)."))
    probe_request: str | None = Field(None, description=(
        "What the new client sends while the others are held, answered if any byte comes back: by default an "
        "HTTP GET of /; for another protocol, one of its requests (like 'PING\\r\\n')."))


#: The most connections io_model holds to outnumber a server's idle threads.
MOST_HELD = 64


def connections_to_hold(idle: observe.Sample, asked: int) -> int:
    """`asked`, or more: two more than the most threads one server process had idle (at most
    MOST_HELD). A pool can serve no more clients at once than it has threads; a server that makes
    a thread per client serves them all, however many threads it kept from earlier clients."""
    return max(asked, min(MOST_HELD, idle.peak_threads + 2))


@check("io_model", IoModelParams,
       "Tells how the server serves clients (blocking, a thread or a process per client, a pool of either, one "
       "or several event loops, or busy polling) from what each of its threads waits on, idle and with clients "
       "held, and its CPU, and compares with the exercise.", default_timeout=30.0, needs=frozenset({"thread_waits"}))
def io_model_check(ctx: CheckContext, params: IoModelParams) -> Outcome:
    expected = [params.expect] if isinstance(params.expect, str) else list(params.expect)
    probe_request = (decode_escapes(params.probe_request).decode("latin-1")
                     if params.probe_request is not None else None)
    warmed = warm_up(ctx, probe_request)
    idle = sample(ctx, params.window)
    connections = connections_to_hold(idle, params.connections)
    loaded, hold = sample_while_holding(ctx, connections, params.window, probe=True, request=params.request,
                                        probe_request=probe_request)
    found = classify(Facts(idle=idle, loaded=loaded, connections=connections, hold=hold,
                           busy_fraction=params.busy_percent / 100))
    evidence = {"model": found.model, "expected": expected, "reason": found.reason, **found.facts,
                "warm_up": warmed}
    if models.matches(found.model, expected):
        return Outcome(True, f"the server is {found.model} ({models.words(found.model)}): {found.reason}.", evidence)
    wanted = " or ".join(expected)
    return Outcome(False, f"the server looks {found.model} ({models.words(found.model)}), expected {wanted}: "
                          f"{found.reason}.", evidence)
