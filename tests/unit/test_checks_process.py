"""The process-side checks' decisions on the in-memory engine: expectations, parameters, and each
check's verdict and message on looks like those recorded from the model servers.

The checks run whole, with the real sample(), sample_while_holding() and warm_up(): the looks come
from the observer's log and the CPU from the server's usage, both scripted on the FakeBackend
(fakes.ObservedServer); the client's hold of connections is a harness handler."""

from __future__ import annotations

import re
import time

import pytest
from pydantic import ValidationError

from labctl.checks import CheckContext, load_catalog
from labctl.checks import process as checks
from labctl.checks.process import BlockedInParams, Expectation, IdleCpuParams, IoModelParams, ThreadsParams
from labctl.errors import LabctlError
from labctl.lab import Lab

from .fakes import Doing, ObservedServer, up_lab

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


# -- the checks, on looks, through the fake engine -----------------------------------------------------

def snap(processes, machine="x86_64", clk_tck=100):
    return {"machine": machine, "clk_tck": clk_tck, "time": 0.0, "init": None, "ticks_total": 0, "errors": [],
            "processes": [{"pid": pid, "ppid": 1, "comm": "python3", "uid": 1000, "cmdline": "python3 server.py",
                           "ticks": 0, "child_ticks": 0,
                           "threads": [{"tid": tid, "comm": "python3", "state": state, "syscall": nr, "arg0": 3,
                                        "wchan": "inet_csk_accept" if nr == ACCEPT4 else "", "ticks": ticks,
                                        "voluntary": 1, "nonvoluntary": 0, "uid": 1000}
                                       for tid, state, nr, ticks in threads]}
                          for pid, threads in processes]}


BLOCKING_IDLE = Doing(snap([(7, [(7, "S", ACCEPT4, 3)])]))
BLOCKING_HELD = Doing(snap([(7, [(7, "S", RECVFROM, 3)])]))
THREADED_HELD = Doing(snap([(7, [(7, "S", ACCEPT4, 3)] + [(t, "S", RECVFROM, 0) for t in (20, 21, 22, 23)])]))
FORKING_HELD = Doing(snap([(7, [(7, "S", ACCEPT4, 3)])] + [(p, [(p, "S", RECVFROM, 0)]) for p in (30, 31, 32, 33)]))
EPOLL_IDLE = Doing(snap([(7, [(7, "S", EPOLL_WAIT, 3)])]))
#: A busy loop: running at every look, its thread's ticks (1000 a second) and its cgroup's CPU grow at one CPU's rate.
BUSY_IDLE = Doing(lambda at: snap([(7, [(7, "R", "running", round(1000 * at))])], clk_tck=1000), cpu=1.0)
HOLD = {"requested": 4, "connected": 4, "connect_errors": [], "still_open": 4, "closed_by_server": 0,
        "answered": 0, "probe": None}
#: The window of the checks whose window's length is not what a test is about: the smallest each allows.
QUICK = 0.2


@pytest.fixture
def lab(fake, tmp_path, monkeypatch) -> Lab:
    """A lab up on the fake engine, with the margins the checks keep for a real engine made short. On a
    real engine a hold of connections starts HOLD_LEAD (1 s) before its window (docker exec's start, the
    connects) and ends HOLD_TAIL (0.8 s) after it, and threads counts idle threads over
    IDLE_COUNT_WINDOW (0.5 s, about five looks of the real sampler). On the fake an exec starts at once
    and every window gets its five looks (ObservedServer), whatever its length: kept, they would only
    make this file sleep for half a minute."""
    monkeypatch.setattr(checks, "HOLD_LEAD", 0.1)
    monkeypatch.setattr(checks, "HOLD_TAIL", 0.05)
    monkeypatch.setattr(checks, "IDLE_COUNT_WINDOW", 0.2)
    return up_lab(fake, tmp_path / "project")


