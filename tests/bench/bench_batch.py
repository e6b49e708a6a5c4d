"""Benchmark: a whole class graded with `labctl batch` serially, with -j 2, with -j 4 and on a farm of two
`labctl worker` processes on this engine, from one run; and whether any verdict differs from the serial one.

    python3 tests/bench/bench_batch.py [--modes serial,j2,j4,farm] [--exercises blocking,polling,...]

The class: the reference solution, the starter and every mutant with a folder of its own of each exercise's
validate section (a mutant that is only an env change of another folder cannot be a batch entry: a student
hands in files, not an environment; those are counted and left out). Each exercise's entries are one batch
(a batch grades one exercise), so a mode's "class run" is one `labctl batch` per exercise, timed as a whole,
each into a fresh output folder of its own (no resume across modes).

Printed per mode: the wall time, the throughput (submissions per minute), the ratio to serial, and the
verdicts (per student: status, score, and each check passed or not) that differ from the serial run, each
named. The differing count must be 0: a check that flips under load is a bug in that check. The farm's two
workers (`--labs 2` each, four labs at once, as -j 4) are started before its batches and are not timed; the
scheduler is a `dask scheduler` on a free port of 127.0.0.1. Run it on a quiet machine; the load average
at the start and the end is printed, since other load shows up in every figure.

Nothing is left running: the batches get Ctrl-C as the terminal sends it (each removes its labs and keeps
what finished), the scheduler and workers are stopped here (workers first), and every lab owned by this
run or its workers is removed by label, also after a failure; the temporary folder goes too.
"""

from __future__ import annotations

import argparse
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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("LABCTL_OWNER", f"bench-{os.getpid()}")

from labctl.backends.docker import DockerBackend  # noqa: E402
from labctl.batch.job import GRADEBOOK_FILE, REPORT_FILES  # noqa: E402
from labctl.batch.worker import farm_owner, remove_stale_scratch  # noqa: E402
from labctl.exercise import Exercise, find_exercises, load_exercise  # noqa: E402
from labctl.lab import LABEL_LAB, LABEL_OWNER  # noqa: E402
from labctl.project import Project  # noqa: E402

MODES = {"serial": ["-j", "1"], "j2": ["-j", "2"], "j4": ["-j", "4"], "farm": []}
#: Labs each farm worker runs at once: two workers of two, as many labs as -j 4.
FARM_LABS = 2
DASK = Path(sys.executable).parent / "dask"
#: Seconds a scheduler or worker may take to start (a worker checks the engine and finds its images).
START_TIMEOUT = 180
#: Seconds one exercise's batch may take in any mode (a grading is 15-40 s here, more on a busy machine).
BATCH_TIMEOUT = 1800


@dataclass
class Entry:
    """One student of the benchmark's class: a folder handed in for an exercise."""

    exercise: str
    student: str
    folder: Path


def class_of(exercise: Exercise) -> tuple[list[Entry], list[str]]:
    """The exercise's entries (solution, starter, mutants with a folder of their own) and what was left out."""
    spec = exercise.validate
    assert spec is not None
    entries = [Entry(exercise.id, "solution", exercise.dir / spec.solution),
               Entry(exercise.id, "starter", exercise.dir / spec.starter)]
    left_out = []
    for mutant in spec.mutants:
        folder = (exercise.dir / mutant.path).resolve()
        if mutant.env or folder in {entry.folder.resolve() for entry in entries}:
            # Another entry's files with a different environment: the same folder twice to a batch.
            left_out.append(f"{exercise.id}: {mutant.path} with {mutant.env} (an env change, no folder of its own)")
            continue
        parts = Path(mutant.path).parts
        name = "-".join(p for p in parts if p not in {"..", "mutants"}) if ".." in parts else Path(mutant.path).name
        entries.append(Entry(exercise.id, f"mutant-{name}", folder))
    return entries, left_out


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# -- the farm ---------------------------------------------------------------------------------------------

