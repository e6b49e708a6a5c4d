"""Reports as the platforms read them: one test per rule a consumer applies to what labctl writes.

Each rule is the consumer's, with its source:
- Gradescope: the top-level `score` "overrides total of tests if specified", and a score comes from the
  top level or from every test (gradescope-autograders.readthedocs.io/en/latest/specs/);
- PrairieLearn: `gradable: false` is "invalid, not gradable", no points and no attempt charged
  (PrairieLearn docs/externalGrading.md); results.json is read only when the grader exits 0
  (apps/grader-host/src/index.ts), else the job has `succeeded: false`;
- JUnit: <failure> is a test that found the code wrong, <error> one that could not run;
- GitHub: annotations and the job summary live in the student's repository;
- GitHub Classroom: classroom-resources/autograding-grading-reporter decodes <ID>_RESULTS, records
  "Points sum(tests.score)/max_score" (src/notify-classroom.js), fails the job on status fail/error.
"""

from __future__ import annotations

import base64
import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from rich.console import Console

from labctl.errors import EngineUnreachable, ImageBuildError, LabctlError, ServerStartError, SubmissionError
from labctl.report import RENDERERS, SCHEMAS_DIR, classroom, github, gradescope, prairielearn, write_reports
from labctl.results import HIDDEN_CHECKS, CheckResult, GradeReport

from .test_reports import check, report_of

#: Every string of the hidden checks below starts with it: none may reach a student.
SECRET = "ZQX"


def schema(renderer: str) -> dict:
    return json.loads((SCHEMAS_DIR / RENDERERS[renderer].schema).read_text(encoding="utf-8"))


@pytest.fixture
def secret() -> GradeReport:
    """Two public checks (one says the server died during a hidden check), two hidden ones whose name,
    message, evidence and description are unique strings, and a log that shows a hidden check's request."""
    return report_of([
        check("serves index", evidence={"status": 200}),
        check("keeps alive", "failed", max_points=3.0,
              message=f"not run: the server stopped during check {SECRET}-name-one: it exited with code 1"),
        check(f"{SECRET}-name-one", "failed", visibility="hidden", max_points=4.0,
              message=f"{SECRET}-message-one", evidence={"path": f"/{SECRET}-path", "why": [f"{SECRET}-list"]},
              description=f"{SECRET}-description"),
        check(f"{SECRET}-name-two", visibility="hidden", max_points=6.0, message=f"{SECRET}-message-two"),
    ], server_log_tail=f"GET /{SECRET}-path HTTP/1.1\n")


@pytest.fixture
def never_started() -> GradeReport:
    return report_of([], gradable=False, failure="submission", server_log_tail="", score=0.0, max_score=10.0,
                     error="the server did not start: the server exited with code 1 before it listened on port 8080")


@pytest.fixture
def infrastructure() -> GradeReport:
    return report_of([], gradable=False, failure="infrastructure", server_log_tail="", score=0.0, max_score=10.0,
                     error="cannot reach the Docker Engine at unix:///nonexistent")


# -- the one student's view ---------------------------------------------------------------------------

def test_student_view_keeps_every_point_and_says_hidden_checks_in_one_line(secret):
    view = secret.for_students()
    assert (view.score, view.max_score) == (secret.score, secret.max_score) == (8.0, 15.0)
    assert [result.name for result in view.results] == ["serves index", "keeps alive", "hidden checks"]
    summary = view.results[-1]
    assert summary.check == HIDDEN_CHECKS and summary.visibility == "hidden"
    assert summary.message == "hidden checks: 6/10 points (2 checks)"
    assert (summary.points, summary.max_points, summary.status) == (6.0, 10.0, "failed")
    assert view.results[1].message == "not run: the server stopped during check a hidden check: it exited with code 1"
    assert view.server_log_tail == ""
    assert view.for_students() == view  # a view of the view is itself
    assert SECRET not in view.model_dump_json()


def test_student_view_of_a_report_without_hidden_checks_is_the_report(secret):
    public = secret.model_copy(update={"results": secret.public})
    assert public.for_students() is public


