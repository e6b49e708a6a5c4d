"""`labctl doctor` on the real machine: ready here; not ready without an engine, or with images that
cannot be built (no registry answers here, and debootstrap is taken away)."""

from __future__ import annotations

import re
import shutil

from conftest import ROOT

from integration.test_cli import labctl


def test_this_machine_is_ready(project):
    # Ready means every image of images/ built (the session's fixture builds only those most tests use).
    project.ensure_images(names=sorted(project.image_builder().images))
    result = labctl("doctor")
    assert result.returncode == 0, result.stdout + result.stderr
    levels = {name: level for level, name in
              re.findall(r"^\s*(OK|warning|error)\s+(\S+(?: API| files)?)\s{2}", result.stdout, re.M)}
    assert levels == dict.fromkeys(["labctl", "engine", "engine API", "cgroups", "storage", "open files", "images",
                                    "disk"], "OK"), result.stdout
    assert "ready: gradings can run here" in result.stdout


def test_without_an_engine_it_says_so_and_exits_2():
    result = labctl("doctor", env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert result.returncode == 2
    assert "cannot reach the Docker Engine at unix:///nonexistent/docker.sock" in result.stdout
    assert "fix: start Docker" in result.stdout and "not ready" in result.stdout


def test_images_that_cannot_be_built_are_an_error(project, tmp_path):
    copy = tmp_path / "course"
    copy.mkdir()
    shutil.copy(ROOT / "lab.yaml", copy / "lab.yaml")
    shutil.copytree(ROOT / "images", copy / "images")
    packages = copy / "images" / "packages.txt"  # another base package list: a base no engine has yet
    packages.write_text(packages.read_text().replace("\nbase     ", "\nbase     less "))
    result = labctl("doctor", cwd=copy, env={"LABCTL_DEBOOTSTRAP": ""})
    assert result.returncode == 2, result.stdout
    assert "missing, and none can be built" in result.stdout and "debootstrap is not installed" in result.stdout
    with_debootstrap = labctl("doctor", cwd=copy)
    assert with_debootstrap.returncode == 0, with_debootstrap.stdout
    assert "the first grading builds them first" in with_debootstrap.stdout
