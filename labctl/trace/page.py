"""A trace as one self-contained HTML page a student can keep: SVG timelines drawn by matplotlib, tables.

Self-contained: the SVG is inline (text drawn as paths, so no font is needed), the style is in the
page, there is no script and nothing is fetched: it opens the same offline, years later.

Everything the server (or the client) wrote (thread names, requests, answers, results) is escaped
for HTML (html.escape of labctl.untrusted.printable) and drawn with matplotlib's math text off: a
thread named "$\\frac{}" is text, not a formula that fails to parse.

What the drawing shows, per lane, on one time axis (ms since the scenario began):
- "packets": each segment, ▶ to the server above the line, ◀ from it below, coloured by kind;
- one lane per server thread: its waiting calls as bars (accept, receive, poll/select/epoll, a lock,
  a sleep), its other calls as ticks (awake, working), its birth and its end;
- a line from each packet to the return it caused, green when it woke a sleeping call, with the latency.
Activity comes in bursts a few ms long inside seconds of sleep, so each burst is drawn again, zoomed.
"""

from __future__ import annotations

import html
import io
from pathlib import Path
from typing import Any

from labctl import __version__, syscalls
from labctl.trace.links import family, latest_return
from labctl.trace.load import LoadCurve
from labctl.trace.packets import PACKET_WORDS
from labctl.trace.terminal import SLEEPING, asleep_share, latency_words, link_sentence
from labctl.trace.timeline import Lane, Timeline
from labctl.untrusted import printable

#: The most thread lanes drawn (the tables list every thread).
MAX_LANES = 24
#: The most zoomed drawings of bursts.
MAX_ZOOMS = 6
#: Packets closer than this (seconds) are one burst.
BURST_GAP = 0.02
#: The most rows of the table of every syscall.
MAX_CALL_ROWS = 5000
#: Latency labels written on a drawing (more would cover each other).
MAX_LABELS = 24
#: The most bars of a kind, or ticks, drawn on one lane of one drawing (a bound for busy servers).
MARKS = 1500
#: The most links drawn as arrows on one drawing (the list above the drawings has them all).
MAX_ARROWS = 300

COLOURS = {"accept": "#1f77b4", "receive": "#2ca02c", "multiplexer": "#9467bd", "lock": "#7f7f7f",
           "sleep": "#c7c7c7"}
PACKET_COLOURS = {"syn": "#d62728", "syn-ack": "#ff9896", "handshake": "#d62728", "request": "#1f77b4",
                  "response": "#ff7f0e", "ack": "#bbbbbb", "fin": "#8c564b", "rst": "#000000"}
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 80em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.2em 0.8em; text-align: left; vertical-align: top; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
code, .mono { font-family: ui-monospace, monospace; font-size: 0.9em; }
.woke { color: #1a7f37; } .late { color: #9a6700; } .note { color: #9a6700; }
svg { max-width: 100%; height: auto; }
"""


def e(text: object) -> str:
    """The server's text (or any text) for HTML: control characters visible, markup escaped."""
    return html.escape(printable(str(text)))


def write(timeline: Timeline, path: Path, load: LoadCurve | None = None) -> Path:
    path.write_text(render(timeline, load), encoding="utf-8")
    return path


def render(timeline: Timeline, load: LoadCurve | None = None) -> str:
    """The whole page; with `load` (labctl trace --load-curve), the load curve measured after the trace."""
    processes = len({lane.pid for lane in timeline.lanes})
    parts = [f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<title>labctl trace: {e(timeline.scenario)}</title><style>{STYLE}</style></head><body>",
             f"<h1>labctl trace: <code>{e(timeline.scenario)}</code></h1>",
             f"<p>The server {e(timeline.server)}:{timeline.port} ({processes} process(es), {len(timeline.lanes)} "
             f"thread(s)) while the client {e(timeline.client or '')} played the scenario: {len(timeline.calls)} "
             f"syscalls and {len(timeline.packets)} packets in {timeline.ended - timeline.began:.3f} s. Times are in "
             "milliseconds since the scenario began; both halves carry the wall clock of the engine's host "
             "(strace's timestamps in the observer, the kernel's packet timestamps in the client).</p>",
             "<h2>What woke the server</h2>", _links(timeline),
             "<h2>Wake-up latency</h2>", _latencies(timeline),
             "<h2>The timeline</h2>", _svg(timeline, None, "The whole trace"),
             *[_svg(timeline, window, f"Zoom: {(window[0] - timeline.began) * 1e3:.3f} to "
                                      f"{(window[1] - timeline.began) * 1e3:.3f} ms")
               for window in bursts(timeline)],
             *([_load_curve(load)] if load is not None else []),
             "<h2>Threads</h2>", _threads(timeline),
             "<h2>Packets</h2>", _packets(timeline),
             "<h2>Every syscall</h2>", _calls(timeline),
             "<h2>Clocks</h2>", f"<p>{e(timeline.clock.words)}.</p>",
             "<p>A return never comes before the packet that caused it, and a packet the server sends is never "
             "seen before its send began: these pairs bound how far the two clocks could disagree.</p>"]
    if timeline.notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li class=\"note\">{e(note)}</li>" for note in timeline.notes)
                     + "</ul>")
    parts.append(f"<footer><p class=\"mono\">made by labctl {e(__version__)}; this page needs no network</p></footer>"
                 "</body></html>\n")
    return "\n".join(parts)


