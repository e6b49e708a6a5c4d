"""One answer to "does this process still live?" for labs left by dead gradings and local nodes' supervisors."""

from __future__ import annotations

import subprocess
import sys
import time

from labctl.pids import alive


def test_a_running_process_lives_and_a_reaped_one_does_not():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "labctl-grade"])
    try:
        assert alive(child.pid) and alive(child.pid, labctl_only=True)
    finally:
        child.kill()
        child.wait()
    assert not alive(child.pid)
    assert not alive(None) and not alive(0) and not alive(-1)


def test_a_zombie_is_gone_and_a_process_that_is_no_labctl_is_no_grading():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and alive(child.pid):  # it exits; not reaped yet: a zombie
        time.sleep(0.05)
    assert not alive(child.pid)
    child.wait()
    other = subprocess.Popen(["sleep", "30"])
    try:
        assert alive(other.pid) and not alive(other.pid, labctl_only=True)
    finally:
        other.kill()
        other.wait()
