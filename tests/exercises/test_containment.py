"""Hostile submissions stay in their box: other labs keep working, the host's disk stays safe."""

from __future__ import annotations

import os
import time

from conftest import ROOT

from labctl.exercise import load_exercise
from labctl.grading import GradeOptions, grade

FETCH = ("import time, urllib.request as u; started = time.monotonic(); "
         "body = u.urlopen('http://server:8080/', timeout=5).read().decode().strip(); "
         "print(body, round(time.monotonic() - started, 3))")


def test_a_fork_bomb_is_contained_and_another_lab_keeps_serving(start_lab, project):
    neighbour = start_lab("hello")
    exercise = load_exercise(ROOT / "exercises" / "threaded")
    report = grade(project, exercise, ROOT / "exercises" / "threaded" / "mutants" / "fork_bomb",
                   GradeOptions(only=["get-index", "not-found", "idle-cpu"]))
    assert report.gradable
    first, *rest = report.results
    assert first.status != "passed"
    assert "task limit" in first.message, first.message
    assert all(result.message.startswith("not run: the server used up its task limit") for result in rest)
    answer = neighbour.exec("client", ["python3", "-c", FETCH], timeout=20)
    assert answer.exit_code == 0 and answer.text.startswith("hello from the lab"), answer.stderr


def test_a_memory_hog_is_killed_and_grading_says_so(project):
    exercise = load_exercise(ROOT / "exercises" / "threaded")
    # 64 MB a request: the 100 clients of hundred-clients take it past the 256m limit.
    report = grade(project, exercise, ROOT / "exercises" / "threaded" / "mutants" / "memory_hog",
                   GradeOptions(only=["get-index", "hundred-clients", "idle-cpu"]))
    assert report.gradable
    messages = " ".join(result.message for result in report.results)
    assert "killed for using more memory than allowed (256m)" in messages, messages


def test_a_log_flood_keeps_only_a_few_megabytes_on_the_host(start_lab, project):
    lab = start_lab(ROOT / "exercises" / "polling" / "mutants" / "log_flood")
    time.sleep(4)  # long enough to write far more than the cap
    log_path = project.backend.client.api.inspect_container(lab.container_name("server"))["LogPath"]
    if not os.path.exists(log_path):
        import pytest

        pytest.skip("the engine's log files are not on this machine (remote engine)")
    folder = os.path.dirname(log_path)
    total = sum(os.path.getsize(os.path.join(folder, name)) for name in os.listdir(folder)
                if name.startswith(os.path.basename(log_path)))
    assert total <= 3 * 2 * 2**20, f"{total} bytes of log kept: the cap is two files of 2 MB"
    assert lab.log_tail("server", 1).startswith("log flood")
