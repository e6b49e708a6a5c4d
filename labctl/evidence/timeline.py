"""A failed process check's picture: what each server thread did at every look the check judged.

One lane per thread; along it, at every look of the observer's sampler, the thread's state (R runs,
S asleep, D in the disk's hands...) as a colour, what it waits on (a new connection, one client, many
sockets, a lock ... : observe.WAIT_WORDS, the one vocabulary) and, drawn over the lane, the CPU the
thread used since the look before (from its own tick counters). "This thread ran 100% while idle" is
a red lane with its CPU line at the top; a good idle server is a blue lane with a flat line at 0.

Built in two steps so that the facts are tested without drawing: `timeline(recorded)` turns the
windows a check judged (observe.Sample each) into lanes of marks; `render_png(timeline)` draws them
with matplotlib's Agg canvas (never pyplot, never a display) under labctl's own settings (a user's
matplotlibrc could turn on LaTeX: a thread name must never reach a TeX run or matplotlib's math
parser). Every text that comes from the server (thread and process names) goes through `label_text`:
control characters visible, non-ASCII escaped, cut short; and is drawn with math parsing off.

`samples_json` is the same facts for a program: the windows as Sample.from_json reads them, and the
lanes as drawn.
"""

from __future__ import annotations

import io
import statistics
from dataclasses import dataclass, field
from typing import Any

from labctl import observe
from labctl.plots import drawing
from labctl.untrusted import printable

#: The most lanes a picture draws (the busiest first); the others are counted under it.
MAX_LANES = 24
#: The most looks per window kept in the samples file (evenly thinned beyond it).
MAX_LOOKS = 600
#: The most characters of a server-chosen name shown.
NAME_CHARS = 24
#: The most characters of a process's command line kept in the samples file.
CMDLINE_CHARS = 256

#: Colour of each wait (observe.WAIT_WORDS); "runs" is the busy loop's red.
COLOURS: dict[str, str] = {
    "runs": "#d62728", "new-connection": "#1f77b4", "one-client": "#17becf", "many-sockets": "#9467bd",
    "timed-sleep": "#98df8a", "child": "#bcbd22", "lock": "#e377c2", "pipe": "#7f7f7f", "file": "#8c564b",
    "other": "#c7c7c7", "stopped": "#111111", "zombie": "#555555", "unknown": "#eeeeee",
}


def label_text(text: str, limit: int = NAME_CHARS) -> str:
    """A server-chosen name as a picture shows it: control characters visible, non-ASCII as escapes (no
    font lacks them), at most `limit` characters."""
    shown = printable(text).encode("ascii", "backslashreplace").decode("ascii")
    return shown if len(shown) <= limit else shown[:limit - 1] + "~"


@dataclass(frozen=True)
class Mark:
    """One look at one thread."""

    at: float                         # seconds from the first look of the first window
    state: str
    wait: str                         # a key of observe.WAIT_WORDS
    doing: str                        # observe.Thread.waiting: "asleep in accept4 (288)", "running"
    syscall: str | None               # the syscall's name (None: running, or not known)
    cpu_percent: float | None         # CPU of one CPU since its look before in the window (None: first look)


@dataclass
class Lane:
    pid: int
    tid: int
    comm: str                         # as the server named it (shown through label_text)
    main: bool
    marks: list[Mark] = field(default_factory=list)
    cpu_seconds: float = 0.0          # CPU it used between its looks, from its own tick counters
    seconds: float = 0.0              # the time between those looks

    @property
    def cpu_percent(self) -> float:
        return 0.0 if self.seconds <= 0 else 100.0 * self.cpu_seconds / self.seconds

    @property
    def running_share(self) -> float:
        return sum(1 for mark in self.marks if mark.wait == "runs") / len(self.marks) if self.marks else 0.0

    @property
    def label(self) -> str:
        return f"{self.pid}/{self.tid} {label_text(self.comm, 15)}" + (" (main)" if self.main else "")


@dataclass(frozen=True)
class Window:
    """One stretch the check watched: its name, where it lies on the picture's time axis, the server's CPU."""

    label: str
    start: float
    end: float
    elapsed: float                    # between the two cgroup readings
    cpu_percent: float                # the whole server, from its cgroup
    looks: int
    precise: bool


