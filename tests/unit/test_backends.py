"""Choosing a backend by name, and the local backend's pure pieces (paths, process trees)."""

from __future__ import annotations

from pathlib import Path

import pytest

from labctl import backends
from labctl.backends.local import _remap
from labctl.errors import LabctlError
from labctl.harness.proc import server_pids

WRITABLE = ("/tmp", "/var/tmp", "/submission", "/srv/www", "/opt/labctl")


def test_a_backend_is_chosen_by_flag_then_environment_then_docker(monkeypatch):
    monkeypatch.delenv(backends.ENV, raising=False)
    assert backends.chosen() == "docker"
    monkeypatch.setenv(backends.ENV, "local")
    assert backends.chosen() == "local" and backends.chosen("docker") == "docker"
    monkeypatch.setenv(backends.ENV, "kubernetes")
    with pytest.raises(LabctlError, match=r"\$LABCTL_BACKEND: expected one of docker, local, found 'kubernetes'"):
        backends.chosen()
    with pytest.raises(LabctlError, match="--backend: expected one of docker, local, found 'podman'"):
        backends.chosen("podman")


def test_container_paths_become_the_same_paths_below_the_nodes_files():
    files = Path("/state/nodes/n/files")
    assert _remap("/submission", WRITABLE, files) == "/state/nodes/n/files/submission"
    assert _remap("/srv/www/index.html", WRITABLE, files) == "/state/nodes/n/files/srv/www/index.html"
    assert _remap("/opt/labctl", WRITABLE, files) == "/state/nodes/n/files/opt/labctl"
    assert _remap("--docroot=/srv/www", WRITABLE, files) == "--docroot=/state/nodes/n/files/srv/www"
    assert _remap("/var/tmp/x", WRITABLE, files) == "/state/nodes/n/files/var/tmp/x", "the longest path first"
    assert _remap("/usr/bin/python3", WRITABLE, files) == "/usr/bin/python3"
    assert _remap("/tmpfile", WRITABLE, files) == "/tmpfile", "a path, not a prefix of a name"
    assert _remap("python3 server.py", WRITABLE, files) == "python3 server.py"


def test_the_servers_processes_below_a_supervisor_are_its_tree_less_the_supervisor():
    parents = {1: 0, 50: 1, 100: 50, 101: 100, 102: 101, 200: 1, 300: 200}
    comms = {pid: "python3" for pid in parents}
    assert server_pids(parents, comms, root=100) == (100, [101, 102])
    assert server_pids(parents, comms, root=999) == (None, [])
    assert server_pids(parents, comms) == (None, [1, 50, 100, 101, 102, 200, 300]), "PID 1's tree by default"


def test_a_harness_node_runs_labctls_own_python_even_when_labctl_lives_below_a_container_path(monkeypatch):
    import json
    import shutil
    import sys
    import tempfile

    from labctl.backends.base import ContainerPlan
    from labctl.backends.local import LocalBackend

    root = Path(tempfile.mkdtemp(prefix="labctl-unit-", dir="/tmp"))
    try:
        monkeypatch.setattr(sys, "executable", "/tmp/clone/.venv/bin/python")  # a CI clone below /tmp
        backend = LocalBackend(root)
        backend.create_container(ContainerPlan(
            name="labctl-u-observer", node="observer", image="host", command=["python3", "-m", "harness", "proc_agent"],
            labels={"labctl.role": "observer"}, env={"PYTHONPATH": "/opt/labctl"}, writable=("/tmp", "/opt/labctl")))
        plan = json.loads((root / "nodes" / "labctl-u-observer" / "plan.json").read_text())
        assert plan["command"] == ["/tmp/clone/.venv/bin/python", "-m", "harness", "proc_agent"]
        assert plan["env"]["PYTHONPATH"] == f"{root}/nodes/labctl-u-observer/files/opt/labctl"
    finally:
        shutil.rmtree(root, ignore_errors=True)
