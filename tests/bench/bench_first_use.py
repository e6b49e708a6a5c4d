"""Benchmark: a newcomer's first verdict, on an engine with none of labctl's images.

    python3 tests/bench/bench_first_use.py --yes

REMOVES every image labctl built on this engine (label labctl.image: the bootstrapped root,
base, server, tools, server-c), then times the README's first command,
`labctl test blocking --submission exercises/blocking/solution`, which builds what it needs
and grades. Prints the whole time, how much of it went to images, and the ratio to the 90 s
target. The images are there again afterwards (the C image only on the next use).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import docker

ROOT = Path(__file__).resolve().parents[2]
TARGET = 90.0


def main() -> None:
    if "--yes" not in sys.argv:
        sys.exit("this removes labctl's images from the engine; run with --yes")
    client = docker.from_env()
    for image in client.images.list(filters={"label": "labctl.image"}):
        client.images.remove(image.id, force=True)
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "labctl", "test", "blocking", "--submission",
                             str(ROOT / "exercises" / "blocking" / "solution")], cwd=ROOT, capture_output=True,
                            text=True, env={**os.environ, "LABCTL_OWNER": f"bench-{os.getpid()}"})
    total = time.monotonic() - started
    built = [float(seconds) for seconds in re.findall(r"grading\s+([\d.]+)s: built ", result.stderr)]
    print(f"first verdict: {total:.1f} s (exit {result.returncode}), of which images {max(built, default=0):.1f} s; "
          f"target {TARGET:.0f} s: {total / TARGET:.2f}x")
    if result.returncode != 0:
        print(result.stdout[-2000:], result.stderr[-2000:])


if __name__ == "__main__":
    main()
