"""A class folder's entries as `labctl batch` takes them: who each one is, and what it holds, refused as a
"not gradable" row (never an exception) when it is hostile or broken. No engine: intake runs before one.

Archives are built here with the hostile parts written as headers only (a 2 GB member is a number in a
header, never 2 GB on disk), and nothing of a refused archive may be written."""

from __future__ import annotations

import gzip
import io
import os
import stat
import struct
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

from labctl.archive import MAX_BYTES, MAX_FILES
from labctl.batch import intake
from labctl.errors import SubmissionError

SERVER = b"import socket\nprint('a server')\n"
TWO_GB = 2 * 2**30


# -- builders -----------------------------------------------------------------------------------------

def server_folder(path: Path) -> Path:
    (path / "lib").mkdir(parents=True)
    (path / "server.py").write_bytes(SERVER)
    (path / "server.py").chmod(0o755)
    (path / "lib" / "util.py").write_text("x = 1\n")
    return path


def zip_of(path: Path, members: list[tuple[str, bytes, int]]) -> Path:
    """A zip of (name, data, unix mode) members; a mode's type bits go where Unix zips keep them."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data, mode in members:
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            info.external_attr = mode << 16
            archive.writestr(info, data)
    return path


def tar_gz_of(path: Path, members: list) -> Path:
    """A .tar.gz of members: a TarInfo (a header alone: links, devices), or (name, data[, mode])."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
            else:
                info = tarfile.TarInfo(member[0])
                info.size, info.mode = len(member[1]), member[2] if len(member) > 2 else 0o644
                tar.addfile(info, io.BytesIO(member[1]))
    path.write_bytes(gzip.compress(buffer.getvalue()))
    return path


def entry(path: Path) -> intake.Entry:
    found = [item for item in intake.find_entries(path.parent) if item.path == path]
    assert len(found) == 1, found
    return found[0]


def problem(path: Path) -> str:
    prepared = intake.prepare(entry(path))
    assert prepared.problem is not None and not prepared.submission, prepared
    return prepared.problem


def files_below(folder: Path) -> list[str]:
    return sorted(str(item.relative_to(folder)) for item in folder.rglob("*"))


# -- kinds of entries -----------------------------------------------------------------------------------

def test_each_kind_of_entry_is_named_and_only_folders_and_archives_are_opened(tmp_path):
    server_folder(tmp_path / "alice")
    zip_of(tmp_path / "bob.zip", [("server.py", SERVER, 0o100644)])
    tar_gz_of(tmp_path / "carol.tar.gz", [("server.py", SERVER)])
    tar_gz_of(tmp_path / "dave.TGZ", [("server.py", SERVER)])
    (tmp_path / "erin.pdf").write_bytes(b"%PDF-1.4")
    (tmp_path / "frank").symlink_to(tmp_path / "alice")
    os.mkfifo(tmp_path / "gina")
    (tmp_path / ".DS_Store").write_bytes(b"noise")
    (tmp_path / "__MACOSX").mkdir()
    (tmp_path / ".git").mkdir()
    found = {item.id: item for item in intake.find_entries(tmp_path)}
    assert sorted(found) == ["alice", "bob", "carol", "dave", "erin.pdf", "frank", "gina"]
    assert [found[name].kind for name in ("alice", "bob", "carol", "dave")] == ["folder", "zip", "tar.gz", "tar.gz"]
    assert found["erin.pdf"].problem.startswith("a plain file, not a folder, a .zip or a .tar.gz")
    assert found["frank"].problem.startswith("a link (to ") and "alice" in found["frank"].problem
    assert found["gina"].problem.startswith("a named pipe")
    for name in ("alice", "bob", "carol", "dave"):
        prepared = intake.prepare(found[name])
        assert prepared.problem is None and prepared.submission and len(prepared.content_hash) == 32, name


