"""Authoring tools on the real engine: a new exercise validates as it is; a handout still tests."""

from __future__ import annotations

import shutil

from conftest import ROOT
from integration.test_cli import labctl

from labctl.authoring import export_student, new_exercise
from labctl.exercise import load_exercise
from labctl.project import Project
from labctl.validate import validate_exercise


def test_a_new_exercise_validates_out_of_the_box(tmp_path, project):
    for name in ("lab.yaml", "images"):
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(ROOT / name, tmp_path / name)
    folder = new_exercise(tmp_path, "first-steps")
    outcome = validate_exercise(Project(tmp_path, project.backend), load_exercise(folder))
    assert [row.label for row in outcome.rows] == ["solution", "starter"]
    assert outcome.ok, [(row.label, row.problems) for row in outcome.rows]


def test_a_student_handout_still_runs_labctl_test(tmp_path, project):
    handout = tmp_path / "handout"
    export_student(ROOT, handout)
    result = labctl("--project", str(handout), "test", "threaded", "--submission",
                    str(handout / "exercises" / "threaded" / "starter"), "--only", "get-index", "--only", "idle-cpu")
    assert result.returncode == 1, result.stdout + result.stderr  # graded: the starter fails get-index
    assert "get-index" in result.stdout and "idle-cpu" in result.stdout
    assert "io-model" not in result.stdout + result.stderr
