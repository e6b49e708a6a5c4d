"""Grading on the real engine: exit codes, reports, hidden checks, budgets, Ctrl-C, a dying server."""

from __future__ import annotations

import base64
import json
import signal
import time
import xml.etree.ElementTree as ET

import pytest
from conftest import OWNER, ROOT

from integration.test_cli import labctl, spawn, wait_for_containers
from labctl.exercise import load_exercise
from labctl.grading import GradeOptions, grade
from labctl.lab import LABEL_OWNER

BLOCKING = ROOT / "exercises" / "blocking"


def test_test_shows_public_checks_only_and_exits_0_on_the_solution(tmp_path):
    result = labctl("test", "blocking", "--submission", str(BLOCKING / "solution"),
                    "--report", "terminal", "--report", f"json:{tmp_path / 'report.json'}",
                    "--report", f"junit:{tmp_path / 'junit.xml'}", "--report", f"github:{tmp_path / 'summary.md'}")
    assert result.returncode == 0, result.stdout + result.stderr
    hidden = [check.name for check in load_exercise(BLOCKING).hidden_checks]
    assert hidden, "the blocking exercise should have a hidden check to hide"
    for name in hidden:
        assert name not in result.stdout and name not in result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["gradable"] is True
    assert {r["name"] for r in report["results"]}.isdisjoint(hidden)
    assert report["score"] == report["max_score"] > 0
    assert "slow-client-lesson" in result.stdout, "the 0-point lesson is shown"
    # The lesson fails by design on a blocking server, and is never a failure: skipped in JUnit, a notice on GitHub.
    lesson = next(r for r in report["results"] if r["name"] == "slow-client-lesson")
    assert lesson["max_points"] == 0 and lesson["status"] != "passed"
    suite = ET.parse(tmp_path / "junit.xml").getroot().find("testsuite")
    assert (suite.get("failures"), suite.get("errors"), suite.get("skipped")) == ("0", "0", "1")
    assert "::notice title=labctl blocking%3A slow-client-lesson" in result.stdout
    assert "::error" not in result.stdout and "| 💡 | slow-client-lesson |" in (tmp_path / "summary.md").read_text()


def test_grade_runs_hidden_checks_writes_every_report_and_exits_1_on_failures(tmp_path):
    reports = {name: tmp_path / f"{name}.out" for name in ("json", "junit", "gradescope", "prairielearn")}
    result = labctl("grade", "blocking", "--submission", str(BLOCKING / "starter"),
                    "--only", "get-index", "--only", "io-model", "--only", "idle-cpu",
                    *[arg for name, path in reports.items() for arg in ("--report", f"{name}:{path}")])
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads(reports["json"].read_text())
    by_name = {r["name"]: r for r in report["results"]}
    assert set(by_name) == {"get-index", "io-model", "idle-cpu"}
    assert by_name["get-index"]["status"] == "failed" and "501" in by_name["get-index"]["message"]
    assert by_name["idle-cpu"]["status"] == "passed"
    # The starter is a blocking server (it only answers 501): the hidden io-model check runs and passes.
    assert by_name["io-model"]["visibility"] == "hidden" and by_name["io-model"]["status"] == "passed"
    suite = ET.parse(reports["junit"]).getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "1" and suite.get("name").startswith("blocking: ")
    assert {case.get("name") for case in suite.findall("testcase")} - {"server log"} == {"get-index", "io-model", "idle-cpu"}
    gradescope = json.loads(reports["gradescope"].read_text())
    assert gradescope["score"] == report["score"]
    prairielearn = json.loads(reports["prairielearn"].read_text())
    assert prairielearn["gradable"] is True and 0 <= prairielearn["score"] < 1