class Seen:
    """What the checks did to a scripted server, in order: each window the observer was read over
    ("sample", its seconds to 0.1 s) and each hold of connections by the client ("hold", connections,
    the window it was made for, probe)."""

    def __init__(self, observed: ObservedServer):
        self.observed = observed
        self.holds: list[tuple[float, tuple]] = []

    def timeline(self) -> list[tuple]:
        """What the check did, in order: ("sample", seconds measured) and ("hold", connections, window, probe)."""
        readings = self.observed.readings  # a window opens and closes with one reading each
        windows = [(readings[i], ("sample", readings[i + 1] - readings[i])) for i in range(0, len(readings) - 1, 2)]
        return [event for _, event in sorted(windows + self.holds)]

    def did(self, *expected: tuple) -> bool:
        """The timeline is `expected`, a window of a sample lasting at least what was asked (a sleep is never
        shorter; on a loaded machine it may be a lot longer: its length is not what is tested)."""
        found = self.timeline()
        return len(found) == len(expected) and all(
            (event[0] == want[0] == "sample" and want[1] - 0.01 <= event[1] < want[1] + 5) or event == want
            for event, want in zip(found, expected, strict=True))


@pytest.fixture
def server(fake, lab):
    """Script the server: `server(idle, held=..., hold=...)`: what the observer and the server's cgroup
    see while it is idle and while the client holds connections, and what the client's hold answers
    besides HOLD. Returns what the checks did (Seen). The warm-up request is answered at once."""

    def script(idle: Doing, held: Doing | None = None, hold: dict | None = None, late: float = 0.0) -> Seen:
        """late: seconds the hold's exec takes to begin (a busy machine's docker exec and Python start)."""
        seen = Seen(ObservedServer(fake, idle))

        def hold_connections(params: dict) -> dict:
            time.sleep(late)
            window = round(params["hold"] - checks.HOLD_LEAD - checks.HOLD_TAIL, 3)
            began = time.time()  # the client's clock: the engine's, the sampler's
            seen.holds.append((began, ("hold", params["connections"], window, params["probe"])))
            with seen.observed.holding(held or idle):
                time.sleep(params["hold"])  # as the harness does: it holds them that long, then answers
            return {**HOLD, "connected": params["connections"], "started_at": began, **(hold or {})}

        fake.harness["client"]["hold_connections"] = hold_connections
        fake.harness["client"]["probe"] = lambda params: {"answered": True, "seconds": 0.01}
        return seen

    return script


def context(lab: Lab, budget: float = 30.0) -> CheckContext:
    return CheckContext(lab=lab, port=8080, deadline=time.monotonic() + budget)


def run(lab: Lab, name: str, **params):
    definition = load_catalog()[name]
    return definition.run(context(lab), definition.params(**params))


def test_threads_pass_and_fail(server, lab):
    server(BLOCKING_IDLE, BLOCKING_HELD)
    outcome = run(lab, "threads", connections=4, threads=1, processes=1, window=QUICK)
    assert outcome.passed
    assert outcome.message == ("while 4 connections were held the server had 1 thread (expected == 1; idle: 1) "
                               "and 1 process (expected == 1; idle: 1).")
    failed = run(lab, "threads", connections=4, threads=">= N", window=QUICK)
    assert not failed.passed
    assert failed.message == ("while 4 connections were held the server had 1 thread (idle: 1); expected threads "
                              ">= 4 (N, N = 4 connections held): it does not start a thread per client.")


def test_threads_grow_by_compares_with_idle(server, lab):
    """A pool of 4 made up front passes threads '>= 4', never 'grow_by >= N': the idle count is said."""
    pool_idle = Doing(snap([(7, [(7, "S", ACCEPT4, 3)] + [(t, "S", 202, 0) for t in (20, 21, 22, 23)])]))
    server(pool_idle, THREADED_HELD)
    assert run(lab, "threads", connections=4, threads=">= N", window=QUICK).passed
    failed = run(lab, "threads", connections=4, grow_by=">= N", window=QUICK)
    assert not failed.passed and failed.evidence["grew_by"] == 0
    assert failed.message == ("while 4 connections were held the server's threads went from 5 (idle) to 5, a growth "
                              "of 0; expected a growth of >= 4 (N, N = 4 connections held): it does not start a "
                              "thread per client.")
    server(BLOCKING_IDLE, THREADED_HELD)
    grown = run(lab, "threads", connections=4, grow_by=">= N", window=QUICK)
    assert grown.passed and "+4 threads from idle (1 -> 5" in grown.message


