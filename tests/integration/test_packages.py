"""The packages' contracts replayed here: `labctl package gradescope|prairielearn blocking`, run the way each
platform runs it, in containers of this project's own labctl-tools image (Debian with python3).

Gradescope: the zip is unpacked into /autograder/source of a container that runs setup.sh with the network
on (as Gradescope builds its image); that container is committed, and each submission is graded in a fresh
container of the result with the network off: /autograder/submission in, /autograder/run_autograder run from
/autograder (Gradescope copies it there), /autograder/results/results.json out.
PrairieLearn: the folder's Dockerfile is built (FROM the tools image), and each submission is graded in a
container of it with the network off, running the entrypoint info.json.snippet names: /grade/student in,
/grade/results/results.json out.

Both as root, with Docker's default capabilities (no SYS_PTRACE, as on the platforms): the checks that need
what each thread waits in are "not available" and left out of the total. No Docker socket, no bind mount:
files go in and out with put_archive/get_archive.

What only this machine needs: its TLS-intercepting proxy's CA (pip's $PIP_CERT here), put in a base image of
the test's own so that pip at setup/build time can reach PyPI. A platform has no such proxy.
Each platform: one setup or build (~15-30 s) and four gradings (~12 s each). Every container and image made
here carries the test's label and is removed at the end, also on failure.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import OWNER, ROOT

from labctl import package
from labctl.project import Project

pytestmark = pytest.mark.docker

EXERCISE = "blocking"
EXERCISE_DIR = ROOT / "exercises" / EXERCISE
SOLUTION = EXERCISE_DIR / "solution"
CRASH = EXERCISE_DIR / "mutants" / "crash_on_request"
NEVER_LISTENS = EXERCISE_DIR / "mutants" / "never_listens"
LABEL = "labctl.test-packages"
#: The checks of this exercise that need CAP_SYS_PTRACE on the local backend (what each thread waits in).
NEEDS_PTRACE = {"asleep-in-accept", "io-model"}
HIDDEN = {"io-model"}
RUN_TIMEOUT = 600


def declared_failures(mutant: str) -> set[str]:
    """What exercise.yaml's validate section says a mutant fails."""
    spec = yaml.safe_load((EXERCISE_DIR / "exercise.yaml").read_text())
    return next(set(entry.get("fails", [])) for entry in spec["validate"]["mutants"] if entry["path"] == mutant)


@dataclass
class Run:
    """One grading: the script's exit code, the results.json it left (None: none), and its output."""

    exit_code: int
    results: dict | None
    logs: str


class Docker:
    """The Docker SDK with a list of what this test made, so that all of it is removed at the end."""

    def __init__(self) -> None:
        import docker

        try:
            self.client = docker.from_env()
            self.client.ping()
        except Exception as error:  # noqa: BLE001 - any failure to reach the engine is a skip
            if os.environ.get("CI"):
                raise
            pytest.skip(f"no Docker Engine: {error}")
        self.images: list[str] = []
        self.labels = {LABEL: OWNER}

    def tools_image(self) -> str:
        images = self.client.images.list(name="labctl-tools")
        if not images:
            pytest.skip("no labctl-tools image here: `labctl images build` makes it")
        return sorted(images, key=lambda image: image.attrs["Created"])[-1].tags[0]

    def build(self, context: dict[str, bytes] | Path, tag: str) -> str:
        """An image from a folder or from files in memory; its tag remembered for removal."""
        self.images.append(tag)
        if isinstance(context, Path):
            self.client.images.build(path=str(context), tag=tag, rm=True, forcerm=True, labels=self.labels)
        else:
            self.client.images.build(fileobj=io.BytesIO(tar_of(context)), custom_context=True, tag=tag, rm=True,
                                     forcerm=True, labels=self.labels)
        return tag

    def run(self, image: str, command: list[str], files: dict[str, bytes], result: str,
            network: bool = False, commit_as: str | None = None, environment: dict[str, str] | None = None,
            cap_add: list[str] | None = None) -> Run:
        """Run `command` in a new container of `image` with `files` put in first; the file at `result` read back."""
        container = self.client.containers.create(image, command=command, user="root", labels=self.labels,
                                                  network_mode="bridge" if network else "none",
                                                  environment=environment or {}, cap_add=cap_add or [])
        try:
            container.put_archive("/", tar_of(files))
            container.start()
            exit_code = container.wait(timeout=RUN_TIMEOUT)["StatusCode"]
            logs = container.logs().decode(errors="replace")
            if commit_as:
                self.images.append(commit_as)
                repository, _, tag = commit_as.partition(":")
                container.commit(repository=repository, tag=tag)
            return Run(exit_code, read_json(container, result), logs)
        finally:
            container.remove(force=True)

    def close(self) -> None:
        for container in self.client.containers.list(all=True, filters={"label": f"{LABEL}={OWNER}"}):
            container.remove(force=True)
        for tag in reversed(self.images):
            try:
                self.client.images.remove(tag, force=True)
            except Exception:  # noqa: BLE001 - an image never made (its build failed)
                pass


