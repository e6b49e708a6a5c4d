"""The process-side checks' decisions, without an engine: expectations, parameters, and each
check's verdict and message on samples like those recorded from the model servers."""

from __future__ import annotations

import json
import time

import pytest
from pydantic import ValidationError

from labctl import observe
from labctl.checks import CheckContext, load_catalog
from labctl.checks import process as checks
from labctl.checks.process import BlockedInParams, Expectation, IdleCpuParams, IoModelParams, ThreadsParams
from labctl.backends.base import Usage
from labctl.errors import LabctlError

ACCEPT4, RECVFROM, EPOLL_WAIT, FUTEX = 288, 45, 232, 202


# -- expectations ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text, count, n, holds", [
    ("1", 1, 0, True), ("1", 2, 0, False), (1, 1, 4, True), ("== 1", 1, 0, True),
    (">= 4", 4, 0, True), (">= 4", 3, 0, False), ("<= 8", 8, 0, True), ("<= 8", 9, 0, False),
    ("> 2", 3, 0, True), ("< 2", 2, 0, False),
    (">= N", 5, 4, True), (">= N", 3, 4, False), (">=N+1", 5, 4, True), ("N - 1", 3, 4, True),
    ("  >=   N  +  1 ", 4, 4, False),
])
def test_expectation_holds(text, count, n, holds):
    assert Expectation.parse(text).holds(count, n) is holds


@pytest.mark.parametrize("text", ["", "=> 3", "= 3", "=3", "1.5", "-1", "n", ">= N*2", "N+", ">= 4 threads",
                                  "between 1 and 3", "!= 1", "0x10", True, None, 2.0, -3])
def test_expectation_is_strict(text):
    with pytest.raises(ValueError):
        Expectation.parse(text)


def test_expectation_describe():
    assert Expectation.parse("1").describe() == "== 1"
    assert Expectation.parse(">= N").describe(4) == ">= 4 (N, N = 4 connections held)"
    assert Expectation.parse("<= N + 1").describe(4) == "<= 5 (N + 1, N = 4 connections held)"


# -- parameters -----------------------------------------------------------------------------------

def test_threads_params():
    assert ThreadsParams(threads=1).threads == "1"
    assert ThreadsParams(processes=">= N").processes == ">= N"
    with pytest.raises(ValidationError, match="give `threads`, `processes`, `grow_by` or several"):
        ThreadsParams()
    with pytest.raises(ValidationError, match="expected a count"):
        ThreadsParams(threads="=> 2")
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        ThreadsParams(threads=1, thread=2)


def test_blocked_in_params_know_the_syscalls():
    assert BlockedInParams(syscalls=["accept4", "epoll_pwait"]).syscalls == ["accept4", "epoll_pwait"]
    with pytest.raises(ValidationError, match="unknown syscall 'acept4' \\(did you mean accept4"):
        BlockedInParams(syscalls=["acept4"])
    with pytest.raises(ValidationError):
        BlockedInParams(syscalls=[])


def test_io_model_params():
    assert IoModelParams(expect="event-driven").expect == "event-driven"
    assert IoModelParams(expect=["threaded", "forking"]).expect == ["threaded", "forking"]
    with pytest.raises(ValidationError):
        IoModelParams(expect="busy-polling")  # never a right answer
    with pytest.raises(ValidationError):
        IoModelParams(expect="async")


def test_idle_cpu_params_defaults():
    params = IdleCpuParams()
    assert (params.max_percent, params.window, params.connections) == (5.0, 5.0, 0)


def test_the_checks_are_in_the_catalog():
    catalog = load_catalog()
    for name in ("threads", "blocked_in", "idle_cpu", "io_model"):
        assert catalog[name].run.__module__ == "labctl.checks.process"


# -- the checks, on samples, with the observer and the client faked ---------------------------------

