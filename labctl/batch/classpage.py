"""The class page: one self-contained `index.html` that tells an instructor how a whole class did, and how
the class's servers really wait for clients (the io_model check's finding, which no other grader has).

It reads what a batch left in its output folder (the contract of labctl.batch: `gradebook.csv`, and per
student `<id>/report.json` and `<id>/job.json`) and never trusts it: that folder holds a hostile class's
names, messages and evidence. Every text is made printable (labctl.untrusted) and HTML-escaped, every
link is relative and URL-quoted, every file read is capped in size and every text cut to a length. The page
loads nothing (no script, no font, no stylesheet from anywhere: its Content-Security-Policy forbids it) and
opens from a disk with no network; the plots are inline SVG drawn by matplotlib's SVG backend (no display),
their text drawn as paths so that no font is needed either.

The data (pass rates, the class's I/O models, failures grouped) is computed by small pure functions that the
unit tests call on folders made of real reports; `render` only lays them out.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import re
import statistics
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pydantic import ValidationError

from labctl import __version__, models
from labctl.batch.job import GRADEBOOK_FILE, JOB_FILE, LOG_FILE, REPORT_FILES, STATUSES
from labctl.checks.process import IO_MODEL_CHECK
from labctl.exercise import Exercise
from labctl.report._common import write_text
from labctl.results import CheckResult, GradeReport
from labctl.untrusted import shown

PAGE_FILE = "index.html"
REPORT_FILE = REPORT_FILES["json"]

# What is read, at most: a bigger file is left out with a note, never read whole.
MAX_GRADEBOOK_BYTES = 16 * 1024 * 1024
MAX_REPORT_BYTES = 4 * 1024 * 1024
MAX_JOB_BYTES = 64 * 1024
#: Students read from the gradebook; the rest are counted, not shown.
MAX_STUDENTS = 10_000
#: Files of a student's folder linked from its row.
MAX_FILES_LISTED = 12
# What is shown, at most: characters of a message (in a cell, as an example) and of a name.
MESSAGE_LIMIT = 300
NAME_LIMIT = 120
#: Characters of a failure group's example message (the table stays readable).
EXAMPLE_LIMIT = 240
#: The failure groups shown (the others are counted), and the slowest gradings listed.
TOP_GROUPS = 15
SLOWEST = 10
#: What a student with a graded report but no io_model finding counts as (the check errored, did not run).
NOT_OBSERVED = "not observed"


# -- what is read -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Student:
    """One row of the class: the gradebook's row, with what the student's folder adds."""

    id: str
    status: str                        # one of labctl.batch.job.STATUSES
    score: float | None = None
    max_score: float | None = None
    duration: float | None = None
    message: str = ""
    name: str = ""                     # the entry's original name (job.json), when it differs from the id
    worker: str = ""
    finished_at: str = ""
    folder: str | None = None          # the id, when it names a folder of the output (its files are linked)
    files: tuple[str, ...] = ()
    report: GradeReport | None = None
    problems: tuple[str, ...] = ()     # what of the student's folder could not be read, and why

    @property
    def results(self) -> dict[str, CheckResult]:
        return {result.name: result for result in self.report.results} if self.report else {}


@dataclass
class ClassData:
    """Everything the page shows, as read: the exercise, the students, and what could not be read."""

    exercise: Exercise
    students: list[Student]
    notes: list[str] = field(default_factory=list)
    left_out: int = 0                  # students beyond MAX_STUDENTS


def read_class(out_dir: Path, exercise: Exercise) -> ClassData:
    """The class as the batch left it: the gradebook's rows (or, with no gradebook yet, the students'
    folders that hold a job.json), each with its folder's report, job and files."""
    notes: list[str] = []
    rows, left_out = _gradebook_rows(out_dir / GRADEBOOK_FILE, notes)
    if rows is None:
        rows, left_out = _folder_rows(out_dir, notes)
    seen: Counter[str] = Counter()
    students = []
    for row in rows:
        seen[row.get("id", "")] += 1
        students.append(_student(out_dir, row))
    repeated = sorted(name for name, count in seen.items() if count > 1)
    if repeated:
        notes.append(f"{len(repeated)} id(s) appear more than once in the gradebook, e.g. {_cut(repeated[0], 60)!r}")
    return ClassData(exercise, students, notes, left_out)