class Processes:
    """The scheduler and workers this run started, each in a session of its own (Ctrl-C reaches this script,
    which stops them in order: workers first, so each removes its labs while the scheduler still answers)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.started: list[tuple[str, subprocess.Popen, Path]] = []

    def start(self, name: str, command: list[str], ready: str) -> None:
        log = self.folder / f"{name}.log"
        environment = {**os.environ, "PYTHONUNBUFFERED": "1", "DASK_TEMPORARY_DIRECTORY": str(self.folder),
                       "LABCTL_EXIT_WITH_PARENT": str(os.getpid())}
        with open(log, "wb") as output:
            popen = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=environment, start_new_session=True)
        self.started.append((name, popen, log))
        deadline = time.monotonic() + START_TIMEOUT
        while ready not in log.read_text(errors="replace"):
            if popen.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{name} did not say {ready!r} (exit {popen.poll()}):\n"
                                 f"{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)

    def stop_all(self) -> None:
        for _name, popen, _log in reversed(self.started):
            if popen.poll() is None:
                popen.send_signal(signal.SIGTERM)
                try:
                    popen.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    popen.kill()
                    popen.wait()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def farm(folder: Path, worker_names: list[str]) -> Iterator[str]:
    """A `dask scheduler` on 127.0.0.1 and two `labctl worker`s of FARM_LABS labs each; its address."""
    processes = Processes(folder)
    try:
        port = free_port()
        processes.start("scheduler", [str(DASK), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                      "--no-dashboard"], "Scheduler at:")
        url = f"tcp://127.0.0.1:{port}"
        for name in worker_names:
            processes.start(name, [sys.executable, "-m", "labctl", "--project", str(ROOT), "worker", "--scheduler",
                                   url, "--labs", str(FARM_LABS), "--name", name], "joined the farm")
        yield url
    finally:
        processes.stop_all()
        remove_stale_scratch()


# -- one class run ----------------------------------------------------------------------------------------

def run_batch(exercise: str, submissions: Path, out: Path, options: list[str], log: Path) -> None:
    """One exercise's batch; the batch gets the terminal's Ctrl-C itself (it removes its labs, exit 130)."""
    command = [sys.executable, "-m", "labctl", "--project", str(ROOT), "batch", exercise, str(submissions),
               "--out", str(out), *options]
    environment = {**os.environ, "LABCTL_EXIT_WITH_PARENT": str(os.getpid())}
    with open(log, "wb") as output:
        popen = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 env=environment)
        try:
            code = popen.wait(timeout=BATCH_TIMEOUT)
        except BaseException:
            popen.send_signal(signal.SIGINT)   # as Ctrl-C: it stops its gradings and removes their labs
            try:
                popen.wait(timeout=120)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait()
            raise
    if code != 0:
        raise SystemExit(f"labctl batch {exercise} ({' '.join(options)}) exited {code}:\n"
                         f"{log.read_text(errors='replace')[-3000:]}")


Verdicts = dict[tuple[str, str], dict[str, object]]


def verdicts(exercise: str, out: Path) -> Verdicts:
    """Per student of one batch: status, score and each check passed or not (what a student is told)."""
    found: Verdicts = {}
    with open(out / GRADEBOOK_FILE, newline="") as handle:
        for row in csv.DictReader(handle):
            verdict: dict[str, object] = {"status": row["status"], "score": f"{row['score']}/{row['max']}"}
            report = out / row["id"] / REPORT_FILES["json"]
            if report.exists():
                for result in json.loads(report.read_text()).get("results", []):
                    verdict[result["name"]] = "passed" if result["status"] == "passed" else "failed"
            found[(exercise, row["id"])] = verdict
    return found


def class_run(mode: str, entries: dict[str, list[Entry]], classes: Path, out: Path, logs: Path,
              farm_url: str | None) -> tuple[float, Verdicts]:
    options = ["--farm", farm_url] if mode == "farm" and farm_url else MODES[mode]
    found: Verdicts = {}
    started = time.perf_counter()
    for exercise in entries:
        run_batch(exercise, classes / exercise, out / mode / exercise, options, logs / f"{mode}-{exercise}.log")
    wall = time.perf_counter() - started
    for exercise in entries:
        found.update(verdicts(exercise, out / mode / exercise))
    return wall, found


def differences(serial: Verdicts, other: Verdicts) -> list[str]:
    named = []
    for key in sorted(set(serial) | set(other)):
        before, after = serial.get(key), other.get(key)
        if before is None or after is None:
            named.append(f"{key[0]}/{key[1]}: {'only in serial' if after is None else 'not in serial'}")
            continue
        for field in sorted(set(before) | set(after)):
            if before.get(field) != after.get(field):
                named.append(f"{key[0]}/{key[1]} {field}: serial {before.get(field)}, here {after.get(field)}")
    return named


# -- nothing left ----------------------------------------------------------------------------------------

def remove_labs(backend: DockerBackend, owners: list[str]) -> list[str]:
    """Remove every lab these owners have (labs and networks, by label); the labs there were."""
    left = []
    for owner in owners:
        labels = {LABEL_OWNER: owner}
        left += sorted({info.labels[LABEL_LAB] for info in backend.find_containers(labels)})
        backend.remove(labels)
    return left


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", default=",".join(MODES),
                        help=f"Comma-separated modes to run, among {', '.join(MODES)} (default: all). "
                             "Without serial, nothing is compared.")
    parser.add_argument("--exercises", default="",
                        help="Comma-separated exercise ids (default: every exercise with a validate section).")
    parser.add_argument("--keep", metavar="DIR", type=Path,
                        help="Keep the class, every mode's output folders and the logs in DIR (new; default: a "
                             "temporary folder, removed at the end), to see why a verdict differs.")
    args = parser.parse_args()
    if args.keep and args.keep.exists():
        parser.error(f"--keep {args.keep}: exists already (expected a new folder)")
    modes = [m for m in args.modes.split(",") if m]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        parser.error(f"unknown mode(s) {', '.join(unknown)}: expected some of {', '.join(MODES)}")
    folders = ([ROOT / "exercises" / name for name in args.exercises.split(",") if name]
               or find_exercises(ROOT))

    entries: dict[str, list[Entry]] = {}
    left_out: list[str] = []
    for folder in folders:
        exercise = load_exercise(folder)
        if exercise.validate is None:
            continue
        entries[exercise.id], skipped = class_of(exercise)
        left_out += skipped
    total = sum(len(group) for group in entries.values())

    backend = DockerBackend()
    project = Project(ROOT, backend)
    project.ensure_images(lambda message: print("images:", message))   # a build is not grading time
    worker_names = [f"bench-w{i}-{os.getpid()}" for i in (1, 2)]
    owners = [os.environ["LABCTL_OWNER"]] + [farm_owner(name) for name in worker_names]
    print(f"load average at the start: {load_average()} ({os.cpu_count()} cores)")
    print(f"class: {total} submissions of {len(entries)} exercises ("
          + ", ".join(f"{name} {len(group)}" for name, group in entries.items()) + ")")
    for reason in left_out:
        print(f"  left out: {reason}")

    scratch = args.keep or Path(tempfile.mkdtemp(prefix="labctl-bench-batch-"))
    scratch.mkdir(parents=True, exist_ok=True)
    results: dict[str, tuple[float, Verdicts]] = {}
    failed = True
    try:
        classes, out, logs = scratch / "class", scratch / "out", scratch / "logs"
        logs.mkdir()
        for group in entries.values():
            for entry in group:
                shutil.copytree(entry.folder, classes / entry.exercise / entry.student)
        for mode in modes:
            print(f"{mode}: grading...", flush=True)
            if mode == "farm":
                with farm(logs, worker_names) as url:
                    results[mode] = class_run(mode, entries, classes, out, logs, url)
            else:
                results[mode] = class_run(mode, entries, classes, out, logs, None)
            print(f"{mode}: {results[mode][0]:.1f} s", flush=True)
        failed = False
    finally:
        left = remove_labs(backend, owners)
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
        if left:
            print(f"labs left behind and removed: {', '.join(left)}")
            failed = True

    serial = results.get("serial")
    print(f"\n{'mode':8} {'wall':>8} {'per min':>8} {'vs serial':>10} {'differ':>7}")
    differing = 0
    for mode, (wall, found) in results.items():
        named = differences(serial[1], found) if serial else []
        differing += len(named)
        ratio = f"{serial[0] / wall:9.2f}x" if serial else "        -"
        print(f"{mode:8} {wall:7.1f}s {total / wall * 60:8.2f} {ratio} {len(named) if serial else '-':>7}")
        for difference in named:
            print(f"    {difference}")
    if serial:
        counts = {status: sum(1 for v in serial[1].values() if v["status"] == status)
                  for status in sorted({str(v["status"]) for v in serial[1].values()})}
        print("serial verdicts: " + ", ".join(f"{n} {status}" for status, n in counts.items()))
    print(f"load average at the end: {load_average()}")
    return 1 if failed or differing else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:   # the batch, farm and labs are gone by now (main's finally blocks)
        print("interrupted: nothing left running")
        sys.exit(130)
