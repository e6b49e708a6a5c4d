"""The `labctl` command as a user runs it: a real process, the real engine, real signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import OWNER, ROOT, SERVERS

from labctl.lab import LABEL_OWNER


def labctl(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT, timeout: float = 120,
           ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "labctl", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "LABCTL_OWNER": OWNER, **(env or {})}, timeout=timeout)


def spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "labctl", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "LABCTL_OWNER": OWNER})


def wait_for_containers(backend, lab_id: str, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while len(backend.find_containers({"labctl.lab": lab_id})) < count:
        assert time.monotonic() < deadline, f"lab {lab_id} did not get {count} containers"
        time.sleep(0.1)


def test_up_exec_logs_status_down(project):
    up = labctl("up", "--submission", str(SERVERS / "hello"), "--name", f"cli-{OWNER}")
    lab_id = f"cli-{OWNER}"
    try:
        assert up.returncode == 0, up.stderr
        assert f"lab {lab_id} is up" in up.stdout
        fetched = labctl("exec", "--lab", lab_id, "client", "--", "python3", "-c",
                         "import urllib.request as u; print(u.urlopen('http://server:8080/').read().decode())")
        assert (fetched.returncode, fetched.stdout.strip()) == (0, "hello from the lab")
        failing = labctl("exec", "--lab", lab_id, "client", "--", "sh", "-c", "exit 9")
        assert failing.returncode == 9, "labctl exec must exit with the command's exit code"
        logs = labctl("logs", "--lab", lab_id, "server")
        assert logs.stdout.strip() == "listening on 8080"
        status = json.loads(labctl("status", "--json").stdout)
        mine = [lab for lab in status if lab["id"] == lab_id]
        assert len(mine) == 1 and {c["node"] for c in mine[0]["containers"]} == {"server", "client", "injector",
                                                                                 "observer"}
    finally:
        down = labctl("down", lab_id)
    assert down.returncode == 0 and "removed 5 object(s)" in down.stdout
    again = labctl("down", lab_id)
    assert again.returncode == 0 and "already gone" in again.stdout


def test_a_lab_orphaned_by_a_killed_labctl_is_removed_by_down_all(project):
    orphan = spawn("up", "--submission", str(SERVERS / "hello"), "--name", f"orphan-{OWNER}")
    try:
        wait_for_containers(project.backend, f"orphan-{OWNER}", 4)
    finally:
        orphan.kill()  # SIGKILL: no cleanup can run
        orphan.wait()
    assert project.backend.find_containers({"labctl.lab": f"orphan-{OWNER}"}), "the orphan should still be there"
    down = labctl("down", "--all")
    assert down.returncode == 0, down.stderr
    assert project.backend.find_containers({LABEL_OWNER: OWNER}) == []
    assert project.backend.find_networks({LABEL_OWNER: OWNER}) == []


def test_ctrl_c_during_up_removes_what_was_made(project):
    # The silent server never listens, so `up` is still waiting when the interrupt comes.
    up = spawn("up", "--submission", str(SERVERS / "silent"), "--name", f"intr-{OWNER}")
    wait_for_containers(project.backend, f"intr-{OWNER}", 4)
    up.send_signal(signal.SIGINT)
    _, stderr = up.communicate(timeout=60)
    assert up.returncode == 130, stderr
    assert "interrupted" in stderr
    assert project.backend.find_containers({"labctl.lab": f"intr-{OWNER}"}) == []
    assert project.backend.find_networks({"labctl.lab": f"intr-{OWNER}"}) == []


def test_an_unreachable_engine_is_one_clear_line_and_exit_3():
    result = labctl("status", env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert result.returncode == 3  # an infrastructure failure (labctl.errors.EXIT_INFRASTRUCTURE)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot reach the Docker Engine at "
                                                   "unix:///nonexistent/docker.sock"), result.stderr
    assert "Traceback" not in result.stderr


def test_a_broken_lab_yaml_is_reported_with_file_and_line(tmp_path):
    (tmp_path / "lab.yaml").write_text("nodes:\n  server:\n    role: server\n    limits: {memory: 12q}\n")
    result = labctl("up", cwd=tmp_path)
    assert result.returncode == 2
    assert "lab.yaml:4: nodes.server.limits.memory: expected a size like 256m or 1g, found '12q'" in result.stderr
    assert "Traceback" not in result.stderr


def test_outside_a_project_the_error_says_where_it_looked(tmp_path):
    result = labctl("status", cwd=tmp_path)
    assert result.returncode == 2 and f"no lab.yaml in {tmp_path}" in result.stderr


def test_schema_prints_the_json_schema_of_lab_yaml():
    result = labctl("schema")
    schema = json.loads(result.stdout)
    assert schema["type"] == "object" and "nodes" in schema["properties"]


def test_up_with_an_exercise_serves_its_docroot(project):
    lab_id = f"ex-{OWNER}"
    up = labctl("up", "--exercise", "blocking", "--submission", str(ROOT / "exercises" / "blocking" / "solution"),
                "--name", lab_id)
    try:
        assert up.returncode == 0, up.stderr
        page = labctl("exec", "--lab", lab_id, "client", "--", "python3", "-c",
                      "import urllib.request as u; print(u.urlopen('http://server:8080/').read().decode())")
        assert page.returncode == 0 and "It works" in page.stdout
    finally:
        labctl("down", lab_id)


def test_shell_runs_what_it_is_given_and_returns_its_exit_code(project):
    lab_id = f"sh-{OWNER}"
    assert labctl("up", "--name", lab_id).returncode == 0
    try:
        shell = subprocess.run([sys.executable, "-m", "labctl", "shell", "--lab", lab_id, "client"],
                               input="echo hello from $(hostname)\nexit 3\n", cwd=ROOT, capture_output=True,
                               text=True, timeout=60, env={**os.environ, "LABCTL_OWNER": OWNER})
        assert "hello from client" in shell.stdout
        assert shell.returncode == 3
    finally:
        labctl("down", lab_id)


def test_observe_and_capture_show_what_the_server_does(project, tmp_path):
    from scapy.all import TCP, rdpcap

    lab_id = f"look-{OWNER}"
    up = labctl("up", "--exercise", "blocking", "--submission", str(ROOT / "exercises" / "blocking" / "solution"),
                "--name", lab_id)
    assert up.returncode == 0, up.stderr
    try:
        seen = labctl("observe", "--lab", lab_id)
        assert seen.returncode == 0, seen.stderr
        assert "asleep in accept4 (288)" in seen.stdout and "1 process(es), 1 thread(s)" in seen.stdout
        pcap = tmp_path / "lab.pcap"
        capture = spawn("capture", "--lab", lab_id, "--seconds", "5", "-o", str(pcap))
        time.sleep(3)  # the harness starts sniffing within a second or two
        fetch = labctl("exec", "--lab", lab_id, "client", "--", "python3", "-c",
                       "import urllib.request as u; u.urlopen('http://server:8080/').read()")
        assert fetch.returncode == 0, fetch.stderr
        stdout, stderr = capture.communicate(timeout=60)
        assert capture.returncode == 0, stderr
        packets = [p for p in rdpcap(str(pcap)) if TCP in p and 8080 in (p[TCP].sport, p[TCP].dport)]
        assert any(p[TCP].flags == "S" for p in packets), "the capture should hold the client's SYN"
    finally:
        labctl("down", lab_id)


def _wait_until_loaded(process: subprocess.Popen, library: str = "pydantic_core", timeout: float = 20) -> None:
    """Until the process has loaded `library`: labctl's own imports are under way (the interpreter's
    start before that, ~30 ms, is Python's: an interrupt there is its fatal error, not labctl's)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if library in Path(f"/proc/{process.pid}/maps").read_text():
                return
        except OSError:
            pass
        time.sleep(0.002)


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.15, 0.3])
def test_ctrl_c_while_labctl_starts_is_one_line_never_a_traceback(delay):
    """Interrupted while click, rich, pydantic and the SDK load: at most one line."""
    started = spawn("checks")
    _wait_until_loaded(started)
    time.sleep(delay)
    started.send_signal(signal.SIGINT)
    _, stderr = started.communicate(timeout=60)
    assert "Traceback" not in stderr, stderr
    # -SIGINT: it came as the interpreter was ending (its handlers are gone then): no word, no harm.
    assert started.returncode in (0, 130, -signal.SIGINT), (started.returncode, stderr)
    assert len(stderr.strip().splitlines()) <= 1, stderr


