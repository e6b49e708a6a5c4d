"""Grading: a fresh lab per grading, each check within its time budget, a report that survives.

Rules this module keeps:
- the lab is started fresh for each grading and removed afterwards, also on failure and
  on Ctrl-C;
- every check has a budget (its own, and what is left of the grading's); a check that
  runs out fails with a message saying so; checks already finished keep their results
  when the grading's budget runs out, and the checks that could not run say why;
- a server that never starts makes the grading "not gradable" (exit 2) with its exit
  code and log, not a list of failed checks; the report says whose doing it was
  (`failure`: "submission", or "infrastructure" for the engine, images, labctl: exit 3);
- a server that dies during grading fails the remaining checks at once, saying when it
  died, instead of letting each one time out;
- keeping evidence (`--evidence`, labctl/evidence) changes no verdict: its time is not counted in the
  grading's budget, and a check's clock starts once its packet capture listens.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from labctl import __version__
from labctl.backends.base import FEATURES, Feature, Usage
from labctl.checks import REGISTRY, CheckContext, Outcome
from labctl.errors import BudgetTooShort, LabctlError, ServerStartError, SubmissionError
from labctl.evidence.folder import EvidenceFolder
from labctl.evidence.keeper import CheckEvidence, Keeper
from labctl.exercise import CheckSpec, Exercise
from labctl.impair import during_check
from labctl.lab import Lab, Submission
from labctl.project import Project
from labctl.results import HIDDEN_NAME, CheckResult, Failure, GradeReport, ServerUsage

#: Seconds a check may overrun its budget before grading stops waiting for it (its
#: harness commands are killed inside the containers on their own timeouts).
GRACE = 5.0
LOG_TAIL_LINES = 40
#: A server with this share of its pids limit in use is out of tasks (a fork bomb).
TASK_LIMIT_SHARE = 0.95

Progress = Callable[[str], None]
OnResult = Callable[[CheckResult], None]


@dataclass
class GradeOptions:
    include_hidden: bool = True            # `labctl test` runs public checks only
    only: list[str] | None = None          # run only these check names (debugging an exercise)
    budget: float | None = None            # override the exercise's total budget
    env: dict[str, str] = field(default_factory=dict)  # extra environment for the server (a mutant's)
    student_view: bool = False             # progress never names a hidden check (the log is the student's)
    evidence: Path | None = None           # keep what proves each failed check there (labctl/evidence)

    def checks_of(self, exercise: Exercise) -> list[CheckSpec]:
        """The checks this grading runs, in order. `labctl test` offers the public checks only: there a
        hidden check's name in `only` is as unknown as a typo, so a student cannot probe which hidden
        checks exist (LabctlError, exit 2, for any unknown name)."""
        offered = exercise.checks if self.include_hidden else exercise.public_checks
        if self.only:
            unknown = sorted(set(self.only) - {check.name for check in offered})
            if unknown:
                raise LabctlError(f"--only names no check of {exercise.id}: {', '.join(unknown)} "
                                  f"(its {'' if self.include_hidden else 'public '}checks: "
                                  f"{', '.join(check.name for check in offered)})")
        return [check for check in offered if not self.only or check.name in self.only]


#: The errors that are the submission's doing; every other LabctlError while grading is the machine's.
SUBMISSION_ERRORS: tuple[type[LabctlError], ...] = (ServerStartError, SubmissionError)


def failure_of(error: LabctlError) -> Failure:
    """Whose doing an error that stopped a grading was: the submission's (its server never listened, it
    is over a limit) or the infrastructure's (the engine, an image, the lab's setup, a bad call)."""
    return "submission" if isinstance(error, SUBMISSION_ERRORS) else "infrastructure"


def grade(project: Project, exercise: Exercise, submission_dir: Path, options: GradeOptions | None = None,
          progress: Progress | None = None, on_result: OnResult | None = None) -> GradeReport:
    """Grade one submission of one exercise on a fresh lab; always returns a report."""
    options = options or GradeOptions()
    say: Progress = progress if progress is not None else (lambda message: None)
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    started = time.monotonic()
    checks: list[CheckSpec] = []
    folder: EvidenceFolder | None = None

    def report(**fields) -> GradeReport:
        results = fields.pop("results", [])
        return GradeReport(labctl_version=__version__, exercise=exercise.id, title=exercise.title,
                           submission=str(submission_dir), started_at=started_at,
                           duration=round(time.monotonic() - started, 3),
                           score=sum(r.points for r in results),
                           max_score=sum(spec.points for spec in checks) - sum(
                               r.evidence.get("points_left_out", 0) for r in results if r.unavailable),
                           results=results,
                           evidence_dir=str(folder.path) if folder is not None and folder.files else None, **fields)

    try:
        checks = options.checks_of(exercise)
        folder = EvidenceFolder.prepare(options.evidence) if options.evidence is not None else None
    except LabctlError as error:  # a check name or a folder the caller made up: the caller's, not the student's
        return report(gradable=False, failure="infrastructure", error=str(error))
    if not submission_dir.is_dir():
        return report(gradable=False, failure="submission",
                      error=f"the submission folder {submission_dir} does not exist")
    lab: Lab | None = None
    try:
        image, _ = exercise.server_image()
        names, extra = grading_images(exercise)
        images = project.ensure_images(say, names=names, extra=extra)
        lab = Lab.create(with_server_image(project.spec, image), project.backend)
        try:
            lab.up(images, Submission.for_exercise(exercise, submission_dir, env=options.env), progress=say)
        except ServerStartError as error:
            return report(gradable=False, failure="submission", error=f"the server did not start: {error}",
                          backend=lab.backend.name, limits=lab.backend.limits_by())
        run = Run(lab, exercise, budget=options.budget or exercise.budget, started=started, say=say,
                  tell=on_result if on_result is not None else (lambda result: None),
                  student_view=options.student_view,
                  keeper=Keeper(folder, student_view=options.student_view) if folder is not None else None)
        results = [run.next(check) for check in checks]
        return report(gradable=True, results=results, budget_exhausted=run.exhausted,
                      backend=lab.backend.name, limits=lab.backend.limits_by(),
                      server_usage=run.meter.summary(),
                      server_log_tail=lab.log_tail(lab.spec.server.name, LOG_TAIL_LINES))
    except LabctlError as error:
        return report(gradable=False, failure=failure_of(error), error=str(error))
    finally:
        if lab is not None:
            say("removing the lab")
            lab.down()


class Run:
    """The checks of one grading, one after the other, within the grading's budget: what each one's result
    is, given what the ones before it found (a server gone, a budget used up)."""

    def __init__(self, lab: Lab, exercise: Exercise, budget: float, started: float, say: Progress, tell: OnResult,
                 student_view: bool = False, keeper: Keeper | None = None):
        self.lab, self.exercise, self.budget, self.started = lab, exercise, budget, started
        self.say, self.tell = say, tell
        self.student_view = student_view
        self.keeper = keeper                   # keeps the evidence of failed checks (--evidence), or None
        self.exhausted = False                 # the grading's budget ran out before every check had run
        self.evidence_seconds = 0.0            # time spent keeping evidence: not counted in the budget
        self.server_gone: str | None = None    # why the server can no longer be graded
        self.meter = UsageMeter(lab, lab.spec.server.name)

    def next(self, check: CheckSpec) -> CheckResult:
        evidence = self.keeper.open(check) if self.keeper is not None else None
        result = self._result(check, evidence)
        if evidence is not None:
            result = evidence.close(result)
            self.evidence_seconds += evidence.seconds
        self.tell(result)
        self.meter.read()
        return result

    def _result(self, check: CheckSpec, evidence: CheckEvidence | None = None) -> CheckResult:
        left = self.budget - (time.monotonic() - self.started - self.evidence_seconds)
        # Unavailable first: a check this backend cannot run is left out of every submission's total alike,
        # whether or not the server is still up (else a crashed server would be graded out of more points).
        missing = check.needs - self.lab.backend.offers()
        if missing:
            return _unavailable(check, self.lab.backend.name, missing)
        if self.server_gone is not None:
            return _not_run(check, "failed", f"not run: {self.server_gone}")
        if left <= 1.0:
            self.exhausted = True
            return _not_run(check, "timed_out",
                            f"not run: the grading's time budget of {self.budget:g} s ran out before this check")
        self.say(f"check {HIDDEN_NAME if self.student_view and check.visibility == 'hidden' else check.name}")
        with during_check(self.lab, check.impair) as impaired:
            result = run_check(self.lab, self.exercise, check, min(check.budget, left), evidence)
        if impaired:
            result = result.model_copy(update={"evidence": {
                **result.evidence, "impairment": {node: state.evidence() for node, state in impaired.items()}}})
        if left < check.budget and result.status == "timed_out":
            # It had only what was left of the grading's budget, and that was not enough. (An error with
            # time left is the check's own: it keeps its message.)
            self.exhausted = True
            return _not_run(check, "timed_out", f"not run to the end: the grading's time budget of "
                                                f"{self.budget:g} s ran out ({left:.1f} s were left for it)")
        if not result.passed:
            self.server_gone = _server_gone(self.lab, check.name)
            if self.server_gone:
                return result.model_copy(update={"message": f"{result.message} ({self.server_gone})"})
        return result


def run_check(lab: Lab, exercise: Exercise, spec: CheckSpec, budget: float,
              evidence: CheckEvidence | None = None) -> CheckResult:
    """Run one check in a thread, within `budget` seconds (+ GRACE), and turn it into a CheckResult.

    With `evidence`, what proves a failure is gathered around it: begun before the check's clock starts
    (its budget is whole), handed what the check saw while it runs."""
    definition = REGISTRY[spec.check]
    if evidence is not None:
        evidence.begin(lab, budget + GRACE)
    ctx = CheckContext.of(lab, port=lab.server_port, deadline=time.monotonic() + budget,
                          exercise_dir=exercise.dir, docroot=exercise.docroot, witness=evidence)
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["outcome"] = definition.run(ctx, spec.params)
        except BaseException as error:  # reported in the result, never lost in a thread
            box["error"] = error

    started = time.monotonic()
    worker = threading.Thread(target=target, name=f"check-{spec.name}", daemon=True)
    worker.start()
    worker.join(budget + GRACE)
    duration = round(time.monotonic() - started, 3)
    error = box.get("error")
    if isinstance(error, BudgetTooShort):  # it had too little time to begin its work: it says how little
        status, outcome = "timed_out", Outcome(False, str(error), {"budget_seconds": budget})
    elif worker.is_alive() or (isinstance(error, LabctlError) and time.monotonic() >= ctx.deadline):
        status, outcome = "timed_out", Outcome(
            False, f"the check did not finish within its time budget of {budget:g} s: the server may be stuck "
                   "or far too slow", {"budget_seconds": budget})
    elif "error" in box:
        error = box["error"]
        status, outcome = "error", Outcome(False, f"the check could not run: {error}",
                                           {"exception": type(error).__name__})
    else:
        outcome = box["outcome"]  # type: ignore[assignment]
        status = "passed" if outcome.passed else "failed"
    return CheckResult(name=spec.name, check=spec.check, status=status,
                       points=spec.points if status == "passed" else 0.0, max_points=spec.points,
                       visibility=spec.visibility, duration=duration, message=outcome.message,
                       evidence=outcome.evidence, description=spec.description or definition.summary)


def _unavailable(spec: CheckSpec, backend: str, missing: frozenset[Feature]) -> CheckResult:
    """A check this backend cannot run: said as such, its points out of the total (never a silent 0)."""
    lacks = "; ".join(FEATURES[feature] for feature in sorted(missing))
    return CheckResult(name=spec.name, check=spec.check, status="unavailable", points=0.0, max_points=0.0,
                       visibility=spec.visibility, duration=0.0,
                       message=f"not available on the {backend} backend: it needs {lacks}. Its "
                               f"{spec.points:g} point{'s' if spec.points != 1 else ''} are left out of the total; "
                               "`--backend docker` runs it.",
                       evidence={"points_left_out": spec.points, "needs": sorted(missing)},
                       description=spec.description or REGISTRY[spec.check].summary)


def _not_run(spec: CheckSpec, status: str, message: str) -> CheckResult:
    return CheckResult(name=spec.name, check=spec.check, status=status, points=0.0, max_points=spec.points,
                       visibility=spec.visibility, duration=0.0, message=message,
                       description=spec.description or REGISTRY[spec.check].summary)


def _server_gone(lab: Lab, after: str) -> str | None:
    """Why the server can no longer be graded, or None while it runs normally.

    Asked after a check failed: a server that exited (or was killed for memory) or that
    has used up its task limit (a fork bomb, a thread leak) fails the remaining checks at
    once instead of letting each one run into its time budget. Both facts come from the
    engine and the server's cgroup, not from inside the lab.
    """
    server = lab.spec.server
    info = lab.server_info()
    if not info.running:
        cause = (f"it was killed for using more memory than allowed ({server.limits.memory})" if info.oom_killed
                 else f"it exited with code {info.exit_code}")
        return f"the server stopped during check {after}: {cause}"
    try:
        tasks = lab.usage(server.name).tasks
    except LabctlError:
        return None
    if tasks is not None and tasks >= server.limits.pids * TASK_LIMIT_SHARE:
        return (f"the server used up its task limit during check {after} ({tasks} of {server.limits.pids} "
                "processes and threads): a fork bomb or a thread leak")
    return None


class UsageMeter:
    """The server's CPU and tasks over a grading, read from its cgroup before the first check and
    after each one (the peak of tasks is the most seen at a reading)."""

    def __init__(self, lab: Lab, node: str):
        self.lab, self.node = lab, node
        self.readings: list[Usage] = []
        self.read()

    def read(self) -> None:
        try:
            self.readings.append(self.lab.usage(self.node))
        except LabctlError:
            pass  # the server is gone: the readings so far stand

    def summary(self) -> ServerUsage | None:
        if len(self.readings) < 2:
            return None
        first, last = self.readings[0], self.readings[-1]
        tasks = [reading.tasks for reading in self.readings if reading.tasks is not None]
        return ServerUsage(seconds=round(last.at - first.at, 3), cpu_seconds=round(last.cpu_seconds - first.cpu_seconds, 4),
                           peak_tasks=max(tasks) if tasks else None,
                           precise=all(reading.precise for reading in self.readings))


def grading_images(exercise: Exercise) -> tuple[list[str], dict[str, Path]]:
    """(the images a grading of `exercise` runs on, the exercise's own image folder: name -> folder): the
    server's image and the tools image of the client, injector and observer. One answer for grading, for
    `labctl images build --exercise` and for the image cache of a CI job, so the cache holds what grading asks."""
    image, extra = exercise.server_image()
    return sorted({image, "tools"}), extra


def with_server_image(spec, image: str):
    """The lab spec with the server node on `image` (an exercise in C uses server-c; one in another
    language, an image of its own)."""
    if spec.server.image == image:
        return spec
    server = spec.server.model_copy(update={"image": image})
    nodes = {name: (server if name == server.name else node) for name, node in spec.nodes.items()}
    return spec.model_copy(update={"nodes": nodes})