@dataclass
class Timeline:
    check: str
    windows: list[Window]
    lanes: list[Lane]                 # the lanes drawn, busiest first
    left_out: int                     # threads seen but not drawn (over MAX_LANES)
    machine: str
    step: float                       # the usual seconds between two looks

    @property
    def looks(self) -> int:
        return sum(window.looks for window in self.windows)


def timeline(check: str, recorded: list[tuple[str, observe.Sample]], max_lanes: int = MAX_LANES) -> Timeline:
    """The lanes of every thread over the windows a check recorded (label, sample), oldest first."""
    stamps = [snapshot.time for _, sample in recorded for snapshot in sample.snapshots]
    origin = min(stamps) if stamps else 0.0
    gaps = [later.time - earlier.time for _, sample in recorded
            for earlier, later in zip(sample.snapshots, sample.snapshots[1:], strict=False)
            if later.time > earlier.time]
    step = statistics.median(gaps) if gaps else 0.1
    windows: list[Window] = []
    lanes: dict[int, Lane] = {}
    for label, sample in recorded:
        if not sample.snapshots:
            continue
        first, last = sample.snapshots[0].time - origin, sample.snapshots[-1].time - origin
        windows.append(Window(label=label, start=first, end=max(last + step, first + min(sample.elapsed, step)),
                              elapsed=sample.elapsed, cpu_percent=sample.cpu_percent, looks=len(sample.snapshots),
                              precise=sample.precise))
        before: dict[int, tuple[float, int]] = {}
        for snapshot in sample.snapshots:
            for thread in snapshot.threads:
                lane = lanes.setdefault(thread.tid, Lane(thread.pid, thread.tid, thread.comm, thread.tid == thread.pid))
                percent = None
                if thread.tid in before:
                    at, ticks = before[thread.tid]
                    spent = snapshot.time - at
                    if spent > 0:
                        used = max(0, thread.ticks - ticks) / snapshot.clk_tck
                        percent = round(min(100.0 * used / spent, 999.0), 1)
                        lane.cpu_seconds += used
                        lane.seconds += spent
                before[thread.tid] = (snapshot.time, thread.ticks)
                lane.marks.append(Mark(at=round(snapshot.time - origin, 4), state=thread.state, wait=thread.wait,
                                       doing=thread.waiting, syscall=thread.syscall_name, cpu_percent=percent))
    ordered = sorted(lanes.values(), key=lambda lane: (-lane.running_share, -lane.cpu_seconds, lane.pid, lane.tid))
    drawn = sorted(ordered[:max_lanes], key=lambda lane: (lane.pid, lane.tid))
    machine = recorded[0][1].machine if recorded else "x86_64"
    return Timeline(check=check, windows=windows, lanes=drawn, left_out=max(0, len(ordered) - max_lanes),
                    machine=machine, step=step)


# -- the samples, for programs ------------------------------------------------------------------

def snapshot_json(snapshot: observe.Snapshot, keep_tids: set[int] | None = None) -> dict[str, Any]:
    """A Snapshot in the shape Snapshot.from_json reads (a process's command line cut to CMDLINE_CHARS)."""
    processes = []
    for process in snapshot.processes:
        threads = [{"tid": t.tid, "comm": t.comm, "state": t.state, "syscall": t.syscall, "arg0": t.arg0,
                    "wchan": t.wchan, "ticks": t.ticks, "voluntary": t.voluntary, "nonvoluntary": t.nonvoluntary,
                    "uid": t.uid, "args": list(t.args), "waits_on": t.waits_on}
                   for t in process.threads if keep_tids is None or t.tid in keep_tids]
        processes.append({"pid": process.pid, "ppid": process.ppid, "comm": process.comm, "uid": process.uid,
                          "cmdline": process.cmdline[:CMDLINE_CHARS], "ticks": process.ticks,
                          "child_ticks": process.child_ticks, "holds": process.holds, "threads": threads})
    return {"machine": snapshot.machine, "clk_tck": snapshot.clk_tck, "time": snapshot.time,
            "processes": processes, "init": snapshot.init, "errors": list(snapshot.errors)}