def read_everything(report: GradeReport, tmp_path: Path, capsys, monkeypatch) -> str:
    """Every format written at once, as files, console and stdout, classroom's base64 decoded: all of it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    monkeypatch.delenv("GITHUB_OUTPUT", raising=False)
    console = Console(file=io.StringIO(), width=200)
    specs = ["terminal", "terminal:terminal.txt", "json", "junit", "gradescope:gs.json", "prairielearn:pl.json",
             "github:summary.md", "classroom:output.txt", "github"]
    written = write_reports(report, specs, console)
    texts = [Path(path).read_text(encoding="utf-8") for path in written]
    out = capsys.readouterr().out
    results = [line.partition("=")[2] for line in texts[-1].splitlines() if line.startswith("result=")]
    decoded = [base64.b64decode(value).decode("utf-8") for value in results]
    return "\n".join(texts + [out, console.file.getvalue()] + decoded)


def test_no_hidden_name_message_or_evidence_in_any_format_in_student_view(secret, tmp_path, capsys, monkeypatch):
    everything = read_everything(secret.for_students(), tmp_path, capsys, monkeypatch)
    assert SECRET not in everything
    assert "hidden checks: 6/10 points (2 checks)" in everything
    for renderer in RENDERERS.values():  # render() too, format by format
        assert SECRET not in renderer.render(secret.for_students()), renderer.name


def test_the_formats_a_student_reads_hide_hidden_checks_whatever_the_caller_asked(secret):
    for name in ("prairielearn", "classroom"):
        text = RENDERERS[name].render(secret)
        if name == "classroom":
            text = base64.b64decode(text.partition("=")[2]).decode("utf-8")
        assert SECRET not in text, name
    # gradescope shows a hidden check to students only once grades are published
    document = gradescope.results(secret)
    visible = [document["output"]] + [test for test in document["tests"] if test.get("visibility") == "visible"]
    assert SECRET not in json.dumps(visible)


# -- Gradescope ---------------------------------------------------------------------------------------

def test_gradescope_top_level_score_is_the_sum_we_intend_hidden_included(secret):
    # Gradescope takes the top-level score over the tests' sum: it must be that sum, every check counted.
    for report in (secret, secret.for_students()):
        document = gradescope.results(report)
        jsonschema.Draft202012Validator(schema("gradescope")).validate(document)
        assert document["score"] == sum(test.get("score", 0) for test in document["tests"]) == 8.0


def test_gradescope_not_gradable_is_a_visible_zero(never_started):
    document = gradescope.results(never_started)
    jsonschema.Draft202012Validator(schema("gradescope")).validate(document)
    assert document["score"] == 0 and "exited with code 1" in document["output"]
    assert document["extra_data"]["labctl"]["failure"] == "submission"


def test_gradescope_infrastructure_failure_writes_no_score_to_keep(infrastructure):
    document = gradescope.results(infrastructure)
    jsonschema.Draft202012Validator(schema("gradescope")).validate(document)
    assert "score" not in document and "tests" not in document  # neither source of a score
    assert "grading machine failed" in document["output"] and "unix:///nonexistent" in document["output"]
    assert document["extra_data"]["labctl"]["failure"] == "infrastructure"
    # the schema refuses a file without a score that does not say it was the infrastructure
    document["extra_data"]["labctl"]["failure"] = "submission"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema("gradescope")).validate(document)


# -- PrairieLearn -------------------------------------------------------------------------------------

def test_prairielearn_never_started_is_not_gradable(never_started):
    document = prairielearn.results(never_started)
    jsonschema.Draft202012Validator(schema("prairielearn")).validate(document)
    assert document["gradable"] is False  # "invalid, not gradable": no points, no attempt charged
    assert "exited with code 1" in document["message"] and never_started.exit_code == 2


def test_prairielearn_infrastructure_failure_exits_nonzero_so_the_job_did_not_succeed(infrastructure):
    # The host sets succeeded = (exit code 0) and reads results.json only then: exit 3 is how labctl says it.
    assert infrastructure.exit_code == 3
    document = prairielearn.results(infrastructure)
    jsonschema.Draft202012Validator(schema("prairielearn")).validate(document)
    assert document["gradable"] is False and "grading machine failed" in document["message"]


# -- JUnit --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("which, tag, kind", [("never_started", "failure", "not_gradable"),
                                              ("infrastructure", "error", "infrastructure")])
def test_junit_infrastructure_is_an_error_and_the_submission_a_failure(which, tag, kind, request):
    report = request.getfixturevalue(which)
    suite = ET.fromstring(RENDERERS["junit"].render(report)).find("testsuite")
    [case] = suite.findall("testcase[@name='grading']")
    [outcome] = list(case)
    assert (outcome.tag, outcome.get("type")) == (tag, kind)
    assert (suite.get("failures"), suite.get("errors")) == (("1", "0") if tag == "failure" else ("0", "1"))


# -- GitHub -------------------------------------------------------------------------------------------

def test_github_annotations_never_show_hidden_names_in_student_view(secret):
    many = secret.model_copy(update={"results": secret.results + [
        check(f"{SECRET}-more-{n}", "failed", visibility="hidden", message=f"{SECRET}-why-{n}") for n in range(12)]})
    lines = github.annotation_lines(many.for_students())
    assert lines and not any(SECRET in line for line in lines)
    assert any("hidden checks (failed)::hidden checks: 6/34 points (14 checks)" in line for line in lines)


def test_github_error_title_says_whose_doing_it_was(never_started, infrastructure):
    [submission] = github.annotation_lines(never_started)
    [machine] = github.annotation_lines(infrastructure)
    assert submission.startswith("::error title=labctl blocking-echo%3A not gradable%3A the submission::")
    assert machine.startswith("::error title=labctl blocking-echo%3A not graded%3A infrastructure failure::")


# -- GitHub Classroom ---------------------------------------------------------------------------------

def js_number(value: float) -> str:
    """How JavaScript's template string prints a number: 6 not 6.0."""
    return str(int(value)) if float(value).is_integer() else repr(value)


