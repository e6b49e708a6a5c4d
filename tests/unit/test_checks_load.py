"""The load_curve check without Docker: its parameters, the steps it runs within the lab's limits, the shapes
that pass and fail (facts recorded from real servers on this machine), the check on the one fake engine, and
the picture of a curve.

The recorded shapes (labctl's lab, exercises/www/medium.bin, read_delay 0.25 s, rate 250/s; p50 and p99 in
seconds, throughput in requests/s, threads of all server processes, CPU in % of one CPU):
- the polling reference: latencies flat (0.26 -> 0.91 s at 256 clients on a busy machine), one thread;
- the blocking reference: p99 0.27 -> 2.2 s at 8 clients -> 9.0 s at 64, 35 requests timed out, throughput
  stuck at ~3.5/s (one answer per 0.25 s delay);
- the threaded reference: latencies flat, threads 2 -> 9 -> 65 -> 224;
- the thread-pool reference (8 workers): p99 0.40 -> 8.4 s at 256 clients, throughput stuck at ~30/s.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from labctl import observe
from labctl.checks import CheckContext, load_catalog
from labctl.checks.load import (
    LoadCurveParams,
    judge_load_curve,
    plan_steps,
    step_problems,
    step_row,
)
from labctl.errors import BudgetTooShort, LabctlError
from labctl.lab import Lab
from labctl.load_plot import plot_load_curve

from .fakes import Doing, FakeBackend, ObservedServer, up_lab

EPOLL_WAIT = 232


def snap(threads: int, processes: int = 1) -> dict:
    """One look of the observer's sampler: `processes` server processes, `threads` threads in all."""
    per = [threads // processes + (1 if index < threads % processes else 0) for index in range(processes)]
    return {"machine": "x86_64", "clk_tck": 100, "time": 0.0, "init": None, "errors": [],
            "processes": [{"pid": 7 + index, "ppid": 1, "comm": "python3", "uid": 1000, "cmdline": "python3 server.py",
                           "ticks": 0, "child_ticks": 0,
                           "threads": [{"tid": 7 + index if t == 0 else 1000 * (index + 1) + t, "comm": "python3",
                                        "state": "S", "syscall": EPOLL_WAIT, "arg0": 3, "wchan": "", "ticks": 0,
                                        "voluntary": 1, "nonvoluntary": 0, "uid": 1000} for t in range(count)]}
                          for index, count in enumerate(per)]}


def sample(threads: int, cpu_percent: float = 1.0, processes: int = 1) -> observe.Sample:
    """What the observer saw over a step of 2 s."""
    return observe.Sample(snapshots=(observe.Snapshot.from_json(snap(threads, processes)),), elapsed=2.0,
                          cpu_seconds=2.0 * cpu_percent / 100)


def facts(clients: int, answered: int, p50: float, p99: float, rps: float,
          errors: dict[str, int] | None = None) -> dict:
    """A load_step's answer whose latencies have this p50 and p99 (nearest rank), at this throughput."""
    top = answered - math.ceil(0.99 * answered) + 1 if answered else 0
    latencies = sorted([p50] * (answered - top) + [p99] * top)
    return {"connections_asked": clients, "connections": clients, "clamped": False,
            "nofile": {"soft_before": 1024, "hard": 8192, "soft": 8192}, "seconds": 2.0, "read_delay": 0.25,
            "interval": 0.0, "requests": answered + sum((errors or {}).values()), "answered": answered,
            "errors": errors or {}, "client_errors": {}, "error_examples": [], "unfinished": 0, "syn_retried": 0,
            "answered_early": 0, "wall_seconds": answered / rps if rps else 2.0, "latencies": latencies,
            "latencies_thinned": False}


# (clients, answered, p50, p99, requests/s, threads, cpu %, errors) as measured
POLLING = [(1, 8, 0.257, 0.260, 3.9, 1, 0.9, None), (8, 64, 0.255, 0.265, 28.8, 1, 3.9, None),
           (64, 413, 0.297, 0.401, 181.6, 1, 14.8, None), (256, 512, 0.423, 0.914, 253.5, 1, 20.3, None)]
BLOCKING = [(1, 8, 0.264, 0.269, 3.8, 1, 0.7, None), (8, 15, 2.007, 2.209, 3.7, 1, 0.5, None),
            (64, 36, 4.698, 8.999, 3.3, 1, 0.8, {"timeout": 35})]
THREADED = [(1, 8, 0.258, 0.268, 3.8, 2, 0.8, None), (8, 64, 0.257, 0.271, 28.6, 9, 4.3, None),
            (64, 350, 0.381, 0.641, 142.2, 65, 20.0, None), (256, 501, 0.652, 1.818, 168.3, 224, 19.5, None)]
POOL = [(1, 7, 0.311, 0.402, 3.2, 9, 0.5, None), (8, 57, 0.270, 0.379, 25.4, 9, 2.2, None),
        (64, 112, 1.919, 2.252, 28.4, 9, 2.6, None), (256, 312, 5.201, 8.362, 30.5, 9, 3.5, None)]


def rows_of(recorded: list[tuple]) -> list[dict]:
    return [step_row(clients, facts(clients, answered, p50, p99, rps, errors), sample(threads, cpu))
            for clients, answered, p50, p99, rps, threads, cpu, errors in recorded]


def judge(recorded: list[tuple], **params):
    """Judge the recorded steps as the check does: one at a time, stopping at the first that fails."""
    settings = LoadCurveParams(**params)
    rows: list[dict] = []
    for row in rows_of(recorded):
        rows.append(row)
        if step_problems(rows, settings):
            break
    not_run = [step[0] for step in recorded[len(rows):]]
    return judge_load_curve(rows, settings, [], not_run)


# -- parameters -------------------------------------------------------------------------------------------

def test_defaults_and_the_catalog():
    params = LoadCurveParams()
    assert params.steps == [1, 8, 64, 256] and params.read_delay == 0.25 and params.path == "/medium.bin"
    assert params.p99_growth == 25 and params.max_threads is None and params.max_errors == 0
    definition = load_catalog()["load_curve"]
    assert definition.params is LoadCurveParams and definition.default_timeout == 90
    assert list(load_catalog()).index("load_curve") > list(load_catalog()).index("slow_reader")


@pytest.mark.parametrize("bad", [{"steps": [8, 1]}, {"steps": [1, 1]}, {"steps": [1]}, {"steps": [0, 4]},
                                 {"steps": [1, 30000]}, {"max_threads": 0}, {"max_threads": "few"},
                                 {"max_threads": True}, {"p99_growth": 1}, {"rate": 0}, {"seconds": 0.1},
                                 {"step": [1, 2]}])
def test_params_reject_nonsense(bad):
    with pytest.raises(ValidationError):
        LoadCurveParams(**bad)


def test_max_threads_is_a_number_or_bounded():
    assert LoadCurveParams(max_threads=4).max_threads == 4
    assert LoadCurveParams(max_threads="bounded").max_threads == "bounded"


# -- the steps within the lab's limits ----------------------------------------------------------------------

def test_steps_within_the_limits_run_as_asked():
    planned, notes = plan_steps(LoadCurveParams(), server_nofile=4096, client_nofile=8192, server_pids=512)
    assert planned == [(1, 1), (8, 8), (64, 64), (256, 256)] and notes == []


def test_a_step_above_the_nofile_limit_runs_at_the_limit_and_says_so():
    params = LoadCurveParams(steps=[1, 64, 5000, 9000], max_threads="bounded")
    planned, notes = plan_steps(params, server_nofile=4096, client_nofile=8192, server_pids=512)
    assert planned == [(1, 1), (64, 64), (5000, 4032)]
    assert notes[0].startswith("the step of 5000 clients ran with 4032: the lab's nofile limit (server 4096, "
                               "client 8192, less 64")
    assert notes[1].startswith("the step of 9000 clients was left out: capped to 4032")


def test_the_pids_limit_caps_only_a_server_allowed_a_thread_per_client():
    unbounded = plan_steps(LoadCurveParams(steps=[1, 1000]), 4096, 8192, 512)
    assert unbounded[0] == [(1, 1), (1000, 496)] and "the server's pids limit (512 tasks" in unbounded[1][0]
    bounded = plan_steps(LoadCurveParams(steps=[1, 1000], max_threads=1), 4096, 8192, 512)
    assert bounded == ([(1, 1), (1000, 1000)], [])


# -- the shapes -------------------------------------------------------------------------------------------

def test_the_event_loop_passes_with_flat_latency_and_one_thread():
    outcome = judge(POLLING, max_threads="bounded")
    assert outcome.passed, outcome.message
    assert outcome.message == ("from 1 client to 256, p99 went from 260 ms to 914 ms (3.5x; at most 25x), "
                               "throughput went from 3.9 to 253.5 requests/s, the server's threads stayed at 1, "
                               "and no request failed.")
    table = outcome.evidence["steps"]
    assert [row["clients"] for row in table] == [1, 8, 64, 256] and outcome.evidence["not_run"] == []
    assert table[3]["p50"] == 0.423 and table[3]["p99"] == 0.914 and table[3]["threads"] == 1
    assert table[3]["cpu_percent"] == 20.3 and table[3]["requests_per_second"] == 253.5


def test_one_at_a_time_fails_on_p99_growth_and_says_why():
    outcome = judge(BLOCKING + [(256, 0, 0, 0, 0, 1, 0, None)], max_threads="bounded")
    assert not outcome.passed
    assert outcome.message.startswith(
        "p99 grew 33.5x from 1 client to 64 (269 ms -> 9.00 s; at most 25x); at 64 clients 35 of 71 requests failed "
        "(35 timeout; none may fail): your server serves one connection at a time: it answered 3.3 requests/s "
        "with 64 clients, about one per 250 ms a client takes over its answer.")
    assert outcome.message.endswith("(the step of 256 clients was not run)")
    assert outcome.evidence["not_run"] == [256] and len(outcome.evidence["steps"]) == 3


def test_the_factor_is_the_exercises():
    """At 8 clients the blocking server's p99 grew 8x: a factor of 5 catches it there, 25 only at 64."""
    early = judge(BLOCKING, p99_growth=5)
    assert not early.passed and early.message.startswith("p99 grew 8.2x from 1 client to 8 ")
    assert early.evidence["not_run"] == [64]
    assert not judge(BLOCKING, p99_growth=25).passed
    assert judge(BLOCKING[:2], p99_growth=25).passed


def test_a_thread_per_client_fails_where_threads_must_stay_bounded():
    outcome = judge(THREADED, max_threads="bounded")
    assert not outcome.passed
    assert outcome.message.startswith(
        "the server's threads grew from 2 to 9 from 1 client to 8 (threads must stay bounded: at most 2 + 4): it "
        "starts a thread (or a process) per connection.")
    assert outcome.evidence["not_run"] == [64, 256]


def test_a_thread_per_client_passes_where_threads_are_not_judged():
    outcome = judge(THREADED)
    assert outcome.passed and "the server's threads went from 2 to 224" in outcome.message


def test_a_number_of_threads():
    assert judge(POLLING, max_threads=1).passed
    outcome = judge(THREADED, max_threads=16)
    assert not outcome.passed and outcome.message.startswith("at 64 clients the server had 65 threads (at most 16)")
    assert "a thread (or a process) per connection" in outcome.message
    pool = judge(POOL, max_threads=4, p99_growth=None)
    assert not pool.passed and pool.message.startswith(
        "at 1 client the server had 9 threads (at most 4): it runs more threads than the exercise allows.")


def test_a_small_pool_is_named_by_how_many_it_serves_at_once():
    outcome = judge(POOL, p99_growth=10)
    assert not outcome.passed
    assert "p99 grew 20.8x from 1 client to 256" in outcome.message
    assert "your server serves about 8 connections at once (30.5 requests/s with 256 clients" in outcome.message


def test_errors_fail_a_step_even_with_flat_latency():
    recorded = POLLING[:2] + [(64, 400, 0.30, 0.40, 180.0, 1, 14.0, {"reset": 3, "closed": 1})]
    outcome = judge(recorded)
    assert not outcome.passed
    assert outcome.message.startswith("at 64 clients 4 of 404 requests failed (3 connection reset, 1 closed by "
                                      "the server; none may fail): requests that one client makes alone succeed, "
                                      "and fail when many come at once: look for a listen backlog")
    assert judge(recorded, max_errors=4).passed


def test_a_server_that_answers_nothing_fails_at_the_first_step():
    outcome = judge([(1, 0, 0, 0, 0, 1, 0.5, {"timeout": 1})] + POLLING[1:])
    assert not outcome.passed
    assert outcome.message.startswith("at 1 client no request got a whole answer (1 timeout): the server "
                                      "answered none of them: is it still running")
    assert outcome.evidence["not_run"] == [8, 64, 256]


def test_a_busy_server_is_called_busy():
    recorded = POLLING[:2] + [(64, 100, 4.0, 8.5, 40.0, 1, 99.0, None)]
    outcome = judge(recorded)
    assert not outcome.passed and "the server used 99% of a CPU at 64 clients: it is busy" in outcome.message


def test_a_server_gone_from_the_observers_sight():
    rows = rows_of(POLLING[:1]) + [step_row(8, facts(8, 0, 0, 0, 0, {"refused": 40}), None, "no look")]
    outcome = judge_load_curve(rows, LoadCurveParams(max_threads="bounded"))
    assert not outcome.passed and "the observer saw no server process (did the server exit?)" in outcome.message
    assert rows[1]["observer_error"] == "no look" and rows[1]["threads"] is None


def test_notes_of_capped_steps_are_in_the_message_and_the_evidence():
    note = "the step of 5000 clients ran with 4032: the lab's nofile limit"
    outcome = judge_load_curve(rows_of(POLLING), LoadCurveParams(), [note])
    assert outcome.passed and outcome.message.endswith(f" Note: {note}.") and outcome.evidence["capped"] == [note]


def test_a_row_keeps_the_clients_the_client_could_hold():
    clamped = dict(facts(4032, 10, 0.3, 0.4, 5.0), connections=4000, clamped=True,
                   nofile={"soft_before": 1024, "hard": 4064, "soft": 4064})
    row = step_row(4032, clamped)
    assert row["clients"] == 4000 and row["asked"] == 4032 and row["client_nofile"] == 4064


# -- the check on the fake engine -------------------------------------------------------------------------

@pytest.fixture
def lab(fake: FakeBackend, tmp_path) -> Lab:
    return up_lab(fake, tmp_path / "project")


def scripted(fake: FakeBackend, recorded: list[tuple]) -> list[dict]:
    """The client's load_step answers the recorded step of as many clients; the observer sees the recorded
    threads while it runs. Returns the parameters each load_step was given."""
    by_clients = {step[0]: step for step in recorded}
    observed = ObservedServer(fake, Doing(snap(by_clients[recorded[0][0]][5])))
    given: list[dict] = []

    def load_step(params: dict) -> dict:
        given.append(params)
        clients, answered, p50, p99, rps, threads, cpu, errors = by_clients[params["connections"]]
        with observed.holding(Doing(snap(threads), cpu=cpu / 100)):
            time.sleep(0.05)
        return facts(clients, answered, p50, p99, rps, errors)

    fake.harness["client"]["load_step"] = load_step
    return given


def run(lab: Lab, budget: float = 60.0, docroot: Path | None = None, **params):
    definition = load_catalog()["load_curve"]
    ctx = CheckContext(lab=lab, port=8080, deadline=time.monotonic() + budget, docroot=docroot)
    return definition.run(ctx, definition.params(**params))


def test_the_check_runs_each_step_with_the_observer_watching(fake, lab):
    given = scripted(fake, POLLING)
    outcome = run(lab, max_threads="bounded", seconds=0.5)
    assert outcome.passed, outcome.message
    assert [params["connections"] for params in given] == [1, 8, 64, 256]
    assert given[3]["interval"] == pytest.approx(256 / 128) and given[0]["read_delay"] == 0.25
    assert given[0]["path"] == "/medium.bin" and given[0]["rcvbuf"] == 4096 and given[0]["host"] == lab.server_host
    assert [row["threads"] for row in outcome.evidence["steps"]] == [1, 1, 1, 1]
    assert outcome.evidence["steps"][3]["cpu_percent"] > 0


def test_the_check_stops_at_the_first_step_that_fails(fake, lab):
    given = scripted(fake, THREADED)
    outcome = run(lab, max_threads="bounded", seconds=0.5)
    assert not outcome.passed and [params["connections"] for params in given] == [1, 8]
    assert [row["threads"] for row in outcome.evidence["steps"]] == [2, 9]
    assert "threads grew from 2 to 9" in outcome.message and "server_log_tail" in outcome.evidence


def test_the_check_caps_steps_to_the_labs_limits(fake, lab):
    recorded = POLLING[:1] + [(496, 400, 0.3, 0.4, 200.0, 1, 10.0, None)]
    given = scripted(fake, recorded)
    outcome = run(lab, steps=[1, 1000], seconds=0.5)
    assert outcome.passed and [params["connections"] for params in given] == [1, 496]
    assert "Note: the step of 1000 clients ran with 496: the server's pids limit (512 tasks" in outcome.message


def test_a_budget_too_short_for_the_steps_is_an_error_not_a_verdict(fake, lab):
    scripted(fake, POLLING)
    with pytest.raises(BudgetTooShort, match="too short for 4 steps of 2 s"):
        run(lab, budget=5.0)


def test_a_file_too_small_to_hold_a_server_is_the_exercises_error(fake, lab, tmp_path):
    docroot = tmp_path / "www"
    docroot.mkdir()
    (docroot / "medium.bin").write_bytes(b"x" * 1000)
    scripted(fake, POLLING)
    with pytest.raises(LabctlError, match="medium.bin in the exercise's docroot has 1000 bytes, less than min_size"):
        run(lab, docroot=docroot)
    assert run(lab, docroot=docroot, read_delay=0, seconds=0.5).passed


# -- the picture ------------------------------------------------------------------------------------------

def test_the_curve_is_drawn_as_svg_and_png():
    table = rows_of(BLOCKING) + [step_row(256, facts(256, 0, 0, 0, 0, {"timeout": 9}), sample(1))]
    svg = plot_load_curve(table)
    assert svg.lstrip().startswith(b"<?xml") and b"<svg" in svg and svg == plot_load_curve(table)
    assert b"<text" not in svg and b"<path" in svg   # glyphs as paths: the SVG needs no font to show
    png = plot_load_curve(table, "png", title="blocking")
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    with pytest.raises(ValueError, match="svg or png"):
        plot_load_curve(table, "gif")  # type: ignore[arg-type]


def test_a_failed_load_curve_leaves_its_curve_as_evidence_and_a_passed_one_nothing(tmp_path):
    from labctl.evidence.folder import EvidenceFolder
    from labctl.evidence.keeper import Keeper
    from labctl.exercise import CheckSpec
    from labctl.results import CheckResult

    table = rows_of(BLOCKING)
    keeper = Keeper(EvidenceFolder.prepare(tmp_path / "evidence"))
    spec = CheckSpec(name="load-curve", check="load_curve", points=2)
    for status, kept in (("failed", True), ("passed", False)):
        seen = keeper.open(spec)
        assert seen is not None
        seen.begun = True  # as grading marks it before the check runs (no capture: the fake lab has none)
        result = CheckResult(name=spec.name, check=spec.check, status=status, points=0, max_points=2, duration=8.0,
                             message="p99 grew 34x", evidence={"steps": table})
        closed = seen.close(result)
        pictures = [entry for entry in closed.evidence_files if entry.kind == "load-curve"]
        assert bool(pictures) is kept, closed
        if kept:
            data = (tmp_path / "evidence" / pictures[0].path).read_bytes()
            assert data.startswith(b"\x89PNG") and pictures[0].media_type == "image/png"
