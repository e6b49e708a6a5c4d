"""The observer's sampler: it looks at the server's threads all the time, at moments that vary.

Why all the time, and why on stdout: the server shares its PID namespace with the observer,
so it sees every process the observer runs, and their command lines. A reader started for
each check tells the server when it is watched (a server that spun except while one existed
got full marks), and even a reader started after each window tells it that a check is going
on (a server can hide for a few seconds after any reader, and the checks follow each other).
So nothing is started in the observer while grading: this sampler is the observer's own
command, from the lab's start to its end, one command line for the lab's whole life, and it
writes each look as one JSON line to its standard output. The engine keeps that output as the
container's log, and the host reads the looks of a window from the log (observe.Window):
through the engine, from outside the lab, where the server cannot see it.

Pauses between looks are random (PERIOD on average), so the moments of the looks cannot be
predicted either. The CPU a server used is NOT read here: the host reads it from the server's
cgroup, which counts every task, reaped children included.
"""

from __future__ import annotations

import json
import random
import sys
import time
from typing import TextIO

from . import proc  # relative: the package is `harness` in a container, `labctl.harness` in tests

PERIOD = 0.1          # seconds between two looks, on average
JITTER = 0.6          # each pause is PERIOD * uniform(1 - JITTER, 1 + JITTER)
DUTY = 0.15           # a costly look (a server with many threads) lengthens the pause: at most this busy


def proc_agent(period: float = PERIOD, jitter: float = JITTER, looks: int | None = None,
               proc_root: str = "/proc", out: TextIO | None = None,
               fd_rules: dict[str, dict[str, str]] | None = None) -> dict:
    """Look at the server's threads until killed (or `looks` times: tests), one JSON line per look.

    Each line is proc_snapshot's answer with "at" first: the wall-clock time of the look, which
    on the engine's host is the clock the host names its windows in. `fd_rules` (from the host's
    syscall table) lets each look say what every blocked thread waits on.
    """
    out = out or sys.stdout
    chance = random.SystemRandom()
    done = 0
    while looks is None or done < looks:
        at, began = time.time(), time.process_time()
        out.write(json.dumps({"at": at, **proc.proc_snapshot(proc_root, fd_rules)}, separators=(",", ":")) + "\n")
        out.flush()
        cost = time.process_time() - began  # CPU, not wall time: a busy host must not stretch the pauses
        done += 1
        time.sleep(max(period * chance.uniform(1 - jitter, 1 + jitter), cost * (1 / DUTY - 1)))
    return {"looks": done}


def looks_between(text: str, since: float, until: float) -> list[dict]:
    """The looks of a sampler's output taken from `since` to `until`, oldest first.

    Every line starts {"at":<time>, so only the lines in the window are parsed whole; a line cut
    at the edge of what was read is skipped.
    """
    found = []
    for line in text.splitlines():
        try:
            at = float(line[6:line.index(",")])
            if since <= at <= until:
                found.append(json.loads(line))
        except ValueError:
            continue
    return sorted(found, key=lambda look: look["at"])


COMMANDS = {"proc_agent": proc_agent}
