"""grade() on the in-memory engine: the check's own budget, the grading's budget, a server that dies
during grading, a server that never starts, and the lab removed afterwards in every case.

The checks here are test-only ones, registered for each test and taken out after it: `probe` runs
one harness command in the client (the fake's handler answers it, as the harness would) and passes
when the answer says ok; `sleep` stays on the host for a while (a check stuck in its own code).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from labctl import grading
from labctl.backends.base import ExecResult
from labctl.checks import REGISTRY, CheckContext, CheckParams, Outcome, check
from labctl.errors import BudgetTooShort, LabctlError
from labctl.exercise import CheckSpec, Exercise, load_exercise
from labctl.grading import GradeOptions, grade
from labctl.results import GradeReport

from .fakes import FakeBackend, FakeProject, write_lab

ROOT = Path(__file__).resolve().parents[2]
BLOCKING = ROOT / "exercises" / "blocking"


class ProbeParams(CheckParams):
    command: str                      # the harness command it runs in the client


class SleepParams(CheckParams):
    seconds: float


def probe(ctx: CheckContext, params: ProbeParams) -> Outcome:
    answer = ctx.harness(ctx.client, params.command, {"port": ctx.port})
    return Outcome(bool(answer.get("ok")), str(answer.get("message", "")), {"answer": answer})


def sleep(ctx: CheckContext, params: SleepParams) -> Outcome:
    time.sleep(params.seconds)
    return Outcome(True, f"slept {params.seconds:g} s")


class ShortParams(CheckParams):
    needs: float                      # seconds of work it needs left to begin


def short(ctx: CheckContext, params: ShortParams) -> Outcome:
    if ctx.remaining < params.needs:
        raise BudgetTooShort(f"the check's time budget ({ctx.remaining:.1f} s left) is too short for its "
                             f"{params.needs:g} s of work: give the check a longer timeout")
    return Outcome(True, "had the time")


TEST_CHECKS = {"test_probe": (ProbeParams, probe), "test_sleep": (SleepParams, sleep), "test_short": (ShortParams, short)}


@pytest.fixture(autouse=True)
def test_checks() -> Iterator[None]:
    """The test-only checks in the registry for one test, and out of it after (the catalog's own tests
    must not see them)."""
    for name, (params, function) in TEST_CHECKS.items():
        check(name, params, f"test-only: {function.__name__}", default_timeout=30.0)(function)
    yield
    for name in TEST_CHECKS:
        REGISTRY.pop(name, None)


@pytest.fixture
def asked() -> list[str]:
    """The probe commands the client ran, in order (what grading really ran, not what it reported)."""
    return []


def answers(fake: FakeBackend, asked: list[str], command: str, answer: dict | None = None) -> None:
    """The client's harness answers `command` with `answer` (default: ok), recording that it ran."""
    def handler(params: dict) -> dict:
        asked.append(command)
        return answer if answer is not None else {"ok": True, "message": f"{command} fine"}

    fake.harness["client"][command] = handler


def probe_check(name: str, **fields) -> CheckSpec:
    return CheckSpec(name=name, check="test_probe", params={"command": name}, **fields)


def sleep_check(name: str, seconds: float, **fields) -> CheckSpec:
    return CheckSpec(name=name, check="test_sleep", params={"seconds": seconds}, **fields)


def run_grading(fake: FakeBackend, tmp_path: Path, checks: list[CheckSpec], budget: float = 300.0,
                spec_edit=None, said: list[str] | None = None) -> GradeReport:
    folder = tmp_path / "submission"
    folder.mkdir(exist_ok=True)
    (folder / "server.py").write_text("print('serving')\n")
    project = FakeProject(tmp_path / "project", fake, write_lab(tmp_path / "project", spec_edit))
    exercise = Exercise(title="Test exercise", model="blocking", budget=budget, checks=checks, id="test",
                        dir=tmp_path)
    report = grade(project, exercise, folder, GradeOptions(), progress=(said if said is not None else []).append)
    assert project.images_asked == [["server", "tools"]]
    # Whatever happened, the lab is gone afterwards.
    assert fake.containers == {} and fake.networks == {}
    return report


def by_name(report: GradeReport) -> dict:
    return {result.name: result for result in report.results}


# -- a check's own budget -----------------------------------------------------------------------

