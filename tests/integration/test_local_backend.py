"""The local backend on this host, no engine: a lab is processes, and nothing of it outlives the lab.

- the server runs as a uid of its own, in its own session, from a private copy, with its limits;
- a daemon that double-forks out of the tree, or a supervisor killed with kill -9, is still ended;
- the hostile mutants are contained: a fork bomb by its task limit (and a neighbour keeps serving),
  a memory hog killed for memory and said so, a log flood kept to a few MB, a disk filler bounded
  and its files removed with the lab;
- a grading gives the same verdicts as on Docker, and a check the backend cannot run is unavailable.

These need root (the server's own uid): labctl runs as root in the graders' containers and on CI.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import OWNER, ROOT, SERVERS

from labctl.backends import local_node
from labctl.backends.local import OWN_UIDS, LocalBackend
from labctl.exercise import load_exercise
from labctl.grading import GradeOptions, grade
from labctl.lab import LABEL_OWNER, Lab, Submission
from labctl.project import Project

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the local backend's own uids need root")

HOSTILE = SERVERS / "hostile"


@pytest.fixture(scope="module")
def local() -> Iterator[LocalBackend]:
    """A local backend with a state folder of this module's own (below /tmp: other uids may pass through)."""
    root = Path(tempfile.mkdtemp(prefix="labctl-local-test-", dir="/tmp"))
    backend = LocalBackend(root)
    yield backend
    backend.remove({LABEL_OWNER: OWNER})
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def local_project(local) -> Project:
    return Project(ROOT, local)


@pytest.fixture
def local_lab(local_project) -> Iterator:
    made: list[Lab] = []

    def start(path: Path, **submission) -> Lab:
        lab = Lab.create(local_project.spec, local_project.backend)
        made.append(lab)
        return lab.up(local_project.ensure_images(), Submission(path=path, **submission))

    yield start
    for lab in made:
        lab.down()


def server_state(lab: Lab) -> dict:
    return lab.backend._state(lab.container_name("server"))  # type: ignore[attr-defined]


def uid_of(pid: int) -> int:
    return os.stat(f"/proc/{pid}").st_uid


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def fetch(lab: Lab, path: str = "/") -> str:
    code = (f"import urllib.request as u; print(u.urlopen('http://{lab.server_host}:{lab.server_port}{path}', "
            "timeout=5).read().decode().strip())")
    result = lab.exec("client", ["python3", "-c", code], timeout=20)
    assert result.exit_code == 0, result.stderr
    return result.text.strip()


def test_the_server_runs_as_its_own_uid_in_its_own_session_from_a_copy_with_its_limits(local_lab, local):
    lab = local_lab(SERVERS / "hello")
    assert fetch(lab) == "hello from the lab"
    pid = server_state(lab)["pid"]
    uid = uid_of(pid)
    assert uid in OWN_UIDS and uid != os.geteuid()
    assert os.getsid(pid) == pid, "the server leads a session of its own"
    cwd = os.readlink(f"/proc/{pid}/cwd")
    assert cwd.startswith(str(local.root)) and cwd.endswith("/submission") and Path(cwd, "server.py").is_file()
    limits = Path(f"/proc/{pid}/limits").read_text()
    spec = lab.spec.server.limits
    assert re.search(rf"Max open files\s+{spec.nofile}\s+{spec.nofile}", limits), limits
    assert re.search(rf"Max processes\s+{spec.pids}\s+{spec.pids}", limits), limits
    assert re.search(rf"Max file size\s+{spec.disk_bytes}\s+{spec.disk_bytes}", limits), limits
    for node in lab.spec.nodes:  # what the nodes wrote (the observer's looks) and their plans: labctl's alone
        for name in ("log", "plan.json", "state.json"):
            assert os.stat(local.root / "nodes" / lab.container_name(node) / name).st_mode & 0o077 == 0, (node, name)
    folder = local.root / "nodes" / lab.container_name("server")
    lab.down()
    assert not alive(pid) and not local_node.pids_of_uid(uid) and not folder.exists()
    assert lab.containers() == []


def test_a_daemon_that_double_forks_out_of_the_tree_dies_with_its_lab(local_lab):
    lab = local_lab(SERVERS / "daemonizer")
    daemon = int(re.search(r"daemon (\d+)", lab.log_tail("server")).group(1))
    server = server_state(lab)["pid"]
    assert alive(daemon) and os.getsid(daemon) != os.getsid(server), "it left the server's session"
    lab.down()
    assert not alive(daemon)


def test_a_lab_whose_supervisor_was_killed_is_still_removed_whole(local_lab):
    lab = local_lab(SERVERS / "daemonizer")
    state = server_state(lab)
    server, uid = state["pid"], uid_of(state["pid"])
    os.kill(state["supervisor"], 9)  # as a killed labctl host would: the server is orphaned to init
    deadline = time.monotonic() + 5
    while lab.server_info().status != "dead":
        assert time.monotonic() < deadline, lab.server_info()
        time.sleep(0.05)
    assert alive(server)
    lab.down()
    assert not alive(server) and not local_node.pids_of_uid(uid)