def _load_curve(load: LoadCurve) -> str:
    """The load curve's section: the check's words, its drawing (matplotlib SVG), its table."""
    from labctl.load_plot import plot_load_curve

    head = ("<h2>Under load</h2><p>After the trace, with no strace: load_curve's steps (its default limits) on the "
            f"same server. {'It would pass' if load.passed else 'It would fail'}: {e(load.verdict)}</p>")
    if not load.steps:
        return head
    svg = plot_load_curve(load.steps, "svg", title="load curve").decode("utf-8")
    def seconds_as_ms(value: Any) -> str:
        return "" if value is None else f"{float(value) * 1e3:.1f}"

    rows = [[e(step.get("clients")), seconds_as_ms(step.get("p50")), seconds_as_ms(step.get("p99")),
             e(step.get("requests_per_second")), e(step.get("failed")), e(step.get("threads") or ""),
             e(step.get("cpu_percent") or "")] for step in load.steps]
    return head + svg[svg.index("<svg"):] + _table(
        ["clients at once", "p50 (ms)", "p99 (ms)", "requests/s", "errors", "threads", "CPU %"], rows,
        numeric=set(range(7)))


def ms(timeline: Timeline, at: float | None) -> str:
    return "-" if at is None else f"{(at - timeline.began) * 1e3:.3f}"


