"""The batch's side of a grading farm: `labctl batch --farm URL` grades its jobs on the `labctl worker`s of a
Dask scheduler instead of on this machine (the Executor of labctl.batch.runner).

At start the executor asks every worker, through the scheduler, what it grades: a worker with another labctl,
lab.yaml, images or exercise files than this batch is refused, by name, saying which of these differ. Each
job then becomes one Dask task that asks for the resource named after the batch's fingerprint
(worker.resource_name), so only workers with the same files ever run it, and whose key is a hash of the
student, the submission and the fingerprint: submitted twice, it is still one task, graded once.

A worker that dies mid-grading costs time only: the scheduler gives its tasks to other workers at once. A
task that took `distributed.scheduler.allowed-failures` workers down with it is failed by Dask (KilledWorker)
and comes back here as an "error" row that says so, never as a crash of the batch.
"""

from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from labctl.batch.job import MAX_PACKED_BYTES, Job, JobResult, differences, fingerprint_parts
from labctl.batch.worker import CONNECT_TIMEOUT, FarmUnreachable, describe, grade, resource_name, stop_gradings
from labctl.errors import LabctlError
from labctl.untrusted import printable

if TYPE_CHECKING:
    from labctl.project import Project

Say = Callable[[str], None]


@dataclass(frozen=True)
class FarmWorker:
    """A worker that grades this batch's exercise with the batch's files."""

    address: str
    name: str
    host: str
    labs: int


def task_key(job: Job) -> str:
    """The Dask key of a job: the same student, submission, files and reports give the same key, so a batch
    submitted again (resumed, or by mistake twice) never grades a student twice at once."""
    digest = hashlib.sha256("\0".join((job.student, job.submission_hash, job.fingerprint, *job.reports)).encode())
    return f"labctl-grade-{digest.hexdigest()[:32]}"


def _say_on_stderr(message: str) -> None:
    print(message, file=sys.stderr)


