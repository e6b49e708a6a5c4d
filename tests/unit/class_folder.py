"""A batch's output folder, made for the class page's tests from real reports (tests/unit/class_reports, made
by real gradings: see regenerate.sh there) and from synthetic hostile rows, laid out as the batch's contract
says: `gradebook.csv` (id,score,max,status,duration,<a column per check: its points>,message) and per student
`<id>/report.json`, `<id>/job.json`, `<id>/grading.log`."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from labctl.exercise import Exercise

CLASS_REPORTS = Path(__file__).parent / "class_reports"
FINISHED = datetime(2026, 12, 3, 22, 0, tzinfo=timezone.utc)


@dataclass
class Entry:
    """One student of a made-up class: a real (or forged) report, or none."""

    id: str
    status: str = "graded"
    message: str = ""
    duration: float = 20.0
    report: dict | None = None
    name: str = ""                         # the entry's original name (job.json), when not the id
    worker: str = "grader-1"
    folder: bool = True                    # False: a gradebook row with no folder
    raw_report: bytes | None = None        # written instead of `report` (broken, oversized...)
    extra_files: dict[str, bytes] = field(default_factory=dict)


def real_entries(exercise_id: str) -> list[Entry]:
    """A student per real report of tests/unit/class_reports/<exercise>/, its status as run_job gives it."""
    entries = []
    for path in sorted((CLASS_REPORTS / exercise_id).glob("*/report.json")):
        report = json.loads(path.read_text())
        if report["gradable"]:
            status, message = "graded", ""
        else:
            status = "not gradable" if report.get("failure") == "submission" else "error"
            message = report.get("error") or ""
        entries.append(Entry(path.parent.name, status, message, report["duration"], report))
    return entries


def write_class(out: Path, exercise: Exercise, entries: list[Entry], gradebook: bool = True) -> Path:
    """The folder a batch would have left for these students; returns it."""
    out.mkdir(parents=True, exist_ok=True)
    checks = [spec.name for spec in exercise.checks]
    rows = []
    for number, entry in enumerate(entries):
        report = entry.report or {}
        points = {result["name"]: result["points"] for result in report.get("results", [])}
        graded = entry.status == "graded"
        rows.append([entry.id, report.get("score", "") if graded else "", report.get("max_score", "") if graded else "",
                     entry.status, entry.duration, *[points.get(name, "") if graded else "" for name in checks],
                     entry.message])
        if not entry.folder:
            continue
        folder = out / entry.id
        folder.mkdir(parents=True, exist_ok=True)
        if entry.raw_report is not None:
            (folder / "report.json").write_bytes(entry.raw_report)
        elif entry.report is not None:
            (folder / "report.json").write_text(json.dumps(entry.report))
        (folder / "grading.log").write_text("graded\n")
        for name, data in entry.extra_files.items():
            (folder / name).write_bytes(data)
        finished = FINISHED + timedelta(seconds=30 * number)
        (folder / "job.json").write_text(json.dumps({
            "name": entry.name or entry.id, "submission_hash": f"{number:064x}", "fingerprint": "f" * 32,
            "status": entry.status, "message": entry.message, "duration": entry.duration, "worker": entry.worker,
            "finished_at": finished.isoformat()}))
    if gradebook:
        with open(out / "gradebook.csv", "w", newline="", encoding="utf-8") as sink:
            writer = csv.writer(sink)
            writer.writerow(["id", "score", "max", "status", "duration", *checks, "message"])
            writer.writerows(rows)
    return out