def test_a_server_that_never_listens_is_not_gradable_exit_2(tmp_path):
    result = labctl("grade", "blocking", "--submission", str(BLOCKING / "mutants" / "never_listens"),
                    "--only", "get-index", "--report", "terminal", "--report", f"json:{tmp_path / 'report.json'}",
                    "--report", f"gradescope:{tmp_path / 'gradescope.json'}")
    assert result.returncode == 2, result.stdout + result.stderr
    both = result.stdout + result.stderr
    assert both.count("not gradable") == 1, both  # said once: in the terminal report's footer
    assert "did not listen on port 8080" in result.stdout and "bound, but never listening" in both
    report = json.loads((tmp_path / "report.json").read_text())
    assert (report["gradable"], report["failure"]) == (False, "submission")  # the student's to fix
    gradescope = json.loads((tmp_path / "gradescope.json").read_text())
    assert gradescope["score"] == 0 and "did not listen on port 8080" in gradescope["output"]


def test_an_unreachable_engine_is_an_infrastructure_failure_exit_3_and_no_score_is_kept(tmp_path):
    result = labctl("grade", "blocking", "--submission", str(BLOCKING / "solution"),
                    "--report", f"json:{tmp_path / 'report.json'}", "--report", f"gradescope:{tmp_path / 'gs.json'}",
                    "--report", f"prairielearn:{tmp_path / 'pl.json'}", "--report", f"junit:{tmp_path / 'junit.xml'}",
                    env={"DOCKER_HOST": "unix:///nonexistent"})
    assert result.returncode == 3, result.stdout + result.stderr
    assert "cannot reach the Docker Engine" in result.stderr and "Traceback" not in result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert (report["gradable"], report["failure"]) == (False, "infrastructure")
    # Gradescope takes a score from the top level or from every test: the file offers neither, so none is kept.
    gradescope = json.loads((tmp_path / "gs.json").read_text())
    assert "score" not in gradescope and "tests" not in gradescope
    assert gradescope["extra_data"]["labctl"]["failure"] == "infrastructure"
    assert json.loads((tmp_path / "pl.json").read_text())["gradable"] is False  # and exit 3: succeeded false
    error = ET.parse(tmp_path / "junit.xml").getroot().find(".//testcase[@name='grading']/error")
    assert error is not None and error.get("type") == "infrastructure"


def test_student_view_runs_hidden_checks_and_no_output_names_them(tmp_path):
    exercise = load_exercise(BLOCKING)
    hidden = exercise.hidden_checks[0]
    summary, output = tmp_path / "summary.md", tmp_path / "github_output"
    result = labctl("grade", "blocking", "--submission", str(BLOCKING / "solution"), "--student-view",
                    "--only", "get-index", "--only", hidden.name, "--report", "terminal", "--report", "github",
                    "--report", "classroom", "--report", f"json:{tmp_path / 'report.json'}",
                    env={"GITHUB_STEP_SUMMARY": str(summary), "GITHUB_OUTPUT": str(output)})
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert [r["name"] for r in report["results"]] == ["get-index", "hidden checks"]
    index = next(check for check in exercise.checks if check.name == "get-index")
    assert report["score"] == report["max_score"] == index.points + hidden.points  # hidden points count
    decoded = base64.b64decode(output.read_text().partition("result=")[2].strip()).decode()
    for text in (result.stdout, result.stderr, summary.read_text(), json.dumps(report), decoded):
        assert hidden.name not in text
    assert "hidden checks (hidden)" in result.stdout
    assert f"hidden checks: {hidden.points:g}/{hidden.points:g} points (1 check)" in decoded
    assert f"Points {report['score']:g}/{report['max_score']:g}" in result.stdout


def test_bad_input_is_exit_2_with_a_clear_message(tmp_path):
    missing = labctl("grade", "no-such-exercise", "--submission", str(tmp_path))
    assert missing.returncode == 2 and "no exercise 'no-such-exercise'" in missing.stderr
    only = labctl("grade", "blocking", "--submission", str(tmp_path), "--only", "nope")
    assert only.returncode == 2 and "--only names no check of blocking: nope" in only.stderr
    report = labctl("grade", "blocking", "--submission", str(tmp_path), "--report", "pdf")
    assert report.returncode == 2 and "pdf" in report.stderr


