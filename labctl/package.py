"""Grading-platform packages of one exercise: a Gradescope autograder zip, a PrairieLearn grader folder.

Both platforms run the grader inside a container of their own with no Docker Engine in it, so the package
grades with the local backend (labctl.backends.local): the server runs as a process of a uid of its own,
the checks run from labctl's own Python, in the same container. What goes in is the project as a grader
needs it (lab.yaml, pyproject.toml, README.md, labctl/, the exercise WITH its hidden checks, the shared
folders of exercises/ such as a docroot), and never the solution, the mutants or images/; the exercise's
`validate` section is dropped (it names the folders left out). labctl is installed from that copy, so
grading never downloads labctl.

The scripts are files in labctl/templates/package/, filled by plain substitution of `__NAME__` tokens (as
labctl.ci_templates does); their comments say what each platform does with each exit code:
- Gradescope (https://gradescope-autograders.readthedocs.io/en/latest/specs/): the zip holds `setup.sh`
  and `run_autograder` at its root; `/autograder/source` is the zip unpacked, `/autograder/submission`
  the student's files, `/autograder/results/results.json` the result. A missing results.json shows "The
  autograder failed to execute correctly" (troubleshooting page), which is what an infrastructure failure
  (labctl's exit 3) must end as: run_autograder removes the file and exits 3.
- PrairieLearn (docs/externalGrading.md): `externalGradingOptions` {enabled, image, entrypoint, timeout
  <= 600 s}; `/grade/student` in, `/grade/results/results.json` out (the folder is ours to create); the
  grader host takes the results only from a container that exits 0, so the entrypoint maps 0/1/2 to 0 and
  keeps 3.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import stat
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from labctl import __version__
from labctl.authoring import INSTRUCTOR_ONLY, MODELINE, handout_ignore
from labctl.errors import LabctlError
from labctl.project import LAB_FILE, Project

TEMPLATES = Path(__file__).parent / "templates" / "package"
#: What of the project's top level a grader needs: README.md too, since pyproject.toml names it (pip needs it).
GRADER_TOP = ("README.md", LAB_FILE, "pyproject.toml", "labctl")
#: Where labctl's virtual environment goes on the grading machine. Not below /opt/labctl or /tmp: the local
#: backend maps those container paths of a node into the node's own folder.
GRADER_DIR = "/usr/local/labctl-grader"
#: Where the PrairieLearn image holds the project (Gradescope's is /autograder/source/project).
PL_PROJECT_DIR = f"{GRADER_DIR}/project"
#: Seconds added to the exercise's budget for PrairieLearn's timeout: starting labctl, copying, the report.
TIMEOUT_MARGIN = 60
#: PrairieLearn's own ceiling for `timeout` (docs/externalGrading.md: "This value cannot exceed 600 seconds").
PL_TIMEOUT_MAX = 600
DEFAULT_BASE_IMAGE = "python:3.12-slim-bookworm"
EXECUTABLE = ("setup.sh", "run_autograder", "entrypoint")
#: A zip's entries carry this date, so the same project packs to the same bytes.
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_TOKEN = re.compile(r"__[A-Z_]+__")


@dataclass(frozen=True)
class Written:
    """What a package command wrote, for the CLI to tell."""

    path: Path
    exercise: str
    timeout: int | None = None
    image: str | None = None


def chosen_exercise(project: Project, exercise: str) -> str:
    """The exercise's id, checked: an exercise of this project that loads (a package that cannot grade is no use)."""
    known = project.exercise_ids()
    if exercise not in known:
        raise LabctlError(f"no exercise {exercise!r}: expected the id of a folder of {project.exercises_dir} "
                          f"with an exercise.yaml (exercises here: {', '.join(known) or 'none'})")
    project.exercise(exercise)
    return exercise


def grading_timeout(budget: float) -> int:
    """PrairieLearn's timeout: the exercise's budget plus a margin, refused over PrairieLearn's 600 s (the job
    would be killed before labctl's own budget ends, and the student would see a timeout, not a grade)."""
    timeout = math.ceil(budget + TIMEOUT_MARGIN)
    if timeout > PL_TIMEOUT_MAX:
        raise LabctlError(f"the exercise's budget ({budget:g} s) plus {TIMEOUT_MARGIN} s is {timeout} s: over "
                          f"PrairieLearn's {PL_TIMEOUT_MAX} s limit; lower `budget` in its exercise.yaml")
    return timeout


def copy_project(root: Path, target: Path, exercise: str) -> None:
    """The project as a grader of `exercise` needs it, into `target` (see the module's docstring)."""
    target.mkdir(parents=True)
    for name in GRADER_TOP:
        source = root / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=handout_ignore(root))
        elif source.is_file():
            shutil.copy2(source, target / name)
    ignore = shutil.ignore_patterns("__pycache__", *INSTRUCTOR_ONLY)
    exercises = root / "exercises"
    for entry in exercises.iterdir():
        if entry.is_dir() and not (entry / "exercise.yaml").is_file():  # shared folders: a docroot
            shutil.copytree(entry, target / "exercises" / entry.name, ignore=ignore)
    destination = target / "exercises" / exercise
    shutil.copytree(exercises / exercise, destination, ignore=ignore)
    (destination / "exercise.yaml").write_text(grader_yaml(exercises / exercise / "exercise.yaml"))


