"""validate's judgement without an engine: differences from the declared outcome, and flips.

Rows are built from GradeReports made here, as grading would return them for the blocking
exercise's checks; what is tested is what validate concludes from them.
"""

from __future__ import annotations

from pathlib import Path

from labctl.checks import load_catalog
from labctl.exercise import load_exercise
from labctl.results import CheckResult, GradeReport
from labctl.validate import Cell, ExerciseValidation, Row, subjects_of

ROOT = Path(__file__).resolve().parents[2]


def exercise():
    load_catalog()
    return load_exercise(ROOT / "exercises" / "blocking")


def report_of(ex, failing: set[str], gradable: bool = True) -> GradeReport:
    results = [CheckResult(name=check.name, check=check.check, status="failed" if check.name in failing else "passed",
                           points=0.0 if check.name in failing else check.points, max_points=check.points,
                           duration=0.1, message=f"{check.name} {'failed' if check.name in failing else 'passed'}")
               for check in ex.checks] if gradable else []
    return GradeReport(labctl_version="0", exercise=ex.id, submission="s", gradable=gradable,
                       failure=None if gradable else "submission",
                       error=None if gradable else "the server did not start", started_at="2026-01-01T00:00:00Z",
                       duration=1.0, score=sum(r.points for r in results), max_score=ex.max_points, results=results)


def test_subjects_are_the_solution_the_starter_and_each_mutant():
    ex = exercise()
    labels = [subject.label for subject in subjects_of(ex)]
    assert labels[:2] == ["solution", "starter"] and len(labels) == 2 + len(ex.validate.mutants)


def test_the_same_verdicts_every_time_are_no_flip():
    ex = exercise()
    outcome = ExerciseValidation(ex, subjects_of(ex))
    solution = outcome.subjects[0]
    outcome.rows = [Row(solution, report_of(ex, set()), k) for k in range(3)]
    assert outcome.flips == [] and outcome.ok


def test_a_check_that_passes_once_and_fails_twice_is_a_flip():
    ex = exercise()
    outcome = ExerciseValidation(ex, subjects_of(ex))
    solution = outcome.subjects[0]
    name = ex.checks[0].name
    outcome.rows = [Row(solution, report_of(ex, set()), 0), Row(solution, report_of(ex, {name}), 1),
                    Row(solution, report_of(ex, {name}), 2)]
    [flip] = outcome.flips
    assert (flip.label, flip.check, flip.passed, flip.gradings) == ("solution", name, 1, 3)
    assert f"{name} passed" in str(flip) and f"{name} failed" in str(flip)
    assert not outcome.ok


def test_gradable_once_and_not_the_next_time_is_a_flip():
    ex = exercise()
    outcome = ExerciseValidation(ex, subjects_of(ex))
    starter = outcome.subjects[1]
    outcome.rows = [Row(starter, report_of(ex, {ex.checks[0].name}), 0),
                    Row(starter, report_of(ex, set(), gradable=False), 1)]
    [flip] = outcome.flips
    assert (flip.check, flip.passed, flip.gradings) == ("gradable", 1, 2)


def test_an_infrastructure_failure_is_never_what_a_not_gradable_mutant_declares():
    ex = exercise()
    outcome = ExerciseValidation(ex, subjects_of(ex))
    mutant = next(subject for subject in outcome.subjects if not subject.expect_gradable)
    broken = report_of(ex, set(), gradable=False).model_copy(
        update={"failure": "infrastructure", "error": "cannot reach the Docker Engine"})
    assert Row(mutant, report_of(ex, set(), gradable=False), 0).problems == []
    assert Row(mutant, broken, 0).problems == ["not graded, infrastructure failure: cannot reach the Docker Engine"]


def test_a_mutant_that_fails_other_checks_than_declared_differs():
    ex = exercise()
    outcome = ExerciseValidation(ex, subjects_of(ex))
    mutant = min((subject for subject in outcome.subjects if subject.expect_failing),
                 key=lambda subject: len(subject.expect_failing))
    first, *rest = sorted(mutant.expect_failing)
    other = next(check.name for check in ex.checks if check.name not in mutant.expect_failing and check.points)
    row = Row(mutant, report_of(ex, set(rest) | {other}))
    assert row.problems == [f"{other}: failed, expected to pass — {other} failed",
                            f"{first}: passed, expected to fail"]
    assert row.cell_differs(other) and row.cell_differs(first)
    assert not any(row.cell_differs(name) for name in rest)


