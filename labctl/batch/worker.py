"""A farm worker (`labctl worker`): a Dask worker in this process that grades the jobs `labctl batch --farm`
sends through a Dask scheduler.

Why Dask distributed (the README's "A grading farm" says more, with sources): the scheduler learns of a
worker's death the moment its connection closes (the kernel closes the sockets of a process killed -9) and
hands that worker's tasks to the others at once; a task that keeps killing workers is failed after
`distributed.scheduler.allowed-failures` deaths (KilledWorker) instead of taking the farm down; a result
belongs to its task's key, so each student comes back once.

The worker is plain `distributed.Worker` (no nanny: the gradings run in child processes of their own, not in
tasks that need restarting; Dask's memory management off: the memory that matters is the labs', each capped
by lab.yaml), with `--labs` threads, each running one child `labctl grade` at a time (job.run_job). What a
worker can grade is said with one Dask resource per exercise it serves, named after that exercise's
fingerprint and worth its labs: a task asks for its batch's fingerprint, so it only ever goes to workers with
the same labctl and the same files, including workers that join mid-batch.

At start: the engine must answer, the images are built if missing (offline, as `labctl images build`), and
the labs orphaned by an earlier worker of this host that died with its gradings are removed, found by label.
On Ctrl-C or SIGTERM: leave the scheduler first (it gives the running tasks to other workers, counting no
failure against them), then stop the gradings (each removes its lab), then remove what is left by label.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from labctl import __version__
from labctl.backends.base import Backend
from labctl.batch.job import (
    CHILDREN,
    OVERRUN,
    Job,
    JobResult,
    WrongVersion,
    check_fingerprint,
    exercise_fingerprint,
    fingerprint_parts,
    run_job,
)
from labctl.errors import InfrastructureError, LabctlError
from labctl.interrupts import ignore_interrupts
from labctl.lab import LABEL_HOST, LABEL_LAB, LABEL_OWNER, LABEL_PID
from labctl.pids import alive
from labctl.project import Project

#: The owner label of every lab a farm worker's gradings make: `labctl-farm:<worker name>`. Orphans are
#: looked for among these only: a `labctl up` playground outlives the process that made it on purpose.
FARM_OWNER = "labctl-farm"
#: Each worker's temporary files (its jobs' submissions and reports, Dask's own space) are in one folder of the
#: system's temporary folder, named after its pid: a worker killed -9 leaves it, the next worker removes it.
SCRATCH_PREFIX = "labctl-worker-"
#: Seconds to find the scheduler at start, and to leave it at the end.
CONNECT_TIMEOUT = 30.0
LEAVE_TIMEOUT = 20.0

Say = Callable[[str], None]


class FarmUnreachable(InfrastructureError):
    """No Dask scheduler answers at the address given (exit 3: the farm, not a submission, is at fault)."""


def resource_name(fingerprint: str) -> str:
    """The Dask resource a worker offers for an exercise it grades with these files, and a task asks for."""
    return f"labctl-{fingerprint}"


def farm_owner(worker_name: str) -> str:
    return f"{FARM_OWNER}:{worker_name}"


@dataclass
class Serving:
    """What this process's worker grades: the project, its name, how many labs at once, and the exercises
    (id -> fingerprint at start)."""

    project: Project
    name: str
    labs: int
    fingerprints: dict[str, str] = field(default_factory=dict)


#: Set by `serve` in the process that runs `labctl worker`; the task functions below read it.
_SERVING: Serving | None = None


# -- what the batch's client runs on the workers ------------------------------------------------------

def describe(exercise_id: str) -> dict:
    """What the batch needs to accept this worker for `exercise_id`: its name, host, labs, labctl version and
    the exercise's fingerprint it serves (with its parts, to say what differs) — or why it cannot grade it."""
    serving = _SERVING
    if serving is None:
        return {"error": "it is not a labctl worker (a plain `dask worker`?): start `labctl worker` there"}
    info: dict = {"name": serving.name, "host": socket.gethostname(), "labs": serving.labs, "labctl": __version__}
    if exercise_id not in serving.fingerprints:
        info["error"] = (f"it does not grade {exercise_id} (it grades: {', '.join(serving.fingerprints) or 'nothing'}; "
                         "`labctl worker --exercise` chooses)")
        return info
    served = serving.fingerprints[exercise_id]
    try:
        now = exercise_fingerprint(serving.project, exercise_id)
        info["parts"] = fingerprint_parts(serving.project, exercise_id)
    except LabctlError as error:
        info["error"] = f"its project cannot load {exercise_id}: {error}"
        return info
    # The fingerprint it serves is the one its Dask resource is named after (tasks ask for that): files changed
    # under a running worker must not make it look like the batch's while its resource says otherwise.
    info["fingerprint"] = served
    if now != served:
        info["error"] = (f"its files of {exercise_id} changed since it started (fingerprint {served[:12]} then, "
                         f"{now[:12]} now): restart it")
    return info


