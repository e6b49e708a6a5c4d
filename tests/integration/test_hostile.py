"""Hostile and unlucky submissions on the real engine (tests/servers/hostile, one trick each).

- A server cannot fool the process checks by watching the observer, nor hide CPU in reaped
  children: the observer's sampler runs all the time, and the CPU comes from the cgroup.
- A grading ends within its budget plus GRACE plus the lab's removal, whichever way the server
  dies (it exits, it is killed for memory, it uses up its tasks), and an exec into a container
  that stops mid-call ends at once (the observer stops with the server: they share a PID namespace).
- A server cannot write to the host's disk: each writable folder is capped, the rest read-only.
- The server's bytes reach neither the terminal nor a CI runner raw, on any path of the CLI.
"""

from __future__ import annotations

import ipaddress
import re
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
from conftest import ROOT, SERVERS

from integration.test_checks_process import run
from integration.test_cli import labctl
from labctl.exercise import load_exercise
from labctl.grading import GRACE, GradeOptions, grade
from labctl.untrusted import is_command

HOSTILE = SERVERS / "hostile"
BLOCKING = ROOT / "exercises" / "blocking"
#: What tearing a lab down may add to a grading's budget and grace (measured: ~1 s; generous).
TEARDOWN = 10.0


def hostile_lab(start_lab, trick: str, **env: str):
    return start_lab(HOSTILE, env={"TRICK": trick, **env})


# -- seeing through -------------------------------------------------------------------------------

def test_a_server_that_hides_while_watched_is_caught(start_lab):
    lab = hostile_lab(start_lab, "hide")
    time.sleep(3.5)  # the observer's sampler is no longer a young process: the trick is armed
    idle = run(lab, "idle_cpu", max_percent=5)
    assert not idle.passed and idle.evidence["cpu_percent"] > 20, idle.message
    asleep = run(lab, "blocked_in", syscalls=["accept4"])
    assert not asleep.passed, asleep.message
    model = run(lab, "io_model", expect="blocking")
    assert not model.passed and model.evidence["model"] == "busy-polling", model.message


def test_cpu_burnt_in_reaped_children_is_counted(start_lab):
    lab = hostile_lab(start_lab, "reaped_children")
    idle = run(lab, "idle_cpu", max_percent=5)
    assert not idle.passed and idle.evidence["cpu_percent"] >= 25, idle.message
    assert "cgroup" in idle.evidence["measured"]
    asleep = run(lab, "blocked_in", syscalls=["accept4", "clock_nanosleep"])
    # Every look finds the main thread in accept4 and the forking thread asleep; the CPU says otherwise.
    assert not asleep.passed and "something runs between the looks" in asleep.message, asleep.message


def test_a_server_that_spins_only_after_seconds_of_quiet_is_caught_by_idle_cpu(project):
    """The checks before idle-cpu make traffic until a few seconds before it; its window is long enough
    to outlast a server that waits 5 s of quiet before it spins."""
    report = grade(project, load_exercise(BLOCKING), HOSTILE,
                   GradeOptions(only=["one-thread", "asleep-in-accept", "idle-cpu"],
                                env={"TRICK": "lazy_spin", "AFTER": "5"}))
    idle = next(result for result in report.results if result.name == "idle-cpu")
    assert idle.status == "failed" and idle.evidence["cpu_percent"] > 10, idle.message


# -- grading ends in time ------------------------------------------------------------------------

@pytest.mark.parametrize("trick, says", [
    ("exit_after", "exited with code 3"),
    ("oom", "killed for using more memory than allowed"),
    ("tasks", None),
])
def test_a_grading_ends_within_its_budget_whichever_way_the_server_dies(project, trick, says):
    budget = 45.0
    started = time.monotonic()
    report = grade(project, load_exercise(BLOCKING), HOSTILE,
                   GradeOptions(budget=budget, env={"TRICK": trick, "AFTER": "3"}))
    wall = time.monotonic() - started
    messages = " ".join(result.message for result in report.results) + (report.error or "")
    print(trick, f"{wall:.1f} s", [(r.name, r.status, r.duration) for r in report.results])
    assert report.duration <= budget + GRACE + 2, messages
    assert wall <= budget + GRACE + TEARDOWN, f"{wall:.1f} s: {messages}"
    assert not report.all_passed
    if says:
        assert says in messages, messages


def test_an_exec_into_a_container_that_stops_midway_ends_at_once(start_lab, project):
    lab = start_lab("hello")
    outcome: dict = {}

    def sleep_in_the_observer() -> None:
        started = time.monotonic()
        outcome["result"] = lab.exec("observer", ["sleep", "60"], timeout=60)
        outcome["seconds"] = time.monotonic() - started

    waiter = threading.Thread(target=sleep_in_the_observer)
    waiter.start()
    time.sleep(1.0)
    project.backend.client.api.kill(lab.container_name("server"))  # the observer's PID namespace ends with it
    waiter.join(timeout=30)
    assert not waiter.is_alive(), "the exec did not end when its container stopped"
    assert outcome["result"].container_gone and outcome["seconds"] < 10, outcome


