"""`labctl batch`: a whole class graded, N labs at once, into an output folder that survives anything.

The output folder DIR (classpage reads it; nothing in it is trusted):
- `DIR/<id>/`: one folder per student, written whole or not at all (made as a hidden temporary folder,
  then renamed: a crash or a Ctrl-C never leaves half a student). It holds the job's files (report.json,
  the formats asked, grading.log) and `job.json`:
  `{"student": id, "name": the entry's own name (printable), "exercise", "source": folder|zip|tar.gz|...,
  "submission_hash", "fingerprint", "status": graded|not gradable|error, "message", "duration" (seconds),
  "worker", "finished_at" (ISO 8601, UTC), "reports": [formats]}`;
- `DIR/gradebook.csv`: `id,score,max,status,duration,<each check's points>,message`, one row per entry of
  the class sorted by id, replaced whole (atomically) after every result, so it always tells what finished;
  safe to open in a spreadsheet (a cell that would start a formula starts with ').
  score is 0 for "not gradable" (the submission's doing) and empty for "error" (the machine's: nothing to keep);
- `DIR/index.html`: the class page (labctl.batch.classpage), written at the end, after a Ctrl-C too.

Resuming: a student is graded again only when something that decides the verdict changed: the submission's
content hash (`intake.content_hash`: the files' paths, exec bits and bytes, whatever their times or how they
came), the exercise's fingerprint (`job.exercise_fingerprint`), or a report format asked that was not
written then. An "error" is always graded again (it was nobody's verdict); `--force` grades everyone again,
`--regrade ID` one student.

Where gradings run is an `Executor`: `LocalExecutor` here (child `labctl grade`s in a thread pool) or the
farm's (labctl.batch.farm.FarmExecutor). The loop does not know which.
"""

from __future__ import annotations

import concurrent.futures
import csv
import importlib
import io
import json
import os
import secrets
import shutil
import socket
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from labctl.batch import intake
from labctl.batch.job import (
    CHILDREN,
    GRADEBOOK_FILE,
    JOB_FILE,
    LOG_FILE,
    REPORT_FILES,
    STATUSES,
    Job,
    JobResult,
    Status,
    run_job,
)
from labctl.errors import LabctlError
from labctl.exercise import Exercise
from labctl.pids import alive
from labctl.project import Project
from labctl.spec import LabSpec
from labctl.untrusted import printable

FIXED_COLUMNS = ("id", "score", "max", "status", "duration")
#: The files a result may leave in a student's folder (a farm worker's answer names them: nothing else).
KEPT_FILES = frozenset(REPORT_FILES.values()) | {LOG_FILE}
#: The most one kept file may weigh (a report with the server's log tail is far smaller).
MAX_KEPT_BYTES = 16 * 2**20
#: The longest message a gradebook cell or job.json keeps.
MESSAGE_CHARS = 500
#: Hidden names of folders being written or replaced (ids never start with '.').
TEMP_PREFIX, OLD_PREFIX = ".tmp-", ".old-"
#: What starts a formula in a spreadsheet (OWASP's list): such a cell is written after a '.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
#: Memory kept free beside the labs when choosing -j (the engine, the batch, the children).
MEMORY_SHARE = 0.8


class Executor(Protocol):
    """Where gradings run: this engine (LocalExecutor) or a farm. The batch loop knows nothing more."""

    name: str            # "local" or "farm <url>", said in the progress line
    jobs: int            # gradings at once (the farm: the sum of its workers' labs)

    def submit(self, job: Job, budget: float) -> concurrent.futures.Future[JobResult]: ...

    def close(self, cancel: bool = False) -> None: ...   # cancel=True on Ctrl-C: nothing left running


class LocalExecutor:
    """`jobs` gradings at once on this machine's engine, each a child `labctl grade` (job.run_job)."""

    def __init__(self, project: Project, jobs: int):
        self.name = "local"
        self.project = project
        self.jobs = jobs
        self.removed_labs = 0   # labs its gradings left behind, removed at close
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="grading")

    def submit(self, job: Job, budget: float) -> concurrent.futures.Future[JobResult]:
        return self._pool.submit(run_job, self.project, job, budget)

    def close(self, cancel: bool = False) -> None:
        """Wait for the gradings (cancel: stop them first: each removes its own lab), then remove any lab a
        grading of this process still left (one killed after its overrun cannot remove its own)."""
        if cancel:
            CHILDREN.stop_all()
            self._pool.shutdown(wait=False, cancel_futures=True)
            CHILDREN.wait_all()
        self._pool.shutdown(wait=True)
        self.removed_labs += remove_left_labs(self.project, CHILDREN.started)