def _thinned(snapshots: tuple[observe.Snapshot, ...], most: int) -> list[observe.Snapshot]:
    if len(snapshots) <= most:
        return list(snapshots)
    return [snapshots[round(i * (len(snapshots) - 1) / (most - 1))] for i in range(most)]


def samples_json(drawn: Timeline, recorded: list[tuple[str, observe.Sample]],
                 max_looks: int = MAX_LOOKS) -> dict[str, Any]:
    """What the picture shows, for a program: every window as Sample.from_json reads it (its looks thinned
    to `max_looks`, its threads to the lanes drawn), and the lanes with their marks."""
    tids = {lane.tid for lane in drawn.lanes}
    windows = [{"label": label, "elapsed": sample.elapsed, "cpu_seconds": sample.cpu_seconds,
                "cpu_percent": round(sample.cpu_percent, 2), "precise": sample.precise, "looks": len(sample.snapshots),
                "snapshots": [snapshot_json(snapshot, tids) for snapshot in _thinned(sample.snapshots, max_looks)]}
               for label, sample in recorded]
    lanes = [{"pid": lane.pid, "tid": lane.tid, "comm": lane.comm, "main": lane.main,
              "cpu_percent": round(lane.cpu_percent, 1), "running_share": round(lane.running_share, 3),
              "marks": [{"at": mark.at, "state": mark.state, "wait": mark.wait, "doing": mark.doing,
                         "syscall": mark.syscall, "cpu_percent": mark.cpu_percent} for mark in lane.marks]}
             for lane in drawn.lanes]
    return {"check": drawn.check, "machine": drawn.machine, "wait_words": observe.WAIT_WORDS,
            "threads_left_out": drawn.left_out, "windows": windows, "lanes": lanes}


# -- the picture ----------------------------------------------------------------------------------

def _runs(lane: Lane, ends: list[float]) -> list[tuple[float, float, Mark]]:
    """(start, end, mark) of the lane's looks: each lasts until the thread's next look in its window."""
    spans = []
    for index, mark in enumerate(lane.marks):
        window_end = next((end for end in ends if end >= mark.at), mark.at)
        nxt = lane.marks[index + 1].at if index + 1 < len(lane.marks) else None
        end = nxt if nxt is not None and nxt <= window_end else window_end
        spans.append((mark.at, max(end, mark.at), mark))
    return spans


def _what(mark: Mark) -> str:
    """A look in a few words: "S accept4", "R running"."""
    return f"{label_text(mark.state, 2)} {mark.syscall or ('running' if mark.wait == 'runs' else mark.wait)}"


#: The picture's layout, in inches: each lane, and what is above and below the lanes.
LANE_INCHES, TOP_INCHES, BOTTOM_INCHES, WIDTH_INCHES = 0.55, 0.75, 1.15, 11.0
#: Where a lane's parts lie in its row (0 at the bottom, 1 at the top): the CPU strip, then the state bar.
CPU_STRIP = (0.08, 0.40)
STATE_BAR = (0.46, 0.92)


