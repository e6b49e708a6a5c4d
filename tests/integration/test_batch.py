"""`labctl batch` on the real engine, as an instructor runs it: one class folder (made once), graded by the CLI
in a subprocess, run after run on the same output folder, as a class is graded in real life.

The class: alice (the blocking solution, a folder), bob (the crash_on_request mutant), carol (a zip of the
solution in a wrapping folder), dave (a .tar.gz of it), and entries that must each become a "not gradable"
row without a grading: an empty folder, a broken zip, a .tar.gz with a `..` member, a folder holding a sparse
2 GB file, and a plain file with a hostile name. Four gradings at most per run, -j 2.

The runs, in order (each test starts from the folder the one before left):
1. Ctrl-C once the first grading has finished, others running: exit 130, that result kept, no lab left;
2. the same command again: it resumes (the result kept is not graded again), every row is as the exercise's
   validate section says, every student's files are there, no lab left;
3. again: nothing is graded, and it says so;
4. --regrade one student: only that one is graded again.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest
from conftest import OWNER, ROOT

from labctl.lab import LABEL_OWNER, LABEL_PID

EXERCISE = ROOT / "exercises" / "blocking"
GRADED = ("alice", "bob", "carol", "dave")
HOSTILE = "=cmd|' calc'!A0 \x1b[2J"
COMMAND_TIMEOUT = 300
#: What a run left for the next one to check (the tests run in order on one output folder).
SEEN: dict[str, list[str]] = {}


def batch_command(classroom: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "labctl", "--project", str(ROOT), "batch", "blocking", str(classroom), "-j", "2",
            "--out", str(out), "--report", "junit", *extra]


def run_batch(classroom: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(batch_command(classroom, out, *extra), capture_output=True, text=True, cwd=ROOT,
                          timeout=COMMAND_TIMEOUT, env={**os.environ, "LABCTL_OWNER": OWNER})


def labs_left(backend) -> list[str]:
    """Containers and networks a grading of a batch made (this owner, not made by pytest itself)."""
    ours = {LABEL_OWNER: OWNER}
    found = [*backend.find_containers(ours), *backend.find_networks(ours)]
    return sorted(info.name for info in found if info.labels.get(LABEL_PID) != str(os.getpid()))


def gradebook(out: Path) -> dict[str, dict[str, str]]:
    return {row["id"]: row for row in csv.DictReader(io.StringIO((out / "gradebook.csv").read_text()))}


def record(out: Path, student: str) -> dict:
    return json.loads((out / student / "job.json").read_text())


@pytest.fixture(scope="module")
def classroom(tmp_path_factory, project) -> tuple[Path, Path]:
    """(the class folder, the output folder), made once for the module's runs."""
    root = tmp_path_factory.mktemp("batch")
    folder = root / "class"
    folder.mkdir()
    solution = EXERCISE / "solution"
    shutil.copytree(solution, folder / "alice")
    shutil.copytree(EXERCISE / "mutants" / "crash_on_request", folder / "bob")
    with zipfile.ZipFile(folder / "carol.zip", "w") as archive:
        for path in sorted(solution.rglob("*")):
            archive.write(path, f"carol/{path.relative_to(solution)}")
    with tarfile.open(folder / "dave.tar.gz", "w:gz") as archive:
        archive.add(solution, ".")
    (folder / "erin").mkdir()
    (folder / "frank.zip").write_bytes(b"PK\x03\x04 this is no zip")
    with tarfile.open(folder / "mallory.tar.gz", "w:gz") as archive:
        archive.add(solution / "server.py", "server.py")
        archive.add(solution / "server.py", "../../escaped.py")
    shutil.copytree(solution, folder / "huge")
    with open(folder / "huge" / "data.bin", "wb") as handle:
        handle.truncate(2 * 2**30)            # sparse: 2 GB declared, nothing written
    (folder / HOSTILE).write_text("a student's notes\n")
    return folder, root / "graded"