@pytest.mark.parametrize("where", ["in-the-harness", "on-the-host"])
def test_a_check_over_its_own_budget_is_timed_out_and_the_next_check_still_runs(fake, tmp_path, asked,
                                                                               monkeypatch, where):
    monkeypatch.setattr(grading, "GRACE", 0.2)  # how long grading waits past a budget for a stuck check
    if where == "in-the-harness":
        def stuck(params: dict) -> dict:
            time.sleep(3)
            return {"ok": True}

        fake.harness["client"]["slow"] = stuck
        slow = probe_check("slow", timeout=0.4)
    else:
        slow = sleep_check("slow", 3, timeout=0.4)
    answers(fake, asked, "after")

    report = run_grading(fake, tmp_path, [slow, probe_check("after")])

    results = by_name(report)
    assert results["slow"].status == "timed_out" and results["slow"].points == 0
    assert results["slow"].message.startswith("the check did not finish within its time budget of 0.4 s")
    assert results["slow"].evidence == {"budget_seconds": 0.4}
    assert 0.4 <= results["slow"].duration < 0.4 + 0.2 + 1.0  # grading did not wait for the 3 s
    assert results["after"].status == "passed" and asked == ["after"]
    assert not report.budget_exhausted
    assert report.exit_code == 1


# -- the grading's budget -----------------------------------------------------------------------

def test_when_the_gradings_budget_runs_out_finished_checks_keep_their_results_and_the_rest_are_not_run(
        fake, tmp_path, asked):
    for command in ("first", "third", "fourth"):
        answers(fake, asked, command)

    report = run_grading(fake, tmp_path, [probe_check("first"), sleep_check("second", 1.2),
                                          probe_check("third"), probe_check("fourth", points=2)], budget=2.0)

    results = by_name(report)
    assert [results[name].status for name in ("first", "second")] == ["passed", "passed"]
    assert results["first"].points == 1 and results["second"].points == 1
    for name in ("third", "fourth"):
        assert results[name].status == "timed_out" and results[name].points == 0 and results[name].duration == 0
        assert results[name].message == "not run: the grading's time budget of 2 s ran out before this check"
    assert asked == ["first"]  # the checks said not run did not run
    assert report.budget_exhausted
    assert (report.score, report.max_score) == (2, 5)
    assert report.gradable and report.exit_code == 1


def test_a_check_given_only_what_was_left_that_runs_out_of_it_is_not_run_to_the_end(fake, tmp_path, asked):
    def stuck(params: dict) -> dict:
        time.sleep(3)
        return {"ok": True}

    fake.harness["client"]["second"] = stuck
    answers(fake, asked, "third")

    # Its own budget is the catalog default (30 s): it gets only what is left of the grading's 2 s.
    report = run_grading(fake, tmp_path, [probe_check("second"), probe_check("third")], budget=2.0)

    results = by_name(report)
    assert results["second"].status == "timed_out"
    found = re.fullmatch(r"not run to the end: the grading's time budget of 2 s ran out "
                         r"\((\d+\.\d) s were left for it\)", results["second"].message)
    assert found and 1.0 < float(found.group(1)) <= 2.0
    assert results["second"].duration < 2.0 + 1.0  # it was stopped at the grading's end, not at its own 30 s
    assert results["third"].message == "not run: the grading's time budget of 2 s ran out before this check"
    assert asked == []
    assert report.budget_exhausted and report.exit_code == 1


def test_a_check_given_only_what_was_left_that_errors_with_time_left_keeps_its_error(fake, tmp_path):
    """Not a budget matter: the harness answered with a traceback while the grading still had time."""
    fake.harness["client"]["only"] = lambda params: ExecResult(1, b"", b"Traceback: MemoryError\n")

    report = run_grading(fake, tmp_path, [probe_check("only")], budget=2.0)

    result = report.results[0]
    assert result.status == "error" and result.points == 0
    assert result.message.startswith("the check could not run: harness only on client failed (exit 1)")
    assert not report.budget_exhausted


def test_a_check_that_errors_within_its_own_budget_is_an_error_not_a_budget_matter(fake, tmp_path):
    fake.harness["client"]["only"] = lambda params: ExecResult(1, b"", b"Traceback: MemoryError\n")

    report = run_grading(fake, tmp_path, [probe_check("only", timeout=5)])

    result = report.results[0]
    assert result.status == "error"
    assert result.message.startswith("the check could not run: harness only on client failed (exit 1)")
    assert "MemoryError" in result.message
    assert not report.budget_exhausted