def test_a_hidden_checks_name_cannot_be_told_from_a_typo():
    hidden = load_exercise(BLOCKING).hidden_checks[0].name
    probe = labctl("test", "blocking", "--only", hidden)
    typo = labctl("test", "blocking", "--only", "nope")
    assert probe.returncode == typo.returncode == 2
    assert probe.stderr.replace(hidden, "NAME") == typo.stderr.replace("nope", "NAME"), (probe.stderr, typo.stderr)


def test_a_submission_over_a_limit_is_not_gradable_with_the_limit_named(tmp_path):
    big = tmp_path / "big"
    big.mkdir()
    (big / "server.py").write_text("print('hi')\n")
    with open(big / "data.bin", "wb") as handle:
        handle.truncate(65 * 2**20)  # sparse: 65 MiB on paper
    result = labctl("grade", "blocking", "--submission", str(big))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "not gradable" in result.stdout and "holds more than 64 MiB (the limit)" in result.stdout
    assert "Traceback" not in result.stderr


def test_a_server_that_goes_to_the_background_is_told_to_stay_in_the_foreground(start_lab):
    from labctl.errors import ServerStartError

    with pytest.raises(ServerStartError, match="exited with code 0 before it listened on port 8080. A server must "
                                               "stay in the foreground"):
        start_lab("hello", run="python3 server.py & exit 0")


def test_when_the_budget_runs_out_finished_checks_keep_their_results(project):
    exercise = load_exercise(BLOCKING)
    report = grade(project, exercise, BLOCKING / "solution", GradeOptions(budget=5.0))
    assert report.gradable and report.budget_exhausted
    skipped = [r for r in report.results if r.message.startswith("not run")]  # "not run (to the end)"
    ran = [r for r in report.results if r not in skipped]
    assert ran and skipped, [(r.name, r.status, r.duration) for r in report.results]
    assert all(r.status == "passed" for r in ran[:3])
    assert all(r.status == "timed_out" and "time budget of 5 s ran out" in r.message for r in skipped), \
        [(r.name, r.status, r.message) for r in skipped]
    assert report.exit_code == 1


def test_a_server_that_dies_fails_the_remaining_checks_at_once(project):
    exercise = load_exercise(BLOCKING)
    started = time.monotonic()
    report = grade(project, exercise, BLOCKING / "mutants" / "crash_on_request")
    assert report.gradable
    first = report.results[0]
    assert first.status == "failed" and "the server stopped during check get-index: it exited with code 1" \
        in first.message
    rest = report.results[1:]
    assert all(r.status == "failed" and r.message.startswith("not run: the server stopped") for r in rest)
    assert "RuntimeError" in report.server_log_tail
    assert time.monotonic() - started < 30, "a dead server must not cost every check its timeout"


def test_ctrl_c_during_grading_removes_the_lab(project):
    grading = spawn("grade", "blocking", "--submission", str(BLOCKING / "solution"))
    try:
        deadline = time.monotonic() + 60
        while not project.backend.find_containers({LABEL_OWNER: OWNER, "labctl.role": "client"}):
            assert time.monotonic() < deadline, "grading never started a lab"
            time.sleep(0.1)
        lab_id = project.backend.find_containers({LABEL_OWNER: OWNER, "labctl.role": "client"})[0].labels[
            "labctl.lab"]
        wait_for_containers(project.backend, lab_id, 4)
        time.sleep(1.0)
        grading.send_signal(signal.SIGINT)
        _, stderr = grading.communicate(timeout=60)
    finally:
        if grading.poll() is None:
            grading.kill()
    assert grading.returncode == 130, stderr
    assert project.backend.find_containers({LABEL_OWNER: OWNER}) == []
    assert project.backend.find_networks({LABEL_OWNER: OWNER}) == []
