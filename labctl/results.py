"""The result of grading: one CheckResult per check, one GradeReport per grading.

This is the one place that defines the report schema. The `json` report is exactly
`GradeReport.model_dump_json()`; every other format (terminal, junit, gradescope,
prairielearn, github) is rendered from these models and nothing else.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from labctl.errors import EXIT_FAILED, EXIT_INFRASTRUCTURE, EXIT_NOT_GRADABLE, EXIT_PASSED

Visibility = Literal["public", "hidden"]
Status = Literal["passed", "failed", "timed_out", "error", "unavailable"]
#: Why a grading could not happen: the submission's doing, or the machine's (see GradeReport.failure).
Failure = Literal["submission", "infrastructure"]

#: The `check` of the one result that stands for every hidden check in a student's view.
HIDDEN_CHECKS = "hidden_checks"
#: What a student's view says instead of a hidden check's name, wherever another text names it.
HIDDEN_NAME = "a hidden check"

SCHEMA_VERSION = 1

#: What an evidence file holds (labctl/evidence): the thread timeline picture of a process check and the samples
#: it was drawn from; the packets of a network check and its connections as a timing table.
EvidenceKind = Literal["threads-picture", "threads-samples", "packets", "connections", "load-curve"]


class EvidenceFile(BaseModel):
    """One file of a failed check's evidence (`--evidence DIR`), where the report's `evidence_dir` holds it."""

    kind: EvidenceKind
    path: str = Field(description="Relative to the report's evidence_dir: '03-idle-cpu.threads.png'.")
    media_type: str = Field(description="image/png, application/json, application/vnd.tcpdump.pcap, text/plain.")
    bytes: int = Field(ge=0)
    description: str = Field(description="What it shows, in a few words.")


class CheckResult(BaseModel):
    """What one check found, in numbers and in words a student understands."""

    name: str = Field(description="The check's name in the exercise (unique within it).")
    check: str = Field(description="The catalog check it ran (http, slow_client, blocked_in, ...).")
    status: Status = Field(description="passed; failed (the server is wrong); timed_out (the check's time "
                                       "budget ran out); error (the check itself could not run); unavailable "
                                       "(the backend lacks what the check needs: not run, its points left out "
                                       "of the total).")
    points: float = Field(ge=0, description="Points earned: max_points when passed, else 0.")
    max_points: float = Field(ge=0)
    visibility: Visibility = "public"
    duration: float = Field(ge=0, description="Seconds the check took.")
    message: str = Field(description="Why it passed or failed, in plain words.")
    evidence: dict[str, Any] = Field(default_factory=dict,
                                     description="Numbers behind the message: latencies, thread states, "
                                                 "log tail, pcap path.")
    description: str = Field("", description="What the check looks for and why (from the exercise).")
    evidence_files: list[EvidenceFile] = Field(default_factory=list, description=(
        "What proves this check's failure, kept with --evidence: a picture of the server's threads, the "
        "samples behind it, the packets, a timing table of the connections (none for a check that passed)."))
    evidence_left_out: list[str] = Field(default_factory=list, description=(
        "Why evidence this check would have had is not there (a cap reached, a capture that could not run)."))

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @property
    def lesson(self) -> bool:
        """Worth 0 points: a demonstration (e.g. "a slow client blocks a blocking server"), shown for what it
        teaches and never a failure, whatever its status, in any report."""
        return self.max_points == 0 and not self.unavailable

    @property
    def unavailable(self) -> bool:
        """Not run: the backend lacks what it needs (raw packets, say). Neither a pass nor a failure; its
        points are out of the total (max_points 0) and `evidence["points_left_out"]` says how many."""
        return self.status == "unavailable"

    @property
    def graded(self) -> bool:
        """It counts: neither a lesson nor unavailable."""
        return not self.lesson and not self.unavailable

    @property
    def aside(self) -> str | None:
        """Why it is not graded, in the words every report uses (None: it is graded)."""
        if self.lesson:
            return "a lesson, not graded"
        if self.unavailable:
            return "not available on this backend, not graded"
        return None


class ServerUsage(BaseModel):
    """What the server used while it was graded, from its container's cgroup, read by the host:
    every task counts, reaped children too, and nothing in the lab can see it being read."""

    seconds: float = Field(ge=0, description="How long the checks took, from the first to the last reading.")
    cpu_seconds: float = Field(ge=0, description="CPU time the server used meanwhile.")
    peak_tasks: int | None = Field(None, description="The most processes and threads seen at a reading.")
    precise: bool = Field(True, description="False: read from the engine's once-a-second statistics (a remote "
                                            "engine), not from the cgroup directly.")


class GradeReport(BaseModel):
    """A whole grading: every check run, the score, and whether grading was possible at all."""

    schema_version: int = SCHEMA_VERSION
    labctl_version: str
    exercise: str = Field(description="The exercise id (its folder name).")
    title: str = ""
    submission: str = Field(description="The submission folder as given.")
    gradable: bool = Field(description="False when grading could not happen (bad input, the server never "
                                       "started, engine trouble); `error` says why, `failure` whose doing it was.")
    failure: Failure | None = Field(None, description=(
        "Whose doing it was that grading could not happen (None when gradable): \"submission\" (the server "
        "never started or never listened, a submission over limits, a missing folder: the student's to fix, "
        "and it counts as a not-gradable attempt) or \"infrastructure\" (the engine unreachable, an image "
        "that would not build, labctl's own trouble: nobody's submission is at fault, no score is to be "
        "kept, and it is to be graded again). Not gradable without a failure given means infrastructure."))
    error: str | None = None
    started_at: str = Field(description="ISO 8601, UTC.")
    duration: float = Field(ge=0)
    score: float = Field(ge=0)
    max_score: float = Field(ge=0)
    results: list[CheckResult] = Field(default_factory=list)
    server_log_tail: str = ""
    budget_exhausted: bool = Field(False, description="True when the global time budget ran out and "
                                                      "some checks did not run.")
    server_usage: ServerUsage | None = Field(None, description="The server's CPU over the checks (None: not "
                                                               "graded, or its cgroup could not be read).")
    backend: str = Field("docker", description="Where the lab ran: docker (containers) or local (this host's "
                                               "processes, no engine).")
    limits: str = Field("", description="How the server's limits were enforced (cgroups, rlimits...).")
    evidence_dir: str | None = Field(None, description=(
        "The folder --evidence wrote the failed checks' evidence files to (each result's evidence_files are "
        "relative to it); None without --evidence."))

    @model_validator(mode="after")
    def _failure_goes_with_gradable(self) -> GradeReport:
        """A graded report has no failure; one that is not gradable always has one (infrastructure when the
        maker did not say: no score is kept for it, the safe side for a student)."""
        if self.gradable and self.failure is not None:
            raise ValueError(f"a gradable report has no failure, found {self.failure!r}")
        if not self.gradable and self.failure is None:
            self.failure = "infrastructure"
        return self

    @property
    def infrastructure_failed(self) -> bool:
        """Grading could not happen and the machine, not the submission, is why."""
        return self.failure == "infrastructure"

    @property
    def all_passed(self) -> bool:
        """Every graded check passed. A check worth 0 points is a demonstration (shown for the
        lesson, e.g. "a slow client blocks a blocking server") and never counts."""
        return self.gradable and all(result.passed for result in self.results if result.graded)

    @property
    def exit_code(self) -> int:
        """labctl grade's exit code: 0 all passed, 1 graded with failures, 2 not gradable (the submission),
        3 not graded because the infrastructure failed."""
        if not self.gradable:
            return EXIT_INFRASTRUCTURE if self.infrastructure_failed else EXIT_NOT_GRADABLE
        return EXIT_PASSED if self.all_passed else EXIT_FAILED

    @property
    def hidden(self) -> list[CheckResult]:
        return [result for result in self.results if result.visibility == "hidden"]

    @property
    def public(self) -> list[CheckResult]:
        return [result for result in self.results if result.visibility == "public"]

    def for_students(self) -> GradeReport:
        """What a student may see of this report, the one place that decides it (`--student-view`, `labctl
        test`, and the reports a student's repository or platform shows whatever the caller asked).

        Every check still counts: the score and max_score do not change. The hidden checks become ONE result,
        "hidden checks", with their summed points and how many there were, never a name, message or evidence
        (nor evidence files: a grading with `student_view` does not even keep a hidden check's);
        a public check's texts and the error say "a hidden check" where they named one (a server that died
        during a hidden check says so in the checks after it); the server's log goes when there are hidden
        checks (it can show every request they made). The same view of a view is itself."""
        hidden = self.hidden
        if not hidden or all(result.check == HIDDEN_CHECKS for result in hidden):
            return self
        names = sorted({result.name for result in hidden}, key=len, reverse=True)
        public = [_redacted_result(result, names) for result in self.public]
        return self.model_copy(update={
            "results": public + [hidden_summary(hidden)],
            "error": _redact(self.error, names) if self.error is not None else None,
            "server_log_tail": "",
        })


def hidden_summary(hidden: list[CheckResult]) -> CheckResult:
    """The one result a student sees for every hidden check: "hidden checks: 6/10 points (3 checks)".
    Passed when every graded hidden check passed; worth 0 (a lesson) when they all are."""
    earned = round(sum(result.points for result in hidden), 6)
    possible = round(sum(result.max_points for result in hidden), 6)
    graded = [result for result in hidden if not result.lesson]
    status: Status = "passed" if all(result.passed for result in graded) else "failed"
    count = f"{len(hidden)} check{'s' if len(hidden) != 1 else ''}"
    return CheckResult(name="hidden checks", check=HIDDEN_CHECKS, status=status, points=earned,
                       max_points=possible, visibility="hidden",
                       duration=round(sum(result.duration for result in hidden), 3),
                       message=f"hidden checks: {_number(earned)}/{_number(possible)} points ({count})",
                       evidence={"checks": len(hidden), "passed": sum(1 for result in hidden if result.passed)},
                       description="Checks whose names and details are not shown; their points count.")


def _number(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".") or "0"


def _redact(value: Any, names: list[str]) -> Any:
    """value with every hidden check's name replaced by HIDDEN_NAME (strings inside lists and dicts too)."""
    if isinstance(value, str):
        for name in names:
            if name:
                value = value.replace(name, HIDDEN_NAME)
        return value
    if isinstance(value, list):
        return [_redact(item, names) for item in value]
    if isinstance(value, dict):
        return {_redact(key, names): _redact(item, names) for key, item in value.items()}
    return value


def _redacted_result(result: CheckResult, names: list[str]) -> CheckResult:
    return result.model_copy(update={"message": _redact(result.message, names),
                                     "evidence": _redact(result.evidence, names),
                                     "description": _redact(result.description, names),
                                     "evidence_left_out": _redact(result.evidence_left_out, names)})
