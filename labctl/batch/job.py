"""One student's grading as a job: what travels to whoever grades it (this machine or a farm worker), and
what comes back.

A job carries everything it needs, so no filesystem is shared between the batch and the hosts that grade:
the submission as a capped gzip'd tar (`pack_submission`), the exercise by id and by *fingerprint* (a hash
of labctl's version and every file that decides a verdict: a worker whose fingerprint differs refuses the
job, `WrongVersion`), and the report formats asked.

A job runs as a child `labctl grade` process of its own (`run_job`): a hostile submission can crash, hang
or flood that process, never the batch or the worker. The child is told its parent's pid
(`LABCTL_EXIT_WITH_PARENT`) and stops, removing its lab, when that parent is gone: a worker killed -9 leaves
no grading running behind it. Its output is kept to a tail: the reports are what it is for.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal

from labctl import __version__
from labctl.archive import MAX_BYTES, MAX_FILES, tar_folders
from labctl.errors import EXIT_INFRASTRUCTURE, LabctlError, SubmissionError
from labctl.interrupts import PARENT_VARIABLE
from labctl.project import LAB_FILE, Project

#: How a student's row ends (one word each, as the gradebook writes them).
Status = Literal["graded", "not gradable", "error"]
STATUSES: tuple[Status, ...] = ("graded", "not gradable", "error")

#: The report formats a batch can keep per student, and the file each is kept in. The github and
#: classroom formats are a CI step's own output (a job summary, a step output), not files to keep.
REPORT_FILES: dict[str, str] = {
    "json": "report.json",
    "junit": "junit.xml",
    "gradescope": "gradescope.json",
    "prairielearn": "prairielearn.json",
    "terminal": "report.txt",
}
#: Where a grading's output (progress, errors) is kept, last part only.
LOG_FILE = "grading.log"
#: The batch's output folder (the batch writes them, the class page reads them): a file per student's folder
#: with what their job was and how it ended, and the class's gradebook beside the folders.
JOB_FILE = "job.json"
GRADEBOOK_FILE = "gradebook.csv"
LOG_TAIL_BYTES = 64 * 1024
#: The most a packed submission may weigh on the wire (the unpacked folder is capped by archive.MAX_BYTES).
MAX_PACKED_BYTES = MAX_BYTES
#: Seconds beyond the exercise's budget before a grading that does not end is stopped (teardown included).
OVERRUN = 60.0


class WrongVersion(LabctlError):
    """This host grades with other labctl or exercise files than the batch that sent the job."""


@dataclass(frozen=True)
class Job:
    """One student's grading, self-contained."""

    student: str                 # the entry's id (intake made it a safe file name)
    exercise: str                # the exercise's id
    fingerprint: str             # exercise_fingerprint() where the batch runs
    submission: bytes            # pack_submission(folder)
    reports: tuple[str, ...] = ("json",)   # names of REPORT_FILES; json is always kept

    @property
    def submission_hash(self) -> str:
        return hashlib.sha256(self.submission).hexdigest()


@dataclass
class JobResult:
    """What a grading left: its status, a message when it is not "graded", and its files by name
    (REPORT_FILES' names, LOG_FILE)."""

    student: str
    status: Status
    message: str = ""
    duration: float = 0.0
    worker: str = ""
    files: dict[str, bytes] = field(default_factory=dict)

    def report(self) -> dict | None:
        """The JSON report, parsed; None when the grading left none."""
        data = self.files.get(REPORT_FILES["json"])
        if data is None:
            return None
        try:
            value = json.loads(data)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None


# -- what must match --------------------------------------------------------------------------------

def _fingerprint_sources(project: Project, exercise_id: str) -> list[tuple[str, Path]]:
    """What decides a verdict besides labctl itself, each part by name: lab.yaml, images/, the exercise's folder,
    and its docroot when that lies outside the folder (the course's shared `../www`: the http checks compare
    the server's answers with its files)."""
    exercise = project.exercise(exercise_id)
    sources = [("lab", project.root / LAB_FILE), ("images", project.images_dir), ("exercise", exercise.dir)]
    docroot = exercise.docroot
    if docroot is not None and not docroot.resolve().is_relative_to(exercise.dir.resolve()):
        sources.append(("docroot", docroot))
    return sources


