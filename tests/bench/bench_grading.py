"""Benchmark: the wall time to grade each exercise's reference solution on this machine.

    python3 tests/bench/bench_grading.py [EXERCISE...]

Prints, per exercise, the whole grading (lab up, every check, lab down), the slowest
checks, and the ratio to the 60 s target. Run it on a quiet machine: every check
measures time, and other load shows up in the figures.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("LABCTL_OWNER", f"bench-{os.getpid()}")

from labctl.exercise import find_exercises, load_exercise  # noqa: E402
from labctl.grading import grade  # noqa: E402
from labctl.project import Project  # noqa: E402

TARGET = 60.0


def main(names: list[str]) -> None:
    project = Project(ROOT)
    folders = [ROOT / "exercises" / name for name in names] or find_exercises(ROOT)
    project.ensure_images(lambda message: print("images:", message))
    print(f"{'exercise':12} {'grading':>8} {'vs 60 s':>8}  {'score':>9}  slowest checks")
    for folder in folders:
        exercise = load_exercise(folder)
        if exercise.validate is None:
            continue
        project.ensure_images(names=[exercise.submission.image, "tools"])  # a build is not grading time
        started = time.perf_counter()
        report = grade(project, exercise, exercise.dir / exercise.validate.solution)
        wall = time.perf_counter() - started
        slowest = sorted(report.results, key=lambda r: r.duration, reverse=True)[:3]
        print(f"{exercise.id:12} {wall:7.1f}s {wall / TARGET:7.2f}x  {report.score:4g}/{report.max_score:<4g}  "
              + ", ".join(f"{r.name} {r.duration:.1f}s" for r in slowest))


if __name__ == "__main__":
    main(sys.argv[1:])