@pytest.mark.parametrize("delay", [0.3, 1.0, 2.0, 4.0])
def test_ctrl_c_at_any_moment_of_a_grading_leaves_nothing_and_no_traceback(project, delay):
    grading = spawn("test", "blocking", "--submission", str(ROOT / "exercises" / "blocking" / "solution"),
                    "--only", "get-index", "--only", "asleep-in-accept")
    time.sleep(delay)
    grading.send_signal(signal.SIGINT)
    grading.send_signal(signal.SIGINT)  # and an impatient second one: the removal still finishes
    _, stderr = grading.communicate(timeout=90)
    assert "Traceback" not in stderr, stderr
    assert grading.returncode in (0, 130, -signal.SIGINT), (grading.returncode, stderr)  # -SIGINT: as it ended
    assert project.backend.find_containers({LABEL_OWNER: OWNER}) == []
    assert project.backend.find_networks({LABEL_OWNER: OWNER}) == []


def test_quiet_grading_prints_the_report_and_nothing_else(project):
    loud = labctl("test", "blocking", "--submission", str(ROOT / "exercises" / "blocking" / "solution"),
                  "--only", "get-index")
    quiet = labctl("--quiet", "test", "blocking", "--submission", str(ROOT / "exercises" / "blocking" / "solution"),
                   "--only", "get-index")
    assert loud.returncode == quiet.returncode == 0
    assert "grading" in loud.stderr and "pass get-index" in loud.stderr  # progress and results as they come
    assert quiet.stderr == "", quiet.stderr
    assert "score 2/2 points" in quiet.stdout and "get-index" in quiet.stdout