def _feed(digest, label: str, path: Path) -> None:
    """Every file of `path` (a file or a folder), by relative path and bytes, into `digest`."""
    files = [path] if path.is_file() else sorted(item for item in path.rglob("*") if item.is_file()
                                                and "__pycache__" not in item.parts)
    for item in files:
        relative = item.name if item == path else item.relative_to(path).as_posix()
        digest.update(f"{label}/{relative}\0".encode())
        digest.update(hashlib.sha256(item.read_bytes()).digest())


def exercise_fingerprint(project: Project, exercise_id: str) -> str:
    """A hash of what decides a verdict: labctl's version, lab.yaml, the images' folders, the exercise's
    folder and its docroot (every file's path and bytes). Equal fingerprints grade alike."""
    digest = hashlib.sha256(f"labctl {__version__}\n".encode())
    for label, path in _fingerprint_sources(project, exercise_id):
        _feed(digest, label, path)
    return digest.hexdigest()[:32]


#: What each part of a fingerprint is called when two differ (fingerprint_parts' keys).
FINGERPRINT_PARTS = {"labctl": "labctl's version", "lab": "lab.yaml", "images": "the images (images/)",
                     "exercise": "the exercise's files", "docroot": "the docroot's files"}


def fingerprint_parts(project: Project, exercise_id: str) -> dict[str, str]:
    """The fingerprint's parts one by one (labctl's version, then a short hash of each of lab.yaml, images/,
    the exercise's folder and its docroot), so that a refusal can say *what* differs, not only that something does."""
    parts = {"labctl": __version__}
    for label, path in _fingerprint_sources(project, exercise_id):
        digest = hashlib.sha256()
        _feed(digest, label, path)
        parts[label] = digest.hexdigest()[:12]
    return parts


def differences(mine: dict[str, str], theirs: dict[str, str]) -> list[str]:
    """The parts two fingerprints differ in, in words ("labctl's version (0.1.0 here, 0.2.0 there)")."""
    said = []
    for part, words in FINGERPRINT_PARTS.items():
        if mine.get(part) != theirs.get(part):
            said.append(f"{words} ({mine.get(part, '?')} here, {theirs.get(part, '?')} there)" if part == "labctl"
                        else words)
    return said


def check_fingerprint(project: Project, job: Job) -> None:
    """Refuse a job made for other files, with a message that says what differs and what to do."""
    mine = exercise_fingerprint(project, job.exercise)
    if mine != job.fingerprint:
        raise WrongVersion(f"{socket.gethostname()} grades {job.exercise} with other files (labctl {__version__}, "
                           f"fingerprint {mine[:12]}, the batch's {job.fingerprint[:12]}): install the same labctl "
                           "and project version on every worker")


# -- a submission on the wire -----------------------------------------------------------------------

def pack_submission(folder: Path) -> bytes:
    """The folder as a gzip'd tar, within archive's limits (SubmissionError naming the limit otherwise)."""
    packed = tar_folders({".": folder}).data
    data = gzip.compress(packed, compresslevel=6, mtime=0)
    if len(data) > MAX_PACKED_BYTES:
        raise SubmissionError(f"{folder} packs to {len(data)} bytes, over the {MAX_PACKED_BYTES} a job may carry")
    return data


