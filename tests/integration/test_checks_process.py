"""The process-side checks on the real engine: each passes on a correct model server and fails
on a server wrong in exactly the way the check exists to catch.

One lab per model server (tests/servers/model_*; model_poll_epoll runs as model_poll and
model_epoll, by $SELECTOR), several checks on it; only one lab runs
at a time (a busy-polling model eats a CPU), and each is removed as soon as the tests move
on to the next server, in a finally, also when a test fails.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from labctl import observe, syscalls
from labctl.checks import CheckContext, load_catalog
from labctl.checks.process import sample, sample_while_holding

SERVERS = Path(__file__).resolve().parents[1] / "servers"
# A name the tests use that is not a folder of tests/servers -> (folder, the server's environment).
VARIANTS: dict[str, tuple[str, dict[str, str]]] = {
    "model_poll": ("model_poll_epoll", {"SELECTOR": "poll"}),
    "model_epoll": ("model_poll_epoll", {"SELECTOR": "epoll"}),
}


@pytest.fixture(scope="module")
def lab_of(project, images) -> Iterator[Callable[[str], object]]:
    """lab_of("model_epoll"): that server's lab, started once; the previous server's lab is removed."""
    from labctl.lab import Lab, Submission

    current: dict[str, Lab] = {}

    def get(server: str) -> Lab:
        if server in current:
            return current[server]
        for lab in current.values():
            lab.down()
        current.clear()
        lab = Lab.create(project.spec, project.backend)
        current[server] = lab
        folder, env = VARIANTS.get(server, (server, {}))
        return lab.up(images, Submission(path=SERVERS / folder, env=env))

    try:
        yield get
    finally:
        for lab in current.values():
            lab.down()


def run(lab, name: str, budget: float = 40.0, **params):
    """Run one catalog check against a lab, as grading would: typed params, a budget."""
    catalog = load_catalog()
    definition = catalog[name]
    ctx = CheckContext(lab=lab, port=8080, deadline=time.monotonic() + budget)
    started = time.monotonic()
    outcome = definition.run(ctx, definition.params(**params))
    json.dumps(outcome.evidence)  # the report carries it as JSON
    print(f"{name} {params}: {'PASS' if outcome.passed else 'FAIL'} in {time.monotonic() - started:.1f} s: "
          f"{outcome.message}")
    return outcome


def ctx_of(lab, budget: float = 30.0) -> CheckContext:
    return CheckContext(lab=lab, port=8080, deadline=time.monotonic() + budget)


def main_thread_waits(seen: observe.Sample) -> set[tuple[str, int | str | None]]:
    return {(thread.state, thread.syscall) for snapshot in seen.snapshots for thread in snapshot.threads}


X86 = pytest.mark.skipif(__import__("platform").machine() not in ("x86_64", "AMD64"),
                         reason="the DESIGN's numbers are x86_64's")


# -- blocking -----------------------------------------------------------------------------------

@X86
def test_blocking_measured_facts_accept4_idle_recvfrom_with_a_client(lab_of):
    """DESIGN: an idle blocking server sleeps in 288 (accept4); reading a client, in 45 (recvfrom)."""
    lab = lab_of("model_blocking")
    idle = sample(ctx_of(lab), 0.5)
    assert idle.machine == "x86_64"
    assert main_thread_waits(idle) == {("S", 288)}
    assert syscalls.number("accept4", idle.machine) == 288
    loaded, hold = sample_while_holding(ctx_of(lab), 2, 0.5)
    assert hold["connected"] == 2
    assert main_thread_waits(loaded) == {("S", 45)}
    assert syscalls.number("recvfrom", loaded.machine) == 45
    assert loaded.snapshots[0].threads[0].wchan  # shown (never graded)


def test_blocking_threads_stays_one_while_clients_are_held(lab_of):
    lab = lab_of("model_blocking")
    outcome = run(lab, "threads", connections=4, threads=1, processes=1)
    assert outcome.passed, outcome.message
    assert outcome.evidence["threads"] == 1 and outcome.evidence["processes"] == 1
    assert outcome.evidence["hold"]["connected"] == 4


def test_blocking_fails_a_thread_per_client_expectation(lab_of):
    outcome = run(lab_of("model_blocking"), "threads", connections=4, threads=">= N")
    assert not outcome.passed
    assert "1 thread" in outcome.message and ">= 4" in outcome.message
    assert "does not start a thread per client" in outcome.message


def test_blocking_is_blocked_in_accept4(lab_of):
    outcome = run(lab_of("model_blocking"), "blocked_in", syscalls=["accept", "accept4"])
    assert outcome.passed, outcome.message
    assert "asleep in accept4" in outcome.message


def test_blocking_fails_when_an_event_loop_is_expected(lab_of):
    outcome = run(lab_of("model_blocking"), "blocked_in", syscalls=["epoll_wait", "epoll_pwait"])
    assert not outcome.passed
    assert "asleep in accept4" in outcome.message and "expected one of epoll_wait" in outcome.message


def test_blocking_idle_cpu_is_near_zero(lab_of):
    outcome = run(lab_of("model_blocking"), "idle_cpu", window=1.5)
    assert outcome.passed, outcome.message
    assert outcome.evidence["cpu_percent"] < 5


def test_blocking_io_model(lab_of):
    outcome = run(lab_of("model_blocking"), "io_model", expect="blocking")
    assert outcome.passed, outcome.message
    assert outcome.evidence["model"] == "blocking"
    assert outcome.evidence["probe"]["answered"] is False


# -- thread per connection ----------------------------------------------------------------------

def test_threaded_grows_with_connections(lab_of):
    lab = lab_of("model_threaded")
    outcome = run(lab, "threads", connections=6, threads=">= N", processes=1)
    assert outcome.passed, outcome.message
    assert outcome.evidence["threads"] >= 7  # main + one per connection
    assert outcome.evidence["idle_threads"] == 1


def test_threaded_fails_a_one_thread_expectation(lab_of):
    outcome = run(lab_of("model_threaded"), "threads", connections=4, threads="<= 2")
    assert not outcome.passed
    assert "starts more threads than allowed" in outcome.message


def test_threaded_idle_main_thread_in_accept4_and_io_model(lab_of):
    lab = lab_of("model_threaded")
    assert run(lab, "blocked_in", syscalls=["accept4"]).passed
    outcome = run(lab, "io_model", expect="thread-per-connection")
    assert outcome.passed, outcome.message
    assert outcome.evidence["rules"][-1] == "more-threads-than-idle: thread-per-connection"


# -- process per connection ---------------------------------------------------------------------

def test_forking_processes_grow_threads_stay_one(lab_of):
    lab = lab_of("model_forking")
    outcome = run(lab, "threads", connections=4, processes=">= N + 1", threads=1)
    assert outcome.passed, outcome.message
    failed = run(lab, "threads", connections=4, processes=1)
    assert not failed.passed and "5 processes" in failed.message


def test_forking_io_model(lab_of):
    lab = lab_of("model_forking")
    outcome = run(lab, "io_model", expect="fork-per-connection")
    assert outcome.passed, outcome.message
    assert run(lab, "io_model", expect="forking").passed  # the family
    wrong = run(lab, "io_model", expect=["threaded", "event-driven"])
    assert not wrong.passed and "looks fork-per-connection (a new process for each client), expected threaded or " \
                                "event-driven" in wrong.message
    assert run(lab, "blocked_in", syscalls=["accept4"]).passed  # the children are gone again


# -- event loops --------------------------------------------------------------------------------

@pytest.mark.parametrize("server, syscall, number", [
    ("model_select", "pselect6", 270),   # glibc's select() is pselect6
    ("model_poll", "poll", 7),
    ("model_epoll", "epoll_wait", 232),
])
def test_event_loops(lab_of, server, syscall, number):
    lab = lab_of(server)
    idle = sample(ctx_of(lab), 0.5)
    if idle.machine == "x86_64":
        assert main_thread_waits(idle) == {("S", number)}, "the DESIGN's measured number"
    outcome = run(lab, "blocked_in", syscalls=[syscall])
    assert outcome.passed, outcome.message
    wrong = run(lab, "blocked_in", syscalls=["accept4"])
    assert not wrong.passed and f"asleep in {syscall}" in wrong.message and "expected one of accept4" in wrong.message
    model = run(lab, "io_model", expect="event-loop")
    assert model.passed, model.message
    assert model.evidence["probe"]["answered"] is True
    assert run(lab, "threads", connections=4, threads=1, processes=1).passed


def test_epoll_idle_cpu_with_idle_clients(lab_of):
    outcome = run(lab_of("model_epoll"), "idle_cpu", window=1.0, connections=8)
    assert outcome.passed, outcome.message


# -- wrong on purpose: busy loops ---------------------------------------------------------------

def test_busy_polling_fails_blocked_in_idle_cpu_and_io_model(lab_of):
    lab = lab_of("model_busy")
    blocked = run(lab, "blocked_in", syscalls=["accept4", "epoll_wait", "poll", "pselect6"])
    assert not blocked.passed
    assert "is running, not asleep" in blocked.message and "busy loop" in blocked.message
    cpu = run(lab, "idle_cpu", window=1.5)
    assert not cpu.passed
    # A spinning server takes what CPU it gets: all of one when the host is quiet, less when other labs
    # share its CPUs (9% of one seen with a load of 13 on 2 cores); what is sure is that it is over the
    # check's own bound, which is why it failed. A fixed figure here would test the machine's load.
    assert cpu.evidence["cpu_percent"] > cpu.evidence["max_percent"], cpu.evidence
    model = run(lab, "io_model", expect="event-driven")
    assert not model.passed
    assert model.evidence["model"] == "busy-polling"


def test_one_spinning_thread_is_caught_even_when_main_sleeps_right(lab_of):
    lab = lab_of("model_threaded_busy")
    blocked = run(lab, "blocked_in", syscalls=["accept4"])
    assert not blocked.passed
    main_ok = [t for t in blocked.evidence["threads"] if t["ok"]]
    assert len(main_ok) == 1 and main_ok[0]["tid"] == main_ok[0]["pid"]  # main: asleep in accept4
    assert "is running, not asleep" in blocked.message and "main" not in blocked.message
    cpu = run(lab, "idle_cpu", window=1.5)
    assert not cpu.passed and "running" in cpu.message
    model = run(lab, "io_model", expect="threaded")
    assert not model.passed and model.evidence["model"] == "busy-polling"
