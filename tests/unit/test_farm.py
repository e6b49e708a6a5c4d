"""The farm's parts that need no scheduler: task keys, what a fingerprint is made of and how a difference is
said, gradings stopped by tag, orphans found by label (on the one fake engine), the rows of lost tasks, the
worker's command line. The farm itself, on real processes and engines: tests/integration/test_farm.py."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from labctl import __version__
from labctl.batch.farm import lost, task_key
from labctl.batch.job import Children, Job, differences, exercise_fingerprint, fingerprint_parts
from labctl.batch.worker import FARM_OWNER, describe, farm_owner, grade, remove_orphans, resource_name
from labctl.cli import main
from labctl.lab import LABEL_HOST, LABEL_LAB, LABEL_OWNER, LABEL_PID
from labctl.project import Project

from .fakes import FakeBackend

ROOT = Path(__file__).resolve().parents[2]


def job(student: str = "alice", submission: bytes = b"packed", fingerprint: str = "f" * 32) -> Job:
    return Job(student, "blocking", fingerprint, submission)


# -- keys and fingerprints ---------------------------------------------------------------------------

def test_a_task_key_is_the_student_the_submission_and_the_files():
    assert task_key(job()) == task_key(job())   # submitted again: the same task, graded once
    others = {task_key(job("bob")), task_key(job(submission=b"other")), task_key(job(fingerprint="e" * 32)),
              task_key(Job("alice", "blocking", "f" * 32, b"packed", ("json", "junit")))}
    assert len(others) == 4 and task_key(job()) not in others
    assert task_key(job()).startswith("labctl-grade-")
    assert resource_name("ab" * 16) == "labctl-" + "ab" * 16


@pytest.fixture(scope="module")
def copy(tmp_path_factory) -> Path:
    """The project's files that a fingerprint reads, copied."""
    folder = tmp_path_factory.mktemp("project")
    shutil.copy2(ROOT / "lab.yaml", folder / "lab.yaml")
    for name in ("images", "exercises"):
        shutil.copytree(ROOT / name, folder / name, ignore=shutil.ignore_patterns("__pycache__"))
    return folder


def test_the_shared_docroot_is_part_of_the_fingerprint(copy):
    """blocking serves ../www: a worker with another index.html would judge GET / against other bytes."""
    project = Project(copy)
    before, parts = exercise_fingerprint(project, "blocking"), fingerprint_parts(project, "blocking")
    index = copy / "exercises" / "www" / "index.html"
    index.write_bytes(index.read_bytes() + b"\n")
    try:
        assert exercise_fingerprint(project, "blocking") != before
        assert differences(parts, fingerprint_parts(project, "blocking")) == ["the docroot's files"]
    finally:
        index.write_bytes(index.read_bytes()[:-1])
    assert exercise_fingerprint(project, "blocking") == before


def test_a_difference_is_said_part_by_part():
    mine = {"labctl": "0.1.0", "lab": "a", "images": "b", "exercise": "c", "docroot": "d"}
    assert differences(mine, dict(mine)) == []
    assert differences(mine, {**mine, "labctl": "0.2.0", "exercise": "x"}) == [
        "labctl's version (0.1.0 here, 0.2.0 there)", "the exercise's files"]
    assert differences(mine, {}) == ["labctl's version (0.1.0 here, ? there)", "lab.yaml", "the images (images/)",
                                     "the exercise's files", "the docroot's files"]


# -- gradings stopped by tag -------------------------------------------------------------------------

def sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)


def test_gradings_stop_by_tag_and_a_stopped_tag_stops_one_that_was_starting():
    children = Children()
    kept, stopped = sleeper(), sleeper()
    children.add(kept, "key-b")
    children.add(stopped, "key-a")
    try:
        assert children.stop({"key-a"}) == [stopped]
        children.wait_all(10, [stopped])
        assert stopped.poll() is not None and kept.poll() is None   # the other batch's grading goes on
        assert children.stopped("key-a") and not children.stopped("key-b") and not children.stopped("")
        late = sleeper()
        children.add(late, "key-a")   # started just as its batch was stopped: stopped at once
        late.wait(10)
        children.renew("key-a")       # the same student in a resumed batch is graded
        assert not children.stopped("key-a")
    finally:
        children.stop_all()
        children.wait_all(10)
    assert kept.poll() is not None and children.stopped("key-b")


