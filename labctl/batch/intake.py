"""A class folder's entries: which student each one is, and the submission it holds, made safe to grade.

SUBMISSIONS holds one entry per student: a folder, a .zip or a .tar.gz (.tgz); the entry's name is the
student. Everything about an entry is hostile, its name as much as its bytes:

- its name becomes a *safe id* (`safe_id`): a file name (letters, digits, `._-@`), no control characters,
  at most MAX_ID characters, never one of the batch's own files, and unique even on a file system that
  folds case; when two names give one id, the one that needed no change keeps it and the others get a
  suffix made from their own name (so ids do not depend on the order a folder is listed in);
- an archive is unpacked only after every member's name, kind and declared size has been checked, and
  every write is capped again (a header can lie): no absolute or `..` names, no links, devices or pipes,
  no more than archive.MAX_FILES members or archive.MAX_BYTES bytes. A 2 GB member or a zip bomb is
  refused before one byte of it is written;
- a folder that holds a link pointing outside it is refused (a link inside it is left out, as
  `labctl grade` leaves it out);
- a folder (or archive) that holds nothing but one folder is graded from that folder: how most tools zip
  a submission. macOS's `__MACOSX/` and `.DS_Store` are left out.

Nothing here raises for an entry's doing: `prepare` returns a `Prepared` with a `problem` (the "not
gradable" row's message) instead.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import stat
import tarfile
import tempfile
import unicodedata
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from labctl.archive import MAX_BYTES, MAX_FILES, walk
from labctl.batch.job import pack_submission
from labctl.errors import SubmissionError
from labctl.untrusted import printable

#: The longest id (a file name, a gradebook cell): names longer are cut and given a suffix of their own.
MAX_ID = 64
#: Names the batch writes in its output folder: never a student's id.
RESERVED_IDS = frozenset({"gradebook.csv", "index.html"})
#: Archive suffixes and their kind (checked in this order, case-insensitively).
ARCHIVES = ((".tar.gz", "tar.gz"), (".tgz", "tar.gz"), (".zip", "zip"))
#: Noise of other operating systems in a class folder or an archive, never a student's work.
NOISE = frozenset({"__MACOSX", ".DS_Store", "Thumbs.db"})
#: The most an archive may weigh on disk: its content's limit plus room for its headers.
MAX_ARCHIVE_BYTES = MAX_BYTES + MAX_FILES * 1024
#: The most a tar's decompressed stream may hold: content, a header and padding per member, PAX records.
MAX_TAR_STREAM = MAX_BYTES + MAX_FILES * 2048 + 2**20
#: How many nested lone folders are looked through for the submission.
MAX_WRAPPERS = 4
CHUNK = 2**16


@dataclass(frozen=True)
class Entry:
    """One entry of the class folder: who (`id`, `name`), where, and what it is."""

    id: str                     # safe_id of the name, unique in the class
    name: str                   # the entry's own name, made printable (for job.json and messages)
    path: Path
    kind: str                   # "folder", "zip", "tar.gz", or what else it is ("a plain file", "a link"...)
    problem: str | None = None  # why it cannot be graded, known from the listing alone

    @property
    def gradable_kind(self) -> bool:
        return self.kind in ("folder", "zip", "tar.gz")


@dataclass(frozen=True)
class Prepared:
    """An entry ready to send: its packed submission and content hash, or the problem that stops it."""

    entry: Entry
    submission: bytes = b""
    content_hash: str = ""
    problem: str | None = None


# -- the class folder -------------------------------------------------------------------------------

def find_entries(submissions: Path) -> list[Entry]:
    """Every entry of the class folder, sorted by id. Hidden entries (a leading '.') and other systems'
    noise are not students; anything else that is no folder, .zip or .tar.gz is an entry with a problem."""
    found: list[tuple[str, str, Path, str, str | None]] = []   # (raw name, stem, path, kind, problem)
    with os.scandir(submissions) as listing:
        for item in listing:
            if item.name.startswith(".") or item.name in NOISE:
                continue
            kind, problem, stem = _kind_of(item)
            found.append((item.name, stem, Path(item.path), kind, problem))
    ids = unique_ids([(raw, stem) for raw, stem, *_ in found])
    entries = [Entry(ids[raw], shown_name(raw), path, kind, problem) for raw, _, path, kind, problem in found]
    return sorted(entries, key=lambda entry: entry.id)


def _kind_of(item: os.DirEntry) -> tuple[str, str | None, str]:
    """(kind, problem or None, the name without its archive suffix)."""
    name = item.name
    if item.is_symlink():
        try:
            target = os.readlink(item.path)
        except OSError:
            target = "?"
        return "a link", f"a link (to {shown_name(target)}), not a folder or an archive: put the submission itself " \
                         "in the class folder", name
    if item.is_dir(follow_symlinks=False):
        return "folder", None, name
    if item.is_file(follow_symlinks=False):
        for suffix, kind in ARCHIVES:
            if name.lower().endswith(suffix) and len(name) > len(suffix):
                return kind, None, name[:-len(suffix)]
        return "a plain file", ("a plain file, not a folder, a .zip or a .tar.gz (.tgz): labctl grades a "
                                "folder holding the server"), name
    what = describe_mode(item.stat(follow_symlinks=False).st_mode)
    return what, f"{what}, not a folder, a .zip or a .tar.gz", name


def describe_mode(mode: int) -> str:
    """What a file of this mode is, in words."""
    kinds = {stat.S_IFLNK: "a link", stat.S_IFIFO: "a named pipe", stat.S_IFSOCK: "a socket",
             stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device", stat.S_IFDIR: "a folder",
             stat.S_IFREG: "a plain file"}
    return kinds.get(stat.S_IFMT(mode), "a special file")


def shown_name(name: str, limit: int = 120) -> str:
    """A hostile name as text to show on one line: undecodable bytes as \\xNN, controls (tab and newline
    too) visible, bounded."""
    text = printable(os.fsencode(name).decode("utf-8", "backslashreplace")).replace("\t", "\\x09")
    text = text.replace("\n", "\\x0a")
    return text if len(text) <= limit else text[:limit] + "…"


# -- ids --------------------------------------------------------------------------------------------

def safe_id(stem: str) -> str:
    """The id a name gives: NFC letters and digits (any script), '.', '_', '-', '@'; everything else '_';
    never starting with anything but a letter, a digit or '_' (no hidden file, no option, no formula);
    at most MAX_ID characters (a longer one is cut and given a suffix made from the whole name)."""
    text = unicodedata.normalize("NFC", os.fsencode(stem).decode("utf-8", "replace"))
    text = "".join(char if (char.isalnum() and char.isprintable()) or char in "._-@" else "_" for char in text)
    if not text or not (text[0].isalnum() or text[0] == "_"):
        text = "_" + text
    if len(text) > MAX_ID:
        text = f"{text[:MAX_ID - 9]}-{_name_hash(stem)[:8]}"
    return text


def unique_ids(names: list[tuple[str, str]]) -> dict[str, str]:
    """{raw name: id} for (raw name, stem) pairs, every id unique case-insensitively and none reserved.

    Among names that give one id, the one whose stem needed no change (then the smallest, by its bytes)
    keeps it; every other gets '-' and a hash of its own name, so ids are the same whatever the order of
    the listing."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for raw, stem in names:
        groups.setdefault(_key(safe_id(stem)), []).append((raw, stem))
    ids: dict[str, str] = {}
    taken: set[str] = set()
    suffixed: list[tuple[str, str]] = []
    for key, members in sorted(groups.items()):
        members.sort(key=lambda pair: (safe_id(pair[1]) != pair[1], os.fsencode(pair[0])))
        first, *others = members
        if key in {_key(name) for name in RESERVED_IDS}:
            others = members
        else:
            ids[first[0]] = safe_id(first[1])
            taken.add(key)
        suffixed.extend(others)
    for raw, stem in suffixed:
        base, digest = safe_id(stem)[:MAX_ID - 9], _name_hash(raw)
        length = 8
        while _key(f"{base}-{digest[:length]}") in taken:
            length += 4
        ids[raw] = f"{base}-{digest[:length]}"
        taken.add(_key(ids[raw]))
    return ids


