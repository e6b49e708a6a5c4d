"""The github report: a Markdown job summary and `::error` annotations for GitHub Actions.

- The summary (a table of checks with ✅/❌, the score, each failed check's message and evidence in
  a <details> block) is APPENDED to $GITHUB_STEP_SUMMARY, or to the PATH of `github:PATH`. With
  neither, it is printed to the console with a line saying where it would have gone.
- One `::error title=...::message` workflow command per failed check (and one when the report is
  not gradable) goes to standard output, escaped as GitHub's runner expects: in the message
  % -> %25, CR -> %0D, LF -> %0A; in the title also : -> %3A and , -> %2C.
Like the terminal report it shows the report it is given (the caller hides hidden checks).
"""

from __future__ import annotations

import html
import os
from pathlib import Path

from rich.console import Console

from labctl.report._common import (
    counts,
    evidence_lines,
    failed,
    longest_run,
    points,
    score_line,
    seconds,
    shown,
    status_word,
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


def annotation_lines(report: GradeReport) -> list[str]:
    lines = []
    if not report.gradable:
        lines.append(f"::error title={escape_property(f'labctl {report.exercise}: not gradable')}::"
                     f"{escape_data(shown(report.error or 'labctl could not grade this submission', keep_cr=True))}")
    for result in failed(report):
        title = shown(f"labctl {report.exercise}: {result.name} ({status_word(result)})", keep_cr=True)
        lines.append(f"::error title={escape_property(title)}::{escape_data(shown(result.message.strip(), keep_cr=True))}")
    return lines


def _cell(text: str) -> str:
    """Text for a Markdown table cell: HTML escaped, | escaped, on one line."""
    return html.escape(shown(text), quote=False).replace("|", "\\|").replace("\n", "<br>")


def _fence(text: str) -> str:
    fence = "`" * max(3, longest_run(text, "`") + 1)
    return f"{fence}text\n{text}\n{fence}"


def _details(result: CheckResult) -> str:
    body = result.message.rstrip()
    lines = evidence_lines(result.evidence, long_limit=2000)
    if lines:
        body += "\n\n" + "\n".join(lines)
    summary = f"❌ {html.escape(shown(result.name), quote=False)} ({status_word(result)})"
    return f"<details><summary>{summary}</summary>\n\n{_fence(shown(body))}\n\n</details>"


def render(report: GradeReport) -> str:
    """The Markdown summary."""
    icon = "✅" if report.all_passed else "❌"
    name = report.exercise + (f": {report.title}" if report.title else "")
    parts = [f"## {icon} labctl {_cell(name)}: {score_line(report)}", ""]
    if not report.gradable:
        parts += [f"**Not gradable:** {_cell(report.error or 'no reason was given')}", ""]
    if report.budget_exhausted:
        parts += ["⚠️ The time budget ran out: some checks did not run.", ""]
    if report.results:
        parts += ["| | check | status | points | duration |", "|---|---|---|---:|---:|"]
        for result in report.results:
            check = _cell(result.name) + (" *(hidden)*" if result.visibility == "hidden" else "")
            parts.append(f"| {'✅' if result.passed else '❌'} | {check} | {status_word(result)} | "
                         f"{points(result.points)}/{points(result.max_points)} | {seconds(result.duration)} |")
        parts += ["", f"**Score: {score_line(report)}** ({counts(report)})", ""]
    for result in failed(report):
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