def grade(job: Job, budget: float, key: str) -> JobResult:
    """The farm's task: check the job was made for this worker's files, grade it in a child `labctl grade`
    (tagged with the task's key, so a cancelled batch can stop it), its labs owned by this worker."""
    serving = _SERVING
    if serving is None:
        return JobResult(job.student, "error", f"{socket.gethostname()} is not a labctl worker",
                         worker=socket.gethostname())
    try:
        check_fingerprint(serving.project, job)
    except WrongVersion as error:
        return JobResult(job.student, "error", str(error), worker=serving.name)
    except LabctlError as error:  # no such exercise in this worker's project
        return JobResult(job.student, "error", f"{serving.name}: {error}", worker=serving.name)
    CHILDREN.renew(key)  # the same student resumed after a cancelled batch is graded, not stopped again
    result = run_job(serving.project, job, budget, worker=serving.name, tag=key,
                     environment={"LABCTL_OWNER": farm_owner(serving.name)})
    if CHILDREN.stopping.is_set():
        # This worker is leaving: the grading was stopped by that, not by the submission. Dask gives the task
        # to another worker (no failure is counted).
        from distributed import Reschedule

        raise Reschedule()
    return result


async def stop_gradings(keys: list[str]) -> int:
    """Stop the gradings of these tasks (a batch stopped with Ctrl-C) and wait until they have ended, their
    labs removed; the worker's other gradings go on. Returns how many were running here."""
    children = CHILDREN.stop(set(keys))
    if children:
        await asyncio.to_thread(CHILDREN.wait_all, OVERRUN, children)
    return len(children)


# -- orphans ------------------------------------------------------------------------------------------

def remove_orphans(backend: Backend, host: str | None = None) -> list[str]:
    """Remove the labs of farm gradings on this host whose grading process is gone (a worker and its child
    killed -9 together leave their lab behind), found by label: owner `labctl-farm:...`, `labctl.host` this
    host, `labctl.pid` not alive. Returns their ids."""
    host = host or socket.gethostname()
    labels: dict[str, dict[str, str]] = {}
    seen_labels = [item.labels for item in backend.find_containers({LABEL_LAB: ""})]
    seen_labels += [item.labels for item in backend.find_networks({LABEL_LAB: ""})]
    for item in seen_labels:
        labels.setdefault(item.get(LABEL_LAB, ""), item)
    orphans = []
    for lab_id, seen in sorted(labels.items()):
        pid = seen.get(LABEL_PID, "")
        if (lab_id and seen.get(LABEL_OWNER, "").startswith(FARM_OWNER + ":") and seen.get(LABEL_HOST) == host
                and pid.isdigit() and not alive(int(pid), labctl_only=True)):
            backend.remove({LABEL_LAB: lab_id})
            orphans.append(lab_id)
    return orphans


def remove_stale_scratch(base: Path | None = None) -> list[Path]:
    """Remove the temporary folders of workers of this host that are gone (killed -9 mid-grading); which."""
    base = base or Path(tempfile.gettempdir())
    removed = []
    for folder in sorted(base.glob(SCRATCH_PREFIX + "*")):
        pid = folder.name[len(SCRATCH_PREFIX):]
        if pid.isdigit() and not alive(int(pid), labctl_only=True):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


# -- the worker ---------------------------------------------------------------------------------------

def prepare(project: Project, labs: int, name: str, exercise_ids: list[str], say: Say) -> Serving:
    """Everything before joining the farm: the engine answers, orphans removed, the images built if missing,
    each exercise's fingerprint. Raises LabctlError (an exercise that does not load, an engine that does not
    answer, an image that does not build) before the worker takes any job."""
    from labctl.grading import grading_images

    backend = project.backend  # EngineUnreachable here: exit 3
    exercises = project.exercises(exercise_ids)
    removed = remove_orphans(backend)
    say(f"removed {len(removed)} orphaned lab(s) of farm gradings on this host: {', '.join(removed)}" if removed
        else "no orphaned lab of a farm grading on this host")
    for folder in remove_stale_scratch():
        say(f"removed the temporary folder of a worker that is gone: {folder}")
    names: set[str] = set()
    extra: dict[str, Path] = {}
    for exercise in exercises:
        images, own = grading_images(exercise)
        names.update(images)
        extra.update(own or {})
    started = time.monotonic()
    tags = project.ensure_images(say, names=sorted(names), extra=extra)
    say(f"images ready in {time.monotonic() - started:.1f} s: {', '.join(tags.values())}")
    serving = Serving(project, name, labs, {exercise.id: exercise_fingerprint(project, exercise.id)
                                            for exercise in exercises})
    return serving