def remove_left_labs(project: Project, pids: set[int]) -> int:
    """Remove the labs (found by label: this owner, this host, a pid of `pids` that is gone) a grading left;
    how many. A lab of a pid that lives (reused by another labctl) is not ours to remove."""
    from labctl.lab import LABEL_HOST, LABEL_LAB, LABEL_OWNER, LABEL_PID, current_owner

    if not pids:
        return 0
    wanted = {LABEL_OWNER: current_owner(), LABEL_HOST: socket.gethostname()}
    try:
        backend = project.backend
        found = [info.labels for info in backend.find_containers(wanted)]
        found += [info.labels for info in backend.find_networks(wanted)]
        labs = {labels[LABEL_LAB] for labels in found
                if labels.get(LABEL_PID, "").isdigit() and int(labels[LABEL_PID]) in pids
                and not alive(int(labels[LABEL_PID]), labctl_only=True) and labels.get(LABEL_LAB)}
        for lab in sorted(labs):
            backend.remove({LABEL_LAB: lab})
    except LabctlError:
        return 0  # the engine is gone: nothing can be found, nor was anything left that it still runs
    return len(labs)


def open_executor(project: Project, exercise: Exercise, fingerprint: str, jobs: int | None, farm: str | None,
                  progress=None) -> tuple[Executor, str]:
    """(where the class is graded, that in words): the farm at `farm` (labctl.batch.farm, imported only
    then), or this engine with `jobs` labs at once (default_jobs when None), the grading's images built
    first, once (never by N gradings at the same time)."""
    if farm:
        try:
            module = importlib.import_module("labctl.batch.farm")
        except ModuleNotFoundError as error:
            if error.name and error.name.startswith("labctl"):
                raise LabctlError("this labctl has no grading farm (labctl.batch.farm): grade on this engine "
                                  "without --farm") from None
            raise LabctlError(f"--farm needs {error.name}, which is not installed: pip install 'labctl[farm]'") from None
        executor: Executor = module.FarmExecutor(farm, project, exercise.id, fingerprint)
        note = f"{executor.name}: {executor.jobs} labs at once on its workers"
        return executor, note + ("; -j is ignored: each worker sets its own" if jobs else "")
    from labctl.grading import grading_images

    names, extra = grading_images(exercise)
    project.ensure_images(progress, names=names, extra=extra)
    if jobs:
        return LocalExecutor(project, jobs), f"-j {jobs} (asked)"
    count, why = default_jobs(project.spec)
    return LocalExecutor(project, count), why


# -- how many at once -------------------------------------------------------------------------------

def lab_memory(spec: LabSpec) -> int:
    """The most memory one lab may take: the sum of its nodes' limits (each lab keeps its limits)."""
    return sum(node.limits.memory_bytes for node in spec.nodes.values())


