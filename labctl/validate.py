"""`labctl validate`: prove that an exercise grades right, and grades the same every time.

For each exercise: its YAML loads; the reference solution gets full marks; the starter
does not; every mutant fails exactly the checks it declares (or is not gradable when it
says so). The result is a matrix of submissions x checks in which every cell that
differs from its expectation is marked; any difference makes validate fail.

With `repeat` K and `parallel` N, every submission is graded K times, N gradings at once on
the engine (so the machine is as busy as a grading machine is), and a check whose verdict
is not the same in all K gradings of one submission is a flip: a verdict that depends on
timing or load, which validate reports and fails on like a difference.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from labctl.exercise import CheckSpec, Exercise
from labctl.grading import GradeOptions, grade
from labctl.lab import LABEL_OWNER, LABEL_PID, current_owner
from labctl.project import Project
from labctl.results import GradeReport


@dataclass(frozen=True)
class Subject:
    """One submission of an exercise to grade, and what is expected of it."""

    label: str                         # solution, starter, mutant:<name>
    path: Path
    expect_failing: set[str] | None    # None: "not full marks" (the starter)
    expect_gradable: bool
    why: str = ""
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Row:
    """One grading of a subject: what was expected of it and what happened."""

    subject: Subject
    report: GradeReport
    repeat: int = 0                    # which of the K gradings of the subject

    @property
    def label(self) -> str:
        return self.subject.label

    @property
    def why(self) -> str:
        return self.subject.why

    @property
    def expect_gradable(self) -> bool:
        return self.subject.expect_gradable

    @property
    def failing(self) -> set[str]:
        """The graded checks that failed (a 0-point demonstration check is shown, never compared)."""
        return {result.name for result in self.report.results if not result.passed and result.graded}

    @property
    def unavailable(self) -> set[str]:
        """The checks this backend could not run: no verdict to compare (they are shown as such)."""
        return {result.name for result in self.report.results if result.unavailable}

    @property
    def expected_failing(self) -> set[str] | None:
        """The declared failures among the checks that ran."""
        expected = self.subject.expect_failing
        return None if expected is None else expected - self.unavailable

    def cell_differs(self, check: str) -> bool:
        expected = self.expected_failing
        if not self.expect_gradable or not self.report.gradable or expected is None:
            return False
        return (check in self.failing) != (check in expected)

    @property
    def problems(self) -> list[str]:
        """What differs from the expectation, in words (empty: as expected). An infrastructure failure never is
        what a mutant declared `not_gradable` means: that is its server's doing (report.failure "submission")."""
        if self.report.infrastructure_failed:
            return [f"not graded, infrastructure failure: {self.report.error or 'no reason was given'}"]
        if self.expect_gradable != self.report.gradable:
            return [f"expected {'gradable' if self.expect_gradable else 'not gradable'}, got "
                    f"{'gradable' if self.report.gradable else 'not gradable: ' + (self.report.error or '')}"]
        if not self.report.gradable:
            return []
        expected = self.expected_failing
        if expected is None:
            return [] if self.failing else ["expected not full marks, but every check passed"]
        problems = []
        for name in sorted(self.failing - expected):
            message = next(r.message for r in self.report.results if r.name == name)
            problems.append(f"{name}: failed, expected to pass — {message}")
        for name in sorted(expected - self.failing):
            problems.append(f"{name}: passed, expected to fail")
        return problems


@dataclass(frozen=True)
class Flip:
    """A verdict that was not the same in every grading of one subject."""

    label: str
    check: str                         # a check's name, or "gradable"
    passed: int                        # in how many of the gradings it passed (was gradable)
    gradings: int
    messages: tuple[str, ...]          # one message of each outcome seen

    def __str__(self) -> str:
        return (f"{self.label}: {self.check} passed in {self.passed} of {self.gradings} gradings — "
                + " | ".join(self.messages))


@dataclass
class ExerciseValidation:
    exercise: Exercise
    subjects: list[Subject] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)     # every grading, in subject order, then repeat

    def rows_of(self, subject: Subject) -> list[Row]:
        return [row for row in self.rows if row.subject is subject]

    @property
    def flips(self) -> list[Flip]:
        flips = []
        for subject in self.subjects:
            rows = self.rows_of(subject)
            if len(rows) < 2:
                continue
            gradable = [row.report.gradable for row in rows]
            if len(set(gradable)) > 1:
                flips.append(Flip(subject.label, "gradable", sum(gradable), len(rows),
                                  tuple(sorted({row.report.error or "gradable" for row in rows}))))
                continue
            for check in self.exercise.checks:
                results = [result for row in rows for result in row.report.results if result.name == check.name]
                if len({result.passed for result in results}) > 1:
                    messages = {result.passed: result.message for result in results}
                    flips.append(Flip(subject.label, check.name, sum(result.passed for result in results),
                                      len(results), (messages[True], messages[False])))
        return flips

    @property
    def ok(self) -> bool:
        return all(not row.problems for row in self.rows) and not self.flips


def subjects_of(exercise: Exercise) -> list[Subject]:
    """The solution, the starter and every mutant, as validate grades them."""
    plan = exercise.validate
    if plan is None:
        return []
    subjects = [Subject("solution", exercise.dir / plan.solution, set(), True, "the reference: full marks"),
                Subject("starter", exercise.dir / plan.starter, None, True, "runs, but does not do the task")]
    for mutant in plan.mutants:
        settings = "".join(f" {name}={value}" for name, value in mutant.env.items())
        subjects.append(Subject(f"mutant:{os.path.normpath(mutant.path)}{settings}", exercise.dir / mutant.path,
                                set(mutant.fails), not mutant.not_gradable, mutant.why, dict(mutant.env)))
    return subjects