def tar_of(files: dict[str, bytes | tuple[bytes, int]]) -> bytes:
    """A tar of path -> bytes (mode 0644) or (bytes, mode)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, content in files.items():
            data, mode = content if isinstance(content, tuple) else (content, 0o644)
            info = tarfile.TarInfo(name.lstrip("/"))
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def read_json(container, path: str) -> dict | None:
    try:
        stream, _ = container.get_archive(path)
    except Exception:  # noqa: BLE001 - docker.errors.NotFound: no results.json
        return None
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
        member = tar.next()
        handle = tar.extractfile(member) if member else None
        return json.loads(handle.read()) if handle else None


def folder_files(folder: Path, under: str) -> dict[str, bytes | tuple[bytes, int]]:
    return {f"{under}/{path.relative_to(folder).as_posix()}": (path.read_bytes(), path.stat().st_mode & 0o777)
            for path in sorted(folder.rglob("*")) if path.is_file() and "__pycache__" not in path.parts}


def zip_files(zip_path: Path, under: str) -> dict[str, bytes | tuple[bytes, int]]:
    """The zip's entries below `under`, with the modes the zip gives them (as Gradescope unpacks it)."""
    with zipfile.ZipFile(zip_path) as archive:
        return {f"{under}/{info.filename}": (archive.read(info), (info.external_attr >> 16) & 0o777 or 0o644)
                for info in archive.infolist() if not info.is_dir()}


@pytest.fixture(scope="module")
def engine() -> Iterator[Docker]:
    docker = Docker()
    try:
        yield docker
    finally:
        docker.close()


@pytest.fixture(scope="module")
def base_image(engine: Docker) -> str:
    """The tools image, plus this machine's proxy CA for pip when it has one (see the module's docstring)."""
    tools = engine.tools_image()
    cert = os.environ.get("PIP_CERT")
    files: dict[str, bytes] = {"Dockerfile": f"FROM {tools}\n".encode()}
    if cert and Path(cert).is_file():
        files["host-ca.crt"] = Path(cert).read_bytes()
        files["Dockerfile"] += b"COPY host-ca.crt /usr/local/share/host-ca.crt\nENV PIP_CERT=/usr/local/share/host-ca.crt\n"
    return engine.build(files, f"labctl-test-packages-base:{OWNER}")


# -- Gradescope ----------------------------------------------------------------------------------------

GS_RESULTS = "/autograder/results/results.json"
GS_RUN = ["bash", "-c", "cd /autograder && exec /autograder/run_autograder"]


@pytest.fixture(scope="module")
def gradescope_image(engine: Docker, base_image: str, tmp_path_factory) -> str:
    """The image Gradescope would build: setup.sh run once, with the network, in /autograder/source."""
    zip_path = tmp_path_factory.mktemp("gradescope") / "autograder.zip"
    package.gradescope(Project(ROOT), EXERCISE, zip_path)
    setup = ["bash", "-c", "cd /autograder/source && bash ./setup.sh && cp run_autograder /autograder/run_autograder"]
    run = engine.run(base_image, setup, zip_files(zip_path, "autograder/source"), "/dev/null", network=True,
                     commit_as=f"labctl-test-packages-gradescope:{OWNER}")
    assert run.exit_code == 0, run.logs[-4000:]
    return f"labctl-test-packages-gradescope:{OWNER}"


def gradescope_run(engine: Docker, image: str, submission: Path, environment: dict[str, str] | None = None) -> Run:
    return engine.run(image, GS_RUN, folder_files(submission, "autograder/submission"), GS_RESULTS,
                      environment=environment)


def by_test_name(results: dict) -> dict[str, dict]:
    return {test["name"].split(" (")[0]: test for test in results["tests"]}


def test_gradescope_gives_the_solution_every_available_point(engine, gradescope_image):
    run = gradescope_run(engine, gradescope_image, SOLUTION)
    assert run.exit_code == 0, run.logs[-4000:]
    results = run.results
    assert results is not None, run.logs[-4000:]
    tests = by_test_name(results)
    unavailable = {name for name, test in tests.items() if "not available on this backend" in test["name"]}
    assert unavailable == NEEDS_PTRACE  # Docker's default caps: no SYS_PTRACE, told as such, not as failures
    assert all(test.get("status") != "failed" for test in tests.values()), results["output"]
    available_max = sum(test.get("max_score", 0) for test in tests.values())
    assert results["score"] == available_max == results["extra_data"]["labctl"]["max_score"] > 0
    assert results["extra_data"]["labctl"]["gradable"] is True
    assert tests["io-model"]["visibility"] == "after_published"


def test_gradescope_fails_the_crashing_server_on_its_declared_checks(engine, gradescope_image):
    run = gradescope_run(engine, gradescope_image, CRASH)
    assert run.exit_code == 0, run.logs[-4000:]
    assert run.results is not None, run.logs[-4000:]
    tests = by_test_name(run.results)
    failed = {name for name, test in tests.items() if test.get("status") == "failed"}
    assert failed == declared_failures("mutants/crash_on_request") - NEEDS_PTRACE
    assert run.results["score"] < run.results["extra_data"]["labctl"]["max_score"]


