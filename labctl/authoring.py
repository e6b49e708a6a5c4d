"""Instructors' tools: a new exercise from a scaffold, and a student handout.

The handout keeps everything `labctl test` needs (the tool, lab.yaml, images/, each
exercise's YAML, starter, docroot and README) and leaves out what students must not
have: solutions, mutants, the validate section, hidden checks, and the test suite.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import yaml

from labctl.errors import LabctlError
from labctl.exercise import find_exercises, load_exercise

TEMPLATE = Path(__file__).parent / "templates" / "exercise"
MODELINE = "# yaml-language-server: $schema=../../labctl/schemas/exercise.schema.json\n"
EXERCISE_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,40}$")

#: What a handout holds at the top level (the product card's layout, less tests/).
HANDOUT_TOP = ("README.md", "lab.yaml", "pyproject.toml", "labctl", "images")
#: Never copied into a handout, wherever found under an exercise.
INSTRUCTOR_ONLY = ("solution", "mutants")


def new_exercise(root: Path, exercise_id: str, title: str | None = None) -> Path:
    """Create exercises/<id>/ from the scaffold; it validates as it is."""
    if not EXERCISE_ID.fullmatch(exercise_id):
        raise LabctlError(f"exercise id {exercise_id!r}: expected lowercase letters, digits and '-' "
                          "(it is also the folder name)")
    folder = root / "exercises" / exercise_id
    if folder.exists():
        raise LabctlError(f"{folder} already exists: choose another id, or remove it first")
    shutil.copytree(TEMPLATE, folder, ignore=shutil.ignore_patterns("__pycache__"))
    yaml_file = folder / "exercise.yaml"
    yaml_file.write_text(yaml_file.read_text().replace("TITLE", title or exercise_id.replace("-", " ").capitalize()))
    load_exercise(folder)  # the scaffold must load; if it does not, that is labctl's bug, said loudly
    return folder


def export_student(root: Path, target: Path) -> list[str]:
    """Write a student handout of the project at `root` into `target` (which must not exist).

    Returns the exercise ids exported. Hidden checks are removed from each exercise.yaml;
    the YAML is rewritten (comments other than the schema modeline are not kept).
    """
    if target.exists() and any(target.iterdir()):
        raise LabctlError(f"{target} is not empty: export into a new folder")
    exercises = [load_exercise(folder) for folder in find_exercises(root)]  # all must be valid first
    target.mkdir(parents=True, exist_ok=True)
    for name in HANDOUT_TOP:
        source = root / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=handout_ignore(root))
        elif source.is_file():
            shutil.copy2(source, target / name)
    exercises_dir = root / "exercises"
    ignore = shutil.ignore_patterns("__pycache__", *INSTRUCTOR_ONLY)
    for entry in exercises_dir.iterdir():
        if entry.is_dir() and not (entry / "exercise.yaml").is_file():
            shutil.copytree(entry, target / "exercises" / entry.name, ignore=ignore)  # shared docroots
        elif entry.is_file():
            shutil.copy2(entry, target / "exercises" / entry.name)
    for exercise in exercises:
        destination = target / "exercises" / exercise.id
        shutil.copytree(exercise.dir, destination, ignore=ignore)
        (destination / "exercise.yaml").write_text(_student_yaml(exercise.dir / "exercise.yaml"))
        load_exercise(destination)  # the handout's YAML must still load
    return [exercise.id for exercise in exercises]


def handout_ignore(root: Path):
    """What copytree leaves out of the tool's folders: caches, and labctl/templates/exercise (the `labctl new`
    scaffold, with its solution: instructors only). labctl/templates/ci stays: `labctl ci` works in a handout."""
    plain = shutil.ignore_patterns("__pycache__", "*.egg-info")
    scaffold = (root / "labctl" / "templates").resolve()

    def ignore(folder: str, names: list[str]) -> set[str]:
        left_out = set(plain(folder, names))
        if Path(folder).resolve() == scaffold:
            left_out |= {"exercise"} & set(names)
        return left_out

    return ignore


def _student_yaml(path: Path) -> str:
    data = yaml.safe_load(path.read_text())
    data.pop("validate", None)
    data["checks"] = [check for check in data["checks"] if check.get("visibility", "public") != "hidden"]
    return MODELINE + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)