# -- the matrix validate prints -------------------------------------------------------------------

def texts(row) -> list[str]:
    return [cell.text for cell in row]


def test_the_matrix_has_checks_down_and_submissions_across_with_mutants_short():
    from labctl.validate import matrix

    ex = exercise()
    outcome = ExerciseValidation(ex, subjects_of(ex))
    as_declared = [subject.expect_failing if subject.expect_failing is not None else {ex.checks[0].name}
                   for subject in outcome.subjects]  # the starter: not full marks
    outcome.rows = [Row(subject, report_of(ex, failing, gradable=subject.expect_gradable))
                    for subject, failing in zip(outcome.subjects, as_declared, strict=True)]
    shown = matrix(outcome)
    mutants = ex.validate.mutants
    assert shown.columns == ["check", "solution", "starter", *(f"m{n + 1}" for n in range(len(mutants)))]
    assert shown.legend[0] == f"  m1 = {mutants[0].path}  ({mutants[0].why})"
    assert shown.title.startswith(f"{ex.id}: checks x submissions")
    assert [row[0].text for row in shown.rows] == ["gradable", *(check.name + (" (0 pts)" if not check.points else "")
                                                                 for check in ex.checks)]
    assert texts(shown.rows[0]) == ["gradable", "yes", "yes", *("no" if m.not_gradable else "yes" for m in mutants)]
    assert not any(cell.differs for row in shown.rows for cell in row), "every grading went as declared"
    assert shown.problems == [] and outcome.ok
    never_listens = 2 + next(n for n, m in enumerate(mutants) if m.not_gradable) + 1
    assert all(row[never_listens].text == "-" for row in shown.rows[1:]), "no check ran on it"
    lesson = next(row for row in shown.rows if row[0].text.endswith(" (0 pts)"))
    assert lesson[1] == Cell("pass", demonstration=True), "a 0-point check is shown, never compared"


def test_a_cell_that_differs_or_changes_is_marked_and_each_problem_said_once():
    from labctl.validate import matrix

    ex = exercise()
    outcome = ExerciseValidation(ex, subjects_of(ex))
    solution, starter = outcome.subjects[:2]
    first, second = ex.checks[0].name, ex.checks[1].name
    outcome.rows = [Row(solution, report_of(ex, {first}), 0), Row(solution, report_of(ex, {first, second}), 1),
                    Row(starter, report_of(ex, set(), gradable=False), 0), Row(starter, report_of(ex, {first}), 1)]
    shown = matrix(outcome)
    assert texts(shown.rows[0])[1:3] == ["yes", "1/2~!"]
    assert shown.rows[0][2].differs, "expected gradable, was not once"
    assert shown.rows[1][1] == Cell("FAIL!", differs=True)
    assert shown.rows[2][1] == Cell("1/2~!", differs=True)
    assert shown.rows[1][2] == Cell("FAIL"), "the starter is expected to fail something"
    assert shown.problems == [("solution", f"{first}: failed, expected to pass — {first} failed"),
                              ("solution", f"{second}: failed, expected to pass — {second} failed"),
                              ("starter", "expected gradable, got not gradable: the server did not start")]


def test_a_declared_failure_of_a_check_the_backend_cannot_run_is_no_surprise_and_shows_na():
    from labctl.validate import matrix

    ex = exercise()
    outcome = ExerciseValidation(ex, subjects_of(ex))
    mutant = next(subject for subject in outcome.subjects if subject.expect_failing and "io-model" in
                  subject.expect_failing)
    report = report_of(ex, set(mutant.expect_failing) - {"io-model"})
    report.results = [result.model_copy(update={"status": "unavailable", "points": 0.0, "max_points": 0.0})
                      if result.name == "io-model" else result for result in report.results]
    row = Row(mutant, report)
    outcome.rows = [row]
    assert row.problems == [] and not row.cell_differs("io-model")
    io_row = next(cells for cells in matrix(outcome).rows if cells[0].text == "io-model")
    column = outcome.subjects.index(mutant) + 1
    assert io_row[column].text == "n/a" and not io_row[column].differs