def test_gradescope_scores_a_server_that_never_listens_0_saying_why(engine, gradescope_image):
    run = gradescope_run(engine, gradescope_image, NEVER_LISTENS)
    assert run.exit_code == 0, run.logs[-4000:]
    results = run.results
    assert results is not None, run.logs[-4000:]
    assert results["score"] == 0
    assert results["extra_data"]["labctl"]["gradable"] is False
    assert results["extra_data"]["labctl"]["failure"] == "submission"
    grading = by_test_name(results)["grading"]
    assert grading["status"] == "failed" and grading["visibility"] == "visible"
    assert "could not grade this submission" in results["output"] and "your submission" in results["output"]


def test_gradescope_infrastructure_failure_leaves_no_results_and_fails_the_run(engine, gradescope_image):
    # A state folder labctl cannot make: the local backend fails before any grading (labctl exits 3).
    run = gradescope_run(engine, gradescope_image, SOLUTION, environment={"LABCTL_STATE_DIR": "/proc/labctl"})
    assert run.exit_code == 3, run.logs[-4000:]
    assert run.results is None  # Gradescope: "The autograder failed to execute correctly", no grade kept


# -- PrairieLearn ----------------------------------------------------------------------------------------

PL_RESULTS = "/grade/results/results.json"


@pytest.fixture(scope="module")
def prairielearn_image(engine: Docker, base_image: str, tmp_path_factory) -> tuple[str, dict]:
    """The grader image built from the folder's Dockerfile, and the info.json snippet that names it."""
    folder = tmp_path_factory.mktemp("prairielearn") / "grader"
    tag = f"labctl-test-packages-prairielearn:{OWNER}"
    package.prairielearn(Project(ROOT), EXERCISE, folder, image=tag, base_image=base_image)
    engine.build(folder, tag)
    return tag, json.loads((folder / "info.json.snippet").read_text())["externalGradingOptions"]


def prairielearn_run(engine: Docker, built: tuple[str, dict], submission: Path,
                     environment: dict[str, str] | None = None, cap_add: list[str] | None = None) -> Run:
    image, options = built
    assert image == options["image"]
    return engine.run(image, [options["entrypoint"]], folder_files(submission, "grade/student"), PL_RESULTS,
                      environment=environment, cap_add=cap_add)


def test_prairielearn_gives_the_solution_full_marks_over_the_available_checks(engine, prairielearn_image):
    run = prairielearn_run(engine, prairielearn_image, SOLUTION)
    assert run.exit_code == 0, run.logs[-4000:]
    results = run.results
    assert results is not None, run.logs[-4000:]
    assert results["gradable"] is True and results["score"] == 1.0, results["message"]
    assert all(test["points"] == test["max_points"] for test in results["tests"]), results["tests"]
    by_name = {test["name"]: test for test in results["tests"]}
    assert {name for name in NEEDS_PTRACE - HIDDEN if by_name[name]["max_points"] == 0} == NEEDS_PTRACE - HIDDEN
    assert "not available" in by_name["asleep-in-accept"]["message"]


def test_with_sys_ptrace_every_check_runs_and_the_solution_still_gets_full_marks(engine, prairielearn_image):
    run = prairielearn_run(engine, prairielearn_image, SOLUTION, cap_add=["SYS_PTRACE"])
    assert run.exit_code == 0, run.logs[-4000:]
    results = run.results
    assert results is not None and results["gradable"] is True and results["score"] == 1.0, run.logs[-4000:]
    by_name = {test["name"]: test for test in results["tests"]}
    assert by_name["asleep-in-accept"]["points"] == by_name["asleep-in-accept"]["max_points"] == 2
    assert by_name["hidden checks"]["max_points"] == 1  # io-model ran: nothing left out


def test_prairielearn_fails_the_crashing_server_on_its_declared_checks(engine, prairielearn_image):
    run = prairielearn_run(engine, prairielearn_image, CRASH)
    assert run.exit_code == 0, run.logs[-4000:]
    results = run.results
    assert results is not None and results["gradable"] is True, run.logs[-4000:]
    lost = {test["name"] for test in results["tests"] if test["points"] < test["max_points"]}
    public_declared = declared_failures("mutants/crash_on_request") - NEEDS_PTRACE - HIDDEN
    assert lost - {"hidden checks"} == public_declared
    assert 0 <= results["score"] < 1


def test_prairielearn_marks_a_server_that_never_listens_not_gradable_and_exits_0(engine, prairielearn_image):
    run = prairielearn_run(engine, prairielearn_image, NEVER_LISTENS)
    assert run.exit_code == 0, run.logs[-4000:]  # the host reads results.json only after exit 0
    results = run.results
    assert results is not None and results["gradable"] is False, run.logs[-4000:]
    assert results["format_errors"] and "could not grade this submission" in results["message"]


def test_prairielearn_infrastructure_failure_exits_non_zero(engine, prairielearn_image):
    run = prairielearn_run(engine, prairielearn_image, SOLUTION, environment={"LABCTL_STATE_DIR": "/proc/labctl"})
    assert run.exit_code == 3, run.logs[-4000:]  # a failed grading job (regraded by staff), never a grade
