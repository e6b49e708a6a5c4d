"""A job on the wire and back: what a worker accepts, what a finished grading's status is, and a child that
stops when its parent is gone."""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import pytest

from labctl.batch import job as jobs
from labctl.batch.job import Job, JobResult, pack_submission, unpack_submission
from labctl.errors import SubmissionError
from labctl.project import Project

ROOT = Path(__file__).resolve().parents[2]


def _tar_gz(*members: tarfile.TarInfo, data: bytes = b"") -> bytes:
    """Headers as a tar holds them, with at most `data` after each: a 3 GB member is declared, never written."""
    buffer = io.BytesIO()
    for member in members:
        buffer.write(member.tobuf(tarfile.GNU_FORMAT))
        if member.isfile() and member.size:
            buffer.write(data.ljust(tarfile.BLOCKSIZE, b"\0"))
    return gzip.compress(buffer.getvalue() + b"\0" * tarfile.BLOCKSIZE * 2)


def _member(name: str, kind: bytes = tarfile.REGTYPE, size: int = 0, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = kind, size, link
    return info


def test_a_submission_travels_and_comes_back_the_same(tmp_path):
    source = tmp_path / "source"
    (source / "lib").mkdir(parents=True)
    (source / "server.py").write_text("print('hi')\n")
    (source / "lib" / "util.py").write_text("X = 1\n")
    (source / "run.sh").write_text("#!/bin/sh\n")
    (source / "run.sh").chmod(0o755)
    data = pack_submission(source)
    assert data == pack_submission(source), "the same folder packs to the same bytes (its hash is its identity)"
    target = tmp_path / "target"
    target.mkdir()
    unpack_submission(data, target)
    assert (target / "server.py").read_text() == "print('hi')\n"
    assert (target / "lib" / "util.py").read_text() == "X = 1\n"
    assert os.access(target / "run.sh", os.X_OK) and not os.access(target / "server.py", os.X_OK)


@pytest.mark.parametrize("member, why", [
    (_member("../escape.py", size=1), "outside its folder"),
    (_member("/etc/cron.d/x", size=1), "outside its folder"),
    (_member("a/../../b", size=1), "outside its folder"),
    (_member("link", tarfile.SYMTYPE, link="/etc/passwd"), "neither a file nor a folder"),
    (_member("hard", tarfile.LNKTYPE, link="server.py"), "neither a file nor a folder"),
    (_member("dev", tarfile.CHRTYPE), "neither a file nor a folder"),
    (_member("big", size=3 * 2**30), "unpacks to more than"),
])
def test_a_job_from_the_network_is_refused_when_it_reaches_outside_or_is_too_big(tmp_path, member, why):
    data = _tar_gz(member, data=b"x" * min(member.size, 1))
    with pytest.raises(SubmissionError, match=why):
        unpack_submission(data, tmp_path)
    assert not (tmp_path.parent / "escape.py").exists()


def test_a_broken_archive_is_the_submissions_fault_not_a_crash(tmp_path):
    with pytest.raises(SubmissionError, match="broken"):
        unpack_submission(b"not a gzip at all", tmp_path)
    with pytest.raises(SubmissionError, match="broken"):
        unpack_submission(gzip.compress(b"\0" * 10 + b"garbage" * 100), tmp_path)


def test_too_many_bytes_on_the_wire_are_refused_before_unpacking(tmp_path, monkeypatch):
    monkeypatch.setattr(jobs, "MAX_PACKED_BYTES", 10)
    with pytest.raises(SubmissionError, match="packed"):
        unpack_submission(b"x" * 11, tmp_path)


def _result(code: int, report: dict | None, log: str = "") -> JobResult:
    files = {jobs.LOG_FILE: log.encode()}
    if report is not None:
        files[jobs.REPORT_FILES["json"]] = json.dumps(report).encode()

    def make(status, message, files=None):
        return JobResult("s", status, message, files=files or {})

    return jobs._ended(make, code, files)


def test_a_finished_gradings_status_is_what_its_report_says():
    assert _result(1, {"gradable": True}).status == "graded"
    refused = _result(2, {"gradable": False, "failure": "submission", "error": "the server did not start"})
    assert (refused.status, refused.message) == ("not gradable", "the server did not start")
    broken = _result(3, {"gradable": False, "failure": "infrastructure", "error": "the engine is gone"})
    assert (broken.status, broken.message) == ("error", "the engine is gone")


def test_a_grading_that_left_no_report_is_an_error_with_its_last_words():
    result = _result(2, None, log="starting\nerror: no exercise 'nope'\n")
    assert result.status == "error"
    assert "exit 2" in result.message and "no exercise 'nope'" in result.message
    assert "stopped" in _result(-15, None).message


def test_a_report_that_is_not_json_counts_as_none():
    files = {jobs.REPORT_FILES["json"]: b"\xff not json"}
    assert JobResult("s", "error", files=files).report() is None


def test_the_fingerprint_changes_with_any_file_that_decides_a_verdict(tmp_path):
    copy = tmp_path / "project"
    subprocess.run(["cp", "-r", str(ROOT / "lab.yaml"), str(ROOT / "images"), str(ROOT / "exercises"), str(tmp_path)],
                   check=True)
    copy.mkdir()
    for name in ("lab.yaml", "images", "exercises"):
        (tmp_path / name).rename(copy / name)
    before = jobs.exercise_fingerprint(Project(copy), "blocking")
    assert before == jobs.exercise_fingerprint(Project(copy), "blocking")
    assert before != jobs.exercise_fingerprint(Project(copy), "threaded")
    (copy / "exercises" / "blocking" / "exercise.yaml").write_text(
        (copy / "exercises" / "blocking" / "exercise.yaml").read_text() + "\n# a comment is a change too\n")
    after = jobs.exercise_fingerprint(Project(copy), "blocking")
    assert after != before
    job = Job("s", "blocking", before, b"")
    with pytest.raises(jobs.WrongVersion, match="install the same labctl"):
        jobs.check_fingerprint(Project(copy), job)


def test_a_job_asking_for_a_report_a_batch_cannot_keep_is_an_error_row(tmp_path):
    result = jobs.run_job(Project(ROOT), Job("s", "blocking", "f", b"", ("github",)), budget=1)
    assert result.status == "error" and "github" in result.message


def test_a_child_stops_itself_when_its_parent_is_gone(tmp_path):
    """A parent (standing in for a worker) starts a child that watches it, then dies by SIGKILL: the child
    gets SIGTERM from its own watcher (as `labctl grade` does: its lab is removed)."""
    marker = tmp_path / "child-stopped"
    child_code = textwrap.dedent(f"""
        import signal, sys, time
        from labctl.interrupts import exit_with_parent
        def stopped(signum, frame):
            open({str(marker)!r}, "w").write(str(signum))
            sys.exit(0)
        signal.signal(signal.SIGTERM, stopped)
        exit_with_parent()
        print("watching", flush=True)
        time.sleep(30)
    """)
    parent_code = textwrap.dedent(f"""
        import os, subprocess, sys
        env = {{**os.environ, {jobs.PARENT_VARIABLE!r}: str(os.getpid())}}
        child = subprocess.Popen([sys.executable, "-c", {child_code!r}], env=env, stdout=subprocess.PIPE)
        child.stdout.readline()
        print(child.pid, flush=True)
        os.kill(os.getpid(), 9)
    """)
    parent = subprocess.run([sys.executable, "-c", parent_code], capture_output=True, text=True, timeout=20)
    assert parent.returncode == -9
    deadline = time.monotonic() + 10
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marker.read_text() == "15"


def test_a_child_of_another_parent_does_not_watch(monkeypatch):
    monkeypatch.setenv(jobs.PARENT_VARIABLE, str(os.getppid() + 1))
    before = {thread.name for thread in __import__("threading").enumerate()}
    from labctl.interrupts import exit_with_parent

    exit_with_parent()
    assert "exit-with-parent" not in {thread.name for thread in __import__("threading").enumerate()} - before
