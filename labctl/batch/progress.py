"""How a batch is shown while it runs: done/total, gradings per minute, the time left, failures so far.

On a terminal, a live bar (rich) with a line per result above it; elsewhere (a CI log, a file) a plain
line per result carrying the same figures, so a log read later tells the same story; nothing with --quiet.
The rate counts the gradings of this run only (results kept from before take no time), and so does the ETA.
"""

from __future__ import annotations

import time
from collections import Counter

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

from labctl.batch.runner import Executor, Plan, Row
from labctl.untrusted import printable

#: A status's mark and colour on the terminal.
MARKS = {"graded": "[green]graded[/]", "not gradable": "[yellow]not gradable[/]", "error": "[red]error[/]"}


def _e(text: object) -> str:
    """Text that may come from a submission, for rich: controls visible, markup escaped."""
    return escape(printable(str(text)))


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}".rstrip("0").rstrip(".") or "0"


def duration_words(seconds: float) -> str:
    """1 h 05 min, 12 min, 40 s."""
    seconds = max(0, round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    if seconds >= 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds} s"


class BatchDisplay:
    """A runner.Listener that shows the batch on `console` (stderr): mode "live" (a terminal), "lines"
    (a log) or "quiet" (nothing)."""

    def __init__(self, console: Console, mode: str):
        self.console, self.mode = console, mode
        self.total = self.to_grade = self.finished_now = 0
        self.counts: Counter[str] = Counter()
        self.started = time.monotonic()
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    # -- the figures ----------------------------------------------------------------------------------

    @property
    def done(self) -> int:
        return sum(self.counts.values())

    def rate(self) -> float | None:
        """Gradings per minute so far in this run (None before the first)."""
        minutes = (time.monotonic() - self.started) / 60
        return self.finished_now / minutes if self.finished_now and minutes > 0 else None

    def eta(self) -> str:
        rate = self.rate()
        left = self.to_grade - self.finished_now
        if left <= 0:
            return "ETA 0 s"
        return f"ETA {duration_words(left / rate * 60)}" if rate else "ETA -"

    def failures(self) -> str:
        return f"{self.counts['not gradable']} not gradable, {self.counts['error']} errors"

    def figures(self) -> tuple[str, str, str]:
        """(rate, ETA, failures) as shown."""
        rate = self.rate()
        return (f"{rate:.1f}/min" if rate else "-/min"), self.eta(), self.failures()

    # -- the Listener -------------------------------------------------------------------------------

    def planned(self, plan: Plan, executor: Executor) -> None:
        self.total, self.to_grade = len(plan.entries), len(plan.to_grade)
        self.counts.update(row.status for row in (*plan.unchanged, *plan.refused))
        self.started = time.monotonic()
        if self.mode == "quiet":
            return
        reasons = Counter(why for _, why in plan.to_grade)
        because = ", ".join(f"{count} {why}" for why, count in sorted(reasons.items()))
        self.console.print(f"{self.total} entries: {self.to_grade} to grade" + (f" ({because})" if because else "")
                           + f", {len(plan.unchanged)} unchanged (kept; --force grades them again), "
                           f"{len(plan.refused)} not gradable at intake; on {_e(executor.name)}, "
                           f"{executor.jobs} at once", highlight=False, soft_wrap=True)
        for row in plan.refused:
            self.console.print(f"  {MARKS[row.status]} {_e(row.id)}: {_e(row.message)}", highlight=False,
                               soft_wrap=True)
        if self.mode == "live" and self.to_grade:
            self._progress = Progress(TextColumn("grading"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("{task.fields[rate]}"), TextColumn("{task.fields[eta]}"),
                                      TextColumn("{task.fields[failures]}"), console=self.console, transient=True)
            rate, eta, failures = self.figures()
            self._task = self._progress.add_task("grading", total=self.total, completed=self.done, rate=rate, eta=eta,
                                                 failures=failures)
            self._progress.start()

    def finished(self, row: Row) -> None:
        self.counts[row.status] += 1
        if row.how == "graded":
            self.finished_now += 1
        if self.mode == "quiet":
            return
        score = f" {_number(row.score)}/{_number(row.max)}" if row.status == "graded" else ""
        why = f": {_e(row.message)}" if row.message else ""
        result = f"{MARKS.get(row.status, row.status)} {_e(row.id)}{score} ({row.duration:.1f} s){why}"
        rate, eta, failures = self.figures()
        if self._progress is not None and self._task is not None:
            self._progress.console.print(f"  {result}", highlight=False, soft_wrap=True)
            self._progress.update(self._task, completed=self.done, rate=rate, eta=eta, failures=failures)
        else:
            self.console.print(f"[{self.done}/{self.total}] {result} · {rate}, {eta}, {failures}", highlight=False,
                               soft_wrap=True)

    def tick(self) -> None:
        if self._progress is not None and self._task is not None:
            rate, eta, failures = self.figures()
            self._progress.update(self._task, rate=rate, eta=eta, failures=failures)

    def stopping(self, running: int) -> None:
        self.close()
        if self.mode != "quiet":
            self.console.print(f"[yellow]stopping:[/] {running} grading{'s' if running != 1 else ''} running "
                               "stop now, each removing its lab; finished results are kept", highlight=False)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