# -- a server that dies during grading ----------------------------------------------------------

@pytest.mark.parametrize("death, why", [
    ("exit", "the server stopped during check second: it exited with code 137"),
    ("oom", "the server stopped during check second: it was killed for using more memory than allowed (256m)"),
    ("tasks", "the server used up its task limit during check second (500 of 512 processes and threads): "
              "a fork bomb or a thread leak"),
])
def test_a_server_that_dies_during_a_check_fails_the_remaining_checks_at_once(fake, tmp_path, asked, death, why):
    def kill(params: dict) -> dict:
        asked.append("second")
        if death == "tasks":
            fake.container("server").tasks = 500
        else:
            fake.stop("server", 137, oom_killed=death == "oom")
        return {"ok": False, "message": "the connection was refused"}

    answers(fake, asked, "first")
    fake.harness["client"]["second"] = kill
    for command in ("third", "fourth"):
        answers(fake, asked, command)

    started = time.monotonic()
    report = run_grading(fake, tmp_path, [probe_check(name) for name in ("first", "second", "third", "fourth")])

    assert time.monotonic() - started < 5  # at once: no check waited for a server that is gone
    results = by_name(report)
    assert results["first"].status == "passed"
    assert results["second"].status == "failed"
    assert results["second"].message == f"the connection was refused ({why})"
    for name in ("third", "fourth"):
        assert results[name].status == "failed" and results[name].duration == 0
        assert results[name].message == f"not run: {why}"
    assert asked == ["first", "second"]
    assert report.gradable and report.exit_code == 1 and not report.budget_exhausted


def test_a_failed_check_on_a_server_that_still_runs_does_not_stop_the_grading(fake, tmp_path, asked):
    answers(fake, asked, "first", {"ok": False, "message": "expected 200, got 404"})
    answers(fake, asked, "second")

    report = run_grading(fake, tmp_path, [probe_check("first"), probe_check("second")])

    results = by_name(report)
    assert results["first"].message == "expected 200, got 404"
    assert results["second"].status == "passed"
    assert asked == ["first", "second"]


# -- a server that never starts -----------------------------------------------------------------

def test_a_server_that_exits_at_start_makes_the_grading_not_gradable(fake, tmp_path, asked):
    def crash(container) -> None:
        fake.log(container.name, "Traceback (most recent call last):\nNameError: name 'sockt' is not defined\n")
        fake.stop(container.name, 1)

    fake.on_start["server"] = crash
    answers(fake, asked, "first")

    report = run_grading(fake, tmp_path, [probe_check("first", points=3)])

    assert not report.gradable and report.exit_code == 2 and report.failure == "submission"
    assert report.error.startswith("the server did not start: the server exited with code 1 before it listened "
                                   "on port 8080")
    assert "NameError: name 'sockt' is not defined" in report.error
    assert report.results == [] and asked == []
    assert (report.score, report.max_score) == (0, 3)


def test_a_server_that_never_listens_makes_the_grading_not_gradable(fake, tmp_path, asked):
    fake.harness["client"]["wait_listening"] = lambda params: time.sleep(0.02) or {"listening": False}
    answers(fake, asked, "first")

    report = run_grading(fake, tmp_path, [probe_check("first")],
                         spec_edit=lambda data: data["timeouts"].update(up=0.3))

    assert not report.gradable and report.exit_code == 2 and report.failure == "submission"
    assert report.error.startswith("the server did not start: the server did not listen on port 8080 within 0.3 s")
    assert report.results == [] and asked == []


def test_an_engine_failure_while_making_the_lab_is_an_infrastructure_failure_and_leaves_nothing(fake, tmp_path):
    fake.fail_on("create_container", container="client")

    report = run_grading(fake, tmp_path, [probe_check("first")])

    # the machine's doing, not the submission's: exit 3, and no platform keeps a score for it
    assert not report.gradable and report.exit_code == 3 and report.failure == "infrastructure"
    assert report.error.startswith("fake engine: create_container labctl-")


# -- what a graded report carries ---------------------------------------------------------------