def test_threads_counts_threads_and_processes_separately(server, lab):
    server(BLOCKING_IDLE, FORKING_HELD)
    outcome = run(lab, "threads", connections=4, threads=1, processes=">= N + 1", window=QUICK)
    assert outcome.passed and outcome.evidence["threads"] == 1 and outcome.evidence["processes"] == 5
    server(BLOCKING_IDLE, THREADED_HELD)
    failed = run(lab, "threads", connections=4, threads="<= 2", window=QUICK)
    assert not failed.passed and "5 threads" in failed.message and "more threads than allowed" in failed.message


def test_threads_says_when_connections_were_not_made(server, lab):
    seen = server(BLOCKING_IDLE, BLOCKING_HELD, hold={"connected": 2})
    outcome = run(lab, "threads", connections=4, threads=1, window=QUICK)
    assert outcome.passed and "Only 2 of the 4 connections were made." in outcome.message
    # Idle first, then the hold inside the window read around it (its looks are those of the hold).
    assert seen.did(("sample", checks.IDLE_COUNT_WINDOW), ("sample", QUICK), ("hold", 4, QUICK, False)), seen.timeline()
    assert ThreadsParams(threads=1).window == 1.0  # what a hold is made for when the exercise says nothing


def test_blocked_in_pass_and_fail(server, lab):
    server(BLOCKING_IDLE)
    outcome = run(lab, "blocked_in", syscalls=["accept4"], window=0.3)
    assert outcome.passed and "thread 7 (python3, main) is asleep in accept4 (288)" in outcome.message
    assert outcome.evidence["expected"] == {"accept4": 288}
    assert outcome.evidence["threads"][0]["wchan"] == "inet_csk_accept"  # shown, not graded
    failed = run(lab, "blocked_in", syscalls=["epoll_wait"], window=0.3)
    assert not failed.passed
    assert failed.message == "thread 7 (python3, main) is asleep in accept4 (288), expected one of epoll_wait."


def test_blocked_in_busy(server, lab):
    server(BUSY_IDLE)
    failed = run(lab, "blocked_in", syscalls=["accept4", "epoll_wait"], window=0.3)
    assert not failed.passed
    assert failed.message == "thread 7 (python3, main) is running, not asleep (5 of 5 looks): a busy loop?"


def test_blocked_in_with_names_of_another_architecture_only(server, lab):
    """aarch64 has no epoll_wait nor poll: an exercise naming only those cannot be graded there."""
    server(Doing(snap([(7, [(7, "S", 22, 0)])], machine="aarch64")))
    with pytest.raises(LabctlError, match="none of epoll_wait, poll exists on aarch64"):
        run(lab, "blocked_in", syscalls=["epoll_wait", "poll"], window=0.3)
    outcome = run(lab, "blocked_in", syscalls=["epoll_wait", "epoll_pwait"], window=0.3)
    assert outcome.passed and "epoll_pwait (22)" in outcome.message
    assert outcome.evidence["not_on_this_architecture"] == ["epoll_wait"]


def test_idle_cpu_pass_and_fail(server, lab):
    server(EPOLL_IDLE)
    outcome = run(lab, "idle_cpu", window=0.5)
    assert outcome.passed and "used 0.0% of a CPU" in outcome.message
    server(BUSY_IDLE)
    failed = run(lab, "idle_cpu", max_percent=5, window=0.5)
    assert not failed.passed
    assert re.search(r"the server used 100% of a CPU over \d+\.\d s \(limit 5%\)", failed.message), failed.message
    assert "thread 7 (python3, main) used 100% and was running" in failed.message
    assert failed.evidence["measured"] == "the server container's cgroup, read by the host"


def test_idle_cpu_with_idle_connections_holds_them(server, lab):
    seen = server(EPOLL_IDLE, EPOLL_IDLE)
    outcome = run(lab, "idle_cpu", connections=8, window=0.5)
    assert outcome.passed and "while 8 idle connections were held" in outcome.message
    assert seen.did(("sample", 0.5), ("hold", 8, 0.5, False)), seen.timeline()  # one window: around the hold


