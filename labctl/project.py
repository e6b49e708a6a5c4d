"""The project a command works on: the folder holding lab.yaml, images/ and exercises/.

Found like git finds a repository: from the current folder upwards, or named with
`--project DIR` / $LABCTL_PROJECT. Nothing else is remembered between commands.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from labctl.backends.base import Backend
from labctl.errors import LabctlError, SpecError
from labctl.images import ImageBuilder, Progress, discover
from labctl.spec import LabSpec, load_lab
from labctl.yamlsource import line_of, read_yaml

if TYPE_CHECKING:  # labctl.exercise loads the check catalog: imported when an exercise is asked for
    from labctl.exercise import Exercise

LAB_FILE = "lab.yaml"


def find_root(start: Path | None = None) -> Path:
    """The nearest folder at or above `start` (default: cwd) that holds lab.yaml."""
    named = os.environ.get("LABCTL_PROJECT")
    if start is None and named:
        start = Path(named)
        if not (start / LAB_FILE).is_file():
            raise LabctlError(f"LABCTL_PROJECT={named}: no {LAB_FILE} there")
        return start.resolve()
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / LAB_FILE).is_file():
            return folder
    raise LabctlError(f"no {LAB_FILE} in {here} or any folder above it: run labctl inside a labctl project "
                      "(a clone of the course repository or a student handout), or pass --project DIR")


class Project:
    """lab.yaml, the images, the exercises and the engine, each loaded on first use."""

    def __init__(self, root: Path, backend: Backend | None = None, backend_name: str | None = None):
        """backend_name: which backend to open on first use (labctl.backends; None: $LABCTL_BACKEND or docker)."""
        self.root = root
        self._backend = backend
        self.backend_name = backend_name

    @cached_property
    def spec(self) -> LabSpec:
        """lab.yaml, loaded with errors that name it as the user would (relative when below cwd)."""
        lab_file = self.root / LAB_FILE
        try:
            lab_file = lab_file.relative_to(Path.cwd())
        except ValueError:
            pass
        spec = load_lab(lab_file)
        known = discover(self.images_dir) if (self.images_dir / "base" / "Dockerfile").is_file() else None
        if known is not None:
            lines = read_yaml(lab_file).lines
            problems = [f"{lab_file}:{line_of(lines, ('nodes', name, 'image'))}: nodes.{name}.image: expected an image "
                        f"of {self.images_dir} ({', '.join(image for image in known if image != 'base')}), "
                        f"found {node.image!r}"
                        for name, node in spec.nodes.items() if node.image not in known]
            if problems:
                raise SpecError(problems)
        return spec

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            from labctl.backends import open_backend

            self._backend = open_backend(self.backend_name)
        return self._backend

    @property
    def images_dir(self) -> Path:
        return self.root / "images"

    def image_builder(self, progress: Progress | None = None, extra: dict[str, Path] | None = None) -> ImageBuilder:
        """The images of images/, and `extra` ones (an exercise's own image: name -> folder), on an engine that
        builds images (`labctl images`); a clear error on a backend that has none."""
        images = self.backend.images(self.images_dir, progress, extra)
        if not isinstance(images, ImageBuilder):
            raise LabctlError(f"the {self.backend.name} backend runs no images: its nodes use this host's own "
                              "programs (labctl doctor says which are missing)")
        return images

    def ensure_images(self, progress: Progress | None = None, names: list[str] | None = None,
                      extra: dict[str, Path] | None = None) -> dict[str, str]:
        """The tags of the images the lab needs, building what is missing (first use)."""
        names = names or sorted({node.image for node in self.spec.nodes.values()})
        return self.backend.images(self.images_dir, progress, extra).ensure(names)

    # -- exercises --------------------------------------------------------------------------------

    @property
    def exercises_dir(self) -> Path:
        return self.root / "exercises"

    def exercise_ids(self) -> list[str]:
        """The ids of the project's exercises (the folders of exercises/ with an exercise.yaml), sorted."""
        from labctl.exercise import find_exercises

        return [folder.name for folder in find_exercises(self.root)]

    def exercise(self, name: str) -> Exercise:
        """An exercise by id (a folder of exercises/) or by path, its checks registered; a clear error
        naming the project's exercises when there is none such."""
        from labctl.exercise import EXERCISE_FILE, load_exercise

        folder = Path(name)
        if not (folder / EXERCISE_FILE).is_file():
            folder = self.exercises_dir / name
        if not (folder / EXERCISE_FILE).is_file():
            known = ", ".join(self.exercise_ids()) or "none"
            raise LabctlError(f"no exercise {name!r}: looked for {folder}/{EXERCISE_FILE} (exercises here: {known})")
        return load_exercise(folder)

    def exercises(self, names: Iterable[str] = ()) -> list[Exercise]:
        """The exercises named (ids or paths), or with none named every exercise of the project (an
        error when it has none). Each is loaded, so every YAML is checked before anything runs."""
        names = list(names)
        if names:
            return [self.exercise(name) for name in names]
        from labctl.exercise import find_exercises

        folders = find_exercises(self.root)
        if not folders:
            raise LabctlError(f"no exercises under {self.exercises_dir}")
        return [self.exercise(str(folder)) for folder in folders]