def _key(identifier: str) -> str:
    return unicodedata.normalize("NFC", identifier).casefold()


def _name_hash(name: str) -> str:
    return hashlib.sha256(os.fsencode(name)).hexdigest()


# -- an entry's submission --------------------------------------------------------------------------

def prepare(entry: Entry) -> Prepared:
    """The entry's submission packed for a job, with its content hash; or why it is not gradable."""
    if entry.problem is not None:
        return Prepared(entry, problem=entry.problem)
    try:
        with opened(entry) as folder:
            try:
                data = pack_submission(folder)
            except SubmissionError as error:  # it names the folder: the instructor's path, or a temporary one
                raise SubmissionError(str(error).replace(str(folder), "the submission")) from None
    except SubmissionError as error:
        return Prepared(entry, problem=str(error))
    digest, files = content_hash(data)
    if files == 0:
        what = "the folder is empty" if entry.kind == "folder" else "the archive holds no files"
        return Prepared(entry, problem=what)
    return Prepared(entry, data, digest)


@contextlib.contextmanager
def opened(entry: Entry) -> Iterator[Path]:
    """The folder to grade: the entry itself, or its archive unpacked into a temporary folder that is
    removed afterwards; looked through lone wrapping folders. SubmissionError when it is not gradable."""
    if entry.kind == "folder":
        refuse_links_out(entry.path)
        yield unwrapped(entry.path)
        return
    size = entry.path.stat().st_size
    if size > MAX_ARCHIVE_BYTES:
        raise SubmissionError(f"the archive weighs {size} bytes, over the {MAX_ARCHIVE_BYTES} an archive of a "
                              f"submission may (its content may hold {MAX_BYTES // 2**20} MiB)")
    with tempfile.TemporaryDirectory(prefix="labctl-intake-") as scratch:
        into = Path(scratch)
        if entry.kind == "zip":
            unpack_zip(entry.path, into)
        else:
            unpack_tar_gz(entry.path, into)
        yield unwrapped(into)


