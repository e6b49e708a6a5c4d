"""Shared fixtures: the real Docker Engine, the project's images, labs that clean up by label.

Every lab a test makes carries the owner label of this pytest process
(`pytest-<pid>-<random>`); the session's end removes everything with that label, also
when tests fail, and labs left by an earlier pytest that was killed are reaped at start.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVERS = ROOT / "tests" / "servers"
OWNER = f"pytest-{os.getpid()}-{secrets.token_hex(2)}"
os.environ["LABCTL_OWNER"] = OWNER


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


@pytest.fixture(scope="session")
def backend():
    """The Docker backend; tests that need it are skipped only if no engine answers at all."""
    from labctl.backends.docker import DockerBackend
    from labctl.errors import EngineUnreachable
    from labctl.lab import LABEL_HOST, LABEL_LAB, LABEL_OWNER

    try:
        backend = DockerBackend()
    except EngineUnreachable as error:
        if os.environ.get("CI"):
            raise  # on CI an engine is promised: its absence is a failure, not a skip
        pytest.skip(f"no Docker Engine: {error}")
    # Reap labs of earlier pytest runs on this host whose pytest is gone (a killed run). The pytest's pid
    # is in the owner label (pytest-<pid>-<hex>): the pid label is the process that made the lab, and a
    # `labctl up` a live pytest ran has exited by now (another pytest at the same time reaped such labs).
    for info in backend.find_containers({LABEL_LAB: ""}):
        owner, host = info.labels.get(LABEL_OWNER, ""), info.labels.get(LABEL_HOST)
        parts = owner.split("-")
        if (len(parts) == 3 and parts[0] == "pytest" and parts[1].isdigit() and host == socket.gethostname()
                and not _pid_alive(int(parts[1]))):
            backend.remove({LABEL_OWNER: owner})
    yield backend
    backend.remove({LABEL_OWNER: OWNER})


@pytest.fixture(scope="session")
def project(backend):
    """The repository's own project (lab.yaml, images/), with its images built once."""
    from labctl.project import Project

    proj = Project(ROOT, backend)
    started = time.monotonic()
    proj.ensure_images(lambda message: print(f"[images {time.monotonic() - started:5.1f}s] {message}"),
                       names=["server", "tools"])
    return proj


@pytest.fixture(scope="session")
def images(project) -> dict[str, str]:
    return project.ensure_images(names=["server", "tools"])


@pytest.fixture
def start_lab(project, images) -> Iterator[Callable[..., object]]:
    """Start a lab running a server from tests/servers/<name> (or a Path); removed after the test.

    start_lab("hello") / start_lab("hello", run="python3 server.py --flag", wait=False)
    """
    from labctl.lab import Lab, Submission

    made: list[Lab] = []

    def start(server: str | Path | None = None, *, wait: bool = True, spec=None, **submission) -> Lab:
        lab = Lab.create(spec or project.spec, project.backend)
        made.append(lab)
        sub = None
        if server is not None:
            path = server if isinstance(server, Path) else SERVERS / server
            sub = Submission(path=path, **submission)
        return lab.up(images, sub, wait=wait)

    yield start
    for lab in made:
        lab.down()


@pytest.fixture
def check_context():
    """A CheckContext for a running lab, with a budget of `budget` seconds from now."""
    from labctl.checks import CheckContext

    def make(lab, budget: float = 60.0, port: int = 8080, **kwargs) -> CheckContext:
        return CheckContext(lab=lab, port=port, deadline=time.monotonic() + budget, **kwargs)

    return make


def pytest_collection_modifyitems(config, items):
    # Integration tests (tests/integration) need the engine: mark them so `-m "not docker"` runs unit tests only.
    for item in items:
        if "integration" in item.path.parts or "exercises" in item.path.parts:
            item.add_marker(pytest.mark.docker)