def serve(serving: Serving, scheduler: str, say: Say) -> str:
    """Run the worker until Ctrl-C, SIGTERM or the scheduler's end; returns why it stopped. Nothing is left
    running: the gradings are stopped and their labs removed, also when the scheduler went away."""
    global _SERVING
    _quiet_dask_logs()
    _SERVING = serving
    system_temp = tempfile.gettempdir()
    scratch = Path(system_temp) / f"{SCRATCH_PREFIX}{os.getpid()}"
    scratch.mkdir(mode=0o700, exist_ok=True)
    tempfile.tempdir = str(scratch)   # run_job's folders go there
    try:
        return asyncio.run(_run(serving, scheduler, scratch, say))
    finally:
        ignore_interrupts()  # asyncio gave SIGTERM back its default (death) on the way out: no more of that now
        CHILDREN.stop_all()
        CHILDREN.wait_all(OVERRUN)
        removed = remove_orphans(serving.project.backend)
        if removed:
            say(f"removed the labs left by stopped gradings: {', '.join(removed)}")
        tempfile.tempdir = system_temp
        shutil.rmtree(scratch, ignore_errors=True)
        _SERVING = None


async def _run(serving: Serving, scheduler: str, scratch: Path, say: Say) -> str:
    import dask
    from distributed import Worker

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(number, stop.set)
    resources = {resource_name(fingerprint): float(serving.labs) for fingerprint in serving.fingerprints.values()}
    # Dask's memory management off: it would pause, spill or kill this process for the memory of tasks, and a
    # grading's memory is its lab's (capped per container by lab.yaml), not this process's.
    memory_off = {f"distributed.worker.memory.{key}": False for key in ("target", "spill", "pause", "terminate")}
    with dask.config.set(memory_off):
        worker = Worker(scheduler, nthreads=serving.labs, name=serving.name, resources=resources, memory_limit=0,
                        death_timeout=CONNECT_TIMEOUT, dashboard=False, local_directory=str(scratch / "dask"))
        try:
            await worker
        except (OSError, TimeoutError, ValueError, RuntimeError) as error:  # RuntimeError: "failed to start", cause inside
            with contextlib.suppress(Exception):
                await worker.close(timeout=5)
            cause = error.__cause__ or error
            if "name taken" in str(cause):
                raise LabctlError(f"a worker named {serving.name!r} is already on the farm at {scheduler}: give this "
                                  "one another --name") from None
            raise FarmUnreachable(f"no Dask scheduler took this worker at {scheduler} within {CONNECT_TIMEOUT:.0f} s "
                                  f"({type(cause).__name__}: {cause}); is `dask scheduler` running there?") from None
        say(f"worker {serving.name} ({worker.address}) joined the farm at {scheduler}, {serving.labs} lab(s) at once; "
            "Ctrl-C stops it")
        stopping = asyncio.ensure_future(stop.wait())
        finished = asyncio.ensure_future(worker.finished())
        await asyncio.wait({stopping, finished}, return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set():
            reason = "stopped"
            say("stopping: leaving the scheduler (its gradings go to other workers), then stopping the gradings")
            with contextlib.suppress(Exception):  # a scheduler already gone: nothing to leave
                await asyncio.wait_for(worker.scheduler.retire_workers(
                    workers=[worker.address], close_workers=False, remove=True,
                    stimulus_id=f"labctl-worker-stop-{time.time()}"), LEAVE_TIMEOUT)
        else:
            reason = "the scheduler closed the connection"
            say(f"{reason}: stopping the gradings")
        CHILDREN.stop_all()
        await asyncio.to_thread(CHILDREN.wait_all, OVERRUN)
        with contextlib.suppress(Exception):
            await worker.close(timeout=10)
        for task in (stopping, finished):
            task.cancel()
        return reason


def _quiet_dask_logs() -> None:
    """Dask's own INFO lines (every connection, every task's transfer) would drown the worker's; its
    warnings and errors stay. After Dask's import: importing it sets its loggers' levels from its config."""
    import distributed  # noqa: F401

    for name in ("distributed", "distributed.worker", "distributed.core", "distributed.scheduler"):
        logging.getLogger(name).setLevel(logging.WARNING)
