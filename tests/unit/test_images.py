"""Image tags and the offline path's errors, without building anything."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from labctl import images
from labctl.errors import ImageBuildError
from labctl.images import ImageBuilder, image_tags, read_packages

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def images_dir(tmp_path: Path) -> Path:
    copy = tmp_path / "images"
    shutil.copytree(ROOT / "images", copy)
    return copy


def test_the_package_list_has_the_tools_the_lab_needs():
    base = read_packages(ROOT / "images")["base"]
    for package in ("python3", "python3-scapy", "iproute2", "iptables", "tcpdump", "strace", "procps", "libpcap0.8"):
        assert package in base


def test_tags_depend_on_content_only(images_dir: Path):
    first = image_tags(images_dir)
    assert first == image_tags(images_dir), "the same content must give the same tags"
    assert all(tag.startswith(f"labctl-{name}:") for name, tag in first.items())


def test_a_changed_dockerfile_changes_its_tag_and_its_childrens(images_dir: Path):
    before = image_tags(images_dir)
    with open(images_dir / "server" / "Dockerfile", "a") as dockerfile:
        dockerfile.write("# changed\n")
    after = image_tags(images_dir)
    assert after["base"] == before["base"] and after["tools"] == before["tools"]
    assert after["server"] != before["server"] and after["server-c"] != before["server-c"]


def test_a_changed_package_list_changes_every_tag(images_dir: Path):
    before = image_tags(images_dir)
    text = (images_dir / "packages.txt").read_text().replace("procps", "procps less")
    (images_dir / "packages.txt").write_text(text)
    after = image_tags(images_dir)
    assert all(after[name] != before[name] for name in before)


def test_a_group_without_packages_is_an_error(images_dir: Path):
    (images_dir / "packages.txt").write_text("base\n")
    with pytest.raises(ImageBuildError, match=r"packages.txt:1: group 'base' lists no packages"):
        read_packages(images_dir)


class _NoImages:
    """An engine stub that has no images: enough to reach the bootstrap's checks."""

    class images:
        @staticmethod
        def get(tag):
            import docker.errors

            raise docker.errors.ImageNotFound(tag)


def test_missing_debootstrap_says_how_to_get_it(images_dir: Path, monkeypatch):
    monkeypatch.setattr(images.shutil, "which", lambda name: None)
    monkeypatch.setattr(images.os.path, "exists", lambda path: False)
    builder = ImageBuilder(_NoImages(), images_dir, base_path="bootstrap")
    with pytest.raises(ImageBuildError, match=r"(?s)debootstrap is not installed.*apt-get install debootstrap"):
        builder._bootstrap_root()


def test_bootstrap_without_root_says_so(images_dir: Path, monkeypatch):
    monkeypatch.setattr(images.shutil, "which", lambda name: "/usr/sbin/debootstrap")
    monkeypatch.setattr(images.os, "geteuid", lambda: 1000)
    builder = ImageBuilder(_NoImages(), images_dir, base_path="bootstrap")
    with pytest.raises(ImageBuildError, match=r"(?s)needs root.*sudo labctl images build"):
        builder._bootstrap_root()


def test_images_are_discovered_with_their_parents(images_dir: Path):
    found = images.discover(images_dir)
    assert [(image.name, image.parent, image.packages) for image in found.values()] == [
        ("base", None, "base"), ("server", "base", None), ("server-c", "server", "server-c"), ("tools", "base", "tools")]
    (images_dir / "server-node").mkdir()
    (images_dir / "server-node" / "Dockerfile").write_text("ARG BASE=labctl-server\nFROM ${BASE}\nRUN true\n")
    own = images_dir.parent / "own"
    own.mkdir()
    (own / "Dockerfile").write_text("ARG BASE=labctl-server-node\nFROM ${BASE}\n")
    found = images.discover(images_dir, {"exercise-x": own})
    assert found["server-node"].parent == "server" and found["exercise-x"].parent == "server-node"
    names = list(found)
    assert names.index("server") < names.index("server-node") < names.index("exercise-x")
    tags = image_tags(images_dir, {"exercise-x": own})
    assert tags["exercise-x"].startswith("labctl-exercise-x:")


def test_a_missing_parent_or_a_cycle_is_named(images_dir: Path):
    (images_dir / "orphan").mkdir()
    (images_dir / "orphan" / "Dockerfile").write_text("ARG BASE=labctl-nowhere\nFROM ${BASE}\n")
    with pytest.raises(ImageBuildError, match=r"orphan/Dockerfile: its parent labctl-nowhere \(ARG BASE\) is no image"):
        images.discover(images_dir)
    (images_dir / "orphan" / "Dockerfile").write_text("ARG BASE=labctl-loop\nFROM ${BASE}\n")
    (images_dir / "loop").mkdir()
    (images_dir / "loop" / "Dockerfile").write_text("ARG BASE=labctl-orphan\nFROM ${BASE}\n")
    with pytest.raises(ImageBuildError, match="each other's parents"):
        images.discover(images_dir)


def test_a_lab_yaml_node_on_an_image_that_does_not_exist_is_a_spec_error(tmp_path: Path):
    from labctl.errors import SpecError
    from labctl.project import Project

    shutil.copytree(ROOT / "images", tmp_path / "images")
    text = (ROOT / "lab.yaml").read_text().replace("    image: server\n", "    image: server-rust\n", 1)
    (tmp_path / "lab.yaml").write_text(text)
    line = text.splitlines().index("    image: server-rust") + 1
    with pytest.raises(SpecError) as caught:
        _ = Project(tmp_path).spec  # reading the spec is what raises
    assert caught.value.problems == [f"{tmp_path / 'lab.yaml'}:{line}: nodes.server.image: expected an image of "
                                     f"{tmp_path / 'images'} (server, server-c, tools), found 'server-rust'"]