# -- the network -----------------------------------------------------------------------------------

def test_the_server_cannot_reach_the_host(start_lab):
    """Anything the host serves on 0.0.0.0 must be out of reach: the lab's bridge has no host address."""
    listener = socket.socket()
    listener.bind(("0.0.0.0", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    try:
        lab = start_lab("hello")
        subnet = ipaddress.ip_network(lab.backend.find_networks({"labctl.lab": lab.id})[0].subnet)
        gateway = str(next(subnet.hosts()))
        probe = ("import socket, sys\n"
                 "try:\n"
                 "    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close(); print('reached')\n"
                 "except OSError as error:\n"
                 "    print('unreachable', type(error).__name__)\n")
        answer = lab.exec("server", ["python3", "-c", probe, gateway, str(port)]).text.strip()
        assert answer.startswith("unreachable"), f"{gateway}:{port} from the server: {answer}"
        assert lab.exec("client", ["python3", "-c", probe, "server", "8080"]).text.strip() == "reached"
    finally:
        listener.close()


# -- the disk ------------------------------------------------------------------------------------

def test_a_server_cannot_fill_the_hosts_disk(start_lab, project):
    lab = hostile_lab(start_lab, "fill_disk")
    deadline = time.monotonic() + 60
    while "fill /home" not in (log := lab.log_tail("server", 40)):
        assert time.monotonic() < deadline, log
        time.sleep(0.5)
    filled = dict(re.findall(r"^fill (\S+): (.+)$", log, re.M))
    cap = project.spec.server.limits.disk_bytes // 2**20
    for folder in ("/tmp", "/var/tmp", "/dev/shm", "/run", "/submission", "/srv/www"):
        written = int(filled[folder].split(" MiB")[0])
        assert written <= cap and filled[folder].endswith("No space left on device"), (folder, filled[folder])
    for folder in ("/", "/etc", "/home"):
        assert filled[folder].startswith("0 MiB"), (folder, filled[folder])
    assert lab.backend.inspect(lab.container_name("server")).running, "the server survives a full folder"
    listed = project.backend.client.api.containers(all=True, size=True,
                                                   filters={"name": lab.container_name("server")})
    size = listed[0].get("SizeRw") or 0
    assert size < 2**20, f"{size} bytes in the container's writable layer, on the host's disk"


# -- the server's bytes on every output of the CLI ----------------------------------------------

def shouting_submission(tmp_path: Path, trick: str) -> Path:
    folder = tmp_path / trick
    folder.mkdir()
    shutil.copy(HOSTILE / "server.py", folder / "server.py")
    (folder / "trick.txt").write_text(trick)
    return folder


def assert_clean(text: str) -> None:
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f]", text.replace("\r\n", "\n")), repr(text[-2000:])
    commands = [line for line in re.split(r"\r\n|\r|\n", text) if is_command(line)]
    assert all(line.startswith(("::error title=labctl ", "::notice title=labctl ")) for line in commands), commands


def test_a_server_that_shouts_and_exits_reaches_no_terminal_raw(tmp_path):
    result = labctl("grade", "blocking", "--submission", str(shouting_submission(tmp_path, "shout_and_exit")),
                    "--report", "terminal", "--report", "junit:-", "--report", "github")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "not gradable" in result.stdout and "\\x1b]0;owned" in result.stdout
    assert_clean(result.stdout)
    assert_clean(result.stderr)


def test_a_server_that_shouts_while_graded_reaches_no_terminal_raw(tmp_path):
    result = labctl("grade", "blocking", "--submission", str(shouting_submission(tmp_path, "shout")),
                    "--only", "get-index", "--report", "terminal", "--report", "junit:-", "--report", "json:-",
                    "--report", "github")
    assert result.returncode in (0, 1), result.stdout + result.stderr
    assert "\\x3a:stop-commands::TOKEN" in result.stdout  # the log tail, shown and disarmed
    assert_clean(result.stdout)
    assert_clean(result.stderr)


def test_a_server_that_prints_megabytes_on_one_line_gets_a_bounded_report(tmp_path):
    report = tmp_path / "report.json"
    result = labctl("grade", "blocking", "--submission", str(shouting_submission(tmp_path, "one_long_line")),
                    "--report", "terminal", "--report", f"json:{report}")
    assert result.returncode == 2, result.stderr
    assert "earlier characters left out" in result.stdout
    assert len(result.stdout) < 100_000 and report.stat().st_size < 100_000, (len(result.stdout), report.stat())


def test_logs_and_observe_show_the_servers_bytes_escaped(start_lab):
    lab = hostile_lab(start_lab, "shout")
    logs = labctl("logs", "--lab", lab.id, "server")
    assert logs.returncode == 0 and "\\x1b[2J" in logs.stdout
    assert_clean(logs.stdout)
    raw = labctl("logs", "--lab", lab.id, "--raw", "server")
    assert "\x1b[2J" in raw.stdout, "--raw gives the bytes as they are"
    seen = labctl("observe", "--lab", lab.id)
    assert seen.returncode == 0 and "\\x1b[2J" in seen.stdout, seen.stdout
    assert_clean(seen.stdout)