def reporter(env: dict[str, str], runners: str) -> dict[str, Any]:
    """autograding-grading-reporter's reading, step by step: src/main.js (env, base64, JSON, setFailed),
    src/notify-classroom.js (the points Classroom records), src/helpers/test-helpers.js (its table)."""
    runner_results = []
    for runner in runners.split(","):
        encoded = env[f"{runner.strip().upper()}_RESULTS"]
        runner_results.append((runner, json.loads(base64.b64decode(encoded).decode("utf-8"))))
    total = maximum = 0.0
    for _, results in runner_results:
        if not results.get("max_score"):
            continue
        maximum += results["max_score"]
        total += sum(test["score"] for test in results["tests"])
    table = [(sum(t["status"] == "pass" for t in r["tests"]) / len(r["tests"])) * (r.get("max_score") or 0)
             for _, r in runner_results]
    failed = any(r["status"] in ("fail", "error") for _, r in runner_results)
    return {"points": f"Points {js_number(total)}/{js_number(maximum)}" if maximum else None,
            "table": table, "failed": failed, "results": [r for _, r in runner_results]}


def step_output(path: Path, name: str) -> str:
    """A step output as the runner reads $GITHUB_OUTPUT: `name=value` lines."""
    values = [line.partition("=")[2] for line in path.read_text(encoding="utf-8").splitlines()
              if line.partition("=")[0] == name]
    assert len(values) == 1, values
    return values[0]


def test_classroom_totals_are_what_the_reporter_records(secret, tmp_path, monkeypatch, capsys):
    output = tmp_path / "github_output"
    output.write_text("earlier=1\n", encoding="utf-8")
    monkeypatch.setenv("GITHUB_OUTPUT", str(output))
    assert write_reports(secret, ["classroom"], Console(file=io.StringIO())) == [str(output)]
    assert output.read_text(encoding="utf-8").startswith("earlier=1\nresult=")  # appended, not replaced
    seen = reporter({"LABCTL_RESULTS": step_output(output, "result")}, "labctl")
    [decoded] = seen["results"]
    jsonschema.Draft202012Validator(schema("classroom")).validate(decoded)
    assert seen["points"] == "Points 8/15" == classroom.points_line(secret)  # hidden included
    assert "Points 8/15" in capsys.readouterr().out.splitlines()
    assert seen["failed"] and decoded["status"] == "fail" and decoded["version"] == 1
    assert [test["name"] for test in decoded["tests"]] == ["serves index", "keeps alive", "hidden checks"]
    assert [test["status"] for test in decoded["tests"]] == ["pass", "fail", "fail"]
    assert SECRET not in json.dumps(decoded)


def test_classroom_all_passed_with_a_lesson_does_not_fail_the_job():
    report = report_of([check("serves index"), check("slow client blocks", "failed", max_points=0.0)])
    seen = reporter({"LABCTL_RESULTS": classroom.encoded(report)}, "labctl")
    assert not seen["failed"] and seen["points"] == "Points 2/2"
    assert seen["results"][0]["tests"][1]["status"] == "pass"  # a lesson is never a failure


@pytest.mark.parametrize("which, status", [("never_started", "fail"), ("infrastructure", "error")])
def test_classroom_not_gradable_is_one_test_and_fails_the_job(which, status, request):
    report = request.getfixturevalue(which)
    seen = reporter({"LABCTL_RESULTS": classroom.encoded(report)}, "labctl")
    [decoded] = seen["results"]
    jsonschema.Draft202012Validator(schema("classroom")).validate(decoded)
    assert decoded["status"] == status and seen["failed"] and seen["points"] == "Points 0/10"
    assert seen["table"] == [0.0]  # one test: the reporter's table divides by their number, never by 0
    assert decoded["tests"][0]["name"] == "grading" and decoded["tests"][0]["status"] == status


def test_classroom_without_github_output_prints_the_line(secret, monkeypatch, capsys):
    monkeypatch.delenv("GITHUB_OUTPUT", raising=False)
    assert write_reports(secret, ["classroom"], Console(file=io.StringIO())) == []
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("result=") and lines[1] == "Points 8/15"


# -- whose doing it was: exit codes and the report's field --------------------------------------------

def test_exit_codes_say_whose_doing_it_was(never_started, infrastructure):
    assert (never_started.exit_code, infrastructure.exit_code) == (2, 3)
    assert EngineUnreachable("x").exit_code == ImageBuildError("x").exit_code == 3
    assert ServerStartError("x").exit_code == SubmissionError("x").exit_code == LabctlError("x").exit_code == 2


def test_failure_goes_with_gradable():
    with pytest.raises(ValueError, match="a gradable report has no failure"):
        report_of([], failure="submission")
    unsaid = report_of([], gradable=False, error="?")
    assert unsaid.failure == "infrastructure" and unsaid.exit_code == 3  # the side that keeps no score
    assert report_of([check("x")]).failure is None


def test_a_check_result_never_carries_a_failure():
    assert "failure" not in CheckResult.model_fields