def test_io_model_pass_and_fail(server, lab):
    seen = server(BLOCKING_IDLE, THREADED_HELD, hold=dict(HOLD, probe={"answered": True, "seconds": 0.002}))
    outcome = run(lab, "io_model", expect="threaded", window=QUICK)
    assert outcome.passed and outcome.evidence["model"] == "thread-per-connection"
    assert ("hold", 4, QUICK, True) in seen.timeline()  # probed while held
    assert IoModelParams(expect="threaded").window == 1.0
    failed = run(lab, "io_model", expect=["blocking", "event-driven"], window=QUICK)
    assert not failed.passed
    assert failed.message.startswith("the server looks thread-per-connection (a new thread for each client), expected "
                                     "blocking or event-driven: ")


def test_a_hold_that_begins_late_is_watched_when_it_holds_not_when_it_was_asked(server, lab):
    """On a busy machine the client's exec began 1.5 s after the host asked, past the lead the host had waited:
    the looks read were of the server still idle in accept(), and a blocking server looked "unknown" (seen in
    a batch at -j 2). The looks read are those from HOLD_LEAD after the hold began in the client."""
    seen = server(BLOCKING_IDLE, BLOCKING_HELD, hold={"probe": {"answered": False, "error": "no answer"}}, late=1.5)
    seen.observed.looks = 60     # one stretch of looks over the whole wait: the idle ones before the hold too
    outcome = run(lab, "io_model", expect="blocking", window=QUICK)
    assert outcome.passed, outcome.message
    assert outcome.evidence["model"] == "blocking" and outcome.evidence["loaded_waits"] == "waits on one client x1"
    threads = run(lab, "threads", connections=4, threads=1, window=QUICK)
    assert threads.passed and len(threads.evidence["per_look"]) >= 5, threads.evidence


def test_io_model_holds_more_clients_than_the_server_has_threads_idle(server, lab):
    """A pool of 8 workers and its main thread: 11 clients held, so the pool is seen full."""
    pool_idle = Doing(snap([(7, [(7, "S", ACCEPT4, 3)] + [(t, "S", FUTEX, 0) for t in range(20, 28)])]))
    pool_busy = Doing(snap([(7, [(7, "S", ACCEPT4, 3)] + [(t, "S", RECVFROM, 0) for t in range(20, 28)])]))
    hold = {"still_open": 11, "probe": {"answered": True, "seconds": 0.002}}
    seen = server(pool_idle, pool_busy, hold=hold)
    outcome = run(lab, "io_model", expect="thread-pool", window=QUICK)
    assert ("hold", 11, QUICK, True) in seen.timeline() and outcome.evidence["connections_held"] == 11
    assert outcome.passed, outcome.message
    seen = server(pool_idle, pool_busy, hold=hold)
    run(lab, "io_model", expect="blocking", connections=20, window=QUICK)
    assert ("hold", 20, QUICK, True) in seen.timeline()  # asked for more than that: as asked


def test_io_model_busy_is_never_right(server, lab):
    server(BUSY_IDLE, BUSY_IDLE, hold=dict(HOLD, probe={"answered": True, "seconds": 0.01}))
    failed = run(lab, "io_model", expect="event-driven", window=QUICK)
    assert not failed.passed and failed.evidence["model"] == "busy-polling"


# -- budget ---------------------------------------------------------------------------------------

def test_a_too_short_budget_is_an_error_not_a_hang(fake, lab):
    ctx = context(lab, budget=0.1)
    with pytest.raises(LabctlError, match="budget"):
        checks.sample(ctx, window=2.0)
    with pytest.raises(LabctlError, match="budget"):
        checks.sample_while_holding(ctx, 4, 2.0)
    # Found out before anything was asked of the lab: no harness command, no reading of the server.
    assert fake.execs == []
    assert [call for call in fake.calls if call[0] == "usage"] == []


def test_a_window_without_looks_says_the_sampler_stopped(lab):
    # The lab's observer wrote nothing to its log: no ObservedServer.
    with pytest.raises(LabctlError, match=r"the observer took no look at the server in 0\.\d s: did the server exit"):
        checks.sample(context(lab), 0.3)


def test_unreadable_syscall_files_are_an_error_of_the_lab(server, lab):
    server(Doing(dict(snap([(7, [(7, "S", None, 0)])]), errors=["/proc/7/task/7/syscall: PermissionError"])))
    with pytest.raises(LabctlError, match="SYS_PTRACE"):
        checks.sample(context(lab), 0.3)