class FarmExecutor:
    """Grades jobs on a Dask farm; the runner's Executor (name, jobs, submit, close)."""

    def __init__(self, url: str, project: Project, exercise_id: str, fingerprint: str, say: Say | None = None):
        """Connect to the scheduler at `url` and choose the workers that grade `exercise_id` with `fingerprint`;
        `say` hears which workers were refused and why (default: stderr). FarmUnreachable (exit 3) when no
        scheduler answers; LabctlError (exit 2) when no worker can grade this batch."""
        from distributed import Client

        self.name = f"farm {url}"
        self.url = url
        self.fingerprint = fingerprint
        self._say = say or _say_on_stderr
        self._lock = threading.Lock()
        self._pending: dict[str, tuple[Any, concurrent.futures.Future[JobResult]]] = {}
        try:
            self._client = Client(url, timeout=CONNECT_TIMEOUT, set_as_default=False)
        except (OSError, TimeoutError, ValueError) as error:
            raise FarmUnreachable(f"no Dask scheduler answers at {url} ({type(error).__name__}: {error}): start one "
                                  "with `dask scheduler` and give its address (tcp://HOST:8786)") from None
        try:
            self.workers, refusals = self._choose_workers(project, exercise_id)
        except BaseException:
            self._client.close()
            raise
        for refusal in refusals:
            self._say(refusal)
        if not self.workers:
            self._client.close()
            why = "; ".join(refusals) if refusals else "no worker is connected to it"
            raise LabctlError(f"no worker of the farm at {url} can grade {exercise_id} with this batch's files: {why}. "
                              f"Start `labctl worker --scheduler {url}` on a grading host with the same labctl and "
                              "project as this one")
        self.jobs = sum(worker.labs for worker in self.workers)

    def _choose_workers(self, project: Project, exercise_id: str) -> tuple[list[FarmWorker], list[str]]:
        """The workers whose fingerprint of `exercise_id` is the batch's, and a sentence for each other one."""
        mine = fingerprint_parts(project, exercise_id)
        answers = self._client.run(describe, exercise_id, on_error="return")
        chosen, refused = [], []
        for address, info in sorted(answers.items()):
            if isinstance(info, BaseException):
                refused.append(f"worker {address} refused: it is not a labctl worker "
                               f"({type(info).__name__}: {printable(str(info))[:200]})")
                continue
            who = f"worker {printable(str(info.get('name', '?')))} ({address}, host {printable(str(info.get('host', '?')))})"
            if info.get("error"):
                refused.append(f"{who} refused: {printable(str(info['error']))[:300]}")
            elif info.get("fingerprint") != self.fingerprint:
                differ = differences(mine, info.get("parts") or {}) or ["its fingerprint"]
                refused.append(f"{who} refused: it grades {exercise_id} with other files: {', '.join(differ)} "
                               "differ; install the same labctl and project there")
            else:
                chosen.append(FarmWorker(address, str(info["name"]), str(info["host"]), int(info["labs"])))
        return chosen, refused

    # -- the Executor protocol ----------------------------------------------------------------------------

    def submit(self, job: Job, budget: float) -> concurrent.futures.Future[JobResult]:
        """Send a job to the farm; the future holds its JobResult (never an exception for what happened on the
        farm: a lost or failed task is an "error" row). Submitting a job again gives the same future."""
        key = task_key(job)
        with self._lock:
            if key in self._pending:
                return self._pending[key][1]
            result: concurrent.futures.Future[JobResult] = concurrent.futures.Future()
            if job.fingerprint != self.fingerprint:
                result.set_result(JobResult(job.student, "error", "the job was made for other files than this batch's"))
                return result
            if len(job.submission) > MAX_PACKED_BYTES:   # never sent: a job carries at most this much
                result.set_result(JobResult(job.student, "not gradable", f"the submission weighs {len(job.submission)} "
                                            f"bytes packed, over the {MAX_PACKED_BYTES} a job may carry"))
                return result
            task = self._client.submit(grade, job, budget, key, key=key, pure=False,
                                       resources={resource_name(job.fingerprint): 1})
            self._pending[key] = (task, result)
        task.add_done_callback(functools.partial(self._settle, key, job))
        return result

    def close(self, cancel: bool = False) -> None:
        """Without cancel: wait for what was submitted, then disconnect. With cancel (Ctrl-C): cancel every task
        not finished, have the workers stop those gradings and wait until they ended (their labs removed), then
        disconnect: nothing of this batch is left running on the farm."""
        with self._lock:
            pending = dict(self._pending)
        if cancel and pending:
            tasks = [task for task, _ in pending.values()]
            self._client.cancel(tasks, force=True, reason="the batch was stopped")
            self._client.run(stop_gradings, list(pending), on_error="return")
            for _, result in pending.values():
                result.cancel()
        else:
            concurrent.futures.wait([result for _, result in pending.values()])
        self._client.close()

    # -- results -----------------------------------------------------------------------------------------

    def _settle(self, key: str, job: Job, task: Any) -> None:
        """A task ended (Dask calls this in a thread of its own): its JobResult into the batch's future."""
        with self._lock:
            _, result = self._pending.pop(key, (None, None))
        if result is None or result.done():
            return
        if task.status == "cancelled":
            result.cancel()
            return
        try:
            value = task.result() if task.status == "finished" else None
            error = None if task.status == "finished" else task.exception()
        except Exception as failure:  # the result could not be fetched (a worker lost with it, the connection)
            value, error = None, failure
        task.release()
        if error is not None or not isinstance(value, JobResult) or value.student != job.student:
            value = lost(job, error if error is not None else ValueError(f"the task returned {type(value).__name__}"))
        result.set_result(value)


def lost(job: Job, error: BaseException) -> JobResult:
    """The "error" row of a task the farm did not bring back."""
    from distributed.scheduler import KilledWorker

    if isinstance(error, KilledWorker):
        last = getattr(error.last_worker, "name", None) or getattr(error.last_worker, "address", "?")
        message = (f"not graded: {error.allowed_failures + 1} farm workers died while grading it (the last: "
                   f"{printable(str(last))}); the farm gives up on a submission after "
                   f"distributed.scheduler.allowed-failures = {error.allowed_failures} deaths")
    else:
        message = f"the farm did not bring the grading back: {type(error).__name__}: {printable(str(error))[:500]}"
    return JobResult(job.student, "error", message)