def test_an_empty_folder_and_one_holding_only_caches_are_not_gradable(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "caches" / ".git").mkdir(parents=True)
    (tmp_path / "caches" / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (tmp_path / "caches" / "__pycache__").mkdir()
    assert problem(tmp_path / "empty") == "the folder is empty"
    assert problem(tmp_path / "caches") == "the folder is empty"
    zip_of(tmp_path / "nothing.zip", [("folder/", b"", 0o40755)])
    assert problem(tmp_path / "nothing.zip") == "the archive holds no files"


# -- the same submission, however it came ------------------------------------------------------------

def test_a_folder_its_zip_and_its_tar_gz_hash_alike_and_a_lone_wrapping_folder_is_looked_through(tmp_path):
    folder = server_folder(tmp_path / "class" / "alice")
    zip_of(tmp_path / "class" / "bob.zip", [("alice/", b"", 0o40755), ("alice/server.py", SERVER, 0o100755),
                                            ("alice/lib/util.py", b"x = 1\n", 0o100644),
                                            ("__MACOSX/alice/._server.py", b"junk", 0o100644)])
    tar_gz_of(tmp_path / "class" / "carol.tar.gz", [("server.py", SERVER, 0o755), ("lib/util.py", b"x = 1\n")])
    hashes = {item.id: intake.prepare(item).content_hash for item in intake.find_entries(tmp_path / "class")}
    assert hashes["alice"] == hashes["bob"] == hashes["carol"], hashes
    with tarfile.open(fileobj=io.BytesIO(intake.prepare(entry(tmp_path / "class" / "bob.zip")).submission)) as tar:
        assert sorted(name for name in tar.getnames() if name != ".") == ["./lib", "./lib/util.py", "./server.py"]

    before = hashes["alice"]
    os.utime(folder / "server.py", (time.time() - 3600, time.time() - 3600))
    assert intake.prepare(entry(folder)).content_hash == before            # times do not count
    (folder / "server.py").chmod(0o644)
    assert intake.prepare(entry(folder)).content_hash != before            # the exec bit does
    (folder / "server.py").chmod(0o755)
    (folder / "lib" / "util.py").write_text("x = 2\n")
    assert intake.prepare(entry(folder)).content_hash != before            # and every byte


# -- broken and hostile archives --------------------------------------------------------------------

def test_broken_archives_are_said_broken(tmp_path):
    (tmp_path / "garbage.zip").write_bytes(b"PK\x03\x04 not really a zip")
    (tmp_path / "garbage.tar.gz").write_bytes(b"\x1f\x8b\x08 not really gzip")
    (tmp_path / "plain.tar.gz").write_bytes(b"a plain text file named like an archive\n" * 20)
    (tmp_path / "notatar.tar.gz").write_bytes(gzip.compress(b"gzip, but no tar inside " * 50))
    whole = zip_of(tmp_path / "cut.zip", [("server.py", SERVER * 100, 0o100644)]).read_bytes()
    (tmp_path / "cut.zip").write_bytes(whole[:len(whole) // 2])
    assert problem(tmp_path / "garbage.zip").startswith("the zip is broken")
    assert problem(tmp_path / "cut.zip").startswith("the zip is broken")
    for name in ("garbage.tar.gz", "plain.tar.gz", "notatar.tar.gz"):
        assert problem(tmp_path / name).startswith("the .tar.gz is broken"), name


@pytest.mark.parametrize("name", ["../evil.py", "a/../../evil.py", "..\\..\\evil.py", "/etc/cron.d/evil"])
def test_names_outside_the_folder_refuse_the_archive_before_anything_is_written(tmp_path, name):
    members = [("server.py", SERVER, 0o100644), (name, b"owned", 0o100644)]
    zipped = zip_of(tmp_path / "z.zip", members)
    tarred = tar_gz_of(tmp_path / "t.tar.gz", [(member, data) for member, data, _ in members])
    word = "an absolute path" if name.startswith("/") else "a path outside its folder"
    for archive, unpack in ((zipped, intake.unpack_zip), (tarred, intake.unpack_tar_gz)):
        into = tmp_path / f"into-{archive.name}"
        into.mkdir()
        with pytest.raises(SubmissionError, match=word):
            unpack(archive, into)
        assert files_below(into) == [], archive      # not even the good member before it
        assert word in problem(archive)
    assert not (tmp_path / "evil.py").exists() and not (tmp_path.parent / "evil.py").exists()


def test_links_devices_and_pipes_in_an_archive_refuse_it(tmp_path):
    zip_of(tmp_path / "link.zip", [("server.py", SERVER, 0o100644), ("passwd", b"/etc/passwd", stat.S_IFLNK | 0o777)])
    assert problem(tmp_path / "link.zip").startswith("the archive holds a link, passwd")
    for kind, word in ((tarfile.SYMTYPE, "a link"), (tarfile.LNKTYPE, "a hard link"),
                       (tarfile.CHRTYPE, "a character device"), (tarfile.FIFOTYPE, "a named pipe")):
        member = tarfile.TarInfo("special")
        member.type, member.linkname = kind, "/etc/shadow"
        archive = tar_gz_of(tmp_path / f"special-{ord(kind)}.tar.gz", [("server.py", SERVER), member])
        assert problem(archive).startswith(f"the archive holds {word}, special"), word


def test_a_2_gb_member_declared_in_a_zip_is_refused_from_its_header(tmp_path):
    data = zip_of(tmp_path / "big.zip", [("server.py", SERVER, 0o100644), ("big.bin", b"x" * 10, 0o100644)]).read_bytes()
    # The central directory's uncompressed size of big.bin (offset 24 of its record) says 2 GB.
    record = data.rindex(b"PK\x01\x02")
    patched = data[:record + 24] + struct.pack("<I", TWO_GB) + data[record + 28:]
    (tmp_path / "big.zip").write_bytes(patched)
    assert (tmp_path / "big.zip").stat().st_size < 1000
    into = tmp_path / "into"
    into.mkdir()
    with pytest.raises(SubmissionError, match="more than 64 MiB .*big.bin alone declares 2147483648 bytes"):
        intake.unpack_zip(tmp_path / "big.zip", into)
    assert files_below(into) == []


def test_a_zip_bomb_is_refused_by_its_declared_sizes_without_writing(tmp_path):
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("server.py", SERVER)
        for number in range(5):
            archive.writestr(f"zeros{number}.bin", bytes(MAX_BYTES // 4))
    assert bomb.stat().st_size < 1_000_000     # 80 MiB of zeros in a few hundred kB
    into = tmp_path / "into"
    into.mkdir()
    with pytest.raises(SubmissionError, match="unpacks to more than 64 MiB"):
        intake.unpack_zip(bomb, into)
    assert files_below(into) == []


def test_a_zip_whose_header_lies_about_a_size_is_refused(tmp_path):
    """zipfile stops at the size declared and finds the CRC wrong; intake's own cap is the second guard."""
    data = zip_of(tmp_path / "liar.zip", [("server.py", SERVER * 1000, 0o100644)]).read_bytes()
    record = data.rindex(b"PK\x01\x02")
    (tmp_path / "liar.zip").write_bytes(data[:record + 24] + struct.pack("<I", 10) + data[record + 28:])
    message = problem(tmp_path / "liar.zip")
    assert "holds more bytes than its header declares (10)" in message or "Bad CRC" in message, message


def test_a_zip_declaring_more_members_than_allowed_is_refused_before_its_directory_is_read(tmp_path):
    data = zip_of(tmp_path / "many.zip", [("server.py", SERVER, 0o100644)]).read_bytes()
    end = data.rindex(b"PK\x05\x06")   # entries on this disk (offset 8) and in all (offset 10)
    (tmp_path / "many.zip").write_bytes(data[:end + 8] + struct.pack("<HH", 60000, 60000) + data[end + 12:])
    assert problem(tmp_path / "many.zip") == (f"the archive declares 60000 members, over the {MAX_FILES} files and "
                                             "folders a submission may hold")


def test_a_2_gb_member_declared_in_a_tar_header_is_refused_at_that_header(tmp_path):
    header = tarfile.TarInfo("huge.bin")
    header.size = TWO_GB
    good = io.BytesIO()
    with tarfile.open(fileobj=good, mode="w") as tar:
        info = tarfile.TarInfo("server.py")
        info.size = len(SERVER)
        tar.addfile(info, io.BytesIO(SERVER))
    # The good member's blocks, then the huge member's header alone: the archive stops there.
    stream = good.getvalue()[:1024] + header.tobuf(tarfile.PAX_FORMAT)
    (tmp_path / "huge.tar.gz").write_bytes(gzip.compress(stream))
    into = tmp_path / "into"
    into.mkdir()
    with pytest.raises(SubmissionError, match="huge.bin alone declares 2147483648 bytes"):
        intake.unpack_tar_gz(tmp_path / "huge.tar.gz", into)
    assert files_below(into) == []


def test_a_tar_stream_past_its_limit_is_cut_however_its_headers_declare_it(tmp_path, monkeypatch):
    """A PAX record (or GNU long name) is read whole into memory by tarfile: the decompressed stream is
    capped, so a gzip bomb dressed as one header ends at the cap."""
    monkeypatch.setattr(intake, "MAX_TAR_STREAM", 2**20)
    record = tarfile.TarInfo("././@PaxHeader")
    record.type, record.size = tarfile.XHDTYPE, 8 * 2**20
    stream = record.tobuf(tarfile.USTAR_FORMAT) + b"9" * (8 * 2**20)
    (tmp_path / "pax.tar.gz").write_bytes(gzip.compress(stream))
    assert problem(tmp_path / "pax.tar.gz") == "the archive unpacks to more than 1 MiB of tar (the limit)"


def test_a_member_twice_or_as_file_and_folder_is_refused(tmp_path):
    with zipfile.ZipFile(tmp_path / "twice.zip", "w") as archive:
        archive.writestr("server.py", SERVER)
        with pytest.warns(UserWarning):
            archive.writestr("server.py", b"the other one")
    assert problem(tmp_path / "twice.zip") == "the archive holds server.py twice"
    zip_of(tmp_path / "both.zip", [("server.py", SERVER, 0o100644), ("server.py/x", b"", 0o100644)])
    assert "cannot be read or unpacked" in problem(tmp_path / "both.zip")


def test_an_encrypted_zip_is_refused_with_what_to_do(tmp_path):
    data = zip_of(tmp_path / "secret.zip", [("server.py", SERVER, 0o100644)]).read_bytes()
    record = data.rindex(b"PK\x01\x02")   # general purpose flags at offset 8: bit 0, encrypted
    (tmp_path / "secret.zip").write_bytes(data[:record + 8] + struct.pack("<H", 1) + data[record + 10:])
    assert problem(tmp_path / "secret.zip") == "the archive is encrypted (server.py): submit it without a password"


def test_an_archive_bigger_than_any_submission_is_refused_unopened(tmp_path):
    big = tmp_path / "big.zip"
    with open(big, "wb") as handle:
        handle.truncate(intake.MAX_ARCHIVE_BYTES + 1)   # sparse: nothing is written
    assert problem(big).startswith(f"the archive weighs {intake.MAX_ARCHIVE_BYTES + 1} bytes")


# -- hostile folders ----------------------------------------------------------------------------------

def test_a_sparse_2_gb_file_in_a_folder_is_refused_without_being_read(tmp_path):
    folder = server_folder(tmp_path / "huge")
    with open(folder / "data.bin", "wb") as handle:
        handle.truncate(TWO_GB)
    started = time.monotonic()
    assert problem(folder) == "the submission holds more than 64 MiB (the limit); is it the right folder?"
    assert time.monotonic() - started < 5   # a bound for the test, not a speed target: 2 GB were not read


def test_a_link_out_of_the_folder_refuses_it_and_a_link_inside_is_left_out(tmp_path):
    out = server_folder(tmp_path / "out")
    (out / "lib" / "passwd").symlink_to("/etc/passwd")
    assert problem(out) == "it holds a link pointing outside its folder: lib/passwd -> /etc/passwd"
    (tmp_path / "secret").write_text("secret\n")
    (out / "lib" / "passwd").unlink()
    (out / "lib" / "up").symlink_to("../../secret")
    assert problem(out).endswith("lib/up -> ../../secret")

    inside = server_folder(tmp_path / "inside")
    (inside / "same.py").symlink_to("server.py")
    plain = server_folder(tmp_path / "plain")
    assert intake.prepare(entry(inside)).content_hash == intake.prepare(entry(plain)).content_hash


# -- ids ----------------------------------------------------------------------------------------------

def test_hostile_names_become_safe_unique_ids_and_keep_their_name(tmp_path):
    names = ["=SUM(A1)*10", "-rf", ".hidden", "tab\there", "esc\x1b[31mred", "new\nline",
             "a" * 250, "b" * 240 + ".zip", "josé", "jose\u0301", "index.html", "Gradebook.CSV",
             "a b", "a_b", "A_B", "alice", "alice.zip", "rtl\u202eevil"]
    for name in names:
        target = tmp_path / name
        if name.endswith(".zip") or name == "Gradebook.CSV":
            zip_of(target, [("server.py", SERVER, 0o100644)])
        else:
            server_folder(target)
    raw = os.fsencode(tmp_path) + b"/bad\xff\xfename"
    os.mkdir(raw)
    entries = intake.find_entries(tmp_path)
    assert len(entries) == len(names) - 1 + 1          # .hidden is no student; the undecodable name is one
    ids = [item.id for item in entries]
    assert len({intake._key(identifier) for identifier in ids}) == len(ids)        # unique, case folded
    for item in entries:
        assert len(item.id) <= intake.MAX_ID and item.id.isprintable(), item
        assert item.id[0].isalnum() or item.id[0] == "_", item
        assert "/" not in item.id and item.id.casefold() not in {"index.html", "gradebook.csv"}, item
        assert item.name.isprintable(), item
    by_name = {item.name: item.id for item in entries}
    # Of names that give one id (case folded), one that needed no change keeps it (the smallest by its bytes).
    assert by_name["A_B"] == "A_B" and by_name["alice"] == "alice"
    assert by_name["a b"].startswith("a_b-") and by_name["a_b"].startswith("a_b-")
    assert by_name["alice.zip"].startswith("alice-")
    assert by_name["-rf"] == "_-rf" and by_name["=SUM(A1)*10"] == "_SUM_A1__10"
    assert by_name["esc\\x1b[31mred"] == "esc__31mred" and by_name["tab\\x09here"] == "tab_here"
    assert by_name["rtl\\u202eevil"] == "rtl_evil"
    assert by_name["index.html"].startswith("index.html-") and by_name["bad\\xff\\xfename"] == "bad__name"
    assert {by_name["josé"], by_name["jose\u0301"]} & {"josé"}       # one of the two spellings keeps it
    assert len(by_name["a" * 120 + "…"]) == intake.MAX_ID
    assert by_name["new\\x0aline"] == "new_line"

    # An id does not depend on which other entries exist: the same names give the same ids alone.
    again = intake.unique_ids([("a_b", "a_b"), ("a b", "a b")])
    assert again == {"a b": by_name["a b"], "a_b": "a_b"}
    assert intake.unique_ids([("a b", "a b")]) == {"a b": "a_b"}


def test_a_hostile_member_name_is_shown_printable_in_the_message(tmp_path):
    zip_of(tmp_path / "z.zip", [("../\x1b]0;owned\x07" + "x" * 500, b"", 0o100644)])
    message = problem(tmp_path / "z.zip")
    assert message.isprintable() and "\\x1b" in message and len(message) < 250