def _gradebook_rows(path: Path, notes: list[str]) -> tuple[list[dict[str, str]] | None, int]:
    """The gradebook's rows as dicts (column -> text); None when there is no readable gradebook."""
    if not path.is_file() or path.is_symlink():
        notes.append(f"no {GRADEBOOK_FILE} yet: the students are those whose folder holds a {JOB_FILE}")
        return None, 0
    raw = _read_capped(path, MAX_GRADEBOOK_BYTES)
    if raw is None:
        notes.append(f"{GRADEBOOK_FILE} is over {MAX_GRADEBOOK_BYTES} bytes: only its first part is read")
        with open(path, "rb") as source:
            raw = source.read(MAX_GRADEBOOK_BYTES)
        raw = raw[:raw.rfind(b"\n") + 1]
    reader = csv.DictReader(io.StringIO(raw.decode("utf-8", "replace"), newline=""))
    if not reader.fieldnames or "id" not in reader.fieldnames or "status" not in reader.fieldnames:
        notes.append(f"{GRADEBOOK_FILE} has no id and status columns (found: "
                     f"{_cut(', '.join(reader.fieldnames or []), 200)!r})")
        return None, 0
    rows: list[dict[str, str]] = []
    left_out = 0
    try:
        for row in reader:
            if len(rows) >= MAX_STUDENTS:
                left_out += 1
                continue
            rows.append({key: value if isinstance(value, str) else "" for key, value in row.items()
                         if isinstance(key, str)})
    except csv.Error as error:
        notes.append(f"{GRADEBOOK_FILE} line {reader.line_num}: {error}; the rows after it are left out")
    return rows, left_out


def _folder_rows(out_dir: Path, notes: list[str]) -> tuple[list[dict[str, str]], int]:
    """With no gradebook: a row per student folder holding a job.json, from what job.json says."""
    rows: list[dict[str, str]] = []
    left_out = 0
    folders = sorted(item for item in out_dir.iterdir() if item.is_dir() and not item.is_symlink()) \
        if out_dir.is_dir() else []
    for folder in folders:
        job = _read_json(folder / JOB_FILE, MAX_JOB_BYTES)
        if not isinstance(job, dict):
            continue
        if len(rows) >= MAX_STUDENTS:
            left_out += 1
            continue
        rows.append({"id": folder.name, "status": _text(job.get("status")), "message": _text(job.get("message")),
                     "duration": _text(job.get("duration"))})
    return rows, left_out


def _student(out_dir: Path, row: dict[str, str]) -> Student:
    """A gradebook row, and what its folder holds (read only when the id names a folder right inside out_dir)."""
    student_id = row.get("id", "")
    problems: list[str] = []
    status, message = row.get("status", ""), row.get("message", "")
    if status not in STATUSES:
        message = f"the gradebook says status {_cut(status, 40)!r}; {message}".rstrip("; ")
        status = "error"
    folder = _folder(out_dir, student_id)
    files: tuple[str, ...] = ()
    report: GradeReport | None = None
    job: dict[str, Any] = {}
    if folder is not None:
        here = out_dir / folder
        files = _files(here)
        found = _read_json(here / JOB_FILE, MAX_JOB_BYTES)
        job = found if isinstance(found, dict) else {}
        if REPORT_FILE in files:
            report, problem = _report(here / REPORT_FILE)
            if problem:
                problems.append(problem)
        elif status == "graded":
            problems.append(f"no {REPORT_FILE}")
    elif status == "graded":
        problems.append("no folder of its own in the output")
    score, maximum = _number(row.get("score")), _number(row.get("max"))
    if score is None and report is not None and report.gradable:
        score, maximum = report.score, report.max_score
    duration = _number(row.get("duration"))
    if duration is None:
        duration = _number(job.get("duration"))
    name = _text(job.get("name"))
    return Student(id=student_id, status=status, score=score, max_score=maximum, duration=duration,
                   message=message, name=name if name != student_id else "", worker=_text(job.get("worker")),
                   finished_at=_text(job.get("finished_at")), folder=folder, files=files, report=report,
                   problems=tuple(problems))


def _folder(out_dir: Path, student_id: str) -> str | None:
    """The id when it is a plain name of a real folder right inside out_dir (no separator, no `..`, no link):
    only then is anything read from it or linked."""
    if (not student_id or len(student_id) > 255 or student_id in (".", "..")
            or any(char in student_id for char in "/\\\0")):
        return None
    path = out_dir / student_id
    try:
        if path.is_symlink() or not path.is_dir() or path.resolve().parent != out_dir.resolve():
            return None
    except (OSError, ValueError):
        return None
    return student_id


