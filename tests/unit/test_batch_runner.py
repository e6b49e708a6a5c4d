"""The batch's bookkeeping, without gradings: when a student is graded again, what a student's folder and
the gradebook hold (and that a crash never leaves half of either), how many labs at once, which labs a
stopped batch removes (on the FakeBackend), and the command's answers to bad input."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import ROOT

from labctl.batch import intake, runner
from labctl.cli import main
from labctl.lab import LABEL_HOST, LABEL_OWNER, LABEL_PID, current_owner
from labctl.project import Project
from labctl.spec import load_lab

from .fakes import FakeBackend, up_lab

SERVER = b"print('a server')\n"


@pytest.fixture(scope="module")
def exercise():
    return Project(ROOT).exercise("blocking")


def options(out_dir: Path, **changes) -> runner.BatchOptions:
    return runner.BatchOptions(out_dir, changes.pop("fingerprint", "f" * 32), **changes)


def report(exercise, failing: set[str] = frozenset(), **fields) -> dict:
    """A report.json as `labctl grade` writes it (the fields the gradebook reads)."""
    results = [{"name": check.name, "status": "failed" if check.name in failing else "passed",
                "points": 0.0 if check.name in failing else check.points} for check in exercise.checks]
    return {"score": sum(item["points"] for item in results), "max_score": exercise.max_points, "results": results,
            "gradable": True, **fields}


# -- resuming -----------------------------------------------------------------------------------------

def test_a_student_is_graded_again_only_when_what_decides_the_verdict_changed():
    before = {"status": "graded", "submission_hash": "h1", "fingerprint": "f1", "reports": ["json", "junit"]}
    assert runner.decide(None, "h1", "f1", ["json"]) == "new"
    assert runner.decide(before, "h1", "f1", ["json"]) == "unchanged"
    assert runner.decide(before, "h1", "f1", ["json", "junit"]) == "unchanged"
    assert runner.decide(before, "h1", "f1", ["json"], force=True) == "forced"
    assert runner.decide(before, "h2", "f1", ["json"]) == "changed"
    assert runner.decide(before, "h1", "f2", ["json"]) == "exercise changed"
    assert runner.decide(before, "h1", "f1", ["json", "gradescope"]) == "formats"
    assert runner.decide({**before, "status": "not gradable"}, "h1", "f1", ["json"]) == "unchanged"
    assert runner.decide({**before, "status": "error"}, "h1", "f1", ["json"]) == "error before"   # always retried
    assert runner.decide({**before, "status": "nonsense"}, "h1", "f1", ["json"]) == "error before"


def test_a_record_is_only_trusted_whole(tmp_path):
    (tmp_path / "alice").mkdir()
    assert runner.read_record(tmp_path, "alice") is None
    (tmp_path / "alice" / "job.json").write_text("{not json")
    assert runner.read_record(tmp_path, "alice") is None
    (tmp_path / "alice" / "job.json").write_text('["a list"]')
    assert runner.read_record(tmp_path, "alice") is None
    record = {"status": "graded", "reports": ["json", "junit"]}
    (tmp_path / "alice" / "job.json").write_text(json.dumps(record))
    (tmp_path / "alice" / "report.json").write_text("{}")
    assert runner.read_record(tmp_path, "alice") is None          # junit.xml promised, missing
    (tmp_path / "alice" / "junit.xml").write_text("<testsuites/>")
    assert runner.read_record(tmp_path, "alice") == record


def test_planning_keeps_what_stands_and_grades_the_rest(tmp_path, exercise):
    classroom, out = tmp_path / "class", tmp_path / "out"
    out.mkdir()
    for name in ("same", "changed", "errored", "forced", "new"):
        (classroom / name).mkdir(parents=True)
        (classroom / name / "server.py").write_bytes(SERVER)
    (classroom / "empty").mkdir()
    opts = options(out, regrade=frozenset({"forced"}))
    hashes = {item.id: intake.prepare(item).content_hash for item in intake.find_entries(classroom) if item.id != "empty"}
    for name, status, content in (("same", "graded", hashes["same"]), ("changed", "graded", "old"),
                                  ("errored", "error", hashes["errored"]), ("forced", "graded", hashes["forced"])):
        files = {"report.json": json.dumps(report(exercise, {"idle-cpu"})).encode()} if status == "graded" else {}
        runner.write_student(out, name, {"student": name, "status": status, "submission_hash": content,
                                         "fingerprint": opts.fingerprint, "reports": ["json"]}, files)
    plan, rows = runner.list_class(classroom, opts.regrade), {}
    runner.plan_entries(plan, rows, exercise, opts)
    assert sorted((entry.id, why) for entry, why in plan.to_grade) == [
        ("changed", "changed"), ("errored", "error before"), ("forced", "forced"), ("new", "new")]
    assert [row.id for row in plan.unchanged] == ["same"] and rows["same"].how == "unchanged"
    assert rows["same"].score == exercise.max_points - 2 and rows["same"].points["idle-cpu"] == 0
    assert list(plan.standing) == ["forced"]            # shown meanwhile, if a Ctrl-C comes before its grading
    assert [row.id for row in plan.refused] == ["empty"] and rows["empty"].message == "the folder is empty"
    written = json.loads((out / "empty" / "job.json").read_text())
    assert written["status"] == "not gradable" and written["source"] == "folder" and written["exercise"] == "blocking"


def test_regrade_and_an_empty_class_are_checked_before_anything_runs(tmp_path):
    (tmp_path / "class").mkdir()
    with pytest.raises(runner.LabctlError, match="holds no submissions"):
        runner.list_class(tmp_path / "class")
    (tmp_path / "class" / "alice").mkdir()
    with pytest.raises(runner.LabctlError, match="--regrade names no entry of .*: bob"):
        runner.list_class(tmp_path / "class", frozenset({"bob"}))
    with pytest.raises(runner.LabctlError, match="inside the class folder"):
        runner.check_folders(tmp_path / "class", tmp_path / "class" / "alice" / "out")
    runner.check_folders(tmp_path / "class", tmp_path / "out")


def test_a_batch_with_nothing_to_grade_writes_every_row_and_starts_no_grading(tmp_path, exercise):
    classroom, out = tmp_path / "class", tmp_path / "out"
    (classroom / "alice").mkdir(parents=True)
    (classroom / "alice" / "server.py").write_bytes(SERVER)
    (classroom / "empty").mkdir()
    (classroom / "notes.txt").write_text("hello")
    out.mkdir()
    (out / ".tmp-bob-12345678").mkdir()              # a crash's leftovers
    opts = options(out)
    content = intake.prepare(intake.find_entries(classroom)[0]).content_hash
    runner.write_student(out, "alice", {"student": "alice", "status": "graded", "submission_hash": content,
                                        "fingerprint": opts.fingerprint, "reports": ["json"], "duration": 21.5},
                         {"report.json": json.dumps(report(exercise)).encode()})
    executor = runner.LocalExecutor(Project(ROOT), 1)
    outcome = runner.run_batch(Project(ROOT), exercise, classroom, executor, opts)
    assert not outcome.interrupted and outcome.left == [] and outcome.graded_now == 0
    assert {row.id: (row.status, row.how) for row in outcome.rows.values()} == {
        "alice": ("graded", "unchanged"), "empty": ("not gradable", "intake"), "notes.txt": ("not gradable", "intake")}
    rows = list(csv.DictReader(io.StringIO((out / "gradebook.csv").read_text())))
    assert [row["id"] for row in rows] == ["alice", "empty", "notes.txt"]
    assert rows[0]["score"] == rows[0]["max"] == "14" and rows[0]["duration"] == "21.5"
    assert rows[1]["score"] == "0" and rows[1]["get-index"] == "" and rows[1]["message"] == "the folder is empty"
    assert outcome.page == out / "index.html" and outcome.page.is_file() and outcome.page_note == ""
    assert sorted(item.name for item in out.iterdir()) == ["alice", "empty", "gradebook.csv", "index.html", "notes.txt"]


# -- a student's folder -------------------------------------------------------------------------------

def test_a_student_folder_is_replaced_whole_and_a_failure_keeps_the_one_before(tmp_path, monkeypatch):
    runner.write_student(tmp_path, "alice", {"status": "graded", "n": 1},
                         {"report.json": b"{}", "junit.xml": b"<x/>", "../../evil": b"x", "run.sh": b"rm -rf /",
                          "grading.log": b"a" * (runner.MAX_KEPT_BYTES + 1)})
    assert sorted(item.name for item in (tmp_path / "alice").iterdir()) == ["job.json", "junit.xml", "report.json"]
    record = json.loads((tmp_path / "alice" / "job.json").read_text())
    assert record["files_left_out"] == ["../../evil", "grading.log", "run.sh"]
    assert not (tmp_path.parent / "evil").exists()

    runner.write_student(tmp_path, "alice", {"status": "graded", "n": 2}, {"report.json": b"{}"})
    assert sorted(item.name for item in (tmp_path / "alice").iterdir()) == ["job.json", "report.json"]

    real, struck = os.replace, []

    def crash(source, target):
        if Path(target).name == "alice" and not struck:   # the new folder into place: a Ctrl-C strikes
            struck.append(source)
            raise KeyboardInterrupt
        real(source, target)

    monkeypatch.setattr(runner.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        runner.write_student(tmp_path, "alice", {"status": "graded", "n": 3}, {"report.json": b"{}"})
    monkeypatch.setattr(runner.os, "replace", real)
    assert struck and json.loads((tmp_path / "alice" / "job.json").read_text())["n"] == 2
    assert sorted(item.name for item in tmp_path.iterdir()) == ["alice"]     # no temporary folder left


def test_a_crash_s_leftovers_are_removed_and_the_student_graded_again(tmp_path):
    (tmp_path / ".tmp-alice-0a1b2c3d").mkdir()
    (tmp_path / ".tmp-alice-0a1b2c3d" / "job.json").write_text("{}")
    (tmp_path / ".old-bob-00000000").mkdir()
    (tmp_path / ".tmp-gradebook.csv-1234").write_text("half")
    (tmp_path / "carol").mkdir()
    assert runner.clean_leftovers(tmp_path) == 3
    assert [item.name for item in tmp_path.iterdir()] == ["carol"]


# -- the gradebook ------------------------------------------------------------------------------------

def test_cells_that_a_spreadsheet_would_run_are_text():
    for formula in ("=1+2", "+1", "-1+2", "@SUM(A1)", "\t=1", "  =1"):
        assert runner.csv_cell(formula).startswith("'"), formula
    assert runner.csv_cell("\r=1") == "\\x0d=1"     # a lone CR is made visible: text that starts with '\\'

    assert runner.csv_cell("=HYPERLINK(\"http://evil\")") == "'=HYPERLINK(\"http://evil\")"
    assert runner.csv_cell("a\x1b[31m red\nline\ttab") == "a\\x1b[31m red line tab"
    assert runner.csv_cell("x" * 1000) == "x" * runner.MESSAGE_CHARS + "…"
    assert [runner.csv_cell(value) for value in (14.0, 13.5, 0, 2.3333333, None)] == ["14", "13.5", "0", "2.333", ""]
    assert runner.csv_cell("plain words, with a comma") == "plain words, with a comma"


def test_the_gradebook_has_the_contract_s_columns_and_one_sorted_row_per_student(exercise):
    rows = [runner.Row("zed", "graded", score=12.0, max=14.0, duration=20.04, points={"get-index": 2.0, "idle-cpu": 0.0}),
            runner.Row("alice", "error", "the engine went away", max=14.0),
            runner.Row("=bob", "not gradable", 'the server did not start: "=cmd|\' /C calc\'!A0"\nTraceback', score=0.0,
                       max=14.0)]
    text = runner.gradebook_text(exercise, rows)
    table = list(csv.reader(io.StringIO(text)))
    assert table[0] == ["id", "score", "max", "status", "duration", *(check.name for check in exercise.checks), "message"]
    assert [line[0] for line in table[1:]] == ["'=bob", "alice", "zed"]
    assert all(len(line) == len(table[0]) for line in table)
    bob, alice, zed = (dict(zip(table[0], line, strict=True)) for line in table[1:])
    assert zed["score"] == "12" and zed["get-index"] == "2" and zed["idle-cpu"] == "0" and zed["get-file"] == ""
    assert zed["duration"] == "20" and zed["message"] == ""
    assert alice["score"] == "" and alice["max"] == "14" and alice["status"] == "error"
    assert bob["message"] == "the server did not start: \"=cmd|' /C calc'!A0\" Traceback"
    assert len(text.splitlines()) == 4            # one line per row: no cell spans lines


def test_rows_come_from_reports_read_back_without_trusting_them(exercise):
    record = {"student": "alice", "status": "graded", "duration": "long"}
    hostile = {"score": "14", "max_score": float("nan"), "results": [
        {"name": "get-index", "status": "passed", "points": 2}, {"name": "made-up", "points": 100},
        {"name": "idle-cpu", "status": "unavailable", "points": 0}, {"name": "one-thread", "points": True},
        "not a result"]}
    row = runner.row_of(record, hostile, exercise)
    assert row.score is None and row.max == exercise.max_points and row.duration == 0
    assert row.points == {"get-index": 2.0}       # unknown, unavailable and non-numbers left out
    assert runner.row_of({"status": "whatever"}, None, exercise).status == "error"
    assert runner.row_of({"status": "not gradable"}, None, exercise).score == 0


# -- how many at once ---------------------------------------------------------------------------------

def test_the_default_jobs_are_a_lab_per_core_unless_memory_is_short(monkeypatch):
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    spec = load_lab(ROOT / "lab.yaml")
    per_lab = runner.lab_memory(spec)
    assert per_lab == (256 + 512 + 256 + 128) * 2**20       # lab.yaml's four nodes at their limits
    jobs, why = runner.default_jobs(spec, cores=2, available=23 * 2**30)
    assert jobs == 2 and why == "-j 2: 2 cores, 23.0 GiB free, a lab may take 1.1 GiB (lab.yaml's limits)"
    assert runner.default_jobs(spec, cores=16, available=4 * 2**30)[0] == 2      # 0.8 * 4 GiB holds 2 labs
    assert runner.default_jobs(spec, cores=4, available=2**29)[0] == 1           # never less than one
    assert runner.default_jobs(spec, cores=3, available=0)[0] == 3               # memory unknown: the cores
    monkeypatch.setenv("DOCKER_HOST", "tcp://grader:2376")
    assert "the engine at tcp://grader:2376 may have others: pass -j" in runner.default_jobs(spec, 2, 2**34)[1]


# -- labs a stopped batch leaves ------------------------------------------------------------------------

def test_labs_of_gradings_that_are_gone_are_removed_and_no_other(tmp_path):
    fake = FakeBackend()
    fake.harness["client"]["wait_listening"] = lambda params: {"listening": True}
    ended = subprocess.Popen(["true"])
    ended.wait()
    # A grading that still runs: a live process whose command line says labctl (a pid the kernel gave again
    # to another program is no grading, and its lab an orphan: labctl.pids.alive(labctl_only=True)).
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "labctl-grade"])
    labs = {name: up_lab(fake, tmp_path / name, name=name) for name in ("ours", "alive", "other")}
    pids = {"ours": ended.pid, "alive": running.pid, "other": ended.pid}
    for name, lab in labs.items():
        for container in fake.containers.values():
            if container.plan.labels.get("labctl.lab") == lab.id:
                container.plan.labels[LABEL_PID] = str(pids[name])
                container.plan.labels[LABEL_OWNER] = "someone-else" if name == "other" else current_owner()
    project = Project(ROOT, fake)
    assert all(info.labels[LABEL_HOST] for info in fake.find_containers({LABEL_OWNER: ""}))
    try:
        assert runner.remove_left_labs(project, {ended.pid, running.pid}) == 1
        left = {info.labels["labctl.lab"] for info in fake.find_containers({"labctl.lab": ""})}
        assert left == {labs["alive"].id, labs["other"].id}
        assert runner.remove_left_labs(project, set()) == 0
    finally:
        running.kill()
        running.wait()


# -- the command ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["no exercise", "no folder", "out inside", "empty class", "unknown regrade"])
def test_bad_input_exits_2_with_a_message_before_any_engine_is_asked(tmp_path, case):
    (tmp_path / "class").mkdir()
    if case != "empty class":
        (tmp_path / "class" / "alice").mkdir()
    arguments = {"no exercise": ["nosuch", str(tmp_path / "class")],
                 "no folder": ["blocking", str(tmp_path / "missing")],
                 "out inside": ["blocking", str(tmp_path / "class"), "--out", str(tmp_path / "class" / "graded")],
                 "empty class": ["blocking", str(tmp_path / "class")],
                 "unknown regrade": ["blocking", str(tmp_path / "class"), "--regrade", "bob"]}[case]
    result = CliRunner().invoke(main, ["--project", str(ROOT), "--backend", "docker", "batch", *arguments],
                                env={"DOCKER_HOST": "unix:///nonexistent.sock"})
    assert result.exit_code == 2, result.output
    expected = {"no exercise": "no exercise 'nosuch'", "no folder": "does not exist",
                "out inside": "inside the class folder", "empty class": "holds no submissions",
                "unknown regrade": "--regrade names no entry"}[case]
    assert expected in " ".join(result.output.split()), result.output
    assert not (tmp_path / "class-blocking").exists()