def grader_yaml(path: Path) -> str:
    """An exercise.yaml for grading: every check kept (hidden ones too), the `validate` section dropped."""
    data = yaml.safe_load(path.read_text())
    data.pop("validate", None)
    return MODELINE + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)


def render(template: str, values: dict[str, str]) -> str:
    """A template's text with its tokens filled; a token left over is labctl's bug, said loudly."""
    path = TEMPLATES / template
    text = _TOKEN.sub(lambda match: values.get(match.group(), match.group()), path.read_text())
    left = sorted(set(_TOKEN.findall(text)))
    if left:
        raise RuntimeError(f"{path}: tokens with no value: {', '.join(left)}")
    return text


def _refuse_existing(target: Path, force: bool) -> None:
    if target.exists() and not force:
        raise LabctlError(f"{target} exists: pass --force to replace it, or choose another -o")


# -- Gradescope -----------------------------------------------------------------------------------------

def gradescope(project: Project, exercise: str, output: Path, force: bool = False) -> Written:
    """Write the Gradescope autograder zip for `exercise` at `output`."""
    exercise = chosen_exercise(project, exercise)
    if output.is_dir():
        raise LabctlError(f"{output} is a folder: expected the path of the zip to write (autograder.zip)")
    _refuse_existing(output, force)
    values = {"__EXERCISE__": exercise, "__VERSION__": __version__, "__GRADER_DIR__": GRADER_DIR}
    with tempfile.TemporaryDirectory(prefix="labctl-package-") as scratch:
        staging = Path(scratch)
        copy_project(project.root, staging / "project", exercise)
        for name in ("setup.sh", "run_autograder"):
            (staging / name).write_text(render(name, values))
        output.parent.mkdir(parents=True, exist_ok=True)
        partial = output.with_name(output.name + ".partial")
        write_zip(staging, partial)
        partial.replace(output)
    return Written(output, exercise)


def write_zip(folder: Path, output: Path) -> None:
    """The folder's files at the zip's root (Gradescope looks for setup.sh there), sorted and dated alike;
    the scripts executable (mode 0755), other files 0644 or 0755 as they are."""
    with zipfile.ZipFile(output, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if not path.is_file():
                continue
            name = path.relative_to(folder).as_posix()
            executable = name in EXECUTABLE or bool(path.stat().st_mode & stat.S_IXUSR)
            info = zipfile.ZipInfo(name, ZIP_DATE)
            info.external_attr = ((0o100755 if executable else 0o100644) & 0xFFFF) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, path.read_bytes())


# -- PrairieLearn ---------------------------------------------------------------------------------------

def default_image(exercise: str) -> str:
    """The image name the snippet names when none is given; the README says to push it under a real one."""
    return f"labctl-grader-{exercise}:{__version__}"


def prairielearn(project: Project, exercise: str, target: Path, image: str | None = None,
                 base_image: str = DEFAULT_BASE_IMAGE, force: bool = False) -> Written:
    """Write the PrairieLearn grader folder for `exercise` into `target`: Dockerfile, entrypoint,
    info.json.snippet, README.md, project/."""
    exercise = chosen_exercise(project, exercise)
    timeout = grading_timeout(project.exercise(exercise).budget)
    image = image or default_image(exercise)
    if target.exists() and not target.is_dir():
        raise LabctlError(f"{target} is a file: expected a folder to write the grader into")
    if target.is_dir() and any(target.iterdir()):
        if not force:
            raise LabctlError(f"{target} is not empty: pass --force to replace it, or choose another -o")
        shutil.rmtree(target)
    values = {"__EXERCISE__": exercise, "__VERSION__": __version__, "__GRADER_DIR__": GRADER_DIR,
              "__PROJECT_DIR__": PL_PROJECT_DIR, "__BASE_IMAGE__": base_image, "__IMAGE__": image,
              "__TIMEOUT__": str(timeout)}
    copy_project(project.root, target / "project", exercise)
    for name in ("Dockerfile", "entrypoint", "README.md"):
        (target / name).write_text(render(name, values))
    (target / "entrypoint").chmod(0o755)
    (target / "info.json.snippet").write_text(json.dumps(info_json(image, timeout), indent=2) + "\n")
    return Written(target, exercise, timeout=timeout, image=image)


def info_json(image: str, timeout: int) -> dict:
    """The part of a question's info.json that makes PrairieLearn grade it with this image."""
    return {"gradingMethod": "External",
            "externalGradingOptions": {"enabled": True, "image": image, "entrypoint": f"{GRADER_DIR}/entrypoint",
                                       "timeout": timeout}}
