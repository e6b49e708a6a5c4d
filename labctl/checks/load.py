"""Checks of the catalog: a load curve (load_curve).

At each step of a rising number of clients (1, 8, 64, 256 by default), the client container runs them at once
for a few seconds (labctl/harness/load.py's load_step: one epoll loop, every request timed) while the host
watches the server through the observer (observe.Window: its threads, and its CPU from its cgroup). Each step
becomes one row of a table (latency p50/p90/p99, throughput, errors by how connections ended, threads,
processes, CPU); the table is the check's evidence and what labctl/load_plot.py draws.

The verdict is the curve's shape, never its absolute numbers (those depend on how busy the machine is):
- the p99 latency may grow at most `p99_growth` times from the first step to any later one;
- the server's threads stay at most `max_threads`, or ("bounded") no more than `thread_slack` above what the
  first step saw: an event loop, or a pool made up front;
- at most `max_errors` requests of a step fail.
The steps after the first that fails are not run: more clients cannot mend a shape, and a server that serves
one client at a time would only keep the grading waiting.

Why the clients take their answers slowly (read_delay): with small answers that come at once, a server
that serves one connection at a time keeps up with many clients as well as an event loop does (measured: its
latencies stayed flat from 1 to 32 clients, the late parts of their requests waiting whole in the kernel
while their connections waited in the listen backlog). What such a server cannot do is wait for one client
and serve the others meanwhile; a client on a slow link, which takes a large answer slowly, makes it wait
after it accepted the connection (harness/load.py says how). The judging functions are pure (facts in,
Outcome out), unit-tested without a lab.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from labctl import observe
from labctl.checks import CheckContext, CheckParams, Outcome, check
from labctl.checks.common import counts_text, explain_failure, plural, run_harness, seconds_text, size_text
from labctl.checks.concurrency import expected_file, percentile
from labctl.errors import BudgetTooShort, LabctlError
from labctl.harness.wire import LoadStep

#: Descriptors kept free below a nofile limit when a step is capped to it (the harness's own, the server's
#: listening socket, its log, its docroot's files).
NOFILE_RESERVE = 64
#: Tasks kept free below the server's pids limit when a step is capped to it (a thread per client must fit).
PIDS_RESERVE = 16
#: Seconds a step needs beyond its clients' own time: the exec, the harness's start, the observer's window.
STEP_OVERHEAD = 2.0
#: A server that used this share of one CPU at a step is busy, not waiting (the diagnosis says so).
BUSY_FRACTION = 0.85

HINT_ONE_AT_A_TIME = ("While it sends one client its answer (and waits for that client to take it), every other "
                      "client waits. Serve each client in its own thread, or watch every socket with poll/epoll "
                      "(Python: selectors.DefaultSelector) and send only what each socket takes.")
HINT_THREADS = ("An event loop serves every connection from one thread: wait for all the sockets at once with "
                "epoll/poll (Python: selectors.DefaultSelector) instead of giving each connection a thread.")


class LoadCurveParams(CheckParams):
    steps: list[int] = Field([1, 8, 64, 256], min_length=2, max_length=10, description=(
        "The numbers of clients at once, one step each, rising. A step above what the lab allows (the server's "
        "and the client's nofile limits in lab.yaml, less 64; the server's pids limit, less 16, unless "
        "threads must stay bounded) runs at that limit instead, and the evidence and message say so."))
    seconds: float = Field(2.0, ge=0.5, le=30, description=(
        "Seconds each step lasts: no request starts after them; those in flight are finished and counted."))
    path: str = Field("/medium.bin", pattern=r"^/", description=(
        "The file every request asks for. With read_delay it must be larger than the kernel's buffers between "
        "server and client hold (min_size), or a server's send() never has to wait."))
    read_delay: float = Field(0.25, ge=0, le=5, description=(
        "Seconds each client waits, once its answer has begun to arrive, before it reads the rest: a client on "
        "a slow link. A server that serves one connection at a time waits that long for each client, and the "
        "others queue behind it; 0: clients read at full speed (then only throughput and threads tell servers "
        "apart)."))
    rcvbuf: int = Field(4096, ge=0, le=1 << 20, description=(
        "The clients' receive buffer (SO_RCVBUF, bytes) until their read_delay is over: small, so the answer "
        "fills the kernel's buffers and the server's send waits. 0: the kernel's default."))
    rate: float | None = Field(128.0, gt=0, le=100000, description=(
        "Requests per second all clients of a step together start at most (each client starts its next request "
        "no sooner than clients/rate seconds after its last began), so the load on the machine stays bounded "
        "at the large steps; null: each client asks again as soon as it has its answer."))
    p99_growth: float | None = Field(25.0, gt=1, description=(
        "The most the 99th percentile of latency may grow, as a factor, from the first step to any later one; "
        "null: not judged."))
    max_threads: int | Literal["bounded"] | None = Field(None, description=(
        "The most threads the server (all its processes together) may have at any step; 'bounded': no step "
        "more than thread_slack above the first step (an event loop; a pool made up front; a pool that grows "
        "on demand needs a number); null: not judged."))
    thread_slack: int = Field(4, ge=0, le=1000, description=(
        "With max_threads 'bounded': how many threads a later step may have beyond the first step's (a "
        "runtime's helper threads)."))
    max_errors: int = Field(0, ge=0, description="How many requests of a step may fail for the check to pass.")
    min_size: int = Field(128 << 10, ge=0, description=(
        "With read_delay: the smallest size of `path` for the check to mean something (the kernel buffers about "
        "70 KB of an answer between server and client); a smaller file is an error of the exercise."))
    request_timeout: float = Field(5.0, gt=0, le=60, description=(
        "Seconds a request has for its whole answer, beyond what connecting takes; a request still unanswered "
        "then is an error (timeout)."))
    connect_timeout: float = Field(4.0, gt=0, le=60, description=(
        "Seconds connecting may take: covers the kernel sending a SYN again after 1 and 3 s when a listen "
        "queue overflowed for a moment (slow, not wrong)."))
    ramp: float = Field(0.2, ge=0, le=10, description=(
        "Seconds over which a step's clients start, evenly: a burst of connects larger than a listen backlog "
        "would overflow it whenever the server is slow to accept."))

    @field_validator("steps")
    @classmethod
    def _rising(cls, steps: list[int]) -> list[int]:
        if any(step < 1 or step > 20000 for step in steps):
            raise ValueError(f"each step is 1 to 20000 clients, found {steps}")
        if any(later <= earlier for earlier, later in zip(steps, steps[1:], strict=False)):
            raise ValueError(f"steps must rise, found {steps}")
        return steps

    @field_validator("max_threads", mode="before")
    @classmethod
    def _threads(cls, value: Any) -> Any:
        if isinstance(value, bool) or (isinstance(value, int) and value < 1):
            raise ValueError(f"expected a number of threads (1 or more) or 'bounded', found {value!r}")
        return value


# -- the steps that run, within the lab's limits ----------------------------------------------------------

def plan_steps(params: LoadCurveParams, server_nofile: int, client_nofile: int,
               server_pids: int) -> tuple[list[tuple[int, int]], list[str]]:
    """[(asked, run)] for every step, and a note for each step that runs lower than asked (and why).

    A connection takes a descriptor on each side, so a step runs at most at the lower nofile limit less
    NOFILE_RESERVE; a server allowed a thread per client (no max_threads) needs a task per client, so also
    at most its pids limit less PIDS_RESERVE. Two steps capped to the same number run once."""
    limits = [(max(1, min(server_nofile, client_nofile) - NOFILE_RESERVE),
               f"the lab's nofile limit (server {server_nofile}, client {client_nofile}, less {NOFILE_RESERVE}; "
               "nodes.*.limits.nofile in lab.yaml)")]
    if params.max_threads is None:
        limits.append((max(1, server_pids - PIDS_RESERVE),
                       f"the server's pids limit ({server_pids} tasks, less {PIDS_RESERVE}: a thread per client "
                       "must fit; nodes.server.limits.pids in lab.yaml)"))
    planned: list[tuple[int, int]] = []
    notes: list[str] = []
    for asked in params.steps:
        run, why = asked, ""
        for limit, reason in limits:
            if limit < run:
                run, why = limit, reason
        if planned and run <= planned[-1][1]:
            notes.append(f"the step of {asked} clients was left out: capped to {run} by {why}, a step already run")
            continue
        if run < asked:
            notes.append(f"the step of {asked} clients ran with {run}: {why}")
        planned.append((asked, run))
    return planned, notes


# -- one step's row of the table -------------------------------------------------------------------------

def step_row(asked: int, facts: LoadStep, seen: observe.Sample | None = None,
             observer_error: str | None = None) -> dict[str, Any]:
    """One step's facts as a row of the curve's table (seconds; requests per second; % of one CPU)."""
    latencies = [float(value) for value in facts.get("latencies") or []]
    answered = int(facts.get("answered", len(latencies)))
    errors: dict[str, int] = dict(facts.get("errors") or {})
    wall = float(facts.get("wall_seconds") or 0.0)
    row: dict[str, Any] = {
        "clients": int(facts.get("connections", asked)), "asked": asked,
        "requests": int(facts.get("requests", answered + sum(errors.values()))), "answered": answered,
        "failed": sum(errors.values()), "errors": errors, "unfinished": int(facts.get("unfinished", 0)),
        "p50": percentile(latencies, 50), "p90": percentile(latencies, 90), "p99": percentile(latencies, 99),
        "max": max(latencies) if latencies else None,
        "requests_per_second": round(answered / wall, 1) if answered and wall > 0 else 0.0,
        "wall_seconds": round(wall, 3), "connects_retried": int(facts.get("syn_retried", 0)),
        "threads": None, "processes": None, "cpu_percent": None}
    if facts.get("client_errors"):
        row["client_errors"] = dict(facts.get("client_errors") or {})
    nofile = facts.get("nofile")
    if facts.get("clamped") and nofile:
        row["client_nofile"] = nofile["soft"]
    if facts.get("error_examples"):
        row["error_examples"] = list(facts.get("error_examples") or [])[:3]
    if seen is not None and seen.snapshots:
        row.update(threads=seen.peak_thread_total, processes=seen.peak_processes,
                   cpu_percent=round(seen.cpu_percent, 1))
    if observer_error:
        row["observer_error"] = observer_error
    return row


# -- judging ---------------------------------------------------------------------------------------------

def _times(value: float) -> str:
    return f"{value:.1f}x"


def _clients(row: dict[str, Any]) -> str:
    return plural(int(row["clients"]), "client")


Problem = tuple[str, str]   # (kind: "p99", "silent", "errors", "unseen", "threads"; the words)


def _problems(rows: list[dict[str, Any]], params: LoadCurveParams) -> list[Problem]:
    first, last = rows[0], rows[-1]
    at = f"at {_clients(last)}"
    problems: list[Problem] = []
    if (params.p99_growth is not None and len(rows) > 1 and first["p99"] and last["p99"] is not None
            and last["p99"] > params.p99_growth * first["p99"]):
        problems.append(("p99", f"p99 grew {_times(last['p99'] / first['p99'])} from {_clients(first)} to "
                                f"{last['clients']} ({seconds_text(first['p99'])} -> {seconds_text(last['p99'])}; "
                                f"at most {params.p99_growth:g}x)"))
    if last["answered"] == 0:
        failed = counts_text(last["errors"]) or "none was answered in time"
        problems.append(("silent", f"{at} no request got a whole answer ({failed})"))
    elif last["failed"] > params.max_errors:
        allowed = "none may fail" if params.max_errors == 0 else f"at most {params.max_errors} may"
        problems.append(("errors", f"{at} {last['failed']} of {last['answered'] + last['failed']} requests failed "
                                   f"({counts_text(last['errors'])}; {allowed})"))
    if params.max_threads is not None:
        threads = last["threads"]
        if threads is None:
            problems.append(("unseen", f"{at} the observer saw no server process (did the server exit?)"))
        elif params.max_threads == "bounded":
            base = first["threads"] or 0
            if len(rows) > 1 and threads > base + params.thread_slack:
                problems.append(("threads", f"the server's threads grew from {base} to {threads} from "
                                            f"{_clients(first)} to {last['clients']} (threads must stay bounded: "
                                            f"at most {base} + {params.thread_slack})"))
        elif threads > params.max_threads:
            problems.append(("threads", f"{at} the server had {plural(threads, 'thread')} (at most "
                                        f"{params.max_threads})"))
    return problems


def step_problems(rows: list[dict[str, Any]], params: LoadCurveParams) -> list[str]:
    """What is wrong at the last step measured, compared with the first; [] when its shape is still right."""
    return [words for _, words in _problems(rows, params)]


def diagnosis(rows: list[dict[str, Any]], params: LoadCurveParams, kinds: set[str] | None = None) -> str:
    """What the shape says about how the server serves its clients, in words a student can act on (`kinds`:
    the problems found at the last step; all of them when not given)."""
    kinds = kinds if kinds is not None else {"p99", "silent", "errors", "unseen", "threads"}
    first, last = rows[0], rows[-1]
    if "threads" in kinds and last["threads"] is not None and first["threads"] is not None:
        if last["threads"] >= first["threads"] + max(2, last["clients"] // 2):
            return f"it starts a thread (or a process) per connection. {HINT_THREADS}"
        if not kinds & {"p99", "errors", "silent"}:
            return "it runs more threads than the exercise allows."
    if kinds & {"silent", "unseen"} and not last["answered"]:
        return ("the server answered none of them: is it still running, and does it answer every request? (its "
                "log is in the evidence)")
    cpu = last["cpu_percent"]
    if cpu is not None and cpu >= 100 * BUSY_FRACTION:
        return (f"the server used {cpu:.0f}% of a CPU at {_clients(last)}: it is busy, not waiting for its "
                "clients (busy polling? work repeated for every request?)")
    if params.read_delay > 0 and last["requests_per_second"]:
        at_once = last["requests_per_second"] * params.read_delay
        if at_once < 1.5:
            return (f"your server serves one connection at a time: it answered {last['requests_per_second']:g} "
                    f"requests/s with {_clients(last)}, about one per {seconds_text(params.read_delay)} a client "
                    f"takes over its answer. {HINT_ONE_AT_A_TIME}")
        if at_once < last["clients"] / 2:
            return (f"your server serves about {at_once:.0f} connections at once ({last['requests_per_second']:g} "
                    f"requests/s with {_clients(last)}, each taking {seconds_text(params.read_delay)} over its "
                    "answer): a pool of workers that small, or a loop that waits on one client at a time. "
                    + HINT_ONE_AT_A_TIME)
    if "errors" in kinds and "p99" not in kinds:
        return ("requests that one client makes alone succeed, and fail when many come at once: look for a listen "
                "backlog that is too small, a limit that closes the extra connections, or state shared between "
                "clients without a lock.")
    return ("requests waited longer and longer as clients were added: something in the server is done for one "
            "client at a time.")


def judge_load_curve(rows: list[dict[str, Any]], params: LoadCurveParams, notes: list[str] | None = None,
                     not_run: list[int] | None = None) -> Outcome:
    """The curve's verdict: its table in the evidence; a message with the numbers and what they mean."""
    notes = list(notes or [])
    evidence: dict[str, Any] = {
        "steps": rows, "asked_steps": list(params.steps), "not_run": list(not_run or []), "capped": notes,
        "path": params.path, "read_delay": params.read_delay, "rate": params.rate, "seconds": params.seconds,
        "p99_growth": params.p99_growth, "max_threads": params.max_threads, "max_errors": params.max_errors}
    noted = "".join(f" Note: {note}." for note in notes)
    if not rows:
        return Outcome(False, "no step of the load curve ran." + noted, evidence)
    problems = _problems(rows, params)
    if problems:
        later = ""
        if not_run:
            later = (f" (the step of {not_run[0]} clients was not run)" if len(not_run) == 1 else
                     f" (the steps of {', '.join(map(str, not_run))} clients were not run)")
        why = diagnosis(rows, params, {kind for kind, _ in problems})
        message = "; ".join(words for _, words in problems) + f": {why}{later}"
        return Outcome(False, message + noted, evidence)
    first, last = rows[0], rows[-1]
    p99 = (f"p99 went from {seconds_text(first['p99'])} to {seconds_text(last['p99'])}"
           + (f" ({_times(last['p99'] / first['p99'])}; at most {params.p99_growth:g}x)"
              if params.p99_growth and first["p99"] and last["p99"] else ""))
    threads = ""
    if first["threads"] is not None and last["threads"] is not None:
        threads = (f", the server's threads stayed at {first['threads']}" if first["threads"] == last["threads"]
                   else f", the server's threads went from {first['threads']} to {last['threads']}")
    failed = sum(row["failed"] for row in rows)
    errors = "no request failed" if not failed else f"{failed} requests failed (at most {params.max_errors} a step)"
    return Outcome(True, (f"from {_clients(first)} to {last['clients']}, {p99}, throughput went from "
                          f"{first['requests_per_second']:g} to {last['requests_per_second']:g} requests/s{threads}, "
                          f"and {errors}." + noted), evidence)