def test_a_submission_over_a_limit_is_the_submissions_doing(fake, tmp_path, monkeypatch):
    from labctl import archive

    monkeypatch.setattr(archive, "MAX_FILES", 0)  # the one server.py is already too many
    report = run_grading(fake, tmp_path, [probe_check("first")])

    assert not report.gradable and report.failure == "submission" and report.exit_code == 2
    assert "(the limit)" in (report.error or "")


def test_a_missing_submission_folder_is_the_submissions_doing(fake, tmp_path):
    project = FakeProject(tmp_path / "project", fake, write_lab(tmp_path / "project"))
    exercise = Exercise(title="Test exercise", model="blocking", checks=[probe_check("first")], id="test",
                        dir=tmp_path)
    report = grade(project, exercise, tmp_path / "nowhere")

    assert not report.gradable and report.failure == "submission" and report.exit_code == 2
    assert "does not exist" in (report.error or "") and fake.containers == {}


def test_an_unreachable_engine_is_an_infrastructure_failure(fake, tmp_path):
    from labctl.errors import EngineUnreachable

    fake.fail_on("create_network", error=EngineUnreachable("cannot reach the Docker Engine at unix:///nonexistent"))
    report = run_grading(fake, tmp_path, [probe_check("first")])

    assert not report.gradable and report.failure == "infrastructure" and report.exit_code == 3
    assert "cannot reach the Docker Engine" in (report.error or "")


def test_student_view_progress_never_names_a_hidden_check(fake, tmp_path, asked):
    answers(fake, asked, "first")
    answers(fake, asked, "zz-unique-hidden-name")
    said: list[str] = []
    folder = tmp_path / "submission"
    folder.mkdir()
    (folder / "server.py").write_text("print('serving')\n")
    project = FakeProject(tmp_path / "project", fake, write_lab(tmp_path / "project"))
    exercise = Exercise(title="Test exercise", model="blocking", id="test", dir=tmp_path,
                        checks=[probe_check("first"), probe_check("zz-unique-hidden-name", visibility="hidden")])
    report = grade(project, exercise, folder, GradeOptions(student_view=True), progress=said.append)

    assert [r.name for r in report.results] == ["first", "zz-unique-hidden-name"]  # it ran, and counts
    assert "check first" in said and not any("zz-unique-hidden-name" in line for line in said)
    assert "check a hidden check" in said


def test_a_graded_report_carries_the_servers_log_tail_and_the_cpu_it_used(fake, tmp_path):
    fake.on_start["server"] = lambda container: fake.log(container.name, "listening on 0.0.0.0:8080\n")

    def busy(params: dict) -> dict:
        server = fake.container("server")
        server.cpu_seconds += 0.25
        server.tasks = 9
        fake.log(server.name, "GET / 200\n")
        return {"ok": True, "message": "fine"}

    fake.harness["client"]["first"] = busy

    report = run_grading(fake, tmp_path, [probe_check("first")])

    assert report.exit_code == 0
    assert report.server_log_tail == "listening on 0.0.0.0:8080\nGET / 200"
    assert report.server_usage is not None
    assert report.server_usage.cpu_seconds == 0.25 and report.server_usage.peak_tasks == 9


def test_only_names_what_the_grading_offers_and_hidden_names_are_unknown_to_test(fake, tmp_path):
    exercise = load_exercise(BLOCKING)
    hidden = next(check.name for check in exercise.checks if check.visibility == "hidden")
    public = exercise.public_checks[0].name
    assert [c.name for c in GradeOptions(only=[hidden]).checks_of(exercise)] == [hidden]
    with pytest.raises(LabctlError, match=f"--only names no check of blocking: {hidden} \\(its public checks: "):
        GradeOptions(include_hidden=False, only=[hidden, public]).checks_of(exercise)
    with pytest.raises(LabctlError, match="--only names no check of blocking: nonsense"):
        GradeOptions(only=["nonsense"]).checks_of(exercise)
    # grade() always answers with a report: an unknown name makes it not gradable, and no lab is made
    report = grade(FakeProject(ROOT, fake, write_lab(tmp_path / "p")), exercise, tmp_path,
                   GradeOptions(only=["nonsense"]))
    assert not report.gradable and "nonsense" in (report.error or "") and not fake.containers