def unwrapped(folder: Path) -> Path:
    """The folder, or the one folder it holds when it holds nothing else (other systems' noise aside)."""
    for _ in range(MAX_WRAPPERS):
        try:
            inside = [item for item in os.scandir(folder) if item.name not in NOISE]
        except OSError as error:
            raise SubmissionError(f"cannot read the folder: {error.strerror or error}") from None
        if len(inside) != 1 or not inside[0].is_dir(follow_symlinks=False):
            break
        folder = Path(inside[0].path)
    return folder


def refuse_links_out(folder: Path) -> None:
    """SubmissionError when a link below `folder` points outside it (links inside are left out later)."""
    root = folder.resolve()
    for count, path in enumerate(walk(folder)):
        if count > MAX_FILES:
            return  # packing refuses it, naming the limit
        if path.is_symlink():
            target = Path(os.path.realpath(path))
            if target != root and root not in target.parents:
                raise SubmissionError(f"it holds a link pointing outside its folder: "
                                      f"{shown_name(str(path.relative_to(folder)))} -> {shown_name(os.readlink(path))}")


def content_hash(packed: bytes) -> tuple[str, int]:
    """(a hash of what is graded: every member's path, kind, exec bit and bytes; how many files). Equal for
    equal content whatever the files' times or the way it came (a folder, a zip or a tar.gz)."""
    digest = hashlib.sha256()
    files = 0
    with tarfile.open(fileobj=io.BytesIO(packed), mode="r:gz") as tar:
        for member in tar:
            kind = "f" if member.isfile() else "d"
            digest.update(f"{member.name}\0{kind}\0{member.mode & 0o100:o}\0".encode("utf-8", "surrogateescape"))
            source = tar.extractfile(member) if member.isfile() else None
            if source is not None:
                files += 1
                digest.update(hashlib.sha256(source.read()).digest())
    return digest.hexdigest()[:32], files