def _files(folder: Path) -> tuple[str, ...]:
    """The regular files of a student's folder (no links), report.json first, at most MAX_FILES_LISTED."""
    try:
        names = sorted(item.name for item in folder.iterdir() if item.is_file() and not item.is_symlink())
    except OSError:
        return ()
    order = {name: rank for rank, name in enumerate((REPORT_FILE, *REPORT_FILES.values(), LOG_FILE, JOB_FILE))}
    return tuple(sorted(names, key=lambda name: (order.get(name, len(order)), name))[:MAX_FILES_LISTED])


def _report(path: Path) -> tuple[GradeReport | None, str]:
    raw = _read_capped(path, MAX_REPORT_BYTES)
    if raw is None:
        return None, f"{REPORT_FILE} is over {MAX_REPORT_BYTES} bytes: not read"
    try:
        return GradeReport.model_validate_json(raw), ""
    except ValidationError as error:
        return None, f"{REPORT_FILE} is not a labctl report: {_cut(str(error).splitlines()[0], 200)}"


def _read_capped(path: Path, limit: int) -> bytes | None:
    """The file's bytes, None when it holds more than `limit` (never read past limit + 1)."""
    with open(path, "rb") as source:
        data = source.read(limit + 1)
    return None if len(data) > limit else data


def _read_json(path: Path, limit: int) -> Any:
    try:
        if path.is_symlink() or not path.is_file():
            return None
        raw = _read_capped(path, limit)
        return None if raw is None else json.loads(raw)
    except (OSError, ValueError):
        return None


def _number(value: Any) -> float | None:
    """A finite, non-negative number from a gradebook cell or a JSON value; None otherwise."""
    if isinstance(value, bool) or value in (None, ""):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number >= 0 else None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else "" if value is None else str(value)


# -- what is computed -------------------------------------------------------------------------------

@dataclass(frozen=True)
class PassRate:
    """One check of the exercise across the graded students."""

    name: str
    check: str
    points: float
    visibility: str
    passed: int = 0
    failed: int = 0                    # failed, timed out or errored
    unavailable: int = 0               # not run: the backend could not
    missing: int = 0                   # graded reports without this check

    @property
    def ran(self) -> int:
        return self.passed + self.failed

    @property
    def rate(self) -> float | None:
        return self.passed / self.ran if self.ran else None

    @property
    def lesson(self) -> bool:
        return self.points == 0


def pass_rates(data: ClassData) -> list[PassRate]:
    """Each check of the exercise, in its order: how many graded students passed it, failed it, could not run it."""
    graded = [student for student in data.students if student.status == "graded" and student.report is not None]
    rates = []
    for spec in data.exercise.checks:
        counts: Counter[str] = Counter()
        for student in graded:
            result = student.results.get(spec.name)
            counts["missing" if result is None else "unavailable" if result.unavailable
                   else "passed" if result.passed else "failed"] += 1
        rates.append(PassRate(spec.name, spec.check, spec.points, spec.visibility, counts["passed"], counts["failed"],
                              counts["unavailable"], counts["missing"]))
    return rates


def io_model_of(student: Student) -> str | None:
    """How the student's server serves clients, as the io_model check found it: a word of labctl.models
    (MODELS or NOT_MODELS), NOT_OBSERVED when it was graded but the check found nothing, None when the
    student was not graded (nothing to classify)."""
    if student.status != "graded" or student.report is None:
        return None
    for result in student.report.results:
        if result.check == IO_MODEL_CHECK:
            found = result.evidence.get("model")
            if isinstance(found, str) and (found in models.MODELS or found in models.NOT_MODELS):
                return found
    return NOT_OBSERVED


@dataclass(frozen=True)
class ModelCount:
    model: str                         # a word of labctl.models, or NOT_OBSERVED
    students: int
    expected: bool                     # the exercise's model (or family) names it

    @property
    def family(self) -> str:
        """The family it belongs to (threaded, forking, event-driven), or the model itself."""
        return models.family_of(self.model) or self.model

    @property
    def meaning(self) -> str:
        return "the io_model check found nothing (it errored or did not run)" if self.model == NOT_OBSERVED \
            else models.words(self.model)


def model_counts(data: ClassData) -> list[ModelCount]:
    """How many graded servers were found to be each model, in labctl.models' order, with those found
    nowhere left out; NOT_OBSERVED last."""
    found = Counter(model for model in map(io_model_of, data.students) if model is not None)
    order = [*models.MODELS, *models.NOT_MODELS, NOT_OBSERVED]
    return [ModelCount(model, found[model], model != NOT_OBSERVED and models.matches(model, data.exercise.model))
            for model in order if found[model]]


