"""The result of grading: one CheckResult per check, one GradeReport per grading.

This is the one place that defines the report schema. The `json` report is exactly
`GradeReport.model_dump_json()`; every other format (terminal, junit, gradescope,
prairielearn, github) is rendered from these models and nothing else.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

Visibility = Literal["public", "hidden"]
Status = Literal["passed", "failed", "timed_out", "error", "unavailable"]

SCHEMA_VERSION = 1


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
                                       "started, engine trouble); `error` says why.")
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

    @property
    def all_passed(self) -> bool:
        """Every graded check passed. A check worth 0 points is a demonstration (shown for the
        lesson, e.g. "a slow client blocks a blocking server") and never counts."""
        return self.gradable and all(result.passed for result in self.results if result.graded)

    @property
    def exit_code(self) -> int:
        """labctl grade's exit code: 0 all passed, 1 graded with failures, 2 not gradable."""
        if not self.gradable:
            return 2
        return 0 if self.all_passed else 1

    def visible(self, include_hidden: bool) -> GradeReport:
        """The same report without hidden checks (a student's view: `labctl test`)."""
        if include_hidden:
            return self
        shown = [result for result in self.results if result.visibility == "public"]
        return self.model_copy(update={"results": shown,
                                       "score": sum(r.points for r in shown),
                                       "max_score": sum(r.max_points for r in shown)})
