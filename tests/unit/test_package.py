"""`labctl package gradescope|prairielearn` without an engine: what the zip and the folder hold, and the
PrairieLearn entrypoint's exit codes with a stub `labctl` (the real replay is tests/integration/test_packages.py)."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from labctl import package
from labctl.backends import local
from labctl.cli import main
from labctl.errors import LabctlError
from labctl.project import Project

ROOT = Path(__file__).resolve().parents[2]
EXERCISE = "blocking"


def invoke(*args: str):
    return CliRunner().invoke(main, ["--project", str(ROOT), *args])


@pytest.fixture(scope="module")
def autograder_zip(tmp_path_factory) -> zipfile.ZipFile:
    path = tmp_path_factory.mktemp("gradescope") / "autograder.zip"
    result = invoke("package", "gradescope", EXERCISE, "-o", str(path))
    assert result.exit_code == 0, result.output
    return zipfile.ZipFile(path)


@pytest.fixture(scope="module")
def grader_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("prairielearn") / "grader"
    result = invoke("package", "prairielearn", EXERCISE, "-o", str(folder), "--image", "example.org/grader:1")
    assert result.exit_code == 0, result.output
    return folder


def mode(archive: zipfile.ZipFile, name: str) -> int:
    return (archive.getinfo(name).external_attr >> 16) & 0o777


# -- Gradescope -----------------------------------------------------------------------------------------

def test_the_zip_has_setup_and_run_autograder_at_its_root_executable(autograder_zip):
    names = autograder_zip.namelist()
    assert "setup.sh" in names and "run_autograder" in names  # at the root: Gradescope looks there
    assert mode(autograder_zip, "setup.sh") == mode(autograder_zip, "run_autograder") == 0o755


def test_the_zip_holds_the_project_a_grader_needs_and_nothing_for_instructors_only(autograder_zip):
    names = set(autograder_zip.namelist())
    for needed in ("project/lab.yaml", "project/pyproject.toml", "project/README.md", "project/labctl/__init__.py",
                   "project/labctl/harness/__init__.py", "project/labctl/templates/package/setup.sh",
                   f"project/exercises/{EXERCISE}/exercise.yaml", "project/exercises/www/index.html"):
        assert needed in names
    for name in names:
        parts = name.split("/")
        assert not {"solution", "mutants", "images", "tests", "__pycache__", ".venv"} & set(parts), name
    exercise = yaml.safe_load(autograder_zip.read(f"project/exercises/{EXERCISE}/exercise.yaml"))
    assert "validate" not in exercise  # it names the folders left out
    assert "io-model" in {check["name"] for check in exercise["checks"]}  # hidden checks stay: they are graded


def test_the_scripts_install_from_the_zip_and_grade_with_the_local_backend(autograder_zip):
    setup = autograder_zip.read("setup.sh").decode()
    run = autograder_zip.read("run_autograder").decode()
    assert "apt-get install -y --no-install-recommends python3 python3-venv" in setup
    assert 'pip" install --no-cache-dir "$SOURCE/project"' in setup  # labctl from the zip, not from PyPI
    assert f"--backend local grade {EXERCISE}" in run and '--report "gradescope:$RESULTS"' in run
    assert "cp -a /autograder/submission/." in run
    assert '--evidence "$evidence"' in run and 'rm -rf "$submission" "$evidence"' in run  # pictures, embedded
    assert 'rm -f "$RESULTS"' in run.split("*)")[1]  # exit 3: no results.json, "the autograder failed"
    for text in (setup, run):
        assert "__" not in text.replace("__EXERCISE__", "")


@pytest.mark.parametrize("script", ["setup.sh", "run_autograder"])
def test_the_scripts_are_valid_bash(autograder_zip, script, tmp_path):
    path = tmp_path / script
    path.write_bytes(autograder_zip.read(script))
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0


def test_the_same_project_packs_to_the_same_zip(tmp_path):
    first, second = tmp_path / "a.zip", tmp_path / "b.zip"
    package.gradescope(Project(ROOT), EXERCISE, first)
    package.gradescope(Project(ROOT), EXERCISE, second)
    assert first.read_bytes() == second.read_bytes()


def test_an_existing_zip_is_kept_without_force(tmp_path):
    target = tmp_path / "autograder.zip"
    target.write_text("mine")
    result = invoke("package", "gradescope", EXERCISE, "-o", str(target))
    assert result.exit_code == 2 and "--force" in result.output and target.read_text() == "mine"
    assert invoke("package", "gradescope", EXERCISE, "-o", str(target), "--force").exit_code == 0
    assert zipfile.is_zipfile(target)


def test_an_unknown_exercise_is_exit_2_naming_the_exercises(tmp_path):
    for platform in ("gradescope", "prairielearn"):
        result = invoke("package", platform, "no-such", "-o", str(tmp_path / platform))
        assert result.exit_code == 2 and "no exercise 'no-such'" in result.output and EXERCISE in result.output


# -- PrairieLearn ---------------------------------------------------------------------------------------

def test_the_grader_folder_has_its_files(grader_dir):
    assert {path.name for path in grader_dir.iterdir()} == {"Dockerfile", "entrypoint", "info.json.snippet",
                                                            "README.md", "project"}
    assert os.access(grader_dir / "entrypoint", os.X_OK)
    assert not (grader_dir / "project" / "exercises" / EXERCISE / "solution").exists()


def test_the_snippet_enables_external_grading_with_a_timeout_over_the_budget(grader_dir):
    snippet = json.loads((grader_dir / "info.json.snippet").read_text())
    options = snippet["externalGradingOptions"]
    budget = Project(ROOT).exercise(EXERCISE).budget
    assert options["enabled"] is True and options["image"] == "example.org/grader:1"
    assert budget + package.TIMEOUT_MARGIN <= options["timeout"] <= package.PL_TIMEOUT_MAX
    assert options["entrypoint"] == f"{package.GRADER_DIR}/entrypoint"
    assert snippet["gradingMethod"] == "External"


def test_the_dockerfile_installs_labctl_at_build_time_and_copies_the_entrypoint(grader_dir):
    dockerfile = (grader_dir / "Dockerfile").read_text()
    assert dockerfile.splitlines()[2] == f"FROM {package.DEFAULT_BASE_IMAGE}"
    assert f"pip install --no-cache-dir {package.PL_PROJECT_DIR}" in dockerfile
    assert f"COPY entrypoint {package.GRADER_DIR}/entrypoint" in dockerfile
    assert "example.org/grader:1" in (grader_dir / "README.md").read_text()


def test_a_budget_over_prairielearns_limit_is_refused():
    assert package.grading_timeout(180) == 240
    with pytest.raises(LabctlError, match="600 s limit"):
        package.grading_timeout(550)


STUB = """#!/usr/bin/env bash
# A stub labctl: checks --submission holds the student's files, writes the --report prairielearn:PATH file
# unless told not to, exits $STUB_EXIT.
while [ $# -gt 0 ]; do
  case "$1" in
    --report) case "$2" in prairielearn:*) out="${2#prairielearn:}";; esac; shift;;
    --submission) submission="$2"; shift;;
  esac
  shift