def _table(head: list[str], rows: list[list[str]], numeric: set[int] | None = None) -> str:
    numeric = numeric or set()
    cells = "".join(f"<th>{e(name)}</th>" for name in head)
    body = "".join("<tr>" + "".join(f"<td class=\"n\">{cell}</td>" if index in numeric else f"<td>{cell}</td>"
                                    for index, cell in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"


def _links(timeline: Timeline) -> str:
    if not timeline.links:
        return "<p>No packet to the server was followed by the return of a waiting call.</p>"
    items = []
    for link in timeline.links:
        css = "woke" if link.woke else "late"
        items.append(f"<li class=\"{css}\">{e(link_sentence(timeline, link))}</li>")
    return "<ol>" + "".join(items) + "</ol>"


def _latencies(timeline: Timeline) -> str:
    found = timeline.latencies()
    if not found:
        if timeline.wake_ups:
            return (f"<p>{len(timeline.wake_ups)} wake-up(s), whose latency strace could only bound (its stopwatch "
                    "started late): see the links above.</p>")
        return "<p>No wake-up: no call was asleep when its packet came.</p>"
    rows = [[e(name), str(stats.count), f"{stats.median * 1e6:,.0f} µs", f"{stats.maximum * 1e6:,.0f} µs",
             f"{stats.minimum * 1e6:,.0f} µs", str(stats.bounded)] for name, stats in found.items()]
    return (_table(["waiting call", "wake-ups measured", "median", "max", "min", "only bounded"], rows, {1, 2, 3, 4, 5})
            + "<p>From the packet's timestamp to the call's return as strace saw it: the kernel waking the thread, "
              "and strace, which stops the thread at each syscall, noticing. A latency strace could only bound (its "
              "stopwatch started late on a busy machine) is counted apart.</p>")


def _threads(timeline: Timeline) -> str:
    rows = []
    for lane in timeline.lanes:
        began = "before the trace" if lane.existed else (
            f"{ms(timeline, lane.born)} ms, by thread {lane.parent}" if lane.born is not None else "?")
        ended = f"{ms(timeline, lane.ended)} ms: {e(lane.how_ended)}" if lane.ended is not None else "-"
        rows.append([e(lane.label), str(lane.pid), began, ended, str(len(lane.calls)),
                     f"{asleep_share(timeline, lane):.0%}"])
    return _table(["thread", "process", "began", "ended", "syscalls", "asleep"], rows, {1, 4, 5})


def _packets(timeline: Timeline) -> str:
    rows = [[ms(timeline, packet.time), "→ server" if packet.inbound else "← server", e(PACKET_WORDS[packet.kind]),
             e(packet.flags), str(packet.client_port), str(packet.length),
             f"<span class=\"mono\">{e(packet.payload[:64])}</span>"] for packet in timeline.packets]
    return _table(["at ms", "way", "kind", "flags", "client port", "bytes", "first bytes"], rows, {0, 4, 5})


def _calls(timeline: Timeline) -> str:
    rows = []
    for call in timeline.calls[:MAX_CALL_ROWS]:
        returned = "still running" if call.running_at_end else ms(timeline, call.returned)
        rows.append([ms(timeline, call.entered), returned, str(call.tid), f"<code>{e(call.name)}</code>",
                     f"<span class=\"mono\">{e(call.args[:160])}</span>", f"<code>{e(call.result[:80])}</code>"])
    more = (f"<p>{len(timeline.calls) - MAX_CALL_ROWS} more in the JSON.</p>"
            if len(timeline.calls) > MAX_CALL_ROWS else "")
    return (f"<details><summary>{len(timeline.calls)} syscalls, in the order they began</summary>"
            + _table(["entered ms", "returned ms", "thread", "syscall", "arguments", "result"], rows, {0, 1, 2})
            + more + "</details>")


# -- drawing --------------------------------------------------------------------------------------------

def bursts(timeline: Timeline) -> list[tuple[float, float]]:
    """Windows around the bursts of packets and the returns they caused (at most MAX_ZOOMS), with a margin."""
    returns = [latest_return(timeline.calls[link.call]) if link.bounded else timeline.calls[link.call].returned
               for link in timeline.links]
    times = sorted([packet.time for packet in timeline.packets] + [at for at in returns if at is not None])
    if not times:
        return []
    groups: list[list[float]] = [[times[0]]]
    for at in times[1:]:
        if at - groups[-1][-1] > BURST_GAP:
            groups.append([at])
        else:
            groups[-1].append(at)
    windows = []
    for group in groups[:MAX_ZOOMS]:
        start, end = group[0], group[-1]
        margin = max(0.0003, 0.15 * (end - start))
        windows.append((start - margin, end + margin))
    return windows


def merged(spans: list[tuple[float, float]], resolution: float) -> list[tuple[float, float]]:
    """(start, width) bars, those closer than `resolution` merged: a drawing holds at most about MARKS bars
    a lane, however many calls a busy server made (50,000 in a second of busy polling)."""
    out: list[tuple[float, float]] = []
    for start, width in sorted(spans):
        if out and start - (out[-1][0] + out[-1][1]) < resolution:
            first = out[-1][0]
            out[-1] = (first, max(out[-1][1], start + width - first))
        else:
            out.append((start, width))
    return out


def thinned(ticks: list[float], resolution: float) -> list[float]:
    """One tick per `resolution` at most (the same bound as merged())."""
    seen: set[int] = set()
    kept = []
    for at in sorted(ticks):
        slot = int(at / resolution) if resolution > 0 else 0
        if slot not in seen:
            seen.add(slot)
            kept.append(at)
    return kept


def drawn_lanes(timeline: Timeline) -> list[Lane]:
    """The lanes drawn: every thread, or the MAX_LANES busiest."""
    if len(timeline.lanes) <= MAX_LANES:
        return list(timeline.lanes)
    busiest = sorted(timeline.lanes, key=lambda lane: -len(lane.calls))[:MAX_LANES]
    return [lane for lane in timeline.lanes if lane in busiest]


def _kind_of(name: str) -> str | None:
    if name in syscalls.LOCKS:
        return "lock"
    if name in SLEEPING and family(name) is None:
        return "sleep"
    return family(name)


def _svg(timeline: Timeline, window: tuple[float, float] | None, title: str) -> str:
    import matplotlib
    from matplotlib.figure import Figure

    lanes = drawn_lanes(timeline)
    rows = {lane.tid: index + 1 for index, lane in enumerate(reversed(lanes))}
    packet_row = len(lanes) + 1
    start, end = window or (timeline.began, max(timeline.ended, timeline.began + 1e-3))

    def x(at: float) -> float:
        return (at - timeline.began) * 1e3

    with matplotlib.rc_context({"text.parse_math": False, "text.usetex": False, "svg.fonttype": "path",
                                "svg.hashsalt": "labctl-trace", "font.size": 8}):
        figure = Figure(figsize=(11, 1.2 + 0.45 * (len(lanes) + 1)))
        axes = figure.add_subplot()
        for lane in lanes:
            row = rows[lane.tid]
            first = max(lane.born or start, start) if not lane.existed else start
            last = min(lane.ended or end, end)
            axes.plot([x(first), x(last)], [row, row], color="#dddddd", linewidth=1, zorder=1)
            if lane.born is not None and start <= lane.born <= end:
                axes.plot([x(lane.born)], [row], marker="o", color="#444444", markersize=4, zorder=3)
            if lane.ended is not None and start <= lane.ended <= end:
                axes.plot([x(lane.ended)], [row], marker="x", color="#444444", markersize=5, zorder=3)
            bars: dict[str, list[tuple[float, float]]] = {}
            ticks: list[float] = []
            for index in lane.calls:
                call = timeline.calls[index]
                stop = call.returned if call.returned is not None else timeline.ended
                if stop < start or call.entered > end:
                    continue
                kind = _kind_of(call.name)
                if kind is None:
                    ticks.append(x(call.entered))
                else:
                    left = max(call.entered, start)
                    bars.setdefault(kind, []).append((x(left), max(x(min(stop, end)) - x(left), 0.0005)))
            resolution = (x(end) - x(start)) / MARKS
            for kind, spans in bars.items():
                axes.broken_barh(merged(spans, resolution), (row - 0.3, 0.6), facecolors=COLOURS[kind], zorder=2)
            if ticks:
                axes.vlines(thinned(ticks, resolution), row - 0.15, row + 0.15, colors="#333333", linewidth=0.5,
                            zorder=2)
        axes.axhline(packet_row, color="#dddddd", linewidth=1, zorder=1)
        marks: dict[tuple[str, bool], list[float]] = {}
        for packet in timeline.packets:
            if start <= packet.time <= end:
                marks.setdefault((packet.kind, packet.inbound), []).append(x(packet.time))
        for (kind, inbound), times in marks.items():
            axes.plot(times, [packet_row + (0.18 if inbound else -0.18)] * len(times), marker=">" if inbound else "<",
                      color=PACKET_COLOURS[kind], markersize=6 if kind != "ack" else 3, zorder=4, linestyle="none")
        labels = arrows = 0
        for link in timeline.links:
            if arrows >= MAX_ARROWS:
                break
            packet, call = timeline.packets[link.packet], timeline.calls[link.call]
            returned = latest_return(call) if link.bounded else call.returned
            if returned is None or link.tid not in rows or not (start <= packet.time <= end or start <= returned <= end):
                continue
            colour = "#1a7f37" if link.woke else "#d4a72c"
            arrows += 1
            axes.annotate("", xy=(x(returned), rows[link.tid]), xytext=(x(packet.time), packet_row),
                          arrowprops={"arrowstyle": "->", "color": colour, "linewidth": 0.8}, zorder=5)
            if link.woke and labels < MAX_LABELS and window is not None:
                labels += 1
                axes.text(x(returned), rows[link.tid] + 0.35, latency_words(link), fontsize=7, color=colour,
                          ha="left", va="bottom", zorder=6)
        axes.set_yticks([packet_row, *[rows[lane.tid] for lane in lanes]],
                        ["packets", *[printable(lane.label)[:40] for lane in lanes]])
        axes.set_ylim(0.3, packet_row + 0.8)
        axes.set_xlim(x(start), x(end))
        axes.set_xlabel("ms since the scenario began")
        axes.set_title(title, loc="left")
        handles = [matplotlib.patches.Patch(color=colour, label=word) for word, colour in
                   (("in accept", COLOURS["accept"]), ("in a receive", COLOURS["receive"]),
                    ("in poll/select/epoll", COLOURS["multiplexer"]), ("on a lock", COLOURS["lock"]),
                    ("packet woke it", "#1a7f37"), ("data was waiting", "#d4a72c"))]
        axes.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)
        figure.subplots_adjust(left=0.2, right=0.83, bottom=0.25 if len(lanes) < 3 else 0.12)
        buffer = io.StringIO()
        figure.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    text = buffer.getvalue()
    start_at = text.find("<svg")
    hidden = "" if len(timeline.lanes) == len(lanes) else (
        f"<p>{len(timeline.lanes) - len(lanes)} more threads are in the tables, not drawn.</p>")
    return f"<figure>{text[start_at:]}</figure>{hidden}"
