"""Small text helpers shared by the renderers: points, statuses, evidence in words, size limits.

Nothing here knows a format; each renderer decides what to show and where.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from labctl.files import replace_whole
from labctl.results import CheckResult, GradeReport
from labctl.untrusted import neutralize, printable_all, shown  # noqa: F401  (the renderers' one text filter)

STATUS_WORDS = {"passed": "passed", "failed": "failed", "timed_out": "timed out", "error": "error",
                "unavailable": "not available on this backend"}

# The most of one evidence value shown by default (a long text keeps its last lines).
_LONG_VALUE = 600


def points(value: float) -> str:
    """2.0 -> "2", 1.5 -> "1.5", 0.333333 -> "0.33": what a person reads in a score."""
    if not math.isfinite(value):
        return str(value)
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def seconds(value: float) -> str:
    return f"{value:.2f} s" if value < 10 else f"{value:.1f} s"


def status_word(result: CheckResult) -> str:
    return STATUS_WORDS.get(result.status, result.status)


def failed(report: GradeReport) -> list[CheckResult]:
    """The graded checks that did not pass: what every format calls a failure (a lesson never is one)."""
    return [result for result in report.results if not result.passed and result.graded]


def set_aside(report: GradeReport) -> list[CheckResult]:
    """The checks that did not pass and are not graded (lessons, checks not available on this backend): told
    as notes, never as failures."""
    return [result for result in report.results if not result.passed and not result.graded]


def unpassed(report: GradeReport) -> list[CheckResult]:
    """Every check that did not pass, lessons included, in the report's order: what deserves its details."""
    return [result for result in report.results if not result.passed]


def counts(report: GradeReport) -> str:
    """ "3 of 5 checks passed", lessons apart: "3 of 4 checks passed, and 1 lesson" """
    graded = [result for result in report.results if result.graded]
    passed = sum(1 for result in graded if result.passed)
    text = f"{passed} of {len(graded)} check{'s' if len(graded) != 1 else ''} passed"
    lessons = sum(1 for result in report.results if result.lesson)
    away = sum(1 for result in report.results if result.unavailable)
    text += f", and {lessons} lesson{'s' if lessons != 1 else ''}" if lessons else ""
    return text + (f", {away} not available on this backend" if away else "")


def score_line(report: GradeReport) -> str:
    return f"{points(report.score)}/{points(report.max_score)} points"


def tail(text: str, limit: int, what: str = "lines") -> str:
    """The last `limit` characters of text (whole lines where possible), with a note when cut."""
    if len(text) <= limit:
        return text
    cut = text[-limit:]
    newline = cut.find("\n")
    if 0 <= newline < len(cut) - 1:
        cut = cut[newline + 1:]
    return f"[... {len(text) - len(cut)} earlier characters of {what} left out ...]\n{cut}"


def head(text: str, limit: int) -> str:
    """The first `limit` characters of text, with a note when cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}\n[... {len(text) - limit} more characters left out ...]"


def _value_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:.6g}"
    try:
        return json.dumps(value, ensure_ascii=False, default=str, separators=(", ", ": "))
    except (TypeError, ValueError):
        return repr(value)


def evidence_lines(evidence: dict[str, Any], long_limit: int = _LONG_VALUE) -> list[str]:
    """Evidence as `key: value` lines; a multi-line value becomes an indented block (its tail)."""
    lines: list[str] = []
    for key, value in evidence.items():
        text = _value_text(value)
        if "\n" in text.rstrip("\n"):
            lines.append(f"{key}:")
            lines.extend("    " + line for line in tail(text.rstrip("\n"), long_limit).splitlines())
        else:
            lines.append(f"{key}: {head(text.rstrip(chr(10)), long_limit)}")
    return lines


def evidence_file_lines(result: CheckResult) -> list[str]:
    """The evidence files (--evidence) of a check and what was left out of them, one line each."""
    return ([f"evidence file: {entry.path} ({entry.description})" for entry in result.evidence_files]
            + [f"evidence left out: {note}" for note in result.evidence_left_out])


def check_text(result: CheckResult, *, description: bool = True, evidence_limit: int = _LONG_VALUE) -> str:
    """A check in plain text: status, message, evidence (and what it looks for)."""
    parts = [f"{status_word(result)}: {points(result.points)}/{points(result.max_points)} points "
             f"in {seconds(result.duration)}", result.message]
    if result.evidence:
        parts.append("evidence:\n" + "\n".join("  " + line for line in
                                                evidence_lines(result.evidence, evidence_limit)))
    files = evidence_file_lines(result)
    if files:
        parts.append("\n".join(files))
    if description and result.description:
        parts.append(f"what it checks: {result.description}")
    return "\n".join(part for part in parts if part)


def not_gradable_text(report: GradeReport) -> str:
    """Why there is no grade, in words for the student, saying whose doing it was (GradeReport.failure)."""
    reason = report.error or "no reason was given"
    if report.infrastructure_failed:
        return (f"labctl could not grade this submission because the grading machine failed, not because of "
                f"your submission: {reason}\n"
                "No score was recorded for this run: it is to be graded again once the machine is fixed "
                "(tell your instructor if it is not).")
    return (f"labctl could not grade this submission: {reason}\n"
            "No points were given for this run: the reason lies in your submission; fix it and submit again.")


def failure_title(report: GradeReport) -> str:
    """A not-gradable report in three words, for titles: whose doing it was."""
    return ("not graded: infrastructure failure" if report.infrastructure_failed
            else "not gradable: the submission")


def public_part(report: GradeReport) -> GradeReport:
    """The public checks alone, with their own score: what a platform's always-visible summary counts."""
    public = report.public
    return report.model_copy(update={"results": public, "score": sum(r.points for r in public),
                                     "max_score": sum(r.max_points for r in public)})


def first_line(text: str, limit: int = 200) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def longest_run(text: str, char: str) -> int:
    best = run = 0
    for c in text:
        run = run + 1 if c == char else 0
        best = max(best, run)
    return best


def write_text(path: Path, text: str, *, append: bool = False) -> None:
    """Write a report file: parents created; a regular file is replaced atomically (readers never see
    half a report); a device or pipe (/dev/stdout) is written in place; `append` adds to the end.

    The one way out for report files, so the last word on CI workflow commands is here: a line of
    the finished text that a runner would execute (a server's `::warning::` that a table wrapped
    to the start of a line, a file that is `cat` in a CI step, /dev/stdout past labctl's guard)
    is marked (`neutralize`)."""
    text = neutralize(text)
    path.parent.mkdir(parents=True, exist_ok=True)
    if append or (path.exists() and not path.is_file()):
        with open(path, "a" if append else "w", encoding="utf-8") as handle:
            handle.write(text)
        return
    replace_whole(path, text.encode("utf-8"))
