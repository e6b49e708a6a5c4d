"""Tar archives for put_archive: how files get into containers without bind mounts."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

#: Never copied into a container: caches and version-control noise of a student's folder.
SKIPPED = {"__pycache__", ".git", ".pytest_cache", ".mypy_cache", ".venv", "node_modules"}

#: The most a submission (or docroot) may weigh; a bigger folder is a mistake, not a server.
MAX_BYTES = 64 * 2**20


def tar_directory(source: Path, uid: int = 0, gid: int = 0, prefix: str = "") -> bytes:
    """Archive the contents of `source` (not the folder itself), owned by uid:gid.

    The owner is set in the archive so that an unprivileged user in the container can
    write where it must (a C submission compiles in /submission).
    """
    buffer = io.BytesIO()
    total = 0
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in sorted(source.rglob("*")):
            relative = path.relative_to(source)
            if any(part in SKIPPED for part in relative.parts):
                continue
            if path.is_symlink():
                continue  # a link could point outside the folder; copy real files only
            info = tar.gettarinfo(str(path), arcname=str(Path(prefix) / relative) if prefix else str(relative))
            info.uid, info.gid, info.uname, info.gname = uid, gid, "", ""
            if path.is_file():
                total += info.size
                if total > MAX_BYTES:
                    raise ValueError(f"{source} holds more than {MAX_BYTES // 2**20} MiB; "
                                     "is it the right folder?")
                with open(path, "rb") as handle:
                    tar.addfile(info, handle)
            elif path.is_dir():
                tar.addfile(info)
    return buffer.getvalue()

