"""The classroom report: the step output GitHub Classroom's autograding reporter reads.

GitHub Classroom grades with one workflow: grader steps, each with an `id`, then
classroom-resources/autograding-grading-reporter, which reads, for every id in its `runners` input,
the environment variable `<ID uppercased>_RESULTS` holding that step's output `result`: base64 of a
JSON object (src/main.js there). The grader actions (autograding-command-grader, -io-grader) write it
with core.setOutput("result", ...) in this shape (src/main.js of autograding-command-grader):

    {"version": 1, "status": "pass"|"fail"|"error", "max_score": N,
     "tests": [{"name", "status": "pass"|"fail"|"error", "score", "message", "test_code",
                "filename", "line_no", "duration"}]}

What the reporter does with it, and so what labctl writes:
- The grade Classroom records is the notice "Points X/Y" (src/notify-classroom.js): X is the SUM of
  every test's `score`, Y the runner's `max_score`, and nothing is recorded when max_score is 0. So each
  check is a test whose score is its points, and their sum is the report's score, hidden checks included.
- Its table (src/aggregate-results.js, helpers/test-helpers.js) shows a runner's score as
  passed tests / all tests × max_score: a table of counts, not of points; an empty `tests` would show
  NaN, so a report that is not gradable has one test, "grading", saying why.
- It fails the job when a runner's `status` is "fail" or "error" (src/main.js): "pass" when every graded
  check passed; "fail" when one did not or the submission is not gradable; "error" when the
  infrastructure failed (a test with status "error" prints its message as the error).
- Names and messages are printed in the job's log, in the student's repository: the report is always
  `report.for_students()`, hidden checks one test "hidden checks" with their summed points.
- A lesson (0 points) is a test with status "pass" and score 0: it is never a failure.

Where it goes: appended as `result=BASE64` to $GITHUB_OUTPUT (the file behind step outputs; base64 has
no newline, so the one-line form is exact), or to PATH with `classroom:PATH`; without either, and with
`classroom:-`, the line is printed. Then the line "Points X/Y" is printed, as Classroom's autograder
always showed it. A workflow (the labctl step may exit 1, so the reporter runs `if: always()`):

    - id: labctl
      run: labctl grade EXERCISE --submission . --student-view --report classroom
    - uses: classroom-resources/autograding-grading-reporter@v1
      if: always()
      env:
        LABCTL_RESULTS: "${{ steps.labctl.outputs.result }}"
      with:
        runners: labctl
"""

from __future__ import annotations

import base64
import json
import os
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from labctl.report._common import not_gradable_text, points, printable_all, write_text
from labctl.results import CheckResult, GradeReport

SCHEMA_FILE = "classroom-result.schema.json"
ENV = "GITHUB_OUTPUT"
OUTPUT = "result"
VERSION = 1


def _status(result: CheckResult) -> str:
    """pass, fail, or error (the check itself could not run or ran out of time); a lesson always passes."""
    if result.passed or not result.graded:
        return "pass"
    return "fail" if result.status == "failed" else "error"


def _test(result: CheckResult) -> dict[str, Any]:
    return {"name": result.name + (f" ({result.aside})" if result.aside else ""),
            "status": _status(result), "score": result.points, "message": result.message,
            "test_code": f"labctl check {result.check}", "filename": "", "line_no": 0,
            "duration": round(result.duration * 1000)}


def _grading_test(report: GradeReport) -> dict[str, Any]:
    """The one test of a report that is not gradable: a failure of the submission, or an error of the machine."""
    return {"name": "grading", "status": "error" if report.infrastructure_failed else "fail", "score": 0,
            "message": not_gradable_text(report), "test_code": "labctl grade", "filename": "", "line_no": 0,
            "duration": round(report.duration * 1000)}


def status(report: GradeReport) -> str:
    """The runner's status: what makes the reporter fail the job ("fail", "error") or not ("pass")."""
    if not report.gradable:
        return "error" if report.infrastructure_failed else "fail"
    return "pass" if report.all_passed else "fail"


def result(report: GradeReport) -> dict[str, Any]:
    """The decoded `result`: one test per check of the student's view, scores summing to the score."""
    report = report.for_students()
    tests = [_test(check) for check in report.results] if report.gradable else [_grading_test(report)]
    return printable_all({"version": VERSION, "status": status(report), "max_score": report.max_score,
                          "tests": tests})


def encoded(report: GradeReport) -> str:
    """base64 of the result's compact JSON, as the grader actions' btoa(JSON.stringify(result))."""
    text = json.dumps(result(report), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def points_line(report: GradeReport) -> str:
    """ "Points 6/13": what the reporter's notice says Classroom records, hidden checks included."""
    return f"Points {points(report.score)}/{points(report.max_score)}"


def render(report: GradeReport) -> str:
    """The step output line, `result=BASE64`, as it goes in $GITHUB_OUTPUT."""
    return f"{OUTPUT}={encoded(report)}\n"


def default_path() -> Path | None:
    value = os.environ.get(ENV, "").strip()
    return Path(value) if value else None


def emit(report: GradeReport, target: Path | None, console: Console) -> list[str]:
    written: list[str] = []
    if target is not None:
        write_text(target, render(report), append=True)  # the file holds the job's other outputs too
        written.append(str(target))
    else:
        sys.stdout.write(render(report))
    sys.stdout.write(points_line(report) + "\n")
    sys.stdout.flush()
    return written