def has_io_model_check(exercise: Exercise) -> bool:
    return any(spec.check == IO_MODEL_CHECK for spec in exercise.checks)


_ADDRESS = re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}(?::\d{1,5})?\b|\[[0-9a-fA-F:]+\](?::\d{1,5})?")
_TEMP_PATH = re.compile(r"/(?:tmp|var/tmp|run/user/\d+)/\S+")
_HEX_ID = re.compile(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*\d)[0-9a-f]{6,}\b…?")
_NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:[.,]\d+)*(?![\w])")
_SPACES = re.compile(r"\s+")


def normalise(message: str, limit: int = MESSAGE_LIMIT) -> str:
    """A failure message with what differs between students who failed alike taken out: addresses and ports,
    temporary paths, hex ids (lab ids, digests), numbers. Its first line only (a log tail follows in some),
    spaces collapsed, cut to `limit`: "took 3.2 s" and "took 4.1 s" are both "took N s"."""
    first = message.strip().splitlines()[0] if message.strip() else ""
    text = _ADDRESS.sub("<address>", first)
    text = _TEMP_PATH.sub("<path>", text)
    text = _HEX_ID.sub("<id>", text)
    text = _NUMBER.sub("N", text)
    return _SPACES.sub(" ", text).strip()[:limit]


@dataclass
class FailureGroup:
    """Students who failed with the same message (once normalised), in which checks."""

    pattern: str
    example: str                       # one real message of the group
    students: list[str] = field(default_factory=list)
    checks: Counter[str] = field(default_factory=Counter)


def failure_groups(data: ClassData) -> list[FailureGroup]:
    """The failures of the class grouped by normalised message, most students first: every graded check a
    graded student did not pass (lessons and checks not available are no failures), and the message of
    each student who was not gradable or whose grading failed (as check "not gradable" / "error")."""
    groups: dict[str, FailureGroup] = {}

    def add(student: Student, where: str, message: str) -> None:
        pattern = normalise(message) or "(no message)"
        group = groups.setdefault(pattern, FailureGroup(pattern, message))
        if not group.students or group.students[-1] != student.id:
            group.students.append(student.id)
        group.checks[where] += 1

    for student in data.students:
        if student.status != "graded":
            add(student, student.status, student.message)
        elif student.report is not None:
            for result in student.report.results:
                if result.graded and not result.passed:
                    add(student, result.name, result.message)
    return sorted(groups.values(), key=lambda group: (-len(group.students), group.pattern))


def slowest(data: ClassData, count: int = SLOWEST) -> list[Student]:
    timed = [student for student in data.students if student.duration is not None]
    return sorted(timed, key=lambda student: -(student.duration or 0.0))[:count]


def statuses(data: ClassData) -> Counter[str]:
    return Counter(student.status for student in data.students)


def batch_times(data: ClassData) -> tuple[datetime | None, datetime | None]:
    """The first and last finished_at of the students' jobs (ISO 8601), as UTC times."""
    times = []
    for student in data.students:
        try:
            moment = datetime.fromisoformat(student.finished_at.replace("Z", "+00:00"))
        except ValueError:
            continue
        times.append(moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc))
    return (min(times), max(times)) if times else (None, None)


# -- the plots --------------------------------------------------------------------------------------

#: Colours of the page and its plots (one place).
PASS, FAIL, MUTED, ACCENT = "#2e7d32", "#c62828", "#9e9e9e", "#1565c0"


def _svg(figure: Any, prefix: str) -> str:
    """A matplotlib figure as an <svg> element for an HTML page: no XML prologue, every id (glyphs, clip
    paths) prefixed so that two plots on one page never share one."""
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buffer.getvalue()
    text = text[text.index("<svg"):]
    return re.sub(r'(\bid="|href="#|url\(#)([^")]+)', lambda match: f"{match.group(1)}{prefix}-{match.group(2)}",
                  text)


