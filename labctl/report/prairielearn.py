"""The prairielearn report: the results.json a PrairieLearn external grader leaves in /grade/results.

Decisions (PrairieLearn shows this file to the student at once and has no per-test visibility):
- score is report.score / report.max_score in [0, 1] (1 when there are no points to earn and all
  passed), hidden checks included.
- Hidden checks are folded into ONE test, "hidden checks", with their summed points and no names,
  messages or evidence, so the score adds up and nothing about them leaks.
- The server's log tail goes in `output` only when the exercise has no hidden checks (a student's
  server can log every request a hidden check made).
- It always renders `report.for_students()` (labctl.results): the one student's view.
- Not gradable because of the submission -> "gradable": false, the reason in `message` and
  `format_errors`; PrairieLearn then marks it "invalid, not gradable", gives no points and does not
  count the attempt (docs/externalGrading.md, "Grading results"): a server that never starts is a free retry.
- Not graded because the infrastructure failed -> the same "gradable": false file, saying it was the
  machine, AND labctl exits 3. PrairieLearn's grader host reads results.json only when the container
  exits 0 (apps/grader-host/src/index.ts: `succeeded = !timedOut && ExitCode === 0`); otherwise the
  job is `succeeded: false`, which PrairieLearn shows as a failed grading job with score 0 for that
  submission (apps/prairielearn/src/lib/externalGraderCommon.ts, makeGradingResult) that staff can
  regrade. `succeeded` is the host's field, not one results.json can set: the exit code is how. An
  entrypoint that maps 1 and 2 to 0 and keeps 3 gets exactly this; one that maps every code to 0
  still charges the student nothing (gradable false).
- Outputs are cut so the file stays well under PrairieLearn's 1 MB limit; so are the pictures of failed
  checks (`--evidence`), in each test's `images` as {label, url: a data: URL} (docs/externalGrading.md),
  at most labctl/evidence/embed.py's caps together; a hidden check's never (the student's view has none).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from labctl.evidence.embed import Embedder
from labctl.report._common import check_text, counts, not_gradable_text, printable_all, public_part, score_line, tail
from labctl.results import CheckResult, GradeReport

SCHEMA_FILE = "prairielearn-results.schema.json"
GRADE_ROOT = Path("/grade")
OUTPUT_LIMIT = 8_000
LOG_LIMIT = 50_000


def _test(result: CheckResult, embedder: Embedder | None = None) -> dict[str, Any]:
    test: dict[str, Any] = {"name": result.name, "points": result.points, "max_points": result.max_points,
                            "message": result.message,
                            "output": tail(check_text(result, description=False, evidence_limit=2000), OUTPUT_LIMIT,
                                           "output")}
    if result.description:
        test["description"] = result.description
    if embedder is not None and result.evidence_files:
        pictures = embedder.pictures(result)
        if pictures:  # PrairieLearn's test images: {label, url} with a data: URL
            test["images"] = [{"label": picture.label, "url": picture.data_url} for picture in pictures]
        extra = [text for text in [embedder.table(result), *embedder.notes.get(result.name, [])] if text]
        if extra:
            test["output"] += "\n\n" + "\n".join(extra)
    return test


def fraction(report: GradeReport) -> float:
    if report.max_score <= 0:
        return 1.0 if report.all_passed else 0.0
    return min(1.0, max(0.0, report.score / report.max_score))


def results(report: GradeReport) -> dict[str, Any]:
    """The results.json content as a dict."""
    if not report.gradable:
        message = not_gradable_text(report)
        return {"gradable": False, "score": 0.0, "message": message,
                "format_errors": [report.error or "labctl could not grade this submission"],
                "tests": []}
    report = report.for_students()
    hidden = report.hidden
    public = public_part(report)
    embedder = Embedder(report)
    tests = [_test(result, embedder) for result in public.results]
    tests += [{"name": result.name, "points": result.points, "max_points": result.max_points,
               "message": result.message + ". Their details are not shown.", "output": ""} for result in hidden]
    message = f"{report.exercise}: {score_line(report)}; public checks: {counts(public)}."
    if report.budget_exhausted:
        message += " The time budget ran out: some checks did not run."
    output = ""
    if report.server_log_tail:  # the student's view keeps it only when no check is hidden
        output = "server log (last lines):\n" + tail(report.server_log_tail, LOG_LIMIT, "the log")
    result: dict[str, Any] = {"gradable": True, "score": fraction(report), "message": message, "tests": tests}
    if output:
        result["output"] = output
    return result


def render(report: GradeReport) -> str:
    return json.dumps(printable_all(results(report)), indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def default_path() -> Path:
    """/grade/results/results.json inside PrairieLearn's grader container, else ./results.json."""
    if GRADE_ROOT.is_dir():
        return GRADE_ROOT / "results" / "results.json"
    return Path("results.json")
