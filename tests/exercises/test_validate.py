"""Every exercise grades right on the real engine: what `labctl validate` proves, as a test.

The solution gets full marks, the starter does not, and every mutant fails exactly the
checks it declares (or is not gradable) — the fork bomb, the memory hog and the log flood
included, with nothing left running afterwards.
"""

from __future__ import annotations

import pytest
from conftest import OWNER, ROOT

from labctl.exercise import find_exercises, load_exercise
from labctl.lab import LABEL_OWNER
from labctl.validate import validate_exercise

EXERCISES = [folder.name for folder in find_exercises(ROOT)]


@pytest.mark.parametrize("exercise_id", EXERCISES)
def test_the_exercise_grades_as_declared(exercise_id, project):
    exercise = load_exercise(ROOT / "exercises" / exercise_id)
    outcome = validate_exercise(project, exercise)
    problems = [f"{row.label}: {problem}" for row in outcome.rows for problem in row.problems]
    assert problems == [], "\n".join(problems)
    labels = [row.label for row in outcome.rows]
    assert labels[:2] == ["solution", "starter"] and len(labels) == 2 + len(exercise.validate.mutants)
    solution = outcome.rows[0].report
    assert solution.score == solution.max_score == exercise.max_points
    assert project.backend.find_containers({LABEL_OWNER: OWNER}) == [], "grading left containers behind"
