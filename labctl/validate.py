"""`labctl validate`: prove that an exercise grades right.

For each exercise: its YAML loads; the reference solution gets full marks; the starter
does not; every mutant fails exactly the checks it declares (or is not gradable when it
says so). The result is a matrix of submissions x checks in which every cell that
differs from its expectation is marked; any difference makes validate fail.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from labctl.exercise import Exercise
from labctl.grading import GradeOptions, grade
from labctl.project import Project
from labctl.results import GradeReport


@dataclass
class Row:
    """One submission graded: what was expected of it and what happened."""

    label: str                         # solution, starter, mutant:<name>
    path: Path
    expect_failing: set[str] | None    # None: "not full marks" (the starter)
    expect_gradable: bool
    report: GradeReport
    why: str = ""

    @property
    def failing(self) -> set[str]:
        """The graded checks that failed (a 0-point demonstration check is shown, never compared)."""
        return {result.name for result in self.report.results if not result.passed and result.max_points > 0}

    def cell_differs(self, check: str) -> bool:
        if not self.expect_gradable or not self.report.gradable or self.expect_failing is None:
            return False
        return (check in self.failing) != (check in self.expect_failing)

    @property
    def problems(self) -> list[str]:
        """What differs from the expectation, in words (empty: as expected)."""
        if self.expect_gradable != self.report.gradable:
            return [f"expected {'gradable' if self.expect_gradable else 'not gradable'}, got "
                    f"{'gradable' if self.report.gradable else 'not gradable: ' + (self.report.error or '')}"]
        if not self.report.gradable:
            return []
        if self.expect_failing is None:
            return [] if self.failing else ["expected not full marks, but every check passed"]
        problems = []
        for name in sorted(self.failing - self.expect_failing):
            message = next(r.message for r in self.report.results if r.name == name)
            problems.append(f"{name}: failed, expected to pass — {message}")
        for name in sorted(self.expect_failing - self.failing):
            problems.append(f"{name}: passed, expected to fail")
        return problems


@dataclass
class ExerciseValidation:
    exercise: Exercise
    rows: list[Row] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(not row.problems for row in self.rows)


def validate_exercise(project: Project, exercise: Exercise, progress: Callable[[str], None] | None = None,
                      on_row: Callable[[Row], None] | None = None) -> ExerciseValidation:
    """Grade the solution, the starter and every mutant of one exercise (all checks)."""
    say = progress or (lambda message: None)
    done = on_row or (lambda row: None)
    outcome = ExerciseValidation(exercise)
    plan = exercise.validate
    if plan is None:
        return outcome
    subjects: list[tuple[str, Path, set[str] | None, bool, str, dict[str, str]]] = [
        ("solution", exercise.dir / plan.solution, set(), True, "the reference: full marks", {}),
        ("starter", exercise.dir / plan.starter, None, True, "runs, but does not do the task", {}),
    ]
    for mutant in plan.mutants:
        settings = "".join(f" {name}={value}" for name, value in mutant.env.items())
        subjects.append((f"mutant:{os.path.normpath(mutant.path)}{settings}", exercise.dir / mutant.path,
                         set(mutant.fails), not mutant.not_gradable, mutant.why, dict(mutant.env)))
    for label, path, failing, gradable, why, env in subjects:
        say(f"{exercise.id}: grading {label}")
        report = grade(project, exercise, path.resolve(), GradeOptions(env=env), progress=say)
        row = Row(label, path, failing, gradable, report, why)
        outcome.rows.append(row)
        done(row)
    return outcome
