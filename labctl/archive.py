"""Tar archives of folders: how a submission, a docroot and the harness get into containers.

The archive goes in over the container's stdin when it starts (no bind mounts, no host paths),
into size-capped writable folders. Everything about a submission is hostile, so the archive is
bounded before anything is sent: bytes, files, and what a file may be (no links, no devices).
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from labctl.errors import SubmissionError

#: Never copied into a container: caches and version-control noise of a student's folder.
SKIPPED = {"__pycache__", ".git", ".pytest_cache", ".mypy_cache", ".venv", "node_modules"}

#: The most a submission (or docroot) may weigh; a bigger folder is a mistake, not a server.
MAX_BYTES = 64 * 2**20
#: The most files and folders it may hold (a committed virtualenv or build tree is a mistake too).
MAX_FILES = 10_000
#: How deep folders may nest (a source tree is a few levels deep; thousands is an attack).
MAX_DEPTH = 64
#: What one file or folder takes in a memory-backed folder beyond its bytes (a page, rounded up).
BLOCK = 4096


@dataclass(frozen=True)
class Packed:
    """A tar ready to send, and what it will take where it is unpacked."""

    data: bytes
    files: int
    content_bytes: int          # the files' own bytes
    footprint: dict[str, int]   # per target: bytes it takes in a tmpfs (each entry rounded up to BLOCK)


def tar_folders(folders: dict[str, Path], uid: int = 0, gid: int = 0) -> Packed:
    """One archive holding each folder's contents (not the folder itself) under its target path:
    {"submission": Path("student/"), "srv/www": Path("docroot/")}, every entry owned by uid:gid.

    Raises SubmissionError (not gradable, exit 2) naming the limit when a folder is too big or holds
    too many files, and naming the file when one cannot be read.
    """
    buffer = io.BytesIO()
    files = content = 0
    footprint = dict.fromkeys(folders, 0)
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for target, source in folders.items():
            for path in walk(source):
                relative = path.relative_to(source)
                if path.is_symlink() or not (path.is_file() or path.is_dir()):
                    continue  # a link may point outside the folder, a FIFO or device is no source file
                files += 1
                if files > MAX_FILES:
                    raise SubmissionError(f"{source} holds more than {MAX_FILES} files and folders (the limit); "
                                          "is it the right folder? (build output, a virtualenv or node_modules "
                                          "do not belong in a submission)")
                try:
                    info = tar.gettarinfo(str(path), arcname=f"{target}/{relative.as_posix()}")
                    info.uid, info.gid, info.uname, info.gname = uid, gid, "", ""
                    if path.is_file():
                        content += info.size
                        footprint[target] += -(-info.size // BLOCK) * BLOCK + BLOCK
                        if content > MAX_BYTES:
                            raise SubmissionError(f"{source} holds more than {MAX_BYTES // 2**20} MiB (the limit); "
                                                  "is it the right folder?")
                        with open(path, "rb") as handle:
                            tar.addfile(info, handle)
                    else:
                        footprint[target] += BLOCK
                        tar.addfile(info)
                except OSError as error:
                    raise SubmissionError(f"cannot read {path}: {error.strerror or error}") from None
    return Packed(buffer.getvalue(), files, content, footprint)


def walk(source: Path) -> Iterator[Path]:
    """Every entry below `source`, folders before their contents, in name order, SKIPPED left out.

    A generator, so a folder with a million files is refused at MAX_FILES, not listed first; a
    loop, not recursion, so folders nested thousands deep are refused at MAX_DEPTH, not a crash;
    and a folder that cannot be listed is named, never packed as an empty one.
    """
    pending = [(source, 0)]
    while pending:
        folder, depth = pending.pop()
        if depth > MAX_DEPTH:
            raise SubmissionError(f"{source} has folders nested more than {MAX_DEPTH} deep (the limit), "
                                  f"like {folder.relative_to(source).parent}")
        try:
            names = sorted(entry.name for entry in os.scandir(folder) if entry.name not in SKIPPED)
        except OSError as error:
            raise SubmissionError(f"cannot read the folder {folder}: {error.strerror or error}") from None
        subfolders = []
        for name in names:
            path = folder / name
            yield path
            if path.is_dir() and not path.is_symlink():
                subfolders.append((path, depth + 1))
        pending.extend(reversed(subfolders))  # depth first, in name order
