"""The terminal report: a table of checks, then why each failed check failed, then the score.

It shows the report it is given: hiding hidden checks is the caller's choice
(`report.for_students()`: `--student-view`, and always for `labctl test`).
"""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from labctl.evidence.embed import where
from labctl.report._common import (
    counts,
    evidence_lines,
    points,
    score_line,
    seconds,
    shown,
    status_word,
    unpassed,
    write_text,
)
from labctl.results import CheckResult, GradeReport
from labctl.untrusted import neutralize

STYLES = {"passed": "green", "failed": "red", "timed_out": "yellow", "error": "magenta"}
MARKS = {"passed": "✓", "failed": "✗", "timed_out": "⏱", "error": "!"}
#: A lesson (0 points) that did not pass is the demonstration happening, not a failure: never red.
LESSON_STYLE = "cyan"


def _style(result: CheckResult) -> str:
    return LESSON_STYLE if not result.graded and not result.passed else STYLES.get(result.status, "")


def renderable(report: GradeReport) -> RenderableType:
    """The report as rich renderables (Text objects only: no markup is parsed from report strings)."""
    parts: list[RenderableType] = []
    title = Text.assemble(("labctl ", "bold"), (shown(report.exercise), "bold cyan"))
    if report.title:
        title.append(f"  {shown(report.title)}", style="dim")
    parts.append(title)
    if report.results:
        table = Table(box=None, padding=(0, 2), show_edge=False)
        table.add_column("check")
        table.add_column("status")
        table.add_column("points", justify="right")
        table.add_column("duration", justify="right")
        for result in report.results:
            name = Text(shown(result.name))
            if result.visibility == "hidden":
                name.append(" (hidden)", style="dim")
            if result.aside:
                name.append(f" ({result.aside})", style="dim")
            table.add_row(name,
                          Text(f"{MARKS.get(result.status, '?')} {status_word(result)}", style=_style(result)),
                          Text(f"{points(result.points)}/{points(result.max_points)}"),
                          Text(seconds(result.duration)))
        parts.append(table)
    for result in unpassed(report):
        block = Text("\n")
        block.append(f"{MARKS.get(result.status, '?')} {shown(result.name)}", style=f"bold {_style(result)}")
        lesson = f", {result.aside}" if result.aside else ""
        block.append(f" ({status_word(result)}{lesson})\n", style="dim")
        block.append(shown(result.message.rstrip()))
        for line in evidence_lines(result.evidence, long_limit=400):
            block.append(f"\n  {shown(line)}", style="dim")
        for line in where(report, result):
            block.append(f"\n  evidence: {shown(line)}", style="bold")
        for note in result.evidence_left_out:
            block.append(f"\n  evidence left out: {shown(note)}", style="dim")
        parts.append(block)
    footer = Text("\n")
    if not report.gradable:
        footer.append("not graded, infrastructure failure (not the submission): " if report.infrastructure_failed
                      else "not gradable: ", style="bold red")
        footer.append(shown(report.error or "no reason was given"))
        footer.append("\n")
    if report.budget_exhausted:
        footer.append("the time budget ran out: some checks did not run\n", style="yellow")
    style = "bold green" if report.all_passed else "bold red"
    footer.append(f"score {score_line(report)}", style=style)
    footer.append(f"  ({counts(report)}, {seconds(report.duration)})", style="dim")
    if report.server_usage is not None:
        usage = report.server_usage
        footer.append(f"\nyour server used {seconds(usage.cpu_seconds)} of CPU in {seconds(usage.seconds)} of checks"
                      + (f", at most {usage.peak_tasks} processes and threads" if usage.peak_tasks else ""),
                      style="dim")
    if report.evidence_dir is not None:
        files = [entry for result in report.results for entry in result.evidence_files]
        if files:
            size = sum(entry.bytes for entry in files)
            footer.append(f"\nevidence of the failed checks: {len(files)} files ({size / 1024:.0f} KiB) in "
                          f"{shown(report.evidence_dir)}", style="bold")
    parts.append(footer)
    return Group(*parts)


def render(report: GradeReport, width: int = 100) -> str:
    """The same report as plain text (no colours), e.g. for a file."""
    buffer = io.StringIO()
    Console(file=buffer, width=width, color_system=None, force_terminal=False, soft_wrap=False,
            highlight=False, emoji=False).print(renderable(report))
    return neutralize(buffer.getvalue())  # wrapping may have put a server's "::" at the start of a line


def default_path() -> Path | None:
    return None


def emit(report: GradeReport, target: Path | None, console: Console) -> list[str]:
    if target is None:
        console.print(renderable(report), highlight=False)
        return []
    write_text(target, render(report))
    return [str(target)]


__all__ = ["render", "renderable", "emit", "default_path"]