def test_checks_find_the_labs_nodes_by_role_whatever_lab_yaml_names_them(fake, tmp_path):
    def rename(data: dict) -> None:
        nodes = data["nodes"]
        for old, new in (("server", "web"), ("client", "tester"), ("injector", "flooder"), ("observer", "watcher")):
            nodes[new] = nodes.pop(old)
        nodes["watcher"]["watches"] = "web"

    fake.harness["tester"]["wait_listening"] = lambda params: {"listening": True}
    fake.harness["tester"]["renamed"] = lambda params: {"ok": True, "message": "the tester asked"}

    report = run_grading(fake, tmp_path, [probe_check("renamed")], spec_edit=rename)

    assert report.gradable and report.results[0].status == "passed", report.results
    assert report.results[0].message == "the tester asked"
    assert [e.node for e in fake.execs if e.harness_command == "renamed"] == ["tester"]


def test_a_check_too_short_of_time_to_begin_is_a_matter_of_time_not_an_error(fake, tmp_path):
    """Given only what was left of the grading's budget: not run to the end. With its own budget too short:
    timed out, saying so (an instructor's timeout to raise), never "the check could not run"."""
    left_over = CheckSpec(name="late", check="test_short", params={"needs": 10})
    report = run_grading(fake, tmp_path, [left_over], budget=4.0)
    assert report.results[0].status == "timed_out" and report.budget_exhausted
    assert report.results[0].message.startswith("not run to the end: the grading's time budget of 4 s ran out")

    own = CheckSpec(name="own", check="test_short", params={"needs": 10}, timeout=3)
    report = run_grading(fake, tmp_path, [own])
    assert report.results[0].status == "timed_out" and not report.budget_exhausted
    assert "is too short for its 10 s of work: give the check a longer timeout" in report.results[0].message


# -- what a backend offers ------------------------------------------------------------------------

def test_a_check_the_backend_cannot_run_is_unavailable_with_its_points_out_of_the_total(tmp_path, asked):
    from labctl.report import RENDERERS

    fake = FakeBackend(features=frozenset())     # a backend with none of the features (raw packets, thread waits)
    fake.harness["client"]["wait_listening"] = lambda params: {"listening": True}
    answers(fake, asked, "first")
    REGISTRY["test_probe_needs"] = REGISTRY["test_probe"].__class__(
        "test_probe_needs", ProbeParams, probe, "test-only: needs thread waits", 30.0, frozenset({"thread_waits"}))
    try:
        report = run_grading(fake, tmp_path, [probe_check("first", points=2),
                                              CheckSpec(name="waits", check="test_probe_needs", points=3,
                                                        params={"command": "waits"})])
    finally:
        REGISTRY.pop("test_probe_needs", None)
    first, waits = report.results
    assert first.passed and waits.status == "unavailable" and waits.unavailable and not waits.lesson
    assert asked == ["first"], "an unavailable check runs nothing"
    assert (waits.points, waits.max_points, waits.evidence["points_left_out"]) == (0, 0, 3)
    assert "not available on the fake backend" in waits.message and "what each server thread waits in" \
        in waits.message
    assert (report.score, report.max_score, report.exit_code) == (2, 2, 0), "left out, never a silent 0"
    junit = RENDERERS["junit"].render(report)
    assert 'failures="0"' in junit and 'errors="0"' in junit and "<skipped" in junit
    assert "1 of 1 check passed, 1 not available on this backend" in RENDERERS["terminal"].render(report)
    gradescope = json.loads(RENDERERS["gradescope"].render(report))
    shown = next(test for test in gradescope["tests"] if test["name"].startswith("waits"))
    assert "status" not in shown and shown["name"] == "waits (not available on this backend, not graded)"


def test_checks_reach_the_server_where_the_backend_says_on_the_port_it_gave(tmp_path):
    fake = FakeBackend(port=23456)
    seen: list[dict] = []
    ports: list[str] = []
    fake.on_start["server"] = lambda container: ports.append(container.plan.env["PORT"])
    fake.harness["client"]["wait_listening"] = lambda params: seen.append(params) or {"listening": True}
    fake.harness["client"]["where"] = lambda params: seen.append(params) or {"ok": True, "message": "here"}
    report = run_grading(fake, tmp_path, [probe_check("where")])
    assert report.results[0].passed
    assert seen[0]["port"] == 23456 and seen[-1]["port"] == 23456
    assert ports == ["23456"], "the server is told the port the backend gave it"
