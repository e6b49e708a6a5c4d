"""The grading farm on the real thing: `dask scheduler` and `labctl worker` processes, the real engine, real
gradings; and one worker with a Docker engine of its own (Debian's dockerd in a container).

A module-wide scheduler and two workers (one lab each) grade the class; tests that kill or refuse workers
start their own scheduler and workers. Every process a test starts is stopped at the end of the module,
also when a test fails, and no lab of a farm grading is left (they are owned by `labctl-farm:<worker name>`,
and the names carry this pytest's owner label).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import OWNER, ROOT

from labctl.batch.job import Job, exercise_fingerprint, pack_submission
from labctl.batch.worker import SCRATCH_PREFIX, farm_owner, remove_stale_scratch
from labctl.lab import LABEL_LAB, LABEL_OWNER, LABEL_PID

EXERCISE = "blocking"
SOLUTION = ROOT / "exercises" / EXERCISE / "solution"
MUTANTS = ROOT / "exercises" / EXERCISE / "mutants"
DASK = Path(sys.executable).parent / "dask"
#: Seconds a process may take to start (a worker checks the engine, removes orphans, finds its images).
START_TIMEOUT = 120
#: Seconds a whole batch of this module may take (a grading is 15-40 s here, more on a busy machine).
BATCH_TIMEOUT = 600


# -- the processes --------------------------------------------------------------------------------------

@dataclass
class FarmProcess:
    """A scheduler or worker this module started, its output in files."""

    name: str
    popen: subprocess.Popen
    out: Path
    err: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.out.read_text(errors="replace") + self.err.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = START_TIMEOUT) -> None:
        """Until `text` is in its output; a failure with that output if it ends first or takes too long."""
        deadline = time.monotonic() + timeout
        while text not in self.output():
            if self.popen.poll() is not None:
                pytest.fail(f"{self.name} ended (exit {self.popen.returncode}) before saying {text!r}:\n"
                            f"{self.output()[-4000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"{self.name} did not say {text!r} within {timeout} s:\n{self.output()[-4000:]}")
            time.sleep(0.2)

    def stop(self) -> int:
        """SIGTERM (a worker leaves the scheduler, stops its gradings, removes their labs), then SIGKILL."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode

    def kill(self) -> None:
        self.popen.kill()
        self.popen.wait()


class Farm:
    """Starts schedulers and workers for the tests; `close` stops them all."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.processes: list[FarmProcess] = []
        self.worker_names: list[str] = []

    def _start(self, name: str, command: list[str], env: dict[str, str] | None = None) -> FarmProcess:
        out, err = self.folder / f"{name}.out", self.folder / f"{name}.err"
        # Dask's own scratch space (a scheduler's lock files) in this module's folder, not the system's /tmp.
        environment = {**os.environ, "PYTHONUNBUFFERED": "1", "DASK_TEMPORARY_DIRECTORY": str(self.folder),
                       **(env or {})}
        with open(out, "wb") as stdout, open(err, "wb") as stderr:
            popen = subprocess.Popen(command, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL, env=environment)
        process = FarmProcess(name, popen, out, err)
        self.processes.append(process)
        return process

    def scheduler(self, env: dict[str, str] | None = None) -> str:
        """A `dask scheduler` on a free port of 127.0.0.1; its address."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        process = self._start(f"scheduler-{port}", [str(DASK), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                                    "--no-dashboard"], env)
        process.wait_for("Scheduler at:")
        return f"tcp://127.0.0.1:{port}"

    def worker(self, role: str, scheduler: str, labs: int = 1, project: Path = ROOT,
               env: dict[str, str] | None = None, wait: bool = True) -> FarmProcess:
        """A `labctl worker` for the exercise of this module, named `<role>-<this pytest's owner>`."""
        name = f"{role}-{OWNER}"
        self.worker_names.append(name)
        process = self._start(name, [sys.executable, "-m", "labctl", "--project", str(project), "worker",
                                     "--scheduler", scheduler, "--labs", str(labs), "--name", name,
                                     "--exercise", EXERCISE], env)
        if wait:
            process.wait_for("joined the farm")
        return process

    def close(self, backend) -> list[str]:
        """Stop every process (workers first); remove, and return, the labs farm gradings left."""
        for process in reversed(self.processes):
            process.stop()
        left = []
        remove_stale_scratch()   # the temporary folders of the workers killed last (a worker removes older ones)
        for name in self.worker_names:
            owned = {LABEL_OWNER: farm_owner(name)}
            left += sorted({info.labels[LABEL_LAB] for info in backend.find_containers(owned)})
            backend.remove(owned)
        return left