def unpack_submission(data: bytes, into: Path) -> None:
    """Unpack a job's submission into an empty folder. It came over the network from a batch: files and
    folders only, every name inside `into`, no more than archive's limits of files and bytes
    (SubmissionError otherwise)."""
    if len(data) > MAX_PACKED_BYTES:
        raise SubmissionError(f"the submission weighs {len(data)} bytes packed, over {MAX_PACKED_BYTES}")
    total = files = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for member in tar:
                name = PurePosixPath(member.name)
                if name.is_absolute() or ".." in name.parts:
                    raise SubmissionError(f"the submission holds a path outside its folder: {member.name!r}")
                if not (member.isfile() or member.isdir()):
                    raise SubmissionError(f"the submission holds {member.name!r}, neither a file nor a folder")
                files += 1
                total += member.size
                if files > MAX_FILES or total > MAX_BYTES:
                    raise SubmissionError(f"the submission unpacks to more than {MAX_FILES} files or {MAX_BYTES} bytes")
                target = into.joinpath(*name.parts) if name.parts not in ((), (".",)) else into
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                if source is None:
                    continue
                with source, open(target, "xb") as sink:
                    sink.write(source.read(member.size + 1)[:member.size])
                target.chmod(0o755 if member.mode & 0o100 else 0o644)
    except (tarfile.TarError, EOFError, OSError, gzip.BadGzipFile) as error:
        raise SubmissionError(f"the submission's archive is broken: {error}") from None


# -- running one ------------------------------------------------------------------------------------

