"""The gradescope report: the results.json a Gradescope autograder leaves in /autograder/results.

Decisions (students read this file through Gradescope's UI):
- A hidden check becomes a test with visibility "after_published": instructors see it at once,
  students only once the instructor publishes grades. ("hidden" would hide it from students for
  good; "after_due_date" would show it while late submissions are still possible.)
- The top-level `score` is the whole score, hidden checks included (Gradescope records it as the
  grade); `output` speaks of public checks only, and a visible test's text never names a hidden check
  (they are told as `report.for_students()` tells them).
- `stdout_visibility` is "hidden": what labctl printed while grading may name hidden checks.
- The server's log tail is a test of its own without points, visible when the exercise has no
  hidden checks and "after_published" when it has: a student's server can log every request a
  hidden check made.
- Not gradable because of the submission (its server never listened, it is over a limit): score 0,
  one failed test "grading" saying why, the reason in `output`, visible: the student's to fix.
- Not graded because the infrastructure failed (engine, images, labctl): NO score at all, neither at
  the top nor in a test, and no tests. Gradescope takes the score from the top-level `score` or from
  every test's `score` ("optional, but required if not on each test case"; `tests` "required if no
  top-level score": https://gradescope-autograders.readthedocs.io/en/latest/specs/), so this file gives
  it none to keep: Gradescope reports that the autograder failed, which its staff see and rerun
  (Regrade), instead of a 0 the student would have to dispute. The reason is in `output` and in
  labctl's stdout (shown to instructors). `run_autograder` may also exit with labctl's 3.
- Gradescope has no top-level max_score (the assignment's settings hold it): labctl's own facts
  (max_score, exercise, version, gradable, error) go in the documented `extra_data`.
- timed_out and error checks are "failed" (Gradescope knows no other status); the output says which.
- A lesson (0 points) has no status, so a demonstration that did what it shows is never a failed test.
- A failed check with evidence (`--evidence`) has an "html" output (Gradescope's test output formats: text,
  html, simple_format, md, ansi; html is sanitized by Gradescope): its text in <pre>, the picture that proves
  it as an <img> with a data: URL (labctl/evidence/embed.py caps each and all of them), the first rows of its
  connection table. A hidden check's evidence shows only with the test itself (after_published).
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

from labctl.evidence.embed import Embedder
from labctl.report._common import (
    check_text,
    counts,
    failed,
    not_gradable_text,
    printable_all,
    public_part,
    score_line,
    tail,
)
from labctl.results import CheckResult, GradeReport

SCHEMA_FILE = "gradescope-results.schema.json"
AUTOGRADER_ROOT = Path("/autograder")
OUTPUT_LIMIT = 10_000
LOG_LIMIT = 20_000

VISIBILITY = {"public": "visible", "hidden": "after_published"}


def _test(result: CheckResult, number: int, embedder: Embedder | None = None) -> dict[str, Any]:
    test: dict[str, Any] = {
        "name": result.name + (f" ({result.aside})" if result.aside else ""),
        "number": str(number),
        "score": result.points,
        "max_score": result.max_points,
        "status": "passed" if result.passed else "failed",
        "output": tail(check_text(result, evidence_limit=2000), OUTPUT_LIMIT, "output"),
        "output_format": "text",
        "tags": [result.check],
        "visibility": VISIBILITY[result.visibility],
    }
    if not result.graded:
        del test["status"]  # a lesson never shows as failed: with no status, 0/0 is shown as neither
    if embedder is not None and result.evidence_files:
        test.update(_with_evidence(test["output"], result, embedder))
    return test


def _with_evidence(output: str, result: CheckResult, embedder: Embedder) -> dict[str, Any]:
    """A failed test's output as HTML (Gradescope's output_format "html"): its text, then the picture that
    proves it (an <img> with a data: URL, within the report's picture cap) and the first rows of its
    connection table. Every text in it is escaped: the server's bytes are in the messages."""
    parts = [f"<pre>{html.escape(output)}</pre>"]
    for picture in embedder.pictures(result):
        parts.append(f"<p>{html.escape(picture.label)} ({html.escape(picture.path)}):</p>"
                     f'<img src="{picture.data_url}" alt="{html.escape(picture.label)}" style="max-width:100%">')
    table = embedder.table(result)
    if table:
        parts.append(f"<pre>{html.escape(table)}</pre>")
    for note in embedder.notes.get(result.name, []):
        parts.append(f"<p>{html.escape(note)}</p>")
    if len(parts) == 1:
        return {}
    return {"output": "\n".join(parts), "output_format": "html"}


def results(report: GradeReport) -> dict[str, Any]:
    """The results.json content as a dict."""
    if report.infrastructure_failed:
        return _infrastructure(report)
    has_hidden = bool(report.hidden)
    public = public_part(report.for_students())
    tests: list[dict[str, Any]] = []
    if report.gradable:
        score = report.score
        embedder = Embedder(report)
        tests = [_test(_as_shown(result, public), number, embedder)
                 for number, result in enumerate(report.results, start=1)]
        lines = [f"{report.exercise}: public checks {score_line(public)}, {counts(public)}."]
        if has_hidden:
            lines.append("Some checks are hidden: their results appear once grades are published.")
        failing = [result.name for result in failed(public)]
        if failing:
            lines.append("Failed: " + ", ".join(failing) + " (see each test below).")
        if report.budget_exhausted:
            lines.append("The time budget ran out: some checks did not run.")
        output = "\n".join(lines)
    else:
        score = 0.0
        output = not_gradable_text(report)
        tests.append({"name": "grading", "number": "0", "score": 0.0, "max_score": report.max_score,
                      "status": "failed", "output": output, "output_format": "text", "visibility": "visible"})
    if report.server_log_tail:
        tests.append({"name": "server log (last lines)",
                      "output": tail(report.server_log_tail, LOG_LIMIT, "the log"),
                      "output_format": "text",
                      "visibility": "after_published" if has_hidden else "visible"})
    return {
        "score": score,
        "execution_time": max(0, math.ceil(report.duration)),
        "output": output,
        "output_format": "text",
        "test_output_format": "text",
        "visibility": "visible",
        "stdout_visibility": "hidden",
        "extra_data": _extra_data(report),
        "tests": tests,
    }


def _as_shown(result: CheckResult, public: GradeReport) -> CheckResult:
    """A public check as the student's view tells it (where its message named a hidden check, it says "a hidden
    check": a visible test must not name one); a hidden check whole, for after grades are published."""
    if result.visibility == "hidden":
        return result
    return next((shown for shown in public.results if shown.name == result.name), result)


def _extra_data(report: GradeReport) -> dict[str, Any]:
    return {"labctl": {"exercise": report.exercise, "max_score": report.max_score,
                       "gradable": report.gradable, "failure": report.failure, "error": report.error,
                       "budget_exhausted": report.budget_exhausted,
                       "labctl_version": report.labctl_version,
                       "schema_version": report.schema_version}}


def _infrastructure(report: GradeReport) -> dict[str, Any]:
    """An infrastructure failure: no score anywhere and no tests, so Gradescope keeps no grade (see above)."""
    return {"execution_time": max(0, math.ceil(report.duration)), "output": not_gradable_text(report),
            "output_format": "text", "visibility": "visible", "stdout_visibility": "hidden",
            "extra_data": _extra_data(report)}


def render(report: GradeReport) -> str:
    return json.dumps(printable_all(results(report)), indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def default_path() -> Path:
    """/autograder/results/results.json inside Gradescope's autograder, else ./results.json."""
    if AUTOGRADER_ROOT.is_dir():
        return AUTOGRADER_ROOT / "results" / "results.json"
    return Path("results.json")
