"""Benchmark: what `--evidence` costs a grading, and what it keeps.

    python3 tests/bench/bench_evidence.py [ROUNDS]

Grades the blocking exercise's solution (nothing to keep: the cost is tcpdump started and stopped around
each network check) and the busy_poll mutant (three process checks fail: their pictures are drawn), each
with and without --evidence, ROUNDS times (default 1), alternating; prints the median wall time of each,
the difference, and the evidence kept (files, bytes). Verdicts are compared too: they must not differ.
Run it on a quiet machine: every check measures time, and other load shows up in the figures.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("LABCTL_OWNER", f"bench-{os.getpid()}")

from labctl.exercise import load_exercise  # noqa: E402
from labctl.grading import GradeOptions, grade  # noqa: E402
from labctl.project import Project  # noqa: E402

SUBMISSIONS = {"solution": ROOT / "exercises" / "blocking" / "solution",
               "busy_poll": ROOT / "exercises" / "polling" / "mutants" / "busy_poll"}


def main(rounds: int) -> None:
    project = Project(ROOT)
    exercise = load_exercise(ROOT / "exercises" / "blocking")
    project.ensure_images(lambda message: print("images:", message), names=["server", "tools"])
    print(f"{'submission':10} {'without':>8} {'with':>8} {'cost':>7}  {'files':>5} {'bytes':>9}  verdicts")
    for name, folder in SUBMISSIONS.items():
        times: dict[bool, list[float]] = {False: [], True: []}
        verdicts: dict[bool, set[tuple]] = {False: set(), True: set()}
        files = size = 0
        for _ in range(rounds):
            for evidence in (False, True):
                with tempfile.TemporaryDirectory(prefix="labctl-bench-evidence.") as scratch:
                    options = GradeOptions(evidence=Path(scratch) / "evidence" if evidence else None)
                    started = time.perf_counter()
                    report = grade(project, exercise, folder, options)
                    times[evidence].append(time.perf_counter() - started)
                    verdicts[evidence].add(tuple((r.name, r.status) for r in report.results))
                    kept = [entry for r in report.results for entry in r.evidence_files]
                    files, size = len(kept), sum(entry.bytes for entry in kept)
        without, with_ = statistics.median(times[False]), statistics.median(times[True])
        same = "same" if verdicts[False] == verdicts[True] and len(verdicts[False]) == 1 else "DIFFER"
        print(f"{name:10} {without:7.1f}s {with_:7.1f}s {with_ - without:+6.1f}s  {files:5} {size:9}  {same}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
