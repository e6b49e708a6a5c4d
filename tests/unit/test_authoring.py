"""Authoring tools without an engine: the catalog's docs, `labctl new`, `labctl export --student`."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from labctl.authoring import export_student, new_exercise
from labctl.catalog_docs import catalog_markdown, embed
from labctl.errors import LabctlError
from labctl.exercise import find_exercises, load_exercise

ROOT = Path(__file__).resolve().parents[2]


def test_the_instructors_guide_embeds_the_current_catalog():
    readme = (ROOT / "exercises" / "README.md").read_text()
    assert readme == embed(readme), (
        "exercises/README.md is out of date with the check catalog; regenerate with: python3 -c \"from "
        "pathlib import Path; from labctl.catalog_docs import embed; p=Path('exercises/README.md'); "
        "p.write_text(embed(p.read_text()))\"")
    for name in ("http", "slow_client", "idle_connections", "blocked_in", "io_model", "syn_flood"):
        assert f"### `{name}`" in catalog_markdown()


def test_every_shipped_exercise_loads_and_has_its_parts():
    folders = find_exercises(ROOT)
    assert {folder.name for folder in folders} >= {"blocking", "threaded", "polling"}
    for folder in folders:
        exercise = load_exercise(folder)
        assert (folder / "README.md").is_file(), f"{folder.name} has no README for students"
        assert exercise.validate is not None and exercise.validate.mutants, f"{folder.name} proves nothing"
        assert (folder / "exercise.yaml").read_text().startswith("# yaml-language-server: $schema=")


def test_new_makes_an_exercise_that_loads(tmp_path):
    shutil.copy(ROOT / "lab.yaml", tmp_path / "lab.yaml")
    folder = new_exercise(tmp_path, "echo-server", "An echo server")
    exercise = load_exercise(folder)
    assert exercise.title == "An echo server"
    assert (folder / "solution" / "server.py").is_file() and (folder / "starter" / "server.py").is_file()
    with pytest.raises(LabctlError, match="already exists"):
        new_exercise(tmp_path, "echo-server")
    with pytest.raises(LabctlError, match="expected lowercase letters"):
        new_exercise(tmp_path, "Bad Name")


def test_the_student_handout_has_no_solutions_mutants_or_hidden_checks(tmp_path):
    handout = tmp_path / "handout"
    exported = export_student(ROOT, handout)
    assert set(exported) >= {"blocking", "threaded", "polling"}
    assert sorted(p.name for p in handout.iterdir()) == sorted(
        ["README.md", "lab.yaml", "pyproject.toml", "labctl", "images", "exercises"])
    leaked = [p for p in handout.rglob("*") if p.name in ("solution", "mutants")]
    assert leaked == []
    for exercise_id in exported:
        original = load_exercise(ROOT / "exercises" / exercise_id)
        handed = load_exercise(handout / "exercises" / exercise_id)
        assert handed.validate is None
        assert [c.name for c in handed.checks] == [c.name for c in original.public_checks]
        assert not handed.hidden_checks
        text = (handout / "exercises" / exercise_id / "exercise.yaml").read_text()
        for hidden in original.hidden_checks:
            assert hidden.name not in text
        assert (handout / "exercises" / exercise_id / "starter").is_dir()
    assert (handout / "exercises" / "www" / "index.html").is_file()
    with pytest.raises(LabctlError, match="not empty"):
        export_student(ROOT, handout)


def test_the_handout_yaml_keeps_the_schema_modeline(tmp_path):
    export_student(ROOT, tmp_path / "h")
    text = (tmp_path / "h" / "exercises" / "blocking" / "exercise.yaml").read_text()
    assert text.startswith("# yaml-language-server: $schema=../../labctl/schemas/exercise.schema.json\n")
    assert "validate" not in yaml.safe_load(text)


def test_the_committed_exercise_schema_is_the_current_one():
    import json

    from labctl.checks import load_catalog
    from labctl.exercise import exercise_json_schema

    load_catalog()
    committed = json.loads((ROOT / "labctl" / "schemas" / "exercise.schema.json").read_text())
    assert committed == exercise_json_schema(), \
        "labctl/schemas/exercise.schema.json is stale: labctl schema exercise > labctl/schemas/exercise.schema.json"