# -- orphans -----------------------------------------------------------------------------------------

def lab_labels(lab: str, owner: str, host: str, pid: int) -> dict[str, str]:
    return {LABEL_LAB: lab, LABEL_OWNER: owner, LABEL_HOST: host, LABEL_PID: str(pid)}


def test_only_the_labs_of_dead_farm_gradings_of_this_host_are_orphans():
    fake = FakeBackend()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    grading = subprocess.Popen([sys.executable, "-c", "print(flush=True); import time; time.sleep(60)", "labctl",
                                "grade"], stdout=subprocess.PIPE)
    grading.stdout.readline()   # it runs as itself (a forked child shows its parent's command line until exec)
    host, farm = socket.gethostname(), farm_owner("w1")
    try:
        for lab, owner, where, pid in (("orphan", farm, host, gone.pid),            # removed
                                       ("running", farm, host, grading.pid),       # its grading lives
                                       ("elsewhere", farm, "other-host", gone.pid),  # another host's to judge
                                       ("playground", "alice", host, gone.pid)):   # `labctl up` outlives its pid
            fake.create_network(f"labctl-{lab}", "10.213.0.0/16", 24, lab_labels(lab, owner, where, pid), True)
        assert remove_orphans(fake, host) == ["orphan"]
        assert sorted(net.labels[LABEL_LAB] for net in fake.find_networks({LABEL_LAB: ""})) == [
            "elsewhere", "playground", "running"]
    finally:
        grading.kill()
        grading.wait()
    assert farm.startswith(FARM_OWNER + ":")


# -- what a process that is no labctl worker answers, and lost tasks ----------------------------------

def test_a_process_that_is_not_a_labctl_worker_says_so_and_grades_nothing():
    assert "not a labctl worker" in describe("blocking")["error"]
    row = grade(job(), 300.0, task_key(job()))
    assert (row.student, row.status) == ("alice", "error") and "not a labctl worker" in row.message


def test_a_worker_tells_the_fingerprint_it_serves_and_refuses_when_its_files_changed_under_it(copy, monkeypatch):
    from labctl.batch import worker

    project = Project(copy)
    served = exercise_fingerprint(project, "blocking")
    monkeypatch.setattr(worker, "_SERVING", worker.Serving(project, "w1", 2, {"blocking": served}))
    info = describe("blocking")
    assert (info["name"], info["labs"], info["fingerprint"], info["labctl"]) == ("w1", 2, served, __version__)
    assert "error" not in info and info["parts"] == fingerprint_parts(project, "blocking")
    assert "it does not grade polling (it grades: blocking" in describe("polling")["error"]
    solution = copy / "exercises" / "blocking" / "solution" / "server.py"
    solution.write_text(solution.read_text() + "\n")   # a `git pull` under a running worker
    try:
        changed = describe("blocking")
        assert changed["fingerprint"] == served   # its Dask resource still says the old one: so does it
        assert "changed since it started" in changed["error"] and "restart it" in changed["error"]
    finally:
        solution.write_text(solution.read_text()[:-1])


def test_a_task_lost_with_its_workers_is_an_error_row_that_says_so():
    from distributed.scheduler import KilledWorker

    class Last:
        name, address = "w2", "tcp://10.0.0.2:4000"

    row = lost(job(), KilledWorker("labctl-grade-0", Last(), 3))
    assert (row.student, row.status) == ("alice", "error")
    assert "4 farm workers died while grading it (the last: w2)" in row.message
    assert "allowed-failures = 3" in row.message
    other = lost(job(), OSError("connection reset\x1b[31m"))
    assert other.status == "error" and "OSError: connection reset\\x1b[31m" in other.message   # escaped


def test_the_worker_command_says_what_it_does():
    result = CliRunner().invoke(main, ["worker", "--help"])
    assert result.exit_code == 0
    for words in ("--scheduler", "--labs", "--name", "--exercise", "orphaned", "fingerprint", "SIGTERM"):
        assert words in result.output, words
    missing = CliRunner().invoke(main, ["worker"])
    assert missing.exit_code == 2 and "--scheduler" in missing.output
    assert __version__