done
[ -f "$submission/server.py" ] || exit 99
if [ -z "${STUB_NO_RESULTS:-}" ]; then echo '{"gradable": true, "score": 1}' > "$out"; fi
exit "$STUB_EXIT"
"""


@pytest.mark.parametrize(("labctl_exit", "no_results", "expected"),
                         [(0, False, 0), (1, False, 0), (2, False, 0), (3, False, 3), (3, True, 3), (1, True, 3)])
def test_the_entrypoint_exits_0_whenever_it_wrote_results_and_keeps_an_infrastructure_failure(
        grader_dir, tmp_path, labctl_exit, no_results, expected):
    bin_dir, grade = tmp_path / "bin", tmp_path / "grade"
    bin_dir.mkdir()
    (grade / "student").mkdir(parents=True)
    (grade / "student" / "server.py").write_text("print('hi')\n")
    stub = bin_dir / "labctl"
    stub.write_text(STUB)
    stub.chmod(0o755)
    environment = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "LABCTL_GRADE_DIR": str(grade),
                   "STUB_EXIT": str(labctl_exit), "TMPDIR": str(tmp_path)}
    if no_results:
        environment["STUB_NO_RESULTS"] = "1"
    done = subprocess.run([str(grader_dir / "entrypoint")], env=environment, capture_output=True, text=True)
    assert done.returncode == expected, done.stderr
    assert (grade / "results" / "results.json").exists() is not no_results
    assert not list(tmp_path.glob("labctl-submission.*"))  # its copy of the submission is removed
    assert not list(tmp_path.glob("labctl-evidence.*"))  # and the evidence, once results.json embeds it


def test_the_readmes_package_commands_work_as_written(tmp_path, monkeypatch):
    section = (ROOT / "README.md").read_text().split("## Grading on Gradescope and PrairieLearn", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    for line in block.splitlines():
        words = line.split("#", 1)[0].split()
        assert words[:2] == ["labctl", "package"], line
        result = invoke(*words[1:])
        assert result.exit_code == 0, (line, result.output)
    assert zipfile.is_zipfile(tmp_path / "autograder.zip") and (tmp_path / "pl-blocking" / "Dockerfile").is_file()


# -- the local backend's unpacking on Pythons without tar filters (the platforms' Debian 3.11.2) -----------

def _tar(*members: tarfile.TarInfo) -> tarfile.TarFile:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for member in members:
            tar.addfile(member, io.BytesIO(b"x" * member.size) if member.isfile() else None)
    return tarfile.open(fileobj=io.BytesIO(buffer.getvalue()))


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", size: int = 1, mode: int = 0o644):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size, info.mode = kind, link, size if kind == tarfile.REGTYPE else 0, mode
    return info


def test_plain_members_pass_with_their_setuid_bits_dropped(tmp_path):
    members = local._data_members(_tar(_member("submission/server.py", mode=0o4755),
                                       _member("submission/link", tarfile.SYMTYPE, "server.py")), tmp_path)
    assert [member.name for member in members] == ["submission/server.py", "submission/link"]
    assert members[0].mode == 0o755


@pytest.mark.parametrize("member", [_member("../outside"), _member("/submission/../../x"),
                                    _member("submission/up", tarfile.SYMTYPE, "../../etc/passwd"),
                                    _member("submission/dev", tarfile.CHRTYPE)])
def test_members_that_leave_the_folder_or_are_devices_are_refused(tmp_path, member):
    with pytest.raises(LabctlError):
        local._data_members(_tar(member), tmp_path)


def test_the_fallback_is_what_unpack_uses_without_filters(tmp_path, monkeypatch):
    monkeypatch.delattr(tarfile, "data_filter", raising=False)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.addfile(_member("srv/www/index.html", size=1), io.BytesIO(b"x"))
    local._unpack(buffer.getvalue(), tmp_path)
    assert (tmp_path / "srv" / "www" / "index.html").read_bytes() == b"x"
    shutil.rmtree(tmp_path / "srv")
