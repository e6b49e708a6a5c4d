"""Evidence inside a report: a failed check's picture as a data: URL, its connection table's first rows.

Reports render from a GradeReport; the one thing they read beside it is what it points at: the files of
`evidence_dir`. Read with care, since a report may be rendered elsewhere or later: a path must be one
labctl wrote (a plain name inside the folder), a picture must be a PNG, and each is size-capped, the
pictures of one report together too (PrairieLearn refuses a results.json over 1 MB; Gradescope states no
limit, so the same caps keep its file light). What does not fit is said, never silently dropped.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path

from labctl.evidence.folder import NAME
from labctl.results import CheckResult, EvidenceFile, GradeReport

#: The most bytes of one picture embedded, and of every picture of one report together.
PICTURE_BYTES = 384 * 1024
REPORT_PICTURE_BYTES = 640 * 1024
#: The most rows of a connection table shown inside a report (the file has them all).
TABLE_LINES = 24
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Picture:
    label: str
    data_url: str
    path: str


def _file(report: GradeReport, entry: EvidenceFile, most: int) -> bytes | None:
    if report.evidence_dir is None or not NAME.fullmatch(entry.path):
        return None
    path = Path(report.evidence_dir) / entry.path
    try:
        if not path.is_file() or path.stat().st_size > most:
            return None
        return path.read_bytes()[:most]
    except OSError:
        return None


@dataclass
class Embedder:
    """One report's pictures, within its byte budget (first come, first served, in the report's order)."""

    report: GradeReport
    left: int = -1                    # bytes of pictures still to embed (-1: REPORT_PICTURE_BYTES)
    notes: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.left < 0:
            self.left = REPORT_PICTURE_BYTES

    def pictures(self, result: CheckResult) -> list[Picture]:
        found = []
        for entry in result.evidence_files:
            if entry.media_type != "image/png":
                continue
            if entry.bytes > min(PICTURE_BYTES, self.left):
                self.notes.setdefault(result.name, []).append(
                    f"{entry.path} is not shown here ({entry.bytes} bytes, over the report's picture cap)")
                continue
            data = _file(self.report, entry, PICTURE_BYTES)
            if data is None or not data.startswith(PNG_MAGIC):
                self.notes.setdefault(result.name, []).append(f"{entry.path} could not be read from "
                                                              f"{self.report.evidence_dir}")
                continue
            self.left -= len(data)
            found.append(Picture(label=entry.description, path=entry.path,
                                 data_url="data:image/png;base64," + base64.b64encode(data).decode("ascii")))
        return found

    def table(self, result: CheckResult, lines: int = TABLE_LINES) -> str | None:
        """The first lines of the check's connection table (labctl's own text), or None."""
        for entry in result.evidence_files:
            if entry.kind == "connections":
                data = _file(self.report, entry, 4 * 2**20)
                if data is None:
                    return None
                text = data.decode("ascii", errors="replace").splitlines()
                more = len(text) - lines
                return "\n".join(text[:lines]) + (f"\n[... {more} more lines in {entry.path}]" if more > 0 else "")
        return None


def where(report: GradeReport, result: CheckResult) -> list[str]:
    """One line per evidence file of a result, for text reports: the path in full and what it shows."""
    if not result.evidence_files or report.evidence_dir is None:
        return []
    return [f"{Path(report.evidence_dir) / entry.path} ({entry.description})" for entry in result.evidence_files]