def test_ctrl_c_keeps_the_results_that_finished_and_leaves_no_lab(classroom, backend):
    folder, out = classroom
    batch = subprocess.Popen(batch_command(folder, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             cwd=ROOT, env={**os.environ, "LABCTL_OWNER": OWNER})
    try:
        # Once one grading has finished and another one's lab is up (the next starts as one ends).
        deadline = time.monotonic() + 200
        finished: list[str] = []
        running: list[str] = []
        while not (finished and running) and time.monotonic() < deadline and batch.poll() is None:
            finished = [name for name in GRADED if (out / name / "job.json").is_file()]
            running = labs_left(backend) if finished else []
            time.sleep(0.5)
        assert finished and running, ("no grading finished in time", finished, running)
        batch.send_signal(signal.SIGINT)
        stdout, stderr = batch.communicate(timeout=120)
    finally:
        if batch.poll() is None:
            batch.kill()
            batch.wait()
    assert batch.returncode == 130, stdout + stderr
    assert "interrupted:" in stdout and "Run the same command again to resume" in stdout, stdout
    assert "Traceback" not in stderr, stderr
    assert f"class page: {out / 'index.html'}" in stdout and (out / "index.html").is_file()   # also after Ctrl-C
    assert labs_left(backend) == []
    kept = [name for name in GRADED if (out / name / "job.json").is_file()]
    assert set(finished) <= set(kept) and len(kept) < len(GRADED), kept
    rows = gradebook(out)
    for name in kept:
        assert record(out, name)["status"] == "graded" and rows[name]["status"] == "graded"
    assert not [item.name for item in out.iterdir() if item.name.startswith(".")]
    SEEN["kept"] = kept


def test_the_same_command_resumes_and_every_row_is_as_validate_expects(classroom, backend, project):
    folder, out = classroom
    kept_before = SEEN.get("kept", [])
    result = run_batch(folder, out)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(kept_before)} unchanged" in result.stdout, result.stdout
    assert labs_left(backend) == []

    exercise = project.exercise("blocking")
    crash = next(mutant for mutant in exercise.validate.mutants if mutant.path.endswith("crash_on_request"))
    rows = gradebook(out)
    refused = {"erin": "the folder is empty", "frank": "the zip is broken",
               "mallory": "the archive holds a path outside its folder: ../../escaped.py",
               "huge": "the submission holds more than 64 MiB (the limit)"}
    hostile = next(student for student in rows if student.startswith("_cmd"))
    assert sorted(rows) == sorted([*GRADED, *refused, hostile])
    assert list(csv.reader(io.StringIO((out / "gradebook.csv").read_text())))[0] == [
        "id", "score", "max", "status", "duration", *(check.name for check in exercise.checks), "message"]
    for student in GRADED:
        row, failing = rows[student], set(crash.fails) if student == "bob" else set()
        expected = sum(check.points for check in exercise.checks if check.name not in failing)
        assert row["status"] == "graded" and float(row["score"]) == expected, (student, row)
        assert float(row["max"]) == exercise.max_points and float(row["duration"]) > 0
        for check in exercise.checks:
            assert float(row[check.name]) == (0 if check.name in failing else check.points), (student, check.name)
        assert sorted(item.name for item in (out / student).iterdir()) == ["grading.log", "job.json", "junit.xml",
                                                                            "report.json"]
        assert json.loads((out / student / "report.json").read_text())["gradable"] is True
        assert record(out, student)["reports"] == ["json", "junit"]
    assert rows["alice"]["score"] == "14" and rows["bob"]["score"] == "0"
    assert record(out, "carol")["source"] == "zip" and record(out, "dave")["source"] == "tar.gz"
    assert record(out, "carol")["submission_hash"] == record(out, "alice")["submission_hash"]
    for student, message in refused.items():
        assert rows[student]["status"] == "not gradable" and rows[student]["score"] == "0", rows[student]
        assert rows[student]["message"].startswith(message), rows[student]
        assert rows[student]["get-index"] == "" and not (out / student / "report.json").exists()
    assert rows[hostile]["message"].startswith("a plain file") and record(out, hostile)["name"] == \
        "=cmd|' calc'!A0 \\x1b[2J"
    assert not (folder.parent / "escaped.py").exists() and not (out.parent / "escaped.py").exists()
    raw = (out / "gradebook.csv").read_text()
    assert "\x1b" not in raw and "\n=" not in raw and ",=" not in raw
    page = (out / "index.html").read_text()
    assert all(student in page for student in GRADED) and "\x1b" not in page


def test_a_run_with_nothing_changed_grades_nothing_and_says_so(classroom, backend):
    folder, out = classroom
    before = (out / "gradebook.csv").read_text()
    result = run_batch(folder, out)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "9 entries: 0 to grade, 4 unchanged (kept; --force grades them again), 5 not gradable at intake" \
        in result.stderr, result.stderr
    assert "4 graded (0 in this run, 4 unchanged), 5 not gradable, 0 errors" in result.stdout, result.stdout
    assert (out / "gradebook.csv").read_text() == before
    assert labs_left(backend) == []


def test_regrade_grades_that_one_student_again(classroom, backend):
    folder, out = classroom
    before = {student: record(out, student)["finished_at"] for student in GRADED}
    time.sleep(1)  # finished_at has a resolution of a second
    result = run_batch(folder, out, "--regrade", "carol")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 to grade (1 forced), 3 unchanged" in result.stderr, result.stderr
    after = {student: record(out, student)["finished_at"] for student in GRADED}
    assert [student for student in GRADED if after[student] != before[student]] == ["carol"]
    assert gradebook(out)["carol"]["score"] == "14"
    assert labs_left(backend) == []
