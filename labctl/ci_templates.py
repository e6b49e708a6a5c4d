"""CI configurations for a student repository: a GitHub Actions workflow and a .gitlab-ci.yml.

A student repository is a handout (`labctl export --student`): a labctl project with its own
pyproject.toml, so CI installs labctl from the repository itself and grades with `labctl test` (the
public checks: what a student may see). The configurations are files in labctl/templates/ci/, filled
by plain substitution of `__NAME__` tokens (the files stay valid YAML, and GitHub's own `${{ }}` and
the shell's `$VAR` pass through untouched); what differs between repositories is only which exercises
are graded and where the student's server is.

Image tags are content hashes of images/ (labctl.images), so they are also the GitHub image cache's
key: `labctl images tags EXERCISE` prints them without asking any engine.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from labctl import __version__
from labctl.errors import LabctlError
from labctl.images import needed_tags
from labctl.project import Project

TEMPLATES = Path(__file__).parent / "templates" / "ci"
#: Where a student's server is, per exercise: the starter, edited in place in the student's repository.
DEFAULT_SUBMISSION = "exercises/{exercise}/starter"
STDOUT = "-"
_TOKEN = re.compile(r"__[A-Z]+__")
#: A submission path goes inside a double-quoted shell word: nothing there may end the word or expand.
_UNSAFE = re.compile(r"[\"$`\\\n\r]")


@dataclass(frozen=True)
class Platform:
    """One CI service: its template, and where its configuration goes in a repository (where the service
    looks for it)."""

    name: str
    template: str
    default_path: Path


PLATFORMS: dict[str, Platform] = {
    platform.name: platform for platform in (
        Platform("github", "github.yml", Path(".github/workflows/labctl.yml")),
        Platform("gitlab", "gitlab-ci.yml", Path(".gitlab-ci.yml")),
    )
}


def chosen_exercises(project: Project, exercise: str | None) -> list[str]:
    """The exercise ids a configuration grades: the one named (it must be an exercise of this project, by
    id: the jobs find it as exercises/<id> in the repository) or, with none named, every exercise."""
    known = project.exercise_ids()
    if exercise is None:
        if not known:
            raise LabctlError(f"no exercises under {project.exercises_dir}: nothing for CI to grade")
        return known
    if exercise not in known:
        raise LabctlError(f"no exercise {exercise!r}: expected the id of a folder of {project.exercises_dir} "
                          f"with an exercise.yaml (exercises here: {', '.join(known) or 'none'})")
    project.exercise(exercise)  # it must load: a CI job that cannot grade is no use
    return [exercise]


def submission_path(pattern: str) -> str:
    """A --submission pattern checked for the shell: `{exercise}` becomes $EXERCISE, set by both CIs."""
    problem = _UNSAFE.search(pattern)
    if problem or not pattern.strip():
        found = repr(problem.group()) if problem else "an empty path"
        raise LabctlError(f"--submission {pattern!r}: expected a folder path (with {{exercise}} for the exercise's "
                          f"id) without quotes, $, backquotes or backslashes; found {found}")
    return pattern.replace("{exercise}", "$EXERCISE")


def render(platform: Platform, exercises: list[str], submission: str = DEFAULT_SUBMISSION) -> str:
    """The configuration's text: the template with its tokens filled; a token left over is labctl's bug."""
    template = TEMPLATES / platform.template
    values = {"__EXERCISES__": json.dumps(exercises), "__SUBMISSION__": submission_path(submission),
              "__VERSION__": __version__}
    text = _TOKEN.sub(lambda match: values.get(match.group(), match.group()), template.read_text())
    left = sorted(set(_TOKEN.findall(text)))
    if left:
        raise RuntimeError(f"{template}: tokens with no value: {', '.join(left)}")
    return text


def target_path(project: Project, platform: Platform, output: str | None) -> Path | None:
    """Where the configuration goes: -o PATH as given, `-` for standard output (None), and by default the
    platform's place in the project's root (the student repository's root)."""
    if output == STDOUT:
        return None
    return Path(output) if output else project.root / platform.default_path


def write(text: str, target: Path, force: bool) -> None:
    """Write the configuration, refusing to replace a file that exists (an instructor's edits) without force."""
    if target.is_dir():
        raise LabctlError(f"{target} is a folder: expected the path of the file to write")
    if target.exists() and not force:
        raise LabctlError(f"{target} exists: pass --force to overwrite it, or -o - to print the configuration")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)


def grading_tags(project: Project, exercises: list[str] | None = None) -> dict[str, str]:
    """The tags of every image the gradings of these exercises (default: all) run on, with their parents:
    exactly what a CI job caches, since a grading builds whatever of these is missing."""
    from labctl.grading import grading_images

    names: set[str] = set()
    extra: dict[str, Path] = {}
    for exercise in project.exercises(exercises or []):
        wanted, own = grading_images(exercise)
        names.update(wanted)
        extra.update(own)
    return needed_tags(project.images_dir, sorted(names), extra)
