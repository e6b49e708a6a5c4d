"""The github report: a Markdown job summary and `::error` annotations for GitHub Actions.

- The summary (a table of checks with ✅/❌, the score, each failed check's message and evidence in
  a <details> block) is APPENDED to $GITHUB_STEP_SUMMARY, or to the PATH of `github:PATH`. With
  neither, it is printed to the console with a line saying where it would have gone.
- One `::error title=...::message` workflow command per failed check (and one when the report is
  not gradable), at most 9 then one pointing to the summary (GitHub shows 10 a step), and a
  `::notice` per lesson (a 0-point check is never an error), goes to standard output,
  escaped as GitHub's runner expects: in the message
  % -> %25, CR -> %0D, LF -> %0A; in the title also : -> %3A and , -> %2C.
Like the terminal report it shows the report it is given: with `--student-view` the caller gives
`report.for_students()`, so neither the summary nor an annotation names a hidden check.
"""

from __future__ import annotations

import html
import os
from pathlib import Path

from rich.console import Console

from labctl.report._common import (
    counts,
    evidence_file_lines,
    evidence_lines,
    failed,
    failure_title,
    longest_run,
    points,
    score_line,
    seconds,
    set_aside,
    shown,
    status_word,
    unpassed,
    write_text,
)
from labctl.results import CheckResult, GradeReport
from labctl.untrusted import write_command

ENV = "GITHUB_STEP_SUMMARY"


def escape_data(text: str) -> str:
    """A workflow command's message: % CR LF escaped (GitHub's toolkit escapeData)."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """A workflow command's property value (title=...): also : and , escaped (toolkit escapeProperty)."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


#: GitHub shows at most 10 error annotations of a step: 9 of ours, then one that points to the summary.
MAX_ERRORS = 9


def _annotation(level: str, title: str, message: str) -> str:
    return f"::{level} title={escape_property(shown(title, keep_cr=True))}::{escape_data(shown(message, keep_cr=True))}"


def annotation_lines(report: GradeReport) -> list[str]:
    """`::error` per failed check (at most MAX_ERRORS, then one saying how many more are in the summary),
    and `::notice` per lesson: a 0-point demonstration is never an error."""
    errors = []
    if not report.gradable:
        errors.append(_annotation("error", f"labctl {report.exercise}: {failure_title(report)}",
                                  report.error or "labctl could not grade this submission"))
    errors += [_annotation("error", f"labctl {report.exercise}: {result.name} ({status_word(result)})",
                           result.message.strip()) for result in failed(report)]
    if len(errors) > MAX_ERRORS:
        more = len(errors) - MAX_ERRORS
        errors = errors[:MAX_ERRORS] + [_annotation(
            "error", f"labctl {report.exercise}: {more} more failed check{'s' if more != 1 else ''}",
            f"{more} more failed check{'s are' if more != 1 else ' is'} in the job summary, with every message.")]
    notices = [_annotation("notice", f"labctl {report.exercise}: {result.name} ({result.aside})",
                           result.message.strip()) for result in set_aside(report)]
    return errors + notices


def _cell(text: str) -> str:
    """Text for a Markdown table cell: HTML escaped, | escaped, on one line."""
    return html.escape(shown(text), quote=False).replace("|", "\\|").replace("\n", "<br>")


def _fence(text: str) -> str:
    fence = "`" * max(3, longest_run(text, "`") + 1)
    return f"{fence}text\n{text}\n{fence}"


def _icon(result: CheckResult) -> str:
    """✅ passed, ❌ failed, 💡 a lesson that showed what it teaches (never a failure), ⏭️ not available here."""
    return "✅" if result.passed else "💡" if result.lesson else "⏭️" if result.unavailable else "❌"


def _details(result: CheckResult) -> str:
    body = result.message.rstrip()
    lines = evidence_lines(result.evidence, long_limit=2000) + evidence_file_lines(result)
    if lines:
        body += "\n\n" + "\n".join(lines)
    summary = f"{_icon(result)} {html.escape(shown(result.name), quote=False)} ({status_word(result)}" \
              f"{', ' + result.aside if result.aside else ''})"
    return f"<details><summary>{summary}</summary>\n\n{_fence(shown(body))}\n\n</details>"


def render(report: GradeReport) -> str:
    """The Markdown summary."""
    icon = "✅" if report.all_passed else "❌"
    name = report.exercise + (f": {report.title}" if report.title else "")
    parts = [f"## {icon} labctl {_cell(name)}: {score_line(report)}", ""]
    if not report.gradable:
        parts += [f"**{failure_title(report).capitalize()}:** {_cell(report.error or 'no reason was given')}", ""]
    if report.budget_exhausted:
        parts += ["⚠️ The time budget ran out: some checks did not run.", ""]
    if report.results:
        parts += ["| | check | status | points | duration |", "|---|---|---|---:|---:|"]
        for result in report.results:
            check = _cell(result.name) + (" *(hidden)*" if result.visibility == "hidden" else "")
            parts.append(f"| {_icon(result)} | {check} | {status_word(result)} | "
                         f"{points(result.points)}/{points(result.max_points)} | {seconds(result.duration)} |")
        parts += ["", f"**Score: {score_line(report)}** ({counts(report)})", ""]
    for result in unpassed(report):
        parts += [_details(result), ""]
    return "\n".join(parts) + "\n"


def default_path() -> Path | None:
    value = os.environ.get(ENV, "").strip()
    return Path(value) if value else None


def emit(report: GradeReport, target: Path | None, console: Console) -> list[str]:
    written = []
    summary = render(report)
    if target is not None:
        write_text(target, summary + "\n", append=True)
        written.append(str(target))
    else:
        console.print(f"${ENV} is not set: the job summary would have been:", style="dim", highlight=False)
        console.out(summary, highlight=False)
    for line in annotation_lines(report):
        write_command(line)
    return written
