"""Reports of a grading: one module per format, all rendered from a GradeReport and nothing else (but the
evidence files it points at, which gradescope and prairielearn embed: labctl/evidence/embed.py reads them).

    RENDERERS["junit"].render(report) -> str          the report's text, nothing written
    write_reports(report, ["junit:out/junit.xml", "gradescope"], console) -> paths written

A spec is FORMAT[:PATH], as given to `--report`. Without PATH each format has its default:

    terminal       the console (with PATH: the same report as plain text in a file)
    json           labctl-report.json             (exactly report.model_dump(mode="json"))
    junit          labctl-junit.xml
    gradescope     /autograder/results/results.json when /autograder exists, else results.json
    prairielearn   /grade/results/results.json when /grade exists, else results.json
    github         appended to $GITHUB_STEP_SUMMARY (else printed), ::error annotations on stdout
    classroom      `result=BASE64` appended to $GITHUB_OUTPUT (else printed), then "Points X/Y" on stdout

PATH "-" writes a file format to standard output. Relative paths are relative to the current
folder; missing parent folders are made. Every spec is checked before anything is written: an
unknown format, an empty path, or two reports aimed at one file is a LabctlError. A report that
cannot be written does not stop the others; one LabctlError then names every failure.

What a student may see is decided in one place, `GradeReport.for_students()` (labctl.results): every
check counts, hidden ones are one "hidden checks" result without names, messages or evidence. The
caller gives that view to every report with `--student-view` (and always in `labctl test`).
prairielearn and classroom, whose output the student reads, always render that view themselves;
gradescope keeps hidden checks for instructors and shows them to students only once grades are
published (`after_published`), and renders the view when it is given one.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from labctl.errors import LabctlError
from labctl.report import classroom, github, gradescope, json_report, junit, prairielearn, terminal
from labctl.report._common import write_text
from labctl.results import GradeReport

SCHEMAS_DIR = Path(__file__).parent / "schemas"
STDOUT = "-"

Emit = Callable[[GradeReport, "Path | None", Console], "list[str]"]


class ReportError(LabctlError):
    """A --report spec that names no known format, or a report that could not be written."""


@dataclass(frozen=True)
class Renderer:
    """One report format: how to render it, where it goes by default, how it is written."""

    name: str
    summary: str
    render: Callable[[GradeReport], str]
    default_path: Callable[[], Path | None]  # None: the console
    emit: Emit | None = None  # None: write render() to the path (or stdout for "-")
    schema: str | None = None  # the file in SCHEMAS_DIR its output validates against

    def write(self, report: GradeReport, target: Path | None, console: Console) -> list[str]:
        if self.emit is not None:
            return self.emit(report, target, console)
        text = self.render(report)
        if target is None:
            sys.stdout.write(text)
            sys.stdout.flush()
            return []
        write_text(target, text)
        return [str(target)]

    @property
    def schema_path(self) -> Path | None:
        return SCHEMAS_DIR / self.schema if self.schema else None


RENDERERS: dict[str, Renderer] = {
    renderer.name: renderer for renderer in (
        Renderer("terminal", "a table of checks and why the failed ones failed, on the console",
                 terminal.render, terminal.default_path, emit=terminal.emit),
        Renderer("json", "labctl's own report: every field of the GradeReport",
                 json_report.render, json_report.default_path, schema=json_report.SCHEMA_FILE),
        Renderer("junit", "JUnit XML for CI test views (Jenkins, GitLab, ...)",
                 junit.render, junit.default_path, schema=junit.SCHEMA_FILE),
        Renderer("gradescope", "Gradescope autograder results.json",
                 gradescope.render, gradescope.default_path, schema=gradescope.SCHEMA_FILE),
        Renderer("prairielearn", "PrairieLearn external grader results.json",
                 prairielearn.render, prairielearn.default_path, schema=prairielearn.SCHEMA_FILE),
        Renderer("github", "GitHub Actions job summary and ::error annotations",
                 github.render, github.default_path, emit=github.emit),
        Renderer("classroom", "GitHub Classroom autograding: the `result` step output its reporter reads",
                 classroom.render, classroom.default_path, emit=classroom.emit, schema=classroom.SCHEMA_FILE),
    )
}


@dataclass(frozen=True)
class ReportSpec:
    """A parsed FORMAT[:PATH]: the renderer and where its report goes (None: the console/stdout)."""

    spec: str
    renderer: Renderer
    target: Path | None


def _choices() -> str:
    return ", ".join(RENDERERS)


def parse_spec(spec: str) -> ReportSpec:
    """FORMAT[:PATH] -> ReportSpec, with the format's default path when PATH is left out."""
    name, colon, path = spec.strip().partition(":")
    name = name.strip().lower()
    if not name:
        raise ReportError(f"--report {spec!r}: no format given; choose one of {_choices()} "
                          "(FORMAT or FORMAT:PATH)")
    renderer = RENDERERS.get(name)
    if renderer is None:
        raise ReportError(f"--report {spec!r}: unknown report format {name!r}; choose one of {_choices()}")
    if colon and not path.strip():
        raise ReportError(f"--report {spec!r}: the path after '{name}:' is empty; "
                          f"leave out ':' for the default ({_describe(renderer.default_path())})")
    if colon:
        target = None if path.strip() == STDOUT else Path(path).expanduser()
    else:
        target = renderer.default_path()
    return ReportSpec(spec, renderer, target)


def _describe(target: Path | None) -> str:
    return "the console" if target is None else str(target)


def parse_specs(specs: list[str]) -> list[ReportSpec]:
    """Every spec parsed and checked: two reports aimed at one file are refused up front."""
    parsed = [parse_spec(spec) for spec in specs]
    seen: dict[Path, ReportSpec] = {}
    for item in parsed:
        if item.target is None:
            continue
        key = item.target.resolve()
        if key in seen:
            first = seen[key]
            raise ReportError(f"--report {first.spec!r} and --report {item.spec!r} would both write "
                              f"{item.target}; give one of them a path: {item.renderer.name}:PATH")
        seen[key] = item
    return parsed


def write_reports(report: GradeReport, specs: list[str], console: Console) -> list[str]:
    """Write one report per FORMAT[:PATH] spec; return the files written, in order."""
    parsed = parse_specs(specs)
    written: list[str] = []
    problems: list[str] = []
    for item in parsed:
        try:
            written += item.renderer.write(report, item.target, console)
        except OSError as error:
            reason = error.strerror or str(error)
            where = error.filename or item.target
            problems.append(f"the {item.renderer.name} report could not be written to {where}: {reason}")
    if problems:
        raise ReportError("; ".join(problems) + (f" (written: {', '.join(written)})" if written else ""))
    return written


__all__ = ["RENDERERS", "Renderer", "ReportError", "ReportSpec", "parse_spec", "parse_specs", "write_reports"]