def _figure(width: float, height: float) -> Any:
    """A figure of matplotlib's object API (never pyplot: no display, no global figure)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _plots_context() -> Any:
    from labctl.plots import drawing

    return drawing(**{"svg.fonttype": "path", "svg.hashsalt": "labctl-class-page",
                      "axes.spines.top": False, "axes.spines.right": False})


def score_plot(data: ClassData) -> str | None:
    """The graded students' scores: a histogram in points (in % of the maximum when maxima differ)."""
    graded = [student for student in data.students if student.status == "graded" and student.score is not None]
    if not graded:
        return None
    maxima = {student.max_score for student in graded}
    top = next(iter(maxima)) if len(maxima) == 1 else None
    if top:
        values, limit, label = [student.score or 0.0 for student in graded], top, "points"
    else:
        values = [100 * (student.score or 0.0) / student.max_score if student.max_score else 0.0
                  for student in graded]
        limit, label = 100.0, "% of the maximum"
    width = 1.0 if limit <= 30 else limit / 20
    edges = [index * width - width / 2 for index in range(int(limit / width) + 2)]
    with _plots_context():
        figure = _figure(6.4, 2.4)
        axes = figure.add_subplot()
        axes.hist(values, bins=edges, color=ACCENT, edgecolor="white")
        axes.set_xlim(-width, limit + width)
        axes.set_xlabel(f"score ({label}; {len(graded)} graded)")
        axes.set_ylabel("students")
        axes.yaxis.get_major_locator().set_params(integer=True)
        return _svg(figure, "scores")


def pass_rate_plot(rates: list[PassRate]) -> str | None:
    shown_rates = [rate for rate in rates if rate.rate is not None]
    if not shown_rates:
        return None
    with _plots_context():
        figure = _figure(6.4, 0.28 * len(shown_rates) + 0.8)
        axes = figure.add_subplot()
        names = [rate.name + (" (hidden)" if rate.visibility == "hidden" else "") + (" (lesson)" if rate.lesson else "")
                 for rate in shown_rates]
        percents = [100 * (rate.rate or 0.0) for rate in shown_rates]
        positions = list(range(len(shown_rates)))
        axes.barh(positions, [100.0] * len(positions), color="#eeeeee")
        axes.barh(positions, percents, color=[MUTED if rate.lesson else PASS for rate in shown_rates])
        for position, rate in enumerate(shown_rates):
            axes.text(101, position, f"{rate.passed}/{rate.ran}", va="center", fontsize=8)
        axes.set_yticks(positions, names)
        axes.invert_yaxis()
        axes.set_xlim(0, 112)
        axes.set_xticks([0, 25, 50, 75, 100])
        axes.set_xlabel("% of the graded students who passed")
        return _svg(figure, "checks")


def model_plot(counts: list[ModelCount]) -> str | None:
    if not counts:
        return None
    with _plots_context():
        figure = _figure(6.4, 0.3 * len(counts) + 0.8)
        axes = figure.add_subplot()
        positions = list(range(len(counts)))
        axes.barh(positions, [count.students for count in counts],
                  color=[PASS if count.expected else MUTED if count.model == NOT_OBSERVED else FAIL
                         for count in counts])
        labels = [count.model if count.family == count.model else f"{count.model} ({count.family})" for count in counts]
        axes.set_yticks(positions, labels)
        axes.invert_yaxis()
        axes.xaxis.get_major_locator().set_params(integer=True)
        axes.set_xlabel("graded servers (green: the exercise's model)")
        return _svg(figure, "models")


# -- the page ---------------------------------------------------------------------------------------

def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def esc(value: object, limit: int = MESSAGE_LIMIT) -> str:
    """Any text for the page: control characters made visible, cut to `limit`, then HTML-escaped (quotes too,
    so it is safe in an attribute). The cut comes first, so that an entity is never cut in half."""
    return html.escape(_cut(shown(str(value)), limit), quote=True)


def href(*parts: str) -> str:
    """A relative link to a file of the output folder, every part URL-quoted (no scheme, no `..`, no `/` of
    its own can come from a name), escaped for an attribute."""
    return html.escape("/".join(quote(part, safe="") for part in parts), quote=True)


def _points(value: float | None) -> str:
    if value is None:
        return ""
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.1f} s"


def _when(moment: datetime | None) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC") if moment else "unknown"


STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;margin:0;background:#fafafa}
main{max-width:1180px;margin:0 auto;padding:18px 24px 40px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:3px}
.sub{color:#555;margin:0 0 10px}.banner{background:#fff4e5;border:1px solid #f0c36d;padding:6px 10px;border-radius:4px}
.tiles{display:flex;flex-wrap:wrap;gap:10px;margin:12px 0}.tile{background:#fff;border:1px solid #ddd;border-radius:6px;
padding:8px 14px;min-width:96px}.tile b{display:block;font-size:20px}.tile span{color:#555;font-size:12px}
.row{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start}.row>.tbl{flex:0 1 auto}.row>.fig{flex:1 1 400px;
min-width:0}td.name{white-space:nowrap}
svg{max-width:100%;height:auto}
table{border-collapse:collapse;background:#fff;font-size:13px}th,td{border:1px solid #e0e0e0;padding:3px 7px;
text-align:left;vertical-align:top}th{background:#f0f0f0}td.n{text-align:right;white-space:nowrap}
.msg{white-space:pre-wrap;overflow-wrap:anywhere;max-width:520px}.id{overflow-wrap:anywhere;min-width:110px;
max-width:240px}.in{max-width:260px}
.graded{color:#1b5e20}.not-gradable{color:#e65100}.error{color:#b71c1c}.ok{color:#1b5e20}.bad{color:#b71c1c}
.marks{font-family:ui-monospace,monospace;white-space:nowrap;letter-spacing:1px}
.p{color:#2e7d32}.f{color:#c62828}.u,.m{color:#9e9e9e}.files a{margin-right:6px}.note{color:#555;font-size:12px}
code{background:#f2f2f2;padding:0 3px;border-radius:3px}
"""

#: One mark per check in a student's row.
MARKS = {"passed": ("p", "✓"), "failed": ("f", "✗"), "lesson": ("u", "○"), "not available": ("u", "–"),
         "not in the report": ("m", "·")}


def render(data: ClassData, generated: datetime | None = None) -> str:
    """The page's HTML: every text from the output folder through esc(), every link through href()."""
    exercise = data.exercise
    generated = generated or datetime.now(timezone.utc)
    rates = pass_rates(data)
    counts = model_counts(data)
    groups = failure_groups(data)
    tally = statuses(data)
    first, last = batch_times(data)
    graded_scores = [student.score for student in data.students if student.status == "graded"
                     and student.score is not None]
    parts: list[str] = [
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; "
        "img-src data:\">",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
        f"<title>{esc(exercise.id)}: class page</title><style>{STYLE}</style></head><body><main>",
        f"<h1>{esc(exercise.title)}</h1>",
        f"<p class=\"sub\">exercise <code>{esc(exercise.id)}</code> · expected model <b>{esc(exercise.model)}</b> "
        f"({esc(models.words(exercise.model))}) · batch finished {esc(_when(last))}"
        + (f" (first result {esc(_when(first))})" if first and last and first != last else "")
        + f" · page made {esc(_when(generated))} by labctl {esc(__version__)}</p>",
        "<p class=\"banner\">The instructor's page: <b>hidden checks are shown</b> here, with their messages "
        "(marked <i>hidden</i>). Do not publish it to students.</p>",
    ]
    parts.append(_tiles(data, tally, graded_scores))
    parts += _notes(data)
    parts += _scores_section(data)
    parts += _checks_section(exercise, rates)
    parts += _models_section(data, counts)
    parts += _failures_section(groups, data)
    parts += _slowest_section(data)
    parts += _students_section(data, [spec.name for spec in exercise.checks])
    parts.append("</main></body></html>\n")
    return "".join(parts)


def _tiles(data: ClassData, tally: Counter[str], scores: list[float]) -> str:
    maxima = {student.max_score for student in data.students if student.status == "graded"}
    top = f"/{_points(next(iter(maxima)))}" if len(maxima) == 1 and None not in maxima else ""
    tiles = [("students", str(len(data.students) + data.left_out))]
    tiles += [(status, str(tally[status])) for status in STATUSES]
    if scores:
        tiles += [("mean score", f"{_points(statistics.fmean(scores))}{top}"),
                  ("median score", f"{_points(statistics.median(scores))}{top}")]
    return "<div class=\"tiles\">" + "".join(f"<div class=\"tile\"><b>{esc(value)}</b><span>{esc(label)}</span></div>"
                                             for label, value in tiles) + "</div>"


def _notes(data: ClassData) -> list[str]:
    notes = list(data.notes)
    if data.left_out:
        notes.append(f"{data.left_out} more students in the gradebook are left out of this page (it shows the first "
                     f"{MAX_STUDENTS})")
    unreadable = [student for student in data.students if student.problems]
    if unreadable:
        notes.append(f"{len(unreadable)} student folder(s) could not be read in full (see their rows)")
    return [f"<p class=\"note\">{esc(note)}</p>" for note in notes]


def _scores_section(data: ClassData) -> list[str]:
    plot = score_plot(data)
    out = ["<h2>Scores</h2>"]
    out.append(plot if plot else "<p>No student was graded yet.</p>")
    return out


def _checks_section(exercise: Exercise, rates: list[PassRate]) -> list[str]:
    rows = []
    for rate in rates:
        kind = "lesson (0 points)" if rate.lesson else rate.visibility
        percent = "" if rate.rate is None else f"{100 * rate.rate:.0f}%"
        aside = ", ".join(f"{number} {word}" for number, word in ((rate.unavailable, "not available"),
                                                                   (rate.missing, "not in the report")) if number)
        rows.append(f"<tr><td class=\"name\">{esc(rate.name)}</td><td><code>{esc(rate.check)}</code></td><td class=\"n\">"
                    f"{esc(_points(rate.points))}</td><td>{esc(kind)}</td><td class=\"n\">{esc(percent)}</td>"
                    f"<td class=\"n\">{rate.passed}</td><td class=\"n\">{rate.failed}</td><td>{esc(aside)}</td></tr>")
    total = sum(spec.points for spec in exercise.checks)
    table = ("<table><tr><th>check</th><th>catalog</th><th>points</th><th>shown to students</th><th>pass rate</th>"
             "<th>passed</th><th>failed</th><th>not run</th></tr>" + "".join(rows)
             + f"<tr><th colspan=\"2\">total</th><th class=\"n\">{esc(_points(total))}</th><th colspan=\"5\"></th></tr>"
             "</table>")
    return ["<h2>Checks: how many passed</h2><p class=\"sub\">Of the graded students; failed includes timed out "
            "and errors.</p>", _side_by_side(table, pass_rate_plot(rates))]


def _side_by_side(table: str, plot: str | None) -> str:
    return (f"<div class=\"row\"><div class=\"tbl\">{table}</div>"
            + (f"<div class=\"fig\">{plot}</div>" if plot else "") + "</div>")


def _models_section(data: ClassData, counts: list[ModelCount]) -> list[str]:
    exercise = data.exercise
    out = ["<h2>How the servers really wait (io_model)</h2>"]
    if not has_io_model_check(exercise):
        return out + ["<p>This exercise has no <code>io_model</code> check: the class's servers were not "
                      "classified.</p>"]
    classified = sum(count.students for count in counts if count.model != NOT_OBSERVED)
    expected = sum(count.students for count in counts if count.expected)
    out.append(f"<p class=\"sub\">From the io_model check's evidence (what each thread sleeps in, idle and with "
               f"clients held, and the CPU). Expected: <b>{esc(exercise.model)}</b>. {expected} of {classified} "
               f"classified server(s) are; graded students only.</p>")
    if not counts:
        return out + ["<p>No student was graded yet.</p>"]
    verdicts = {True: "<td class=\"ok\">yes</td>", False: "<td class=\"bad\">no</td>", None: "<td class=\"note\">–</td>"}
    rows = "".join(
        f"<tr><td>{esc(count.family)}</td><td><b>{esc(count.model)}</b></td><td>{esc(count.meaning)}</td>"
        f"<td class=\"n\">{count.students}</td>{verdicts[None if count.model == NOT_OBSERVED else count.expected]}"
        "</tr>" for count in counts)
    table = ("<table><tr><th>family</th><th>model found</th><th>what it means</th><th>servers</th>"
             f"<th>the exercise's?</th></tr>{rows}</table>")
    return out + [_side_by_side(table, model_plot(counts))]


def _student_links(ids: Iterable[str], data: ClassData, limit: int = 6) -> str:
    """Some of a group's students, each linked to their report."""
    by_id = {student.id: student for student in data.students}
    ids = list(ids)
    more = f" and {len(ids) - limit} more" if len(ids) > limit else ""
    return ", ".join(_report_link(by_id[student_id]) for student_id in ids[:limit]) + more


def _report_link(student: Student) -> str:
    """The student's id, linked to their report.json when their folder holds one."""
    name = esc(student.id, NAME_LIMIT)
    if student.folder and REPORT_FILE in student.files:
        return f"<a href=\"{href(student.folder, REPORT_FILE)}\">{name}</a>"
    return name


def _failures_section(groups: list[FailureGroup], data: ClassData) -> list[str]:
    out = ["<h2>Most common failures</h2><p class=\"sub\">Messages grouped once numbers, addresses, ports and ids "
           "are taken out (their first line); a student counts once per group.</p>"]
    if not groups:
        return out + ["<p>No failures.</p>"]
    data_rows = []
    for group in groups[:TOP_GROUPS]:
        checks = ", ".join(esc(name, NAME_LIMIT) for name, _ in group.checks.most_common(8))
        if len(group.checks) > 8:
            checks += f" and {len(group.checks) - 8} more"
        data_rows.append(f"<tr><td class=\"n\">{len(group.students)}</td><td class=\"in\">{checks}</td>"
                         f"<td class=\"msg\" title=\"{esc(group.pattern)}\">{esc(group.example, EXAMPLE_LIMIT)}</td>"
                         f"<td class=\"id\">{_student_links(group.students, data)}</td></tr>")
    table = ("<table><tr><th>students</th><th>in</th><th>message (one of them; hover for the pattern)</th>"
             "<th>who</th></tr>" + "".join(data_rows) + "</table>")
    more = (f"<p class=\"note\">and {len(groups) - TOP_GROUPS} less common message(s)</p>"
            if len(groups) > TOP_GROUPS else "")
    return out + [table, more]


def _slowest_section(data: ClassData) -> list[str]:
    rows = "".join(
        f"<tr><td class=\"id\">{_id_cell(student)}</td><td class=\"{_status_class(student.status)}\">"
        f"{esc(student.status)}</td><td class=\"n\">{_seconds(student.duration)}</td>"
        f"<td class=\"n\">{esc(_score_text(student))}</td><td>{esc(student.worker, NAME_LIMIT)}</td></tr>"
        for student in slowest(data))
    if not rows:
        return []
    return ["<h2>Slowest gradings</h2><table><tr><th>student</th><th>status</th><th>took</th><th>score</th>"
            f"<th>worker</th></tr>{rows}</table>"]


def _status_class(status: str) -> str:
    return status.replace(" ", "-") if status in STATUSES else "error"


def _score_text(student: Student) -> str:
    if student.score is None:
        return ""
    return f"{_points(student.score)}/{_points(student.max_score)}" if student.max_score is not None \
        else _points(student.score)


def _id_cell(student: Student) -> str:
    cell = _report_link(student)
    if student.name:
        cell += f"<br><span class=\"note\">entry {esc(student.name, NAME_LIMIT)}</span>"
    return cell


def _mark_of(result: CheckResult | None) -> str:
    """A check's word in a student's row (a key of MARKS): a lesson is never a failure, whatever its status."""
    if result is None:
        return "not in the report"
    if result.unavailable:
        return "not available"
    return "passed" if result.passed else "lesson" if result.lesson else "failed"


def _marks(student: Student, checks: list[str]) -> str:
    if student.report is None or student.status != "graded":
        return ""
    results = student.results
    marks = []
    for name in checks:
        state = _mark_of(results.get(name))
        css, mark = MARKS[state]
        marks.append(f"<i class=\"{css}\" title=\"{esc(name, NAME_LIMIT)}: {state}\">{mark}</i>")
    return "".join(marks)


def _students_section(data: ClassData, checks: list[str]) -> list[str]:
    rows = []
    for number, student in enumerate(data.students, 1):
        message = student.message
        if student.problems:
            message = "; ".join((*student.problems, message) if message else student.problems)
        files = " ".join(f"<a href=\"{href(student.folder, name)}\">{esc(name, NAME_LIMIT)}</a>"
                         for name in student.files) if student.folder else ""
        model = io_model_of(student) or ""
        fits = "" if not model or model == NOT_OBSERVED else \
            " class=\"ok\"" if models.matches(model, data.exercise.model) else " class=\"bad\""
        rows.append(f"<tr><td class=\"n\">{number}</td><td class=\"id\">{_id_cell(student)}</td>"
                    f"<td class=\"{_status_class(student.status)}\">{esc(student.status)}</td>"
                    f"<td class=\"n\">{esc(_score_text(student))}</td><td class=\"n\">{_seconds(student.duration)}</td>"
                    f"<td{fits}>{esc(model)}</td><td class=\"marks\">{_marks(student, checks)}</td>"
                    f"<td class=\"msg\">{esc(message)}</td><td class=\"files\">{files}</td></tr>")
    legend = ", ".join(f"<span class=\"{css}\">{mark}</span> {word}" for word, (css, mark) in MARKS.items())
    return [f"<h2>Students</h2><p class=\"sub\">A mark per check, in the exercise's order ({legend}; hover for the "
            "check's name). Files are in each student's folder next to this page.</p>",
            "<table><tr><th>#</th><th>student</th><th>status</th><th>score</th><th>took</th><th>model found</th>"
            "<th>checks</th><th>message</th><th>files</th></tr>", "".join(rows), "</table>"]


def write_class_page(out_dir: Path, exercise: Exercise) -> Path:
    """Read the batch's output folder and write its class page, out_dir/index.html (replaced atomically:
    a browser open on it never sees half a page). Returns the page's path."""
    data = read_class(out_dir, exercise)
    path = out_dir / PAGE_FILE
    write_text(path, render(data))
    return path
