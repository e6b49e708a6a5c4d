"""The evidence folder (`--evidence DIR`): where the files go, within their caps, listed by a manifest.

Rules it keeps:
- it is made only when the first file is kept: a grading with no failure leaves nothing behind;
- it must be new, empty, or a folder an earlier grading filled (its manifest, evidence.json, lists
  every file in it): that earlier evidence is removed first, nothing else ever is. Any other file in
  it is refused before a lab is made (LabctlError, exit 2): labctl never mixes its files with yours;
- every file is written whole or not at all (a temporary name, then a rename), and the manifest is
  rewritten after each check, so a grading stopped by Ctrl-C leaves a folder that says what it holds;
- caps: PER_FILE for one file, PER_GRADING for all of them; what would pass a cap is left out, and
  the check's result says so (`evidence_left_out`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from labctl.errors import LabctlError
from labctl.files import replace_whole
from labctl.results import EvidenceFile, EvidenceKind

#: The most bytes of one evidence file (a pcap slice, a picture, the samples).
PER_FILE = 2 * 2**20
#: The most bytes of evidence one grading keeps, all files together.
PER_GRADING = 16 * 2**20
MANIFEST = "evidence.json"
#: A file name labctl writes: "03-idle-cpu.threads.png" (the check's place in the grading, its name).
NAME = re.compile(r"^\d{2,3}-[a-z0-9-]{1,40}\.[a-z]+\.[a-z]+$")


def slug(name: str) -> str:
    """A check's name as part of a file name: lower case letters, digits and '-' only."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40] or "check"


class Full(Exception):
    """A file that does not fit its cap: the reason, in words for the result's `evidence_left_out`."""


@dataclass
class EvidenceFolder:
    """One grading's evidence folder."""

    path: Path
    per_file: int = PER_FILE
    per_grading: int = PER_GRADING
    files: list[dict] = field(default_factory=list)   # the manifest's entries
    used: int = 0

    @classmethod
    def prepare(cls, path: Path, per_file: int = PER_FILE, per_grading: int = PER_GRADING) -> EvidenceFolder:
        """The folder, checked before anything runs; an earlier grading's evidence in it removed."""
        path = path.expanduser().absolute()
        if path.exists() and not path.is_dir():
            raise LabctlError(f"--evidence {path}: it is a file; give a folder (new, or empty)")
        if path.is_dir():
            cls._clear(path)
        elif not os.access(_existing_parent(path), os.W_OK):
            raise LabctlError(f"--evidence {path}: cannot create it there ({_existing_parent(path)} is not writable)")
        return cls(path, per_file, per_grading)

    @staticmethod
    def _clear(path: Path) -> None:
        names = sorted(entry.name for entry in path.iterdir())
        if not names:
            return
        listed: set[str] = set()
        if MANIFEST in names:
            try:
                manifest = json.loads((path / MANIFEST).read_text())
                listed = {entry["path"] for entry in manifest.get("files", [])
                          if isinstance(entry, dict) and NAME.fullmatch(str(entry.get("path", "")))}
            except (OSError, ValueError, TypeError, KeyError, AttributeError) as error:
                raise LabctlError(f"--evidence {path}: its {MANIFEST} cannot be read ({error}); give a new or "
                                  "empty folder") from None
        others = [name for name in names if name != MANIFEST and name not in listed]
        if others:
            shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
            raise LabctlError(f"--evidence {path}: it holds files labctl did not write there ({shown}); give a new "
                              "or empty folder, or one an earlier --evidence filled")
        for name in [*listed, MANIFEST]:
            with contextlib.suppress(FileNotFoundError):
                (path / name).unlink()

    def write(self, check: str, index: int, kind: EvidenceKind, suffix: str, data: bytes, media_type: str,
              description: str) -> EvidenceFile:
        """Keep one file (whole, under both caps) and list it; Full when it does not fit."""
        if len(data) > self.per_file:
            raise Full(f"{description}: {len(data)} bytes, over the cap of {self.per_file} bytes per file")
        if self.used + len(data) > self.per_grading:
            raise Full(f"{description}: the grading's evidence cap of {self.per_grading} bytes was reached")
        name = f"{index:02d}-{slug(check)}.{suffix}"
        self.path.mkdir(parents=True, exist_ok=True)
        replace_whole(self.path / name, data)
        self.used += len(data)
        entry = EvidenceFile(kind=kind, path=name, media_type=media_type, bytes=len(data), description=description)
        self.files.append({"check": check, **entry.model_dump()})
        self.save_manifest()
        return entry

    def save_manifest(self) -> None:
        if not self.files:
            return
        manifest = {"about": "labctl grade --evidence: what proves each failed check", "files": self.files,
                    "bytes": self.used, "caps": {"per_file": self.per_file, "per_grading": self.per_grading}}
        replace_whole(self.path / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())


def _existing_parent(path: Path) -> Path:
    for parent in path.parents:
        if parent.exists():
            return parent
    return Path("/")
