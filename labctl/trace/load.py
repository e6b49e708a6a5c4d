"""`labctl trace --load-curve`: the load_curve check's steps run on the traced lab, for the trace page.

The trace shows one request's story; the load curve shows what the same server does with 1, 8, 64 and
256 clients at once (latency, throughput, threads, CPU). It runs after the trace, never during it (strace
would slow every syscall it measures), with the check's own defaults, and is not judged here: the page
draws it and says what the check would have said.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from labctl.checks import CheckContext, load_catalog
from labctl.checks.load import LOAD_CURVE_CHECK
from labctl.lab import Lab


@dataclass
class LoadCurve:
    """The steps measured (the check's evidence["steps"] rows) and the check's words on them."""

    steps: list[dict[str, Any]] = field(default_factory=list)
    verdict: str = ""          # what load_curve would say, with its default limits
    passed: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"steps": self.steps, "verdict": self.verdict, "passed": self.passed}


def measure(lab: Lab) -> LoadCurve:
    """Run load_curve's steps on the lab (its default parameters and budget) and keep what it saw."""
    definition = load_catalog()[LOAD_CURVE_CHECK]
    ctx = CheckContext.of(lab, lab.server_port, time.monotonic() + definition.default_timeout)
    outcome = definition.run(ctx, definition.params())
    return LoadCurve(list(outcome.evidence.get("steps") or []), outcome.message, outcome.passed)