def snap(processes, machine="x86_64"):
    return {"machine": machine, "clk_tck": 100, "time": 0.0, "init": None, "ticks_total": 0, "errors": [],
            "processes": [{"pid": pid, "ppid": 1, "comm": "python3", "uid": 1000, "cmdline": "python3 server.py",
                           "ticks": 0, "child_ticks": 0,
                           "threads": [{"tid": tid, "comm": "python3", "state": state, "syscall": nr, "arg0": 3,
                                        "wchan": "inet_csk_accept" if nr == ACCEPT4 else "", "ticks": ticks,
                                        "voluntary": 1, "nonvoluntary": 0, "uid": 1000}
                                       for tid, state, nr, ticks in threads]}
                          for pid, threads in processes]}


def sample_of(processes_per_look, cpu_ticks=0, elapsed=1.0):
    return observe.Sample.from_json({"elapsed": elapsed, "cpu_seconds": cpu_ticks / 100,
                                     "snapshots": [snap(p) for p in processes_per_look]})


BLOCKING_IDLE = sample_of([[(7, [(7, "S", ACCEPT4, 3)])]] * 4)
BLOCKING_HELD = sample_of([[(7, [(7, "S", RECVFROM, 3)])]] * 4)
THREADED_HELD = sample_of([[(7, [(7, "S", ACCEPT4, 3)] + [(t, "S", RECVFROM, 0) for t in (20, 21, 22, 23)])]] * 4)
FORKING_HELD = sample_of([[(7, [(7, "S", ACCEPT4, 3)])] + [(p, [(p, "S", RECVFROM, 0)]) for p in (30, 31, 32, 33)]] * 4)
EPOLL_IDLE = sample_of([[(7, [(7, "S", EPOLL_WAIT, 3)])]] * 4)
BUSY_IDLE = sample_of([[(7, [(7, "R", "running", 100 + 25 * i)])] for i in range(5)], cpu_ticks=100)
HOLD = {"requested": 4, "connected": 4, "connect_errors": [], "still_open": 4, "closed_by_server": 0,
        "answered": 0, "probe": None}


@pytest.fixture
def fake(monkeypatch):
    """Replace the observer and the client: `fake(idle=..., held=..., hold=...)`; records calls."""
    calls = []

    def install(idle, held=None, hold=None):
        def sample(ctx, window):
            calls.append(("sample", window))
            return idle

        def sample_while_holding(ctx, connections, window, probe=False, request=None, probe_request=None):
            calls.append(("hold", connections, window, probe))
            return held, {**HOLD, "connected": connections, **(hold or {})}

        monkeypatch.setattr(checks, "sample", sample)
        monkeypatch.setattr(checks, "warm_up", lambda ctx, request=None: {"answered": True, "seconds": 0.01})
        monkeypatch.setattr(checks, "sample_while_holding", sample_while_holding)
        return calls

    return install


def run(name, **params):
    definition = load_catalog()[name]
    ctx = CheckContext(lab=None, port=8080, deadline=time.monotonic() + 30)  # type: ignore[arg-type]
    return definition.run(ctx, definition.params(**params))


def test_threads_pass_and_fail(fake):
    fake(BLOCKING_IDLE, BLOCKING_HELD)
    outcome = run("threads", connections=4, threads=1, processes=1)
    assert outcome.passed
    assert outcome.message == ("while 4 connections were held the server had 1 thread (expected == 1; idle: 1) "
                               "and 1 process (expected == 1; idle: 1).")
    failed = run("threads", connections=4, threads=">= N")
    assert not failed.passed
    assert failed.message == ("while 4 connections were held the server had 1 thread (idle: 1); expected threads "
                              ">= 4 (N, N = 4 connections held): it does not start a thread per client.")


