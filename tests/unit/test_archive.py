"""A submission's files as labctl packs them: what goes in, and every limit said by name."""

from __future__ import annotations

import io
import os
import tarfile

import pytest
from conftest import ROOT

from labctl import archive
from labctl.errors import SubmissionError
from labctl.lab import Lab, Submission
from labctl.spec import load_lab


def members(packed: archive.Packed) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(packed.data)) as tar:
        return {info.name: info for info in tar.getmembers()}


def test_each_folder_goes_under_its_target_owned_by_the_user(tmp_path):
    code, www = tmp_path / "code", tmp_path / "www"
    (code / "pkg").mkdir(parents=True)
    (code / "server.py").write_text("print()\n")
    (code / "pkg" / "util.py").write_text("x = 1\n")
    (code / "__pycache__").mkdir()
    (code / "__pycache__" / "server.cpython-311.pyc").write_bytes(b"junk")
    (code / "link").symlink_to("/etc/passwd")
    os.mkfifo(code / "pipe")
    www.mkdir()
    (www / "index.html").write_text("<p>hi</p>\n")
    packed = archive.tar_folders({"submission": code, "srv/www": www}, uid=1000, gid=1000)
    found = members(packed)
    assert sorted(found) == ["srv/www/index.html", "submission/pkg", "submission/pkg/util.py", "submission/server.py"]
    assert {(info.uid, info.gid) for info in found.values()} == {(1000, 1000)}
    assert packed.files == 4 and packed.content_bytes == 8 + 6 + 10
    assert packed.footprint == {"submission": 4096 + 2 * 8192, "srv/www": 8192}


def test_too_many_files_is_refused_with_the_limit_named(tmp_path, monkeypatch):
    monkeypatch.setattr(archive, "MAX_FILES", 5)
    for index in range(6):
        (tmp_path / f"f{index}.txt").write_text("x")
    with pytest.raises(SubmissionError, match=r"holds more than 5 files and folders \(the limit\)"):
        archive.tar_folders({"submission": tmp_path})


def test_too_many_bytes_is_refused_before_the_file_is_read(tmp_path):
    with open(tmp_path / "huge.bin", "wb") as handle:  # sparse: 2 GiB on paper, nothing on disk
        handle.truncate(2 * 2**30)
    with pytest.raises(SubmissionError, match=r"holds more than 64 MiB \(the limit\)"):
        archive.tar_folders({"submission": tmp_path})


def test_an_unreadable_file_is_named(tmp_path, monkeypatch):
    (tmp_path / "secret.py").write_text("x")

    def refuse(path, *args, **kwargs):  # what a student's file with mode 000 does to a non-root labctl
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(archive, "open", refuse, raising=False)
    with pytest.raises(SubmissionError, match="cannot read .*secret.py: Permission denied"):
        archive.tar_folders({"submission": tmp_path})


def test_a_submission_larger_than_the_servers_folder_is_refused_before_the_lab_starts(tmp_path):
    spec = load_lab(ROOT / "lab.yaml")
    server = spec.server.model_copy(update={"limits": spec.server.limits.model_copy(update={"disk": "8m"})})
    (tmp_path / "data.bin").write_bytes(b"x" * 9 * 2**20)
    lab = Lab(spec, backend=None, lab_id="test")  # type: ignore[arg-type]  # nothing reaches an engine
    with pytest.raises(SubmissionError, match=r"takes about 9\.0 MiB once copied, and the server's /submission "
                                              r"holds 8m \(lab.yaml: nodes.server.limits.disk\)"):
        lab._server_files(server, Submission(path=tmp_path))


def test_folders_nested_deeper_than_the_limit_are_refused_not_a_crash(tmp_path):
    deep = tmp_path
    for _ in range(100):
        deep = deep / "d"
    deep.mkdir(parents=True)
    (tmp_path / "server.py").write_text("x")
    with pytest.raises(SubmissionError, match=r"nested more than 64 deep \(the limit\)"):
        archive.tar_folders({"submission": tmp_path})


def test_a_folder_that_cannot_be_listed_is_named(tmp_path, monkeypatch):
    (tmp_path / "private").mkdir()
    real = os.scandir

    def refuse(path):
        if str(path).endswith("private"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(archive.os, "scandir", refuse)
    with pytest.raises(SubmissionError, match="cannot read the folder .*private: Permission denied"):
        archive.tar_folders({"submission": tmp_path})