def default_jobs(spec: LabSpec, cores: int | None = None, available: int | None = None) -> tuple[int, str]:
    """(-j, why in words): a lab per core (a grading's bursts of clients load a core, and a verdict must not
    depend on how busy the machine is), fewer when the memory free would not hold that many labs at their
    limits. The figures are this host's: the engine's when it is local."""
    cores = cores or _usable_cores()
    available = _memory_available() if available is None else available
    per_lab = lab_memory(spec)
    by_memory = int(available * MEMORY_SHARE // per_lab) if available and per_lab else cores
    jobs = max(1, min(cores, by_memory))
    free = f"{available / 2**30:.1f} GiB free" if available else "free memory unknown"
    why = (f"-j {jobs}: {cores} core{'s' if cores != 1 else ''}, {free}, a lab may take "
           f"{per_lab / 2**30:.1f} GiB (lab.yaml's limits)")
    host = os.environ.get("DOCKER_HOST", "")
    if host and not host.startswith("unix://"):
        why += f"; these are this host's figures, the engine at {host} may have others: pass -j"
    return jobs, why


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _memory_available() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


# -- one row of the gradebook -----------------------------------------------------------------------

@dataclass
class Row:
    """A student's line of the gradebook, and how this run came to it."""

    id: str
    status: Status
    message: str = ""
    score: float | None = None
    max: float = 0.0
    duration: float = 0.0
    points: dict[str, float] = field(default_factory=dict)   # check name -> points, for the checks that ran
    how: str = "graded"      # graded (in this run), unchanged (kept from before), intake (refused unpacked)


def row_of(record: dict[str, Any], report: dict[str, Any] | None, exercise: Exercise) -> Row:
    """A row from a student's job.json and report (both read back from a folder: checked, never trusted)."""
    status: Status = record.get("status") if record.get("status") in STATUSES else "error"  # type: ignore[assignment]
    row = Row(id=str(record.get("student", "")), status=status, message=str(record.get("message") or ""),
              max=exercise.max_points, duration=_number(record.get("duration")) or 0.0)
    if status == "not gradable":
        row.score = 0.0
    if status == "graded" and report is not None:
        row.score = _number(report.get("score"))
        row.max = _number(report.get("max_score")) or row.max
        names = {check.name for check in exercise.checks}
        for result in report.get("results") or []:
            if isinstance(result, dict) and result.get("name") in names and result.get("status") != "unavailable":
                points = _number(result.get("points"))
                if points is not None:
                    row.points[str(result["name"])] = points
    return row


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or abs(value) > 1e12:
        return None
    return float(value)


# -- resuming ---------------------------------------------------------------------------------------

def decide(previous: dict[str, Any] | None, content_hash: str, fingerprint: str, reports: Iterable[str],
           force: bool = False) -> str:
    """Why a student is graded in this run, or "unchanged" when the result of before stands: one word each
    (new, forced, error before, changed, exercise changed, formats)."""
    if force:
        return "forced"
    if previous is None:
        return "new"
    if previous.get("status") not in ("graded", "not gradable"):
        return "error before"
    if previous.get("submission_hash") != content_hash:
        return "changed"
    if previous.get("fingerprint") != fingerprint:
        return "exercise changed"
    if not set(reports) <= set(previous.get("reports") or ()):
        return "formats"
    return "unchanged"


def read_record(out_dir: Path, student: str) -> dict[str, Any] | None:
    """A student's job.json, or None when there is none, it is broken, or a file it promises is missing
    (a report.json for every result that has one)."""
    folder = out_dir / student
    try:
        data = json.loads((folder / JOB_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    formats = data["reports"] if isinstance(data.get("reports"), list) else []
    wanted = [REPORT_FILES[name] for name in formats if name in REPORT_FILES] if data.get("status") == "graded" else []
    if any(not (folder / name).is_file() for name in wanted):
        return None
    return data


def read_report(out_dir: Path, student: str) -> dict[str, Any] | None:
    try:
        with open(out_dir / student / REPORT_FILES["json"], "rb") as source:
            data = json.loads(source.read(MAX_KEPT_BYTES))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# -- the output folder ------------------------------------------------------------------------------

def clean_leftovers(out_dir: Path) -> int:
    """Remove the temporary folders and files a crash left in the output folder; how many. The student whose
    folder was being written has no job.json then (or the one before): graded again, never half there."""
    removed = 0
    for item in out_dir.iterdir():
        if item.name.startswith((TEMP_PREFIX, OLD_PREFIX)):
            if item.is_dir() and not item.is_symlink():
                shutil.rmtree(item, ignore_errors=True)
            else:
                item.unlink(missing_ok=True)
            removed += 1
    return removed


def write_student(out_dir: Path, student: str, record: dict[str, Any], files: dict[str, bytes]) -> Path:
    """DIR/<student>/ with `files` (only KEPT_FILES, each capped) and job.json, replacing what was there,
    all at once: written in a hidden folder, then renamed into place."""
    temp = _new_hidden(out_dir, student)
    temp.mkdir()  # not mkdtemp: its mode 0700 would shut the class page's other readers out
    target, old = out_dir / student, None
    try:
        left_out = []
        for name, data in files.items():
            if name in KEPT_FILES and len(data) <= MAX_KEPT_BYTES:
                (temp / name).write_bytes(data)
            else:
                left_out.append(printable(name)[:100])
        if left_out:
            record = {**record, "files_left_out": sorted(left_out)}
        (temp / JOB_FILE).write_text(json.dumps(record, indent=2, ensure_ascii=True) + "\n", encoding="utf-8")
        if target.exists() or target.is_symlink():
            old = _new_hidden(out_dir, student, OLD_PREFIX)
            old.mkdir()
            os.replace(target, old / "previous")
        os.replace(temp, target)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        if old is not None and not target.exists():
            os.replace(old / "previous", target)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return target


def _new_hidden(out_dir: Path, name: str, prefix: str = TEMP_PREFIX) -> Path:
    return out_dir / f"{prefix}{name}-{secrets.token_hex(4)}"


def csv_cell(value: object) -> str:
    """A gradebook cell: numbers as short as they go, text printable on one line and bounded; a formula's
    first character ('=', '+', '-', '@', tab, CR, after any blanks) behind a ', so a spreadsheet shows it
    as text."""
    if value is None:
        return ""
    if isinstance(value, float | int) and not isinstance(value, bool):
        text = f"{value:.3f}".rstrip("0").rstrip(".") if value != int(value) else str(int(value))
    else:
        text = printable(str(value)).replace("\n", " ").replace("\t", " ")
        text = text if len(text) <= MESSAGE_CHARS else text[:MESSAGE_CHARS] + "…"
    return "'" + text if text.lstrip().startswith(FORMULA_STARTS) else text  # some importers strip blanks


def gradebook_columns(exercise: Exercise) -> list[str]:
    return [*FIXED_COLUMNS, *(check.name for check in exercise.checks), "message"]


def gradebook_text(exercise: Exercise, rows: Iterable[Row]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([csv_cell(column) for column in gradebook_columns(exercise)])
    for row in sorted(rows, key=lambda item: item.id):
        writer.writerow([csv_cell(row.id), csv_cell(row.score), csv_cell(row.max), row.status,
                         csv_cell(round(row.duration, 1)),
                         *(csv_cell(row.points.get(check.name)) for check in exercise.checks), csv_cell(row.message)])
    return buffer.getvalue()


def write_gradebook(out_dir: Path, exercise: Exercise, rows: Iterable[Row]) -> Path:
    """DIR/gradebook.csv, replaced whole: a reader never sees half of it."""
    target, temp = out_dir / GRADEBOOK_FILE, _new_hidden(out_dir, GRADEBOOK_FILE)
    try:
        with open(temp, "x", encoding="utf-8", newline="") as handle:
            handle.write(gradebook_text(exercise, rows))
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return target


def write_class_page(out_dir: Path, exercise: Exercise) -> tuple[Path | None, str]:
    """(DIR/index.html, "") from labctl.batch.classpage, or (None, why there is none). A page that fails
    is said, never the batch's failure: the gradebook is written by then."""
    from labctl.batch import classpage  # matplotlib and the page's code: only once the class is graded

    try:
        return classpage.write_class_page(out_dir, exercise), ""
    except Exception as error:  # noqa: BLE001  (its failure is reported with the summary, the results stand)
        return None, f"the class page could not be written: {type(error).__name__}: {printable(str(error))[:300]}"


# -- the batch --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BatchOptions:
    out_dir: Path
    fingerprint: str
    reports: tuple[str, ...] = ("json",)
    force: bool = False
    regrade: frozenset[str] = frozenset()     # ids (or entry names) to grade again even if unchanged


@dataclass
class Plan:
    """What the batch found before grading: every entry, and what becomes of each."""

    entries: list[intake.Entry]
    to_grade: list[tuple[intake.Entry, str]] = field(default_factory=list)   # with why (decide's word)
    unchanged: list[Row] = field(default_factory=list)
    refused: list[Row] = field(default_factory=list)                         # not gradable at intake
    #: The result of before of a student graded again though it still stands (--force, --regrade, a report
    #: format more): what the gradebook shows for them if a Ctrl-C comes first.
    standing: dict[str, Row] = field(default_factory=dict)


@dataclass
class BatchOutcome:
    plan: Plan
    rows: dict[str, Row]
    out_dir: Path
    gradebook: Path
    interrupted: bool = False
    left: list[str] = field(default_factory=list)       # ids not graded because of a Ctrl-C
    page: Path | None = None
    page_note: str = ""

    @property
    def counts(self) -> Counter[str]:
        return Counter(row.status for row in self.rows.values())

    @property
    def graded_now(self) -> int:
        return sum(1 for row in self.rows.values() if row.how == "graded")


class Listener(Protocol):
    """Who is told how the batch goes (the progress display)."""

    def planned(self, plan: Plan, executor: Executor) -> None: ...

    def finished(self, row: Row) -> None: ...

    def tick(self) -> None: ...

    def stopping(self, running: int) -> None: ...


class Silent:
    """A Listener that says nothing."""

    def planned(self, plan: Plan, executor: Executor) -> None: ...

    def finished(self, row: Row) -> None: ...

    def tick(self) -> None: ...

    def stopping(self, running: int) -> None: ...


def default_out(submissions: Path, exercise: Exercise) -> Path:
    """Beside the class folder: `<class>-<exercise>`."""
    folder = submissions.resolve()
    return folder.parent / f"{folder.name}-{exercise.id}"


def exercise_reference(project: Project, exercise: Exercise) -> str:
    """How a job names the exercise: its id (what a farm worker knows it by), or its folder when it lives
    outside the project's exercises/."""
    return exercise.id if (project.exercises_dir / exercise.id).resolve() == exercise.dir.resolve() \
        else str(exercise.dir.resolve())


def check_folders(submissions: Path, out_dir: Path) -> None:
    """Bad input, said before anything runs: an output folder inside the class folder would be graded as a
    student (and a student's files would be overwritten)."""
    inside = submissions.resolve()
    target = out_dir.resolve()
    if target == inside or inside in target.parents:
        raise LabctlError(f"--out {out_dir} is inside the class folder {submissions}: it would be taken for a "
                          "student's submission; write the results elsewhere")
    if out_dir.exists() and not out_dir.is_dir():
        raise LabctlError(f"--out {out_dir} is a file, not a folder")


def list_class(submissions: Path, regrade: frozenset[str] = frozenset()) -> Plan:
    """The class folder's entries (bad input when it has none, or when --regrade names no entry of it)."""
    try:
        entries = intake.find_entries(submissions)
    except OSError as error:
        raise LabctlError(f"cannot list the class folder {submissions}: {error.strerror or error}") from None
    if not entries:
        raise LabctlError(f"{submissions} holds no submissions: expected one folder, .zip or .tar.gz per student")
    unknown = sorted(name for name in regrade if not any(name in (entry.id, entry.name) for entry in entries))
    if unknown:
        raise LabctlError(f"--regrade names no entry of {submissions}: {', '.join(printable(name) for name in unknown)} "
                          f"(its ids: {', '.join(entry.id for entry in entries[:20])}{' ...' if len(entries) > 20 else ''})")
    return Plan(entries)


def plan_entries(plan: Plan, rows: dict[str, Row], exercise: Exercise, options: BatchOptions) -> None:
    """Look at every entry: refused at intake (its row is written now), unchanged since a finished grading
    (its row read back), or to grade (and why: decide's word)."""
    for entry in plan.entries:
        prepared = intake.prepare(entry)
        if prepared.problem is not None:
            rows[entry.id] = refused(exercise, entry, prepared.problem, options)
            plan.refused.append(rows[entry.id])
            continue
        previous = read_record(options.out_dir, entry.id)
        forced = options.force or entry.id in options.regrade or entry.name in options.regrade
        why = decide(previous, prepared.content_hash, options.fingerprint, options.reports, forced)
        stands = decide(previous, prepared.content_hash, options.fingerprint, ()) == "unchanged"
        if stands and previous is not None:
            row = row_of(previous, read_report(options.out_dir, entry.id), exercise)
            row.id, row.how = entry.id, "unchanged"
            if why == "unchanged":
                rows[entry.id] = row
                plan.unchanged.append(row)
            else:
                plan.standing[entry.id] = row
        if why != "unchanged":
            plan.to_grade.append((entry, why))


def refused(exercise: Exercise, entry: intake.Entry, problem: str, options: BatchOptions) -> Row:
    """The "not gradable" row of an entry refused at intake, its folder written (job.json, no report)."""
    message = printable(problem)[:MESSAGE_CHARS]
    write_student(options.out_dir, entry.id,
                  _record(entry, "", options, "not gradable", message, 0.0, "", exercise.id), {})
    return Row(entry.id, "not gradable", message, score=0.0, max=exercise.max_points, how="intake")


def _record(entry: intake.Entry, content_hash: str, options: BatchOptions, status: Status, message: str,
            duration: float, worker: str, exercise: str = "") -> dict[str, Any]:
    return {"student": entry.id, "name": entry.name, "exercise": exercise, "source": entry.kind,
            "submission_hash": content_hash, "fingerprint": options.fingerprint, "status": status,
            "message": message, "duration": round(duration, 3), "worker": printable(worker)[:200],
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "reports": sorted(set(options.reports) | {"json"})}


def run_batch(project: Project, exercise: Exercise, submissions: Path, executor: Executor, options: BatchOptions,
              listener: Listener | None = None) -> BatchOutcome:
    """Grade the class: every entry gets a row (intake's refusal, the result of before, or a new grading),
    the gradebook rewritten after each result, the class page at the end. Ctrl-C (KeyboardInterrupt) stops
    the gradings running (each removes its lab), keeps every result that finished, and returns with
    `interrupted` and the ids left to grade: running the same batch again resumes."""
    listener = listener or Silent()
    out_dir = options.out_dir
    check_folders(submissions, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    clean_leftovers(out_dir)
    reference = exercise_reference(project, exercise)
    plan = list_class(submissions, options.regrade)
    rows: dict[str, Row] = {}
    in_flight: dict[concurrent.futures.Future[JobResult], tuple[intake.Entry, str]] = {}
    interrupted = False
    try:
        plan_entries(plan, rows, exercise, options)
        write_gradebook(out_dir, exercise, rows.values())
        listener.planned(plan, executor)
        queue = deque(entry for entry, _ in plan.to_grade)
        ahead = max(executor.jobs * 2, executor.jobs + 1)   # a few packed submissions waiting, never the class
        while queue or in_flight:
            while queue and len(in_flight) < ahead:
                entry = queue.popleft()
                prepared = intake.prepare(entry)   # packed again now (only a few are held in memory at once)
                if prepared.problem is not None:
                    rows[entry.id] = refused(exercise, entry, prepared.problem, options)
                    _tell(listener, out_dir, exercise, rows, rows[entry.id])
                    continue
                job = Job(entry.id, reference, options.fingerprint, prepared.submission, options.reports)
                in_flight[executor.submit(job, exercise.budget)] = (entry, prepared.content_hash)
            done, _ = concurrent.futures.wait(in_flight, timeout=1.0, return_when=concurrent.futures.FIRST_COMPLETED)
            listener.tick()
            for future in done:
                entry, content_hash = in_flight.pop(future)
                rows[entry.id] = _keep(exercise, entry, content_hash, _result_of(future, entry), options)
                _tell(listener, out_dir, exercise, rows, rows[entry.id])
    except KeyboardInterrupt:
        interrupted = True
        listener.stopping(sum(1 for future in in_flight if future.running()))
        executor.close(cancel=True)
        for future, (entry, content_hash) in in_flight.items():
            # Finished before the stop reached it: kept. An error now is most likely the stop itself.
            if future.done() and not future.cancelled() and future.exception() is None \
                    and future.result().status != "error":
                rows[entry.id] = _keep(exercise, entry, content_hash, future.result(), options)
    except BaseException:
        executor.close(cancel=True)
        raise
    else:
        executor.close()
    left = [entry.id for entry in plan.entries if entry.id not in rows]
    for student in left:
        if student in plan.standing:
            rows[student] = plan.standing[student]
    gradebook = write_gradebook(out_dir, exercise, rows.values())
    page, note = write_class_page(out_dir, exercise)
    return BatchOutcome(plan, rows, out_dir, gradebook, interrupted, left, page, note)


def _tell(listener: Listener, out_dir: Path, exercise: Exercise, rows: dict[str, Row], row: Row) -> None:
    write_gradebook(out_dir, exercise, rows.values())
    listener.finished(row)


def _result_of(future: concurrent.futures.Future[JobResult], entry: intake.Entry) -> JobResult:
    """The job's result; an executor's exception (a farm that refused it: another labctl version) as an
    "error" row that says so, never the batch's end."""
    try:
        return future.result()
    except concurrent.futures.CancelledError:
        return JobResult(entry.id, "error", "the grading was cancelled")
    except Exception as error:  # noqa: BLE001  (whatever an executor raises is that student's error row)
        return JobResult(entry.id, "error", f"{type(error).__name__}: {error}")


def _keep(exercise: Exercise, entry: intake.Entry, content_hash: str, result: JobResult, options: BatchOptions) -> Row:
    """Write a finished grading's folder and make its row (the report read from what was written)."""
    status = result.status if result.status in STATUSES else "error"
    message = printable(result.message)[:MESSAGE_CHARS]
    record = _record(entry, content_hash, options, status, message, result.duration, result.worker, exercise.id)
    write_student(options.out_dir, entry.id, record, result.files)
    row = row_of(record, result.report(), exercise)
    row.id = entry.id
    return row