class Children:
    """The child gradings running in this process, so that a Ctrl-C or a shutdown can stop them all
    (each removes its own lab when stopped) and wait for them; or only some, by the tag each was started
    with (a farm worker stops the gradings of a cancelled batch and keeps grading for the others)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[subprocess.Popen, str] = {}   # child -> its tag
        self._stopped_tags: set[str] = set()
        self.stopping = threading.Event()
        #: The pid of every grading ever started here: the labctl.pid label of the labs they made, by
        #: which a lab one of them could not remove (killed after its overrun) is found.
        self.started: set[int] = set()

    def add(self, child: subprocess.Popen, tag: str = "") -> None:
        with self._lock:
            self._running[child] = tag
            self.started.add(child.pid)
            stop = self.stopping.is_set() or (bool(tag) and tag in self._stopped_tags)
        if stop:  # asked to stop while it was starting
            self._signal(child, signal.SIGTERM)

    def discard(self, child: subprocess.Popen) -> None:
        with self._lock:
            self._running.pop(child, None)

    def renew(self, tag: str) -> None:
        """A new run of the gradings with this tag begins (a batch resumed after it was stopped): the earlier
        stop does not apply to it."""
        with self._lock:
            self._stopped_tags.discard(tag)

    def stopped(self, tag: str) -> bool:
        """Whether gradings with this tag were asked to stop (a new one with it is not started)."""
        return self.stopping.is_set() or (bool(tag) and tag in self._stopped_tags)

    def stop_all(self) -> None:
        """Ask every running grading to stop (SIGTERM: labctl removes its lab and exits); no new ones start."""
        self.stopping.set()
        with self._lock:
            running = list(self._running)
        for child in running:
            self._signal(child, signal.SIGTERM)

    def stop(self, tags: set[str]) -> list[subprocess.Popen]:
        """Ask the gradings with these tags to stop, now and if they are about to start; the others go on.
        Returns the ones that were running, to wait for."""
        with self._lock:
            self._stopped_tags.update(tag for tag in tags if tag)
            chosen = [child for child, tag in self._running.items() if tag and tag in tags]
        for child in chosen:
            self._signal(child, signal.SIGTERM)
        return chosen

    def wait_all(self, timeout: float = 60.0, children: list[subprocess.Popen] | None = None) -> None:
        """Wait for the stopped gradings (all, or the `children` given) to end; kill what is still there after
        `timeout`."""
        deadline = time.monotonic() + timeout
        if children is None:
            with self._lock:
                children = list(self._running)
        for child in children:
            try:
                child.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._signal(child, signal.SIGKILL)

    @staticmethod
    def _signal(child: subprocess.Popen, number: int) -> None:
        try:
            os.killpg(child.pid, number)
        except (ProcessLookupError, PermissionError):
            pass


#: The gradings this process runs.
CHILDREN = Children()


def grade_command(project_root: Path, job: Job, submission: Path, out: Path, backend: str | None = None) -> list[str]:
    """The `labctl grade` of a job: this Python, this project, this backend, its reports into `out`."""
    command = [sys.executable, "-m", "labctl", "--quiet", "--project", str(project_root),
               *(["--backend", backend] if backend else []), "grade", job.exercise, "--submission", str(submission)]
    for name in dict.fromkeys(("json", *job.reports)):
        command += ["--report", f"{name}:{out / REPORT_FILES[name]}"]
    return command


def run_job(project: Project, job: Job, budget: float, worker: str = "", tag: str = "",
            environment: dict[str, str] | None = None) -> JobResult:
    """Grade a job in a child `labctl grade` and collect what it wrote. Never raises for what the
    submission does: every end is a JobResult ("error" for a grading that left no report).

    tag: what CHILDREN.stop() knows this grading by (a farm worker: the task's key); environment: extra
    variables for the child (a farm worker: the owner label of its labs)."""
    started = time.monotonic()
    worker = worker or socket.gethostname()

    def result(status: Status, message: str, files: dict[str, bytes] | None = None) -> JobResult:
        return JobResult(job.student, status, message, round(time.monotonic() - started, 3), worker, files or {})

    unknown = sorted(set(job.reports) - set(REPORT_FILES))
    if unknown:
        return result("error", f"no such report format for a batch: {', '.join(unknown)}")
    if CHILDREN.stopped(tag):
        return result("error", "stopped before it began")
    with tempfile.TemporaryDirectory(prefix="labctl-job-") as scratch:
        submission, out = Path(scratch) / "submission", Path(scratch) / "out"
        submission.mkdir()
        out.mkdir()
        try:
            unpack_submission(job.submission, submission)
        except SubmissionError as error:
            return result("not gradable", str(error))
        log = Path(scratch) / LOG_FILE
        child_environment = {**os.environ, **(environment or {}), PARENT_VARIABLE: str(os.getpid())}
        child_environment.pop("GITHUB_ACTIONS", None)  # a batch's reports are files, never a CI step's annotations
        with open(log, "wb") as sink:
            command = grade_command(project.root, job, submission, out, project.backend_name)
            child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
                                     env=child_environment, start_new_session=True)
            CHILDREN.add(child, tag)
            try:
                code = child.wait(timeout=budget + OVERRUN)
            except subprocess.TimeoutExpired:
                Children._signal(child, signal.SIGTERM)
                try:
                    code = child.wait(timeout=OVERRUN)
                except subprocess.TimeoutExpired:
                    Children._signal(child, signal.SIGKILL)
                    code = child.wait()
                return result("error", f"the grading did not end within {budget + OVERRUN:.0f} s and was stopped",
                              {LOG_FILE: _tail(log)})
            finally:
                CHILDREN.discard(child)
        files = {path.name: path.read_bytes() for path in out.iterdir() if path.is_file()}
        files[LOG_FILE] = _tail(log)
        return _ended(result, code, files)


def _ended(result, code: int, files: dict[str, bytes]) -> JobResult:
    """A finished child's status: what its JSON report says; "error" when it left none."""
    parsed = JobResult("", "error", files=files).report()
    if parsed is None:
        last = files.get(LOG_FILE, b"").decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
        why = "stopped" if code in (-signal.SIGTERM, 130, 143) else f"exit {code}"
        return result("error", f"the grading left no report ({why}): {last[0][:300]}", files)
    if parsed.get("gradable"):
        return result("graded", "", files)
    message = str(parsed.get("error") or "not gradable")[:1000]
    if parsed.get("failure") == "infrastructure" or code == EXIT_INFRASTRUCTURE:
        return result("error", message, files)
    return result("not gradable", message, files)


def _tail(path: Path) -> bytes:
    size = path.stat().st_size
    with open(path, "rb") as source:
        source.seek(max(0, size - LOG_TAIL_BYTES))
        return source.read()