# -- archives ---------------------------------------------------------------------------------------

def member_parts(name: str) -> tuple[str, ...]:
    """A member's path as parts below the folder; SubmissionError for a name that leaves it. A backslash
    counts as a separator (zips made on Windows), so `..\\x` is caught too."""
    unified = name.replace("\\", "/")
    path = PurePosixPath(unified)
    if unified.startswith("/") or path.is_absolute():
        raise SubmissionError(f"the archive holds an absolute path: {shown_name(name)}")
    parts = tuple(part for part in path.parts if part not in ("", "."))
    if ".." in parts:
        raise SubmissionError(f"the archive holds a path outside its folder: {shown_name(name)}")
    return parts


def _noise(parts: tuple[str, ...]) -> bool:
    return bool(parts) and (parts[0] in NOISE or parts[-1] in NOISE)


def _over_limits(files: int, total: int, name: str, size: int) -> None:
    if files > MAX_FILES:
        raise SubmissionError(f"the archive holds more than {MAX_FILES} files and folders (the limit)")
    if size > MAX_BYTES:
        raise SubmissionError(f"the archive unpacks to more than {MAX_BYTES // 2**20} MiB (the limit): "
                              f"{shown_name(name)} alone declares {size} bytes")
    if total > MAX_BYTES:
        raise SubmissionError(f"the archive unpacks to more than {MAX_BYTES // 2**20} MiB (the limit): its "
                              f"members declare {total} bytes, up to {shown_name(name)}")


def unpack_zip(path: Path, into: Path) -> None:
    """Unpack a zip into an empty folder once every member has passed: its name, its kind (files and
    folders only; the mode bits a Unix zip keeps tell a link), no encryption, the declared sizes within
    limits. Every write is capped at the size declared."""
    try:
        declared = _zip_entries(path)
        if declared is not None and declared > MAX_FILES:
            raise SubmissionError(f"the archive declares {declared} members, over the {MAX_FILES} files and "
                                  "folders a submission may hold")
        with zipfile.ZipFile(path) as archive:
            members: list[tuple[zipfile.ZipInfo, tuple[str, ...]]] = []
            total = 0
            for info in archive.infolist():
                parts = member_parts(info.filename)
                if _noise(parts) or not parts:
                    continue
                kind = stat.S_IFMT(info.external_attr >> 16)
                if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                    raise SubmissionError(f"the archive holds {describe_mode(kind)}, {shown_name(info.filename)}: "
                                          "only files and folders are unpacked")
                if info.flag_bits & 0x1:
                    raise SubmissionError(f"the archive is encrypted ({shown_name(info.filename)}): "
                                          "submit it without a password")
                total += info.file_size
                _over_limits(len(members) + 1, total, info.filename, info.file_size)
                members.append((info, parts))
            for info, parts in members:
                target = into.joinpath(*parts)
                if info.is_dir():
                    _make_folder(target, info.filename)
                    continue
                with archive.open(info) as source:
                    _write_capped(source, target, info.filename, info.file_size)
                if (info.external_attr >> 16) & 0o100:
                    target.chmod(0o755)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, ValueError, RuntimeError) as error:
        raise SubmissionError(f"the zip is broken: {shown_name(str(error), 300)}") from None
    except OSError as error:
        raise SubmissionError(f"the zip cannot be read or unpacked: {shown_name(error.strerror or str(error))}") from None