@pytest.fixture(scope="module")
def farm(backend, project, tmp_path_factory) -> Iterator[Farm]:
    launched = Farm(tmp_path_factory.mktemp("farm"))
    try:
        yield launched
    finally:
        left = launched.close(backend)
    assert all(process.popen.poll() is not None for process in launched.processes)
    assert not left, f"farm gradings left labs behind: {left}"


@pytest.fixture(scope="module")
def shared(farm) -> str:
    """The module's scheduler with two workers, one lab each: the class is graded through both."""
    url = farm.scheduler()
    farm.worker("w1", url)
    farm.worker("w2", url)
    return url


# -- helpers ---------------------------------------------------------------------------------------------

def make_class(folder: Path, students: dict[str, Path]) -> Path:
    """A SUBMISSIONS folder: one folder per student, copied from `students` (id -> a server's folder)."""
    folder.mkdir()
    for student, source in students.items():
        shutil.copytree(source, folder / student)
    return folder


def batch(submissions: Path, out: Path, farm_url: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "labctl", "--project", str(ROOT), "batch", EXERCISE, str(submissions),
                           "--out", str(out), "--farm", farm_url, *extra],
                          capture_output=True, text=True, timeout=BATCH_TIMEOUT, stdin=subprocess.DEVNULL)


def gradebook(out: Path) -> list[dict[str, str]]:
    with open(out / "gradebook.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def job_record(out: Path, student: str) -> dict:
    return json.loads((out / student / "job.json").read_text())


def parent_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def since_boot() -> float:
    """Now on the clock of /proc's start times (seconds since boot, CLOCK_BOOTTIME)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def children_of(pid: int) -> dict[int, float]:
    """The processes whose parent is `pid`, each with when it started (since_boot()'s clock), from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found[int(entry.name)] = int(fields[19]) / ticks
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return parent_of(pid) is not None  # a zombie has no stat worth reading once reaped


def wait_until(condition: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {what}")
        time.sleep(0.3)


def grading_of(backend, worker: FarmProcess) -> tuple[str, int] | None:
    """(lab id, pid of its `labctl grade`) of a lab made by a grading that is `worker`'s child, once it has one."""
    for info in backend.find_containers({LABEL_OWNER: farm_owner(worker.name)}):
        pid = info.labels.get(LABEL_PID, "")
        if pid.isdigit() and parent_of(int(pid)) == worker.pid:
            return info.labels[LABEL_LAB], int(pid)
    return None


def job_of(project, student: str, folder: Path) -> Job:
    return Job(student, EXERCISE, exercise_fingerprint(project, EXERCISE), pack_submission(folder))


# -- the class through two workers -------------------------------------------------------------------------

def test_a_class_through_two_workers_every_student_once(shared, tmp_path):
    submissions = make_class(tmp_path / "class", {"alice": SOLUTION, "bob": MUTANTS / "crash_on_request",
                                                  "carol": MUTANTS / "never_listens"})
    out = tmp_path / "out"
    done = batch(submissions, out, shared)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = {row["id"]: row for row in gradebook(out)}
    assert [row["id"] for row in gradebook(out)] == ["alice", "bob", "carol"]   # each student exactly once
    assert (rows["alice"]["status"], rows["alice"]["score"], rows["alice"]["max"]) == ("graded", "14", "14")
    assert rows["bob"]["status"] == "graded" and float(rows["bob"]["score"]) < 14
    assert rows["carol"]["status"] == "not gradable" and "listen" in rows["carol"]["message"]
    workers = {job_record(out, student)["worker"] for student in rows}
    assert workers == {f"w1-{OWNER}", f"w2-{OWNER}"}, workers   # both workers graded
    assert f"farm {shared}: 2 labs at once" in done.stderr + done.stdout   # the sum of the workers' labs

    again = batch(submissions, out, shared)   # the same class again: nobody is graded twice
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert [row["id"] for row in gradebook(out)] == ["alice", "bob", "carol"]
    assert "0 in this run, 3 unchanged" in again.stdout


def test_a_job_sent_twice_is_one_task_and_a_cancelled_one_leaves_nothing(shared, farm, project, backend):
    from distributed import Client

    from labctl.batch.farm import FarmExecutor, task_key

    executor = FarmExecutor(shared, project, EXERCISE, exercise_fingerprint(project, EXERCISE), say=print)
    job = job_of(project, "dave", SOLUTION)
    first, second = executor.submit(job, 300), executor.submit(job, 300)
    assert first is second
    with Client(shared, set_as_default=False) as observer:
        def tasks() -> list[str]:
            return [key for keys in observer.processing().values() for key in keys]

        wait_until(lambda: task_key(job) in tasks(), 60, "the task on the farm")
        assert tasks().count(task_key(job)) == 1
    workers = [process for process in farm.processes if process.name.startswith(("w1-", "w2-"))]
    lab, child = wait_until(lambda: next(filter(None, (grading_of(backend, w) for w in workers)), None), 120,
                            "a lab of dave's grading")
    executor.close(cancel=True)   # Ctrl-C of a batch: returns once the grading has stopped
    assert first.cancelled()
    assert not alive(child), "the cancelled grading still runs"
    assert not backend.find_containers({LABEL_LAB: lab}), "the cancelled grading's lab is still there"
    assert not backend.find_networks({LABEL_LAB: lab})
    assert all(process.popen.poll() is None for process in workers), "a worker ended with the batch"


# -- a worker killed mid-grading ---------------------------------------------------------------------------

def test_a_worker_killed_mid_grading_costs_only_time(farm, backend, tmp_path):
    url = farm.scheduler()
    victim = farm.worker("victim", url, labs=1)
    rescuer = farm.worker("rescuer", url, labs=2)   # a lab free when the victim dies: the wait is the farm's
    submissions = make_class(tmp_path / "class", {"ann": SOLUTION, "ben": SOLUTION})
    out = tmp_path / "out"
    run = subprocess.Popen([sys.executable, "-m", "labctl", "--project", str(ROOT), "batch", EXERCISE,
                            str(submissions), "--out", str(out), "--farm", url],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        lab, child = wait_until(lambda: grading_of(backend, victim), 180, "a lab of the victim's grading")
        own = wait_until(lambda: children_of(rescuer.pid), 60, "the rescuer grading its own student")
        killed_at = since_boot()
        victim.kill()   # kill -9
        again = wait_until(lambda: {pid: at for pid, at in children_of(rescuer.pid).items() if pid not in own}, 120,
                           "the rescuer grading the victim's student again")
        stdout, stderr = run.communicate(timeout=BATCH_TIMEOUT)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 0, stdout[-3000:] + stderr[-3000:]
    rows = gradebook(out)
    assert [row["id"] for row in rows] == ["ann", "ben"]   # every student exactly once
    # Graded, each; their verdicts are the class test's to judge (here the rescuer grades two at once).
    assert all((row["status"], row["max"]) == ("graded", "14") for row in rows), rows
    records = {student: job_record(out, student) for student in ("ann", "ben")}
    assert {record["worker"] for record in records.values()} == {rescuer.name}   # the victim's came back once
    assert len(again) == 1, again
    delay = min(again.values()) - killed_at
    print(f"\nkill -9 of the worker to the start of its student's grading on another worker: {delay:.2f} s")
    assert 0 <= delay < 60
    # The killed worker's grading saw its parent go and stopped, removing its lab (exit_with_parent).
    wait_until(lambda: not alive(child), 120, "the killed worker's grading stopped")
    wait_until(lambda: not backend.find_containers({LABEL_LAB: lab}) and not backend.find_networks({LABEL_LAB: lab}),
               60, "the killed worker's lab removed")


def test_a_grading_that_kills_its_workers_is_an_error_row_and_its_orphan_goes_at_the_next_start(farm, project,
                                                                                                  backend):
    """With allowed-failures 0 the first worker that dies with a task makes it a KilledWorker: an error row. The
    grading killed with it leaves a lab that the next worker to start removes. And a worker stopped with SIGTERM
    leaves the scheduler cleanly: its grading is given to another worker and counted as no failure (else, at 0
    allowed, it would be an error row too)."""
    from labctl.batch.farm import FarmExecutor

    url = farm.scheduler(env={"DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0"})
    doomed = farm.worker("doomed", url, labs=1)
    executor = FarmExecutor(url, project, EXERCISE, exercise_fingerprint(project, EXERCISE), say=print)
    try:
        lost_row = executor.submit(job_of(project, "eve", SOLUTION), 300)
        lab, child = wait_until(lambda: grading_of(backend, doomed), 180, "a lab of the grading")
        os.killpg(child, signal.SIGKILL)   # the grading and the worker killed -9 together: nobody removes the lab
        doomed.kill()
        row = lost_row.result(timeout=120)
        assert (row.student, row.status) == ("eve", "error")
        assert "died while grading it" in row.message and "allowed-failures" in row.message, row.message
        assert backend.find_containers({LABEL_LAB: lab}), "the orphan is gone already: nothing left to test"
        scratch = Path(tempfile.gettempdir()) / f"{SCRATCH_PREFIX}{doomed.pid}"
        assert scratch.is_dir(), "the killed worker left no temporary folder: nothing left to test"

        newcomer = farm.worker("newcomer", url, labs=1)
        assert f"removed 1 orphaned lab(s) of farm gradings on this host: {lab}" in newcomer.output()
        assert not backend.find_containers({LABEL_LAB: lab}) and not backend.find_networks({LABEL_LAB: lab})
        assert not scratch.exists() and str(scratch) in newcomer.output()

        handed = executor.submit(job_of(project, "ivy", SOLUTION), 300)
        lab, child = wait_until(lambda: grading_of(backend, newcomer), 180, "a lab of the newcomer's grading")
        heir = farm.worker("heir", url, labs=1)
        assert newcomer.stop() == 0   # SIGTERM, as systemd or Ctrl-C
        assert "stopped" in newcomer.output()
        assert not alive(child) and not backend.find_containers({LABEL_LAB: lab})
        row = handed.result(timeout=BATCH_TIMEOUT)
    finally:
        executor.close()
    assert (row.student, row.status, row.worker) == ("ivy", "graded", heir.name), row.message


# -- a worker with other files -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def other_files(tmp_path_factory) -> Path:
    """A copy of the project whose blocking exercise differs by one line of exercise.yaml."""
    copy = tmp_path_factory.mktemp("other-project")
    shutil.copy2(ROOT / "lab.yaml", copy / "lab.yaml")
    for folder in ("images", "exercises"):
        shutil.copytree(ROOT / folder, copy / folder, ignore=shutil.ignore_patterns("__pycache__"))
    exercise = copy / "exercises" / EXERCISE / "exercise.yaml"
    exercise.write_text(exercise.read_text() + "# one line more: another version of the exercise\n")
    return copy


def test_a_worker_with_other_files_is_refused_and_alone_it_fails_the_batch(shared, farm, project, other_files,
                                                                            tmp_path):
    from distributed import Client

    from labctl.batch.farm import FarmExecutor, task_key
    from labctl.batch.worker import grade

    odd = farm.worker("odd", shared, project=other_files)
    said: list[str] = []
    fingerprint = exercise_fingerprint(project, EXERCISE)
    executor = FarmExecutor(shared, project, EXERCISE, fingerprint, say=said.append)
    executor.close()
    assert executor.jobs == 2 and {worker.name for worker in executor.workers} == {f"w1-{OWNER}", f"w2-{OWNER}"}
    (refusal,) = said
    assert odd.name in refusal and "refused" in refusal and "the exercise's files" in refusal, refusal
    # Sent to it anyway (the batch restricts tasks to matching workers; a client could bypass that), it refuses.
    job = job_of(project, "frank", SOLUTION)
    with Client(shared, set_as_default=False) as client:
        address = next(address for address, info in client.scheduler_info()["workers"].items()
                       if info["name"] == odd.name)
        row = client.submit(grade, job, 300, task_key(job), workers=[address], pure=False).result(timeout=60)
    assert (row.student, row.status) == ("frank", "error") and "other files" in row.message, row.message
    odd.stop()

    lonely = farm.scheduler()
    alone = farm.worker("alone", lonely, project=other_files)
    submissions = make_class(tmp_path / "class", {"gina": SOLUTION})
    refused = batch(submissions, tmp_path / "out", lonely)
    assert refused.returncode == 2, refused.stdout[-3000:] + refused.stderr[-3000:]
    assert alone.name in refused.stderr and "the exercise's files" in refused.stderr, refused.stderr[-3000:]
    assert "no worker of the farm" in refused.stderr


# -- a worker with a Docker engine of its own --------------------------------------------------------------

DOCKERD_DIR = Path(__file__).parent / "dockerd"
DOCKERD_LABEL = "labctl.test"


@pytest.fixture(scope="module")
def second_engine(backend, project) -> Iterator[tuple[str, object]]:
    """Debian's dockerd in a container of the engine, its images' base loaded into it: (DOCKER_HOST, client).
    The container runs with every capability this engine has (it has no CAP_SYS_RESOURCE to give, so
    --privileged itself is refused here), a cgroup namespace of its own, and an anonymous volume for
    /var/lib/docker; it, its volume and its networks are removed at the end."""

    from labctl.images import read_packages

    outer = backend.client
    base = project.image_builder().tags["base"]
    started = time.monotonic()
    tag = _dockerd_image(outer, base, " ".join(read_packages(project.images_dir)["dockerd"]))
    made = time.monotonic() - started
    container = outer.containers.run(
        tag, detach=True, name=f"labctl-test-dockerd-{OWNER}", labels={DOCKERD_LABEL: OWNER},
        cap_add=["ALL"], cap_drop=["SYS_RESOURCE"], cgroupns="private",
        security_opt=["apparmor=unconfined", "seccomp=unconfined"], volumes=["/var/lib/docker"])
    volumes = [mount["Name"] for mount in outer.api.inspect_container(container.id)["Mounts"]
               if mount["Type"] == "volume"]
    try:
        container.reload()
        address = container.attrs["NetworkSettings"]["IPAddress"]
        url = f"tcp://{address}:2375"
        inner = wait_until(lambda: _client(url), 60, f"the second engine at {url}")
        started = time.monotonic()
        inner.images.load(b"".join(outer.images.get(base).save(named=base)))
        print(f"\nsecond engine: dockerd image {made:.1f} s, {base} moved in with save/load in "
              f"{time.monotonic() - started:.1f} s")
        yield url, inner
        inner.close()
    finally:
        container.remove(force=True, v=True)
        assert not outer.containers.list(all=True, filters={"label": f"{DOCKERD_LABEL}={OWNER}"})
        assert not [volume for volume in outer.volumes.list() if volume.name in volumes]


def _dockerd_image(client, base: str, packages: str) -> str:
    """The dockerd image on `base` (built once per content: the folder, the base and the packages)."""
    import hashlib

    digest = hashlib.sha256(f"{base} {packages}".encode())
    for path in sorted(DOCKERD_DIR.iterdir()):
        digest.update(path.name.encode() + path.read_bytes())
    tag = f"labctl-test-dockerd:{digest.hexdigest()[:12]}"
    try:
        client.images.get(tag)
    except Exception:
        client.images.build(path=str(DOCKERD_DIR), tag=tag, buildargs={"BASE": base, "PACKAGES": packages},
                            rm=True, forcerm=True, pull=False, labels={DOCKERD_LABEL: "dockerd"})
    return tag


def _client(url: str):
    """A client of the engine at `url` once it answers (None until then)."""
    import docker

    try:
        return docker.DockerClient(base_url=url, timeout=60)
    except docker.errors.DockerException:
        return None


def test_a_worker_with_its_own_engine_builds_its_images_and_grades_there(farm, project, backend, second_engine):
    from labctl.batch.farm import FarmExecutor

    url, inner = second_engine
    lonely = farm.scheduler()
    started = time.monotonic()
    remote = farm.worker("remote", lonely, env={"DOCKER_HOST": url, "LABCTL_BASE": "bootstrap"})
    print(f"the worker on the second engine was ready in {time.monotonic() - started:.1f} s (images built there)")
    built = {tag for image in inner.images.list() for tag in image.tags}
    tags = project.image_builder().tags
    assert {tags["server"], tags["tools"]} <= built, built
    assert "building " + tags["server"] in remote.output()
    executor = FarmExecutor(lonely, project, EXERCISE, exercise_fingerprint(project, EXERCISE), say=print)
    try:
        result = executor.submit(job_of(project, "hana", SOLUTION), 300)
        owner = {"label": f"{LABEL_OWNER}={farm_owner(remote.name)}"}
        wait_until(lambda: inner.containers.list(all=True, filters=owner) or result.done(), 180,
                   "the grading's lab on the second engine")
        assert inner.containers.list(all=True, filters=owner), "the grading made no lab on the second engine"
        assert not backend.find_containers({LABEL_OWNER: farm_owner(remote.name)}), "a lab on this engine"
        row = result.result(timeout=BATCH_TIMEOUT)
    finally:
        executor.close()
    assert (row.student, row.status, row.worker) == ("hana", "graded", remote.name), row.message
    assert (row.report() or {}).get("score") == 14
    remote.stop()
    assert not inner.containers.list(all=True, filters={"label": LABEL_LAB}) and not inner.networks.list(
        filters={"label": LABEL_LAB})