def render_png(drawn: Timeline, title: str, dpi: int = 100) -> bytes:
    """The timeline as a PNG: one lane per thread (its state and wait as a coloured bar, its CPU between
    looks as a grey strip under it), a legend of the waits seen, each window named with the server's CPU."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch, Rectangle

    with drawing():
        lanes = drawn.lanes
        rows = max(1, len(lanes))
        height = TOP_INCHES + LANE_INCHES * rows + BOTTOM_INCHES
        figure = Figure(figsize=(WIDTH_INCHES, height), dpi=dpi)
        FigureCanvasAgg(figure)
        axes = figure.add_axes((0.2, BOTTOM_INCHES / height, 0.7, LANE_INCHES * rows / height))
        span_end = max([window.end for window in drawn.windows] + [drawn.step])
        ends = [window.end for window in drawn.windows]
        for number, window in enumerate(drawn.windows):
            axes.axvspan(window.start, window.end, color="#f2f2f2" if number % 2 else "#fafafa", zorder=0)
            cpu = f"server CPU {window.cpu_percent:.0f}%" + ("" if window.precise else " (approx.)")
            axes.text((window.start + window.end) / 2, rows + 0.04, f"{label_text(window.label, 60)}: "
                      f"{window.elapsed:.1f} s, {cpu}", ha="center", va="bottom", fontsize=8, parse_math=False,
                      clip_on=False)
        waits_seen: dict[str, None] = {}
        low, high = CPU_STRIP
        bottom, top = STATE_BAR
        for row, lane in enumerate(reversed(lanes)):
            spans = _runs(lane, ends)
            for start, end, mark in spans:
                waits_seen.setdefault(mark.wait)
                width = max(end - start, drawn.step * 0.2)
                axes.add_patch(Rectangle((start, row + bottom), width, top - bottom,
                                         facecolor=COLOURS.get(mark.wait, "#c7c7c7"), edgecolor="none",
                                         hatch="///" if mark.state == "D" else None, zorder=1))
                if mark.cpu_percent is not None:  # its CPU between looks: the strip's bottom is 0%, its top 100%
                    level = (high - low) * min(mark.cpu_percent, 100.0) / 100.0
                    axes.add_patch(Rectangle((start, row + low), width, level, facecolor="#555555",
                                             edgecolor="none", zorder=1))
            axes.plot([0, span_end], [row + high] * 2, color="#bbbbbb", linewidth=0.6, linestyle=":", zorder=1)
            axes.plot([0, span_end], [row + low] * 2, color="#bbbbbb", linewidth=0.6, zorder=1)
            # What it waits in, written where a run of the same looks is wide enough to hold the words.
            written, run_start = 0, 0
            for index in range(1, len(spans) + 1):
                if index < len(spans) and _what(spans[index][2]) == _what(spans[run_start][2]) \
                        and spans[index][0] <= spans[index - 1][1] + drawn.step:
                    continue
                start, end = spans[run_start][0], spans[index - 1][1]
                if end - start >= span_end * 0.12 and written < 8:
                    dark = spans[run_start][2].wait in ("runs", "new-connection", "many-sockets", "stopped",
                                                          "zombie", "file", "pipe")
                    axes.text(start + (end - start) / 2, row + (bottom + top) / 2, _what(spans[run_start][2]),
                              ha="center", va="center", fontsize=7, color="white" if dark else "black",
                              parse_math=False, zorder=3, clip_on=True)
                    written += 1
                run_start = index
            axes.text(-0.01, row + 0.5, lane.label, transform=axes.get_yaxis_transform(), ha="right",
                      va="center", fontsize=8, parse_math=False, family="DejaVu Sans Mono")
            axes.text(1.01, row + 0.5, f"CPU {lane.cpu_percent:.0f}%", transform=axes.get_yaxis_transform(),
                      ha="left", va="center", fontsize=8, parse_math=False,
                      color="#d62728" if lane.cpu_percent >= 50 else "black",
                      fontweight="bold" if lane.cpu_percent >= 50 else "normal")
        if not lanes:
            axes.text(span_end / 2, 0.5, "no server thread was seen", ha="center", va="center", parse_math=False)
        axes.set_xlim(0, span_end)
        axes.set_ylim(0, rows)
        axes.set_yticks([])
        axes.set_xlabel("seconds (each bar lasts from one look of the observer to the next)", fontsize=8)
        figure.text(0.01, 1 - 0.12 / height, label_text(title, 130), ha="left", va="top", fontsize=10,
                    fontweight="bold", parse_math=False)
        handles: list[Any] = [Patch(facecolor=COLOURS.get(wait, "#c7c7c7"),
                         label="runs (state R)" if wait == "runs" else f"asleep: {observe.WAIT_WORDS.get(wait, wait)}")
                   for wait in waits_seen]
        handles.append(Patch(facecolor="#555555", label="the thread's CPU between two looks (strip under its "
                                                        "bar: bottom 0%, dotted top 100% of a CPU)"))
        handles.append(Line2D([0], [0], color="none", label="per lane: pid/tid name; right: its CPU over the looks"))
        legend = figure.legend(handles=handles, loc="lower left", ncol=2, fontsize=7, frameon=False,
                               bbox_to_anchor=(0.01, 0.0))
        for text in legend.get_texts():
            text.set_parse_math(False)
        if drawn.left_out:
            figure.text(0.99, 0.01, f"and {drawn.left_out} more threads, not drawn", ha="right", fontsize=7,
                        parse_math=False)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=dpi, metadata={"Software": "labctl"})
        return buffer.getvalue()