def _zip_entries(path: Path) -> int | None:
    """How many members the zip's end record declares, read before zipfile loads its whole directory (a
    directory of millions of tiny entries takes gigabytes of memory as ZipInfo objects). zipfile's own
    reader of that record (private, kept since Python 2); None when it is not there or finds no record."""
    reader = getattr(zipfile, "_EndRecData", None)
    if reader is None:
        return None
    with open(path, "rb") as handle:
        record = reader(handle)
    return None if not record else int(record[4])


class CappedReader(io.RawIOBase):
    """A stream that refuses to give more than `limit` bytes: a tar's decompressed stream, so that
    neither a gzip bomb nor a header that declares gigabytes (PAX, GNU long names) is read past it."""

    def __init__(self, stream, limit: int):
        super().__init__()
        self.stream, self.left = stream, limit

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        wanted = self.left + 1 if size is None or size < 0 else min(size, self.left + 1)
        data = self.stream.read(wanted)
        self.left -= len(data)
        if self.left < 0:
            raise SubmissionError(f"the archive unpacks to more than {MAX_TAR_STREAM // 2**20} MiB of tar "
                                  "(the limit)")
        return data


def _tar_members(path: Path) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo, tuple[str, ...]]]:
    """Each member of a .tar.gz, checked (name, kind, declared sizes) as soon as its header is read."""
    with gzip.open(path, "rb") as raw, tarfile.open(fileobj=CappedReader(raw, MAX_TAR_STREAM), mode="r|") as tar:
        files = total = 0
        for member in tar:
            parts = member_parts(member.name)
            if _noise(parts):
                continue
            if member.issym() or member.islnk():
                what = "a link" if member.issym() else "a hard link"
                raise SubmissionError(f"the archive holds {what}, {shown_name(member.name)} -> "
                                      f"{shown_name(member.linkname)}: only files and folders are unpacked")
            if not (member.isfile() or member.isdir()):
                what = {tarfile.CHRTYPE: "a character device", tarfile.BLKTYPE: "a block device",
                        tarfile.FIFOTYPE: "a named pipe"}.get(member.type, "a special file")
                raise SubmissionError(f"the archive holds {what}, {shown_name(member.name)}: only files and "
                                      "folders are unpacked")
            files += 1
            total += member.size if member.isfile() else 0
            _over_limits(files, total, member.name, member.size)
            yield tar, member, parts


def unpack_tar_gz(path: Path, into: Path) -> None:
    """Unpack a .tar.gz into an empty folder: a first pass reads every header and refuses the archive at
    the first bad one, without writing anything; the second writes, capped again."""
    try:
        for _ in _tar_members(path):
            pass
        for tar, member, parts in _tar_members(path):
            if not parts:
                continue
            target = into.joinpath(*parts)
            if member.isdir():
                _make_folder(target, member.name)
                continue
            source = tar.extractfile(member)
            if source is None:
                continue
            with source:
                _write_capped(source, target, member.name, member.size)
            if member.mode & 0o100:
                target.chmod(0o755)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise SubmissionError(f"the .tar.gz is broken: {shown_name(str(error), 300)}") from None
    except OSError as error:
        raise SubmissionError(f"the .tar.gz cannot be read or unpacked: "
                              f"{shown_name(error.strerror or str(error))}") from None


def _make_folder(target: Path, name: str) -> None:
    try:
        target.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise SubmissionError(f"the archive holds {shown_name(name)} as a file and as a folder") from None


def _write_capped(source, target: Path, name: str, declared: int) -> None:
    """Copy a member to a new file, refusing more bytes than its header declared."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        sink = open(target, "xb")
    except FileExistsError:
        raise SubmissionError(f"the archive holds {shown_name(name)} twice") from None
    with sink:
        written = 0
        while chunk := source.read(CHUNK):
            written += len(chunk)
            if written > declared:
                raise SubmissionError(f"{shown_name(name)} holds more bytes than its header declares ({declared})")
            sink.write(chunk)