def test_threads_grow_by_compares_with_idle(fake):
    """A pool of 4 made up front passes threads '>= 4', never 'grow_by >= N': the idle count is said."""
    pool_idle = sample_of([[(7, [(7, "S", ACCEPT4, 3)] + [(t, "S", 202, 0) for t in (20, 21, 22, 23)])]] * 4)
    fake(pool_idle, THREADED_HELD)
    assert run("threads", connections=4, threads=">= N").passed
    failed = run("threads", connections=4, grow_by=">= N")
    assert not failed.passed and failed.evidence["grew_by"] == 0
    assert failed.message == ("while 4 connections were held the server's threads went from 5 (idle) to 5, a growth "
                              "of 0; expected a growth of >= 4 (N, N = 4 connections held): it does not start a "
                              "thread per client.")
    fake(BLOCKING_IDLE, THREADED_HELD)
    grown = run("threads", connections=4, grow_by=">= N")
    assert grown.passed and "+4 threads from idle (1 -> 5" in grown.message


def test_threads_counts_threads_and_processes_separately(fake):
    fake(BLOCKING_IDLE, FORKING_HELD)
    outcome = run("threads", connections=4, threads=1, processes=">= N + 1")
    assert outcome.passed and outcome.evidence["threads"] == 1 and outcome.evidence["processes"] == 5
    fake(BLOCKING_IDLE, THREADED_HELD)
    failed = run("threads", connections=4, threads="<= 2")
    assert not failed.passed and "5 threads" in failed.message and "more threads than allowed" in failed.message


def test_threads_says_when_connections_were_not_made(fake):
    calls = fake(BLOCKING_IDLE, BLOCKING_HELD, hold={"connected": 2})
    outcome = run("threads", connections=4, threads=1)
    assert outcome.passed and "Only 2 of the 4 connections were made." in outcome.message
    assert calls == [("sample", checks.IDLE_COUNT_WINDOW), ("hold", 4, 1.0, False)]


def test_blocked_in_pass_and_fail(fake):
    fake(BLOCKING_IDLE)
    outcome = run("blocked_in", syscalls=["accept4"])
    assert outcome.passed and "thread 7 (python3, main) is asleep in accept4 (288)" in outcome.message
    assert outcome.evidence["expected"] == {"accept4": 288}
    assert outcome.evidence["threads"][0]["wchan"] == "inet_csk_accept"  # shown, not graded
    failed = run("blocked_in", syscalls=["epoll_wait"])
    assert not failed.passed
    assert failed.message == "thread 7 (python3, main) is asleep in accept4 (288), expected one of epoll_wait."


def test_blocked_in_busy(fake):
    fake(BUSY_IDLE)
    failed = run("blocked_in", syscalls=["accept4", "epoll_wait"])
    assert not failed.passed
    assert failed.message == "thread 7 (python3, main) is running, not asleep (5 of 5 looks): a busy loop?"


def test_blocked_in_with_names_of_another_architecture_only(fake):
    """aarch64 has no epoll_wait nor poll: an exercise naming only those cannot be graded there."""
    fake(observe.Sample.from_json({"elapsed": 1.0, "cpu_seconds": 0,
                                   "snapshots": [snap([(7, [(7, "S", 22, 0)])], machine="aarch64")] * 3}))
    with pytest.raises(LabctlError, match="none of epoll_wait, poll exists on aarch64"):
        run("blocked_in", syscalls=["epoll_wait", "poll"])
    outcome = run("blocked_in", syscalls=["epoll_wait", "epoll_pwait"])
    assert outcome.passed and "epoll_pwait (22)" in outcome.message
    assert outcome.evidence["not_on_this_architecture"] == ["epoll_wait"]


def test_idle_cpu_pass_and_fail(fake):
    fake(EPOLL_IDLE)
    outcome = run("idle_cpu")
    assert outcome.passed and "used 0.0% of a CPU" in outcome.message
    fake(BUSY_IDLE)
    failed = run("idle_cpu", max_percent=5)
    assert not failed.passed
    assert "the server used 100% of a CPU over 1.0 s (limit 5%)" in failed.message
    assert "thread 7 (python3, main) used 100% and was running" in failed.message


def test_idle_cpu_with_idle_connections_holds_them(fake):
    calls = fake(EPOLL_IDLE, EPOLL_IDLE)
    outcome = run("idle_cpu", connections=8, window=1.0)
    assert outcome.passed and "while 8 idle connections were held" in outcome.message
    assert calls == [("hold", 8, 1.0, False)]