def validate_exercise(project: Project, exercise: Exercise, progress: Callable[[str], None] | None = None,
                      on_row: Callable[[Row], None] | None = None, repeat: int = 1,
                      parallel: int = 1) -> ExerciseValidation:
    """Grade the solution, the starter and every mutant of one exercise (all checks), each `repeat`
    times, `parallel` gradings at once; each on a lab of its own."""
    say = progress or (lambda message: None)
    done = on_row or (lambda row: None)
    outcome = ExerciseValidation(exercise, subjects_of(exercise))
    jobs = [(subject, k) for k in range(repeat) for subject in outcome.subjects]

    def run(subject: Subject, k: int) -> Row:
        label = subject.label + (f" #{k + 1}" if repeat > 1 else "")
        say(f"{exercise.id}: grading {label}")
        report = grade(project, exercise, subject.path.resolve(), GradeOptions(env=subject.env),
                       progress=lambda message: say(f"{label}: {message}") if parallel > 1 else say(message))
        return Row(subject, report, k)

    pool = ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="validate")
    try:
        futures = [pool.submit(run, subject, k) for subject, k in jobs]
        for future in as_completed(futures):
            row = future.result()
            outcome.rows.append(row)
            done(row)
    except BaseException:  # Ctrl-C: no new grading starts, and the running ones lose their labs at once
        pool.shutdown(wait=False, cancel_futures=True)
        project.backend.remove({LABEL_OWNER: current_owner(), LABEL_PID: str(os.getpid())})
        raise
    pool.shutdown()
    order = {id(subject): index for index, subject in enumerate(outcome.subjects)}
    outcome.rows.sort(key=lambda row: (order[id(row.subject)], row.repeat))
    return outcome


# -- the matrix ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Cell:
    """One cell of the matrix: its text and how it stands out."""

    text: str
    differs: bool = False              # not as expected, or not the same every time (its text ends in '!')
    demonstration: bool = False        # a 0-point check's verdict: shown, never compared


@dataclass
class Matrix:
    """What `labctl validate` shows of one exercise: checks down, submissions across."""

    title: str
    columns: list[str]                 # "check", then each submission (mutants as m1, m2, ...)
    rows: list[list[Cell]]             # "gradable", then one row per check; the first cell names it
    legend: list[str]                  # what m1, m2, ... are
    problems: list[tuple[str, str]]    # (a submission's label, what differs), each once


def matrix(outcome: ExerciseValidation) -> Matrix:
    """The matrix of a validation: a cell that differs from its expectation is marked '!'; with
    repeats, a cell whose verdict changed shows how often it passed ('2/3~')."""
    columns, legend = _columns(outcome.subjects)
    rows = [_gradable_row(outcome)] + [_check_row(outcome, check) for check in outcome.exercise.checks]
    return Matrix(title=f"{outcome.exercise.id}: checks x submissions ('!' = differs from expected, "
                        f"'~' = not the same every time, 'n/a' = not available on this backend)",
                  columns=["check", *columns], rows=rows, legend=legend, problems=_problems(outcome.rows))


def _columns(subjects: list[Subject]) -> tuple[list[str], list[str]]:
    """The submissions' column names (a mutant's is short: m1, m2, ...) and the legend of the short ones."""
    columns: list[str] = []
    legend: list[str] = []
    for subject in subjects:
        if subject.label.startswith("mutant:"):
            short = f"m{len(legend) + 1}"
            legend.append(f"  {short} = {subject.label[len('mutant:'):]}" + (f"  ({subject.why})" if subject.why else ""))
            columns.append(short)
        else:
            columns.append(subject.label)
    return columns, legend


def _tally(verdicts: list[bool], every: str, none: str) -> str:
    """`every` when all verdicts are true, `none` when all are false, else how many were ('2/3~')."""
    passed = sum(verdicts)
    if verdicts and passed == len(verdicts):
        return every
    if verdicts and passed == 0:
        return none
    return f"{passed}/{len(verdicts)}~"


def _gradable_row(outcome: ExerciseValidation) -> list[Cell]:
    cells = [Cell("gradable")]
    for subject in outcome.subjects:
        rows = outcome.rows_of(subject)
        text = _tally([row.report.gradable for row in rows], "yes", "no")
        differs = any(row.expect_gradable != row.report.gradable for row in rows)
        cells.append(Cell(text + "!", differs=True) if differs else Cell(text))
    return cells


def _check_row(outcome: ExerciseValidation, check: CheckSpec) -> list[Cell]:
    name = Cell(check.name + (" (0 pts)" if check.points == 0 else ""))
    return [name] + [_check_cell(outcome.rows_of(subject), check) for subject in outcome.subjects]


def _check_cell(rows: list[Row], check: CheckSpec) -> Cell:
    """One check's verdicts in the gradings of one submission ('-': it did not run there)."""
    results = [result for row in rows for result in row.report.results if result.name == check.name]
    if not results:
        return Cell("-")
    if all(result.unavailable for result in results):
        return Cell("n/a", demonstration=True)  # this backend cannot run it: no verdict
    text = _tally([result.passed for result in results], "pass", "FAIL")
    graded = check.points > 0
    if "~" in text or (graded and any(row.cell_differs(check.name) for row in rows)):
        return Cell(text + "!", differs=True)
    return Cell(text, demonstration=not graded)


def _problems(rows: list[Row]) -> list[tuple[str, str]]:
    """Every (label, problem) of the gradings, each once, in order."""
    return list(dict.fromkeys((row.label, problem) for row in rows for problem in row.problems))
