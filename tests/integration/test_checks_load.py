"""Proof on the real engine that load_curve tells the servers apart by the shape of their curve: the polling
reference passes (flat latency, one thread), also while every core of the machine is kept busy; the blocking
reference fails on p99 growth; the threaded reference fails where threads must stay bounded and passes where
they are not judged.

One lab per reference solution, all started at once for the module (a check does not change its lab) and
removed at its end. The steps are small (1, 8, 32 clients of 1 s each) so the module takes well under a
minute; the exercise's own steps (to 256) are proven by `labctl validate polling` (tests/exercises).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from labctl.checks import CheckContext, Outcome, load_catalog
from labctl.load_plot import plot_load_curve

ROOT = Path(__file__).resolve().parents[2]
DOCROOT = ROOT / "exercises" / "www"           # its medium.bin is what the clients take slowly
SOLUTIONS = {name: ROOT / "exercises" / name / "solution" for name in ("polling", "blocking", "threaded")}
QUICK = {"steps": [1, 8, 32], "seconds": 1.0}


@pytest.fixture(scope="module")
def labs(project, images):
    from labctl.lab import Lab, Submission

    made: dict[str, Lab] = {}

    def start(name: str) -> None:
        lab = Lab.create(project.spec, project.backend)
        made[name] = lab  # before up(): if up() fails half-way, the finally below still removes it
        lab.up(images, Submission(path=SOLUTIONS[name], docroot=DOCROOT))

    try:
        with ThreadPoolExecutor(max_workers=len(SOLUTIONS)) as pool:
            list(pool.map(start, SOLUTIONS))
        yield made
    finally:
        for lab in made.values():
            lab.down()


def load_curve(lab, **params) -> Outcome:
    definition = load_catalog()["load_curve"]
    ctx = CheckContext.of(lab, 8080, time.monotonic() + definition.default_timeout, docroot=DOCROOT)
    started = time.monotonic()
    outcome = definition.run(ctx, definition.params(**{**QUICK, **params}))
    print(f"\nload_curve {params}: passed={outcome.passed} in {time.monotonic() - started:.1f} s\n  {outcome.message}")
    for row in outcome.evidence["steps"]:
        print("   ", {key: row[key] for key in ("clients", "answered", "failed", "p50", "p99", "requests_per_second",
                                               "threads", "cpu_percent")})
    return outcome


def test_the_event_loop_keeps_its_curve_flat_and_its_one_thread(labs):
    outcome = load_curve(labs["polling"], max_threads="bounded")
    assert outcome.passed, outcome.message
    steps = outcome.evidence["steps"]
    assert [row["clients"] for row in steps] == [1, 8, 32] and all(row["threads"] == 1 for row in steps)
    assert all(row["failed"] == 0 and row["answered"] > 0 for row in steps)
    assert steps[0]["p99"] >= 0.25      # each answer is taken slowly: read_delay
    assert steps[2]["requests_per_second"] > 4 * steps[0]["requests_per_second"]
    assert plot_load_curve(steps).lstrip().startswith(b"<?xml")


def test_the_verdict_holds_on_a_busy_machine(labs):
    """Every core kept busy by another process: the event loop's curve is slower, its shape the same."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    try:
        outcome = load_curve(labs["polling"], max_threads="bounded")
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    assert outcome.passed, outcome.message


def test_one_connection_at_a_time_fails_on_p99_growth(labs):
    outcome = load_curve(labs["blocking"], p99_growth=5, max_threads="bounded")
    assert not outcome.passed
    assert "p99 grew" in outcome.message and "serves one connection at a time" in outcome.message
    steps = outcome.evidence["steps"]
    assert steps[-1]["p99"] > 5 * steps[0]["p99"] and steps[-1]["threads"] == 1
    # Its throughput stays at about one answer per delay, however many clients wait.
    assert steps[-1]["requests_per_second"] < 1.5 / 0.25


def test_a_thread_per_client_fails_where_threads_must_stay_bounded(labs):
    bounded = load_curve(labs["threaded"], max_threads="bounded")
    assert not bounded.passed and "threads grew from" in bounded.message and "per connection" in bounded.message
    assert bounded.evidence["not_run"] == [32]
    free = load_curve(labs["threaded"])
    assert free.passed, free.message
    assert free.evidence["steps"][-1]["threads"] > free.evidence["steps"][0]["threads"] + 8