def test_io_model_pass_and_fail(fake):
    calls = fake(BLOCKING_IDLE, THREADED_HELD, hold=dict(HOLD, probe={"answered": True, "seconds": 0.002}))
    outcome = run("io_model", expect="threaded")
    assert outcome.passed and outcome.evidence["model"] == "thread-per-connection"
    assert ("hold", 4, 1.0, True) in calls  # probed while held
    failed = run("io_model", expect=["blocking", "event-driven"])
    assert not failed.passed
    assert failed.message.startswith("the server looks thread-per-connection (a new thread for each client), expected "
                                     "blocking or event-driven: ")


def test_io_model_holds_more_clients_than_the_server_has_threads_idle(fake):
    """A pool of 8 workers and its main thread: 11 clients held, so the pool is seen full."""
    pool_idle = sample_of([[(7, [(7, "S", ACCEPT4, 3)] + [(t, "S", FUTEX, 0) for t in range(20, 28)])]] * 4)
    pool_busy = sample_of([[(7, [(7, "S", ACCEPT4, 3)] + [(t, "S", RECVFROM, 0) for t in range(20, 28)])]] * 4)
    calls = fake(pool_idle, pool_busy, hold={"still_open": 11, "probe": {"answered": True, "seconds": 0.002}})
    outcome = run("io_model", expect="thread-pool")
    assert ("hold", 11, 1.0, True) in calls and outcome.evidence["connections_held"] == 11
    assert outcome.passed, outcome.message
    calls.clear()
    run("io_model", expect="blocking", connections=20)
    assert ("hold", 20, 1.0, True) in calls  # asked for more than that: as asked


def test_io_model_busy_is_never_right(fake):
    fake(BUSY_IDLE, BUSY_IDLE, hold=dict(HOLD, probe={"answered": True, "seconds": 0.01}))
    failed = run("io_model", expect="event-driven")
    assert not failed.passed and failed.evidence["model"] == "busy-polling"


# -- budget ---------------------------------------------------------------------------------------

class _NoLab:
    def harness(self, *args, **kwargs):  # pragma: no cover - must not be reached
        raise AssertionError("no harness call when the budget is too short")


def test_a_too_short_budget_is_an_error_not_a_hang():
    ctx = CheckContext(lab=_NoLab(), port=8080, deadline=time.monotonic() + 0.1)  # type: ignore[arg-type]
    with pytest.raises(LabctlError, match="budget"):
        checks.sample(ctx, window=2.0)
    with pytest.raises(LabctlError, match="budget"):
        checks.sample_while_holding(ctx, 4, 2.0)


class _LabWithObserver:
    """A lab whose server used one CPU second at each reading and whose observer logged `looks`."""

    def __init__(self, looks: list[dict]):
        self.looks = looks

    def usage(self, node):
        return Usage(cpu_seconds=1.0, tasks=1, at=time.time())

    def logs(self, node, since=None, until=None, **kwargs):
        assert node == "observer" and since < until
        now = time.time()
        yield "".join(json.dumps({"at": now - 0.1, **look}) + "\n" for look in self.looks).encode()


def test_a_window_without_looks_says_the_sampler_stopped():
    ctx = CheckContext(lab=_LabWithObserver([]), port=8080, deadline=time.monotonic() + 30)  # type: ignore[arg-type]
    with pytest.raises(LabctlError, match=r"the observer took no look at the server in 0\.\d s: did the server exit"):
        checks.sample(ctx, 0.3)


def test_unreadable_syscall_files_are_an_error_of_the_lab():
    looks = [dict(snap([(7, [(7, "S", None, 0)])]), errors=["/proc/7/task/7/syscall: PermissionError"])] * 2
    ctx = CheckContext(lab=_LabWithObserver(looks), port=8080, deadline=time.monotonic() + 30)  # type: ignore[arg-type]
    with pytest.raises(LabctlError, match="SYS_PTRACE"):
        checks.sample(ctx, 0.3)