def test_a_fork_bomb_is_held_to_its_task_limit_and_a_neighbour_keeps_serving(local_lab, local_project, local,
                                                                               monkeypatch):
    neighbour = local_lab(SERVERS / "hello")
    given: list[int] = []
    own_uid = LocalBackend._own_uid
    monkeypatch.setattr(LocalBackend, "_own_uid", lambda self, plan: given.append(own_uid(self, plan)) or given[-1])
    exercise = load_exercise(ROOT / "exercises" / "threaded")
    report = grade(local_project, exercise, ROOT / "exercises" / "threaded" / "mutants" / "fork_bomb",
                   GradeOptions(only=["get-index", "not-found", "idle-cpu"]))
    assert report.gradable and report.backend == "local"
    first, *rest = report.results
    assert first.status != "passed" and "task limit" in first.message, first.message
    assert all(result.message.startswith("not run: the server used up its task limit") for result in rest)
    assert fetch(neighbour) == "hello from the lab"
    assert len(given) == 1
    left = [pid for pid in all_pids() if uid_of_safe(pid) == given[0]]
    assert not left, f"processes of the removed lab's uid {given[0]}: {left}"


def uid_of_safe(pid: int) -> int | None:
    try:
        return uid_of(pid)
    except OSError:
        return None


def all_pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def test_a_memory_hog_is_killed_for_its_memory_and_grading_says_so(local_project):
    exercise = load_exercise(ROOT / "exercises" / "threaded")
    report = grade(local_project, exercise, ROOT / "exercises" / "threaded" / "mutants" / "memory_hog",
                   GradeOptions(only=["get-index", "hundred-clients", "idle-cpu"]))
    assert report.gradable
    messages = " ".join(result.message for result in report.results)
    assert "killed for using more memory than allowed (256m)" in messages, messages


def test_a_log_flood_keeps_only_a_few_megabytes(local_lab, local):
    lab = local_lab(ROOT / "exercises" / "polling" / "mutants" / "log_flood")
    time.sleep(4)  # long enough to write far more than the cap
    folder = local.root / "nodes" / lab.container_name("server")
    total = sum(path.stat().st_size for path in folder.glob("log*"))
    assert total <= 2 * 2 * 2**20, f"{total} bytes of log kept: the cap is two files of 2 MB"
    assert lab.log_tail("server", 1).startswith("log flood")


def test_a_disk_filler_is_bounded_and_its_files_go_with_the_lab(local_lab, local_project):
    lab = local_lab(HOSTILE, env={"TRICK": "fill_disk"})
    deadline = time.monotonic() + 60
    while "fill /home" not in (log := lab.log_tail("server", 40)):
        assert time.monotonic() < deadline, log
        time.sleep(0.5)
    uid = uid_of(server_state(lab)["pid"])
    filled = dict(re.findall(r"^fill (\S+): (.+)$", log, re.M))
    cap = local_project.spec.server.limits.disk_bytes // 2**20
    for folder, outcome in filled.items():
        written = int(outcome.split(" MiB")[0])
        assert written <= cap and not outcome.endswith("no limit"), (folder, outcome)
    for folder in ("/", "/etc", "/home", "/run"):
        assert filled[folder].startswith("0 MiB"), (folder, filled[folder])
    Path("/tmp", f"labctl-test-left-{uid}").write_text("")
    os.chown(f"/tmp/labctl-test-left-{uid}", uid, uid)  # as if it had left a file in the host's /tmp
    lab.down()
    assert not Path(f"/tmp/labctl-test-left-{uid}").exists(), "what its uid left in /tmp goes with the lab"


def test_a_grading_on_the_local_backend_gives_the_dockers_verdicts(local_project):
    exercise = load_exercise(ROOT / "exercises" / "blocking")
    report = grade(local_project, exercise, ROOT / "exercises" / "blocking" / "solution")
    assert report.gradable and report.backend == "local" and "rlimits" in report.limits
    assert report.score == report.max_score == exercise.max_points, [(r.name, r.status, r.message)
                                                                      for r in report.results]
    lesson = next(result for result in report.results if result.lesson)
    assert lesson.status == "failed", "the slow-client lesson shows what a blocking server does here too"


def test_without_ptrace_the_checks_of_thread_waits_are_unavailable_and_left_out(local_project, monkeypatch):
    import labctl.backends.local as local_module

    monkeypatch.setattr(local_module, "_has_capability", lambda bit: False)  # Docker's default capabilities
    exercise = load_exercise(ROOT / "exercises" / "blocking")
    report = grade(local_project, exercise, ROOT / "exercises" / "blocking" / "solution",
                   GradeOptions(only=["get-index", "asleep-in-accept", "io-model"]))
    by_name = {result.name: result for result in report.results}
    assert by_name["get-index"].passed
    assert by_name["asleep-in-accept"].status == by_name["io-model"].status == "unavailable"
    assert report.max_score == by_name["get-index"].max_points and report.exit_code == 0
