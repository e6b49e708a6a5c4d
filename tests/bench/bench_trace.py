"""Benchmark: the wake-up latencies `labctl trace` measures on each reference solution, on this machine.

    python3 tests/bench/bench_trace.py [--runs N] [EXERCISE...]     (default: blocking threaded polling, 3 runs)

Per exercise, one lab; per run, each scenario (one, slow-client, concurrent) traced once. Prints the
wake-up latencies (a packet to the return of the call that was asleep when it came) by family of
waiting call: how many, median and max over all runs, and how many were only bounded (strace's
stopwatch started late); then the load average, since strace in the observer shares its CPU limit and
the machine with everything else. Run it on a quiet machine for figures that say something about
the kernel rather than the neighbours.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("LABCTL_OWNER", f"bench-{os.getpid()}")

from labctl.grading import with_server_image  # noqa: E402
from labctl.lab import Lab, Submission  # noqa: E402
from labctl.project import Project  # noqa: E402
from labctl.trace import links, record, timeline  # noqa: E402

SCENARIOS = ("one", "slow-client", "concurrent")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("exercises", nargs="*", default=["blocking", "threaded", "polling"])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    project = Project(ROOT)
    print(f"{'exercise':10} {'waiting call':12} {'wake-ups':>8} {'median':>10} {'max':>10} {'bounded':>8}  traces")
    for name in args.exercises:
        exercise = project.exercise(name)
        image, extra = exercise.server_image()
        spec = with_server_image(project.spec, image)
        tags = project.ensure_images(names=sorted({node.image for node in spec.nodes.values()}), extra=extra)
        lab = Lab.create(spec, project.backend)
        found: dict[str, list[float]] = {}
        bounded: dict[str, int] = {}
        started = time.perf_counter()
        try:
            lab.up(tags, Submission.for_exercise(exercise, exercise.dir / "solution"))
            for _ in range(args.runs):
                for scenario in SCENARIOS:
                    recording = record.record(lab, scenario)
                    built = timeline.build(recording.strace, recording.scenario)
                    for link in built.wake_ups:
                        family = links.family(built.calls[link.call].name) or "other"
                        if link.bounded:
                            bounded[family] = bounded.get(family, 0) + 1
                        else:
                            found.setdefault(family, []).append(link.latency * 1e6)
        finally:
            lab.down()
        wall = time.perf_counter() - started
        for family in sorted(set(found) | set(bounded)):
            values = found.get(family, [])
            median = f"{statistics.median(values):,.0f} µs" if values else "-"
            most = f"{max(values):,.0f} µs" if values else "-"
            print(f"{name:10} {family:12} {len(values):8} {median:>10} {most:>10} {bounded.get(family, 0):8}  "
                  f"{args.runs * len(SCENARIOS)} in {wall:.0f} s")
    print("load average:", " ".join(f"{value:.2f}" for value in os.getloadavg()))


if __name__ == "__main__":
    main()
