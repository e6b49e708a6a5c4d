"""The README's two commands, as written, with Debian's own /usr/bin/python3 in a clean environment.

Debian 12's system Python is "externally managed" (PEP 668): a bare `pip install .` stops at
once there. The commands are read from the README's Quickstart (its first two `sh` blocks) and
run in a copy of the repository's tracked files, with a PATH of the system's folders only and a
HOME of their own: no developer's Python, no pip cache, no virtualenv already there. The second
command runs the whole suite; here pytest is pointed at one small unit test file through
PYTEST_ADDOPTS (the command itself stays as written), since a test cannot run its own suite.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import OWNER, ROOT

SYSTEM_PYTHON = Path("/usr/bin/python3")


def readme_commands() -> list[str]:
    quickstart = (ROOT / "README.md").read_text().split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.+?)\n```", quickstart, re.S)[:2]


@pytest.fixture(scope="module")
def clean_copy(tmp_path_factory) -> Path:
    if not SYSTEM_PYTHON.exists():
        pytest.skip("no system Python at /usr/bin/python3 on this machine")
    copy = tmp_path_factory.mktemp("fresh-clone")
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        target = copy / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    return copy


def run(command: str, folder: Path, **extra: str) -> subprocess.CompletedProcess:
    home = folder.parent / f"{folder.name}-home"
    home.mkdir(exist_ok=True)
    env = {"PATH": "/usr/local/sbin:/usr/sbin:/sbin:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8",
           "LABCTL_OWNER": OWNER, **{key: os.environ[key] for key in ("DOCKER_HOST",) if key in os.environ},
           **extra}
    return subprocess.run(["/bin/sh", "-c", command], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=900)


def test_the_readme_has_two_commands_and_both_use_a_virtual_environment():
    first, second = readme_commands()
    assert "labctl test blocking" in first and "pytest" in second
    assert all(command.startswith("python3 -m venv .venv && ") for command in (first, second))


def test_the_system_python_refuses_a_bare_pip_install(clean_copy):
    """Why the commands are as they are: on this Debian, `python3 -m pip install .` is refused."""
    if not (SYSTEM_PYTHON.parent.parent / "lib" / "python3.11" / "EXTERNALLY-MANAGED").exists():
        pytest.skip("this system Python is not externally managed")
    refused = run("python3 -m pip install .", clean_copy)
    assert refused.returncode != 0 and "externally-managed-environment" in refused.stderr + refused.stdout


def test_the_first_command_grades_the_solution(clean_copy, project):
    first, _ = readme_commands()
    result = run(first, clean_copy)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "score 13/13 points" in result.stdout
    version = run(".venv/bin/python -c 'import sys; print(sys.base_prefix)'", clean_copy).stdout.strip()
    assert version == "/usr", f"the virtual environment is not on the system Python: {version}"


def test_the_second_command_installs_the_tests_and_runs_pytest(clean_copy):
    _, second = readme_commands()
    result = run(second, clean_copy, PYTEST_ADDOPTS="-q -p no:cacheprovider tests/unit/test_names.py")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert re.search(r"\d+ passed", result.stdout), result.stdout[-2000:]


def test_ci_runs_the_readmes_test_command():
    _, second = readme_commands()
    assert second in (ROOT / ".ci" / "run").read_text().splitlines()
