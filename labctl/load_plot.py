"""The picture of a load curve: `plot_load_curve(steps) -> bytes`, for the evidence folder and the trace page.

`steps` is the table the load_curve check leaves in its evidence (`result.evidence["steps"]`, one dict a step:
clients, p50, p99 and max in seconds, requests_per_second, threads, cpu_percent; see
labctl/checks/load.py's step_row). Two panels over the number of clients (a log scale, as the steps grow
by factors): latency p50/p99 with throughput on a second axis, then the server's threads with its CPU on a
second axis. The shape is what the check judges, so the picture shows the shape: a one-at-a-time server's
p99 climbs with the clients while its throughput stays flat; a thread per connection's threads climb.

matplotlib with its Agg and SVG canvases on a Figure of its own (no pyplot: no display, no global state,
safe from threads); the SVG is self-contained (glyphs as paths) and the same bytes for the same steps
(a fixed hash salt, no date), so a report that embeds it does not change when nothing did.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.backends.backend_svg import FigureCanvasSVG
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from labctl.plots import drawing

Format = Literal["svg", "png"]

P50, P99, RATE, THREADS, CPU = "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"


def _values(steps: Sequence[Mapping[str, Any]], key: str, scale: float = 1.0) -> tuple[list[float], list[float]]:
    """(clients, values) of the steps that have a number for `key` (a step with no answer has no p99)."""
    xs, ys = [], []
    for step in steps:
        value = step.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            xs.append(float(step["clients"]))
            ys.append(float(value) * scale)
    return xs, ys


def plot_load_curve(steps: Sequence[Mapping[str, Any]], fmt: Format = "svg", title: str = "load curve") -> bytes:
    """The curve of these steps as an SVG (default) or PNG image's bytes."""
    if fmt not in ("svg", "png"):
        raise ValueError(f"plot_load_curve draws svg or png, not {fmt!r}")
    with drawing(**{"svg.hashsalt": "labctl-load-curve", "svg.fonttype": "path"}):
        return _draw(steps, fmt, title)


def _draw(steps: Sequence[Mapping[str, Any]], fmt: Format, title: str) -> bytes:
    figure = Figure(figsize=(7.5, 6.0), dpi=100, layout="constrained")
    latency, load = figure.subplots(2, 1, sharex=True)
    clients = [float(step["clients"]) for step in steps]
    for axis in (latency, load):
        if len(clients) > 1 and max(clients) / max(1.0, min(clients)) >= 8:
            axis.set_xscale("log", base=2)
        axis.set_xticks(clients, [f"{value:g}" for value in clients])
        axis.grid(True, which="major", alpha=0.3)

    # Latency (ms) and throughput.
    for key, color, label in (("p50", P50, "p50"), ("p99", P99, "p99")):
        xs, ys = _values(steps, key, 1000.0)
        latency.plot(xs, ys, marker="o", color=color, label=f"latency {label}")
    latency.set_ylabel("latency (ms)")
    shown = [value for key in ("p50", "p99") for value in _values(steps, key, 1000.0)[1] if value > 0]
    if shown and max(shown) >= 4 * min(shown):      # a curve that climbs: factors read best on a log scale
        latency.set_yscale("log")
        latency.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        latency.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        latency.yaxis.set_minor_formatter(NullFormatter())
    else:                                            # a flat one looks flat from 0
        latency.set_ylim(bottom=0, top=max([1.0, *shown]) * 1.3)
    rate = latency.twinx()
    xs, ys = _values(steps, "requests_per_second")
    rate.plot(xs, ys, marker="s", linestyle="--", color=RATE, label="throughput")
    rate.set_ylabel("requests/s")
    rate.set_ylim(bottom=0, top=max([1.0, *ys]) * 1.3)   # room above for the legend
    handles = latency.get_legend_handles_labels()[0] + rate.get_legend_handles_labels()[0]
    latency.legend(handles, [str(handle.get_label()) for handle in handles], loc="upper left", fontsize="small")
    latency.set_title(title)

    # The server's threads and CPU.
    xs, ys = _values(steps, "threads")
    load.plot(xs, ys, marker="o", color=THREADS, label="threads")
    load.set_ylabel("threads")
    load.set_ylim(bottom=0, top=max([1.0, *ys]) * 1.3)
    load.yaxis.set_major_locator(MaxNLocator(integer=True))
    cpu = load.twinx()
    xs, ys = _values(steps, "cpu_percent")
    cpu.plot(xs, ys, marker="s", linestyle="--", color=CPU, label="CPU % of one CPU")
    cpu.set_ylabel("CPU (%)")
    cpu.set_ylim(bottom=0, top=max([100.0, *ys]) * 1.3)
    handles = load.get_legend_handles_labels()[0] + cpu.get_legend_handles_labels()[0]
    load.legend(handles, [str(handle.get_label()) for handle in handles], loc="upper left", fontsize="small")
    load.set_xlabel("clients at once")

    out = io.BytesIO()
    if fmt == "svg":
        FigureCanvasSVG(figure).print_svg(out, metadata={"Date": None})
    else:
        FigureCanvasAgg(figure).print_png(out, metadata={"Software": None})
    return out.getvalue()