# -- the check --------------------------------------------------------------------------------------------

def _step_work(params: LoadCurveParams) -> float:
    """Seconds one step may take in the client: its length, then its last requests' whole time."""
    return params.seconds + params.connect_timeout + params.request_timeout + 1.0


#: The check's name in the catalog (the evidence draws its curve when it fails).
LOAD_CURVE_CHECK = "load_curve"


@check(LOAD_CURVE_CHECK, LoadCurveParams, default_timeout=90.0,
       summary=("Latency, throughput and errors at a rising number of clients, with the server's threads and CPU "
                "at each step: p99 must not grow past a factor, threads stay bounded (an event loop)."))
def load_curve(ctx: CheckContext, params: LoadCurveParams) -> Outcome:
    if params.read_delay > 0:
        expected = expected_file(ctx.docroot, params.path)
        if expected is not None and expected[0] < params.min_size:
            raise LabctlError(f"load_curve: {params.path} in the exercise's docroot has {size_text(expected[0])}, "
                              f"less than min_size {size_text(params.min_size)}: the kernel would hold the whole "
                              "answer and a server's send() would never wait for a slow client; give it a larger "
                              "file")
    watching = ctx.observer in ctx.lab.spec.nodes
    if params.max_threads is not None and not watching:
        raise LabctlError(f"load_curve counts the server's threads from an observer node (max_threads), and "
                          f"lab.yaml has no node {ctx.observer!r} (role: observer, watches: {ctx.server})")
    nodes = ctx.lab.spec.nodes
    server, client = nodes[ctx.server].limits, nodes[ctx.client].limits
    planned, notes = plan_steps(params, server.nofile, client.nofile, server.pids)
    least = len(planned) * (params.seconds + STEP_OVERHEAD)
    if ctx.remaining < least:
        raise BudgetTooShort(f"the check's time budget ({ctx.remaining:.1f} s left) is too short for "
                             f"{plural(len(planned), 'step')} of {params.seconds:g} s: give the check a longer "
                             "timeout")
    work = _step_work(params)
    rows: list[dict[str, Any]] = []
    not_run: list[int] = []
    for index, (asked, clients) in enumerate(planned):
        facts, seen, observer_error = _run_step(ctx, params, clients, work, watching)
        rows.append(step_row(asked, facts, seen, observer_error))
        if step_problems(rows, params):
            not_run = [later for later, _ in planned[index + 1:]]
            break
    return explain_failure(ctx, judge_load_curve(rows, params, notes, not_run))


def _run_step(ctx: CheckContext, params: LoadCurveParams, clients: int, work: float,
              watching: bool) -> tuple[LoadStep, observe.Sample | None, str | None]:
    """One step in the client, the observer's window open around it."""
    window = observe.Window(ctx.lab, ctx.observer, ctx.server) if watching else None
    facts: Any = run_harness(ctx, ctx.client, "load_step", {
        "host": ctx.host, "port": ctx.port, "connections": clients, "seconds": params.seconds,
        "path": params.path, "read_delay": params.read_delay, "rcvbuf": params.rcvbuf,
        "interval": clients / params.rate if params.rate else 0.0, "ramp": params.ramp,
        "request_timeout": params.request_timeout, "connect_timeout": params.connect_timeout,
        "budget": work}, work=work)
    if window is None:
        return facts, None, None
    try:
        return facts, window.close(), None
    except LabctlError as error:  # no look at all: the server (and the observer with it) has gone
        return facts, None, str(error)
