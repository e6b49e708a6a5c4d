"""The project's exercises: found by id or by path, all of them, and a clear error for a name that is none."""

from __future__ import annotations

from pathlib import Path

import pytest

from labctl.errors import LabctlError
from labctl.project import Project

ROOT = Path(__file__).resolve().parents[2]


def test_an_exercise_is_found_by_id_or_by_path():
    project = Project(ROOT)
    by_id = project.exercise("blocking")
    assert (by_id.id, by_id.dir) == ("blocking", ROOT / "exercises" / "blocking")
    assert project.exercise(str(ROOT / "exercises" / "polling")).id == "polling"


def test_an_unknown_exercise_names_the_known_ones():
    project = Project(ROOT)
    with pytest.raises(LabctlError) as caught:
        project.exercise("blockng")
    known = ", ".join(sorted(path.parent.name for path in (ROOT / "exercises").glob("*/exercise.yaml")))
    assert str(caught.value) == (f"no exercise 'blockng': looked for {ROOT / 'exercises' / 'blockng'}/exercise.yaml "
                                 f"(exercises here: {known})")
    assert "blocking, " in known


def test_the_exercise_ids_are_the_folders_with_an_exercise_yaml(tmp_path: Path):
    (tmp_path / "exercises" / "notes").mkdir(parents=True)  # no exercise.yaml: not an exercise
    assert Project(tmp_path).exercise_ids() == []
    with pytest.raises(LabctlError, match=r"\(exercises here: none\)"):
        Project(tmp_path).exercise("blocking")
    with pytest.raises(LabctlError, match="no exercises under"):
        Project(tmp_path).exercises()
    assert {"blocking", "polling", "threaded"} <= set(Project(ROOT).exercise_ids())
    assert Project(ROOT).exercise_ids() == sorted(Project(ROOT).exercise_ids())


def test_exercises_are_the_ones_named_or_all():
    project = Project(ROOT)
    assert [exercise.id for exercise in project.exercises(["polling", "blocking"])] == ["polling", "blocking"]
    assert [exercise.id for exercise in project.exercises()] == project.exercise_ids()
