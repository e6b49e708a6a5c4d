"""One grading's evidence: for each check, what it saw, kept when it failed (labctl/grading.py calls this).

The order around one check (grading.Run and run_check):
    evidence = keeper.open(spec)       # None: nothing is kept for it (a hidden check in a student's view)
    evidence.begin(lab)                # before the check's clock starts: tcpdump listening (network checks)
    ... the check runs; a process check hands every window it judges to evidence.saw(...)
    result = evidence.close(result)    # after: tcpdump stopped; a failed check's files written, listed

Why it cannot change a verdict: the check gets its whole budget after `begin` (its deadline is set
then); the grading's budget does not count the time spent here (CheckEvidence.seconds); the observer's
looks it keeps are the very ones it judged (nothing more is read from the lab); tcpdump is outside the
server (in the client, in C, from the kernel's ring); and every trouble here (a capture that did not
start, a cap, a picture that could not be drawn) becomes a note in the result's `evidence_left_out`,
never an error of the check.

A student's view (`--student-view`, `labctl test`) keeps nothing of a hidden check: no capture runs
for it and no file names it, so an evidence folder a student's CI uploads cannot leak one.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from labctl.checks import REGISTRY
from labctl.checks.load import LOAD_CURVE_CHECK
from labctl.errors import LabctlError
from labctl.evidence import pcap, timeline
from labctl.evidence.capture import SNAPLEN, PacketCapture
from labctl.evidence.folder import EvidenceFolder, Full
from labctl.exercise import CheckSpec
from labctl.results import CheckResult, EvidenceFile, EvidenceKind

if TYPE_CHECKING:
    from labctl.lab import Lab
    from labctl.observe import Sample

#: The statuses whose evidence is kept (a graded check that did not pass; never a lesson or a check not run).
KEPT = frozenset({"failed", "timed_out", "error"})

WORDS = {"failed": "failed", "timed_out": "timed out", "error": "could not run"}


@dataclass
class Keeper:
    """The evidence of one grading, kept in `folder`."""

    folder: EvidenceFolder
    student_view: bool = False
    checks: int = 0
    _address: str | None = field(default=None, repr=False)

    def open(self, spec: CheckSpec) -> CheckEvidence | None:
        """What one check will see, or None when nothing of it may be kept. Files are numbered in the order of
        the checks that may keep some: in a student's view the numbers do not even say where a hidden check ran."""
        if self.student_view and spec.visibility == "hidden":
            return None
        self.checks += 1
        return CheckEvidence(self, self.checks, spec)

    def server_address(self, lab: Lab) -> str:
        """The server's address on the lab's network (what tcpdump filters on), asked of the engine once."""
        if self._address is None:
            address = lab.address(lab.spec.server.name)
            if not address:
                raise LabctlError("the server has no address on the lab's network")
            self._address = address
        return self._address


class CheckEvidence:
    """What one check saw: the windows of observer looks it judged, and the packet capture around it."""

    def __init__(self, keeper: Keeper, index: int, spec: CheckSpec):
        self.keeper, self.index, self.spec = keeper, index, spec
        self.proof = REGISTRY[spec.check].proof
        self.windows: list[tuple[str, Sample]] = []
        self.capture: PacketCapture | None = None
        self.notes: list[str] = []
        self.begun = False
        #: Seconds spent here, outside the check (the capture's start and stop, drawing, writing): the grading
        #: does not count them in its budget, so a check gets the same time with or without --evidence.
        self.seconds = 0.0
        self._lock = threading.Lock()

    # -- while the check runs ---------------------------------------------------------------------

    def begin(self, lab: Lab, budget: float) -> None:
        """Before the check's clock starts: the packet capture of a network check, listening."""
        self.begun = True
        started = time.monotonic()
        try:
            self._begin(lab, budget)
        finally:
            self.seconds += time.monotonic() - started

    def _begin(self, lab: Lab, budget: float) -> None:
        if "packets" not in self.proof:
            return
        if "raw_packets" not in lab.backend.offers():
            self.notes.append(f"no packets: the {lab.backend.name} backend shares the host's network, where "
                              "capturing would need root (`--backend docker` captures them)")
            return
        clients = lab.spec.nodes_by_role("client")
        if not clients:
            self.notes.append("no packets: lab.yaml has no client node to capture in")
            return
        try:
            self.capture = PacketCapture.start(lab, clients[0].name, self.keeper.server_address(lab), lab.server_port,
                                               tag=f"{self.index:02d}", seconds=budget,
                                               per_file=self.keeper.folder.per_file)
        except LabctlError as error:
            self.notes.append(f"no packets: {error}")
        except Exception as error:  # evidence only: whatever goes wrong here, the check runs as without it
            self.notes.append(f"no packets: the capture could not start ({type(error).__name__}: {error})")

    def saw(self, what: str, sample: Sample) -> None:
        """A window of observer looks the check judged (from its thread: CheckContext.saw)."""
        with self._lock:
            self.windows.append((what, sample))

    # -- after --------------------------------------------------------------------------------------

    def close(self, result: CheckResult) -> CheckResult:
        """Stop what runs; when the check failed, its evidence written and pointed at from its result. Never
        raises: evidence that cannot be kept is a note in the result, the verdict stays as it is."""
        if not self.begun:  # not run (unavailable, the server gone, the budget spent): nothing was seen
            return result
        started = time.monotonic()
        try:
            return self._close(result)
        except Exception as error:  # a bug in drawing or reading must not cost a verdict
            return result.model_copy(update={"evidence_left_out": [
                *self.notes, f"the evidence could not be kept: {type(error).__name__}: {error}"]})
        finally:
            self.seconds += time.monotonic() - started

    def _close(self, result: CheckResult) -> CheckResult:
        keep = result.graded and result.status in KEPT
        packets = self._stop_capture(keep)
        if not keep:
            return result
        files: list[EvidenceFile] = []
        if packets is not None:
            self._keep_packets(packets, files)
        with self._lock:
            windows = list(self.windows)
        if windows:
            self._keep_timeline(result, windows, files)
        if result.check == LOAD_CURVE_CHECK and result.evidence.get("steps"):
            self._keep_load_curve(result, files)
        if not windows and "threads" in self.proof:
            self.notes.append("no thread timeline: the check failed before the observer's looks were read")
        if not files and not self.notes:
            return result
        return result.model_copy(update={"evidence_files": files, "evidence_left_out": list(self.notes)})

    def _stop_capture(self, keep: bool) -> bytes | None:
        if self.capture is None:
            return None
        try:
            return self.capture.stop(keep)
        except Exception as error:  # LabctlError (the client gone, the harness failed) or worse: a note
            self.notes.append(f"no packets: {error}")
            return None

    def _write(self, kind: EvidenceKind, suffix: str, data: bytes, media_type: str, description: str,
               files: list[EvidenceFile]) -> None:
        try:
            files.append(self.keeper.folder.write(self.spec.name, self.index, kind, suffix, data, media_type,
                                                  description))
        except Full as full:
            self.notes.append(f"left out: {full}")
        except OSError as error:
            self.notes.append(f"left out: {description}: {error.strerror or error}")

    def _keep_packets(self, data: bytes, files: list[EvidenceFile]) -> None:
        capture = self.capture
        assert capture is not None
        read = pcap.read(data)
        cap = ""
        if capture.reached_cap or capture.facts.get("truncated") or not read.complete:
            cap = f"the capture stopped at its cap: the check's first {read.records} packets"
        if not read.records:
            self.notes.append("the capture holds no packet: the check sent nothing to the server, or tcpdump "
                              "was stopped before it had any")
        dropped = capture.facts.get("dropped")
        if dropped:
            cap += ("; " if cap else "") + f"the kernel dropped {dropped} packets before tcpdump read them"
        self._write("packets", "packets.pcap", data, "application/vnd.tcpdump.pcap",
                    f"the check's packets between the client and the server ({read.records} packets, the first "
                    f"{SNAPLEN} bytes of each; tcpdump in the client)", files)
        found = pcap.connections(read, capture.address, capture.port)
        table = pcap.table(found, read, capture.address, capture.port, cap_note=cap)
        self._write("connections", "connections.txt", table.encode(), "text/plain",
                    f"{len(found)} connection{'s' if len(found) != 1 else ''}: connect, first byte, last byte "
                    "and how each one ended", files)

    def _keep_load_curve(self, result: CheckResult, files: list[EvidenceFile]) -> None:
        """The curve a load_curve check judged: latency, throughput, threads and CPU at each step."""
        from labctl.load_plot import plot_load_curve

        steps = result.evidence["steps"]
        try:
            picture = plot_load_curve(steps, "png", title=f"{self.spec.name}: {WORDS.get(result.status, result.status)}")
        except Exception as error:  # evidence only: a picture that cannot be drawn never touches the verdict
            self.notes.append(f"no load curve picture: matplotlib could not draw it ({type(error).__name__}: {error})")
            return
        self._write("load-curve", "load-curve.png", picture, "image/png",
                    f"latency, throughput, threads and CPU at each of {len(steps)} steps of clients at once", files)

    def _keep_timeline(self, result: CheckResult, windows: list[tuple[str, Sample]],
                       files: list[EvidenceFile]) -> None:
        drawn = timeline.timeline(self.spec.name, windows)
        names = "; ".join(label for label, _ in windows)
        title = (f"{self.spec.name} ({self.spec.check}) {WORDS.get(result.status, result.status)}: the server's "
                 f"threads at each of the observer's {drawn.looks} looks")
        try:
            picture = timeline.render_png(drawn, title)
        except Exception as error:  # evidence only: a picture that cannot be drawn never touches the verdict
            self.notes.append(f"no picture: matplotlib could not draw it ({type(error).__name__}: {error})")
        else:
            self._write("threads-picture", "threads.png", picture, "image/png",
                        f"the server's threads at each look ({len(drawn.lanes)} thread"
                        f"{'s' if len(drawn.lanes) != 1 else ''}; {names})", files)
        data = b""
        for looks in (timeline.MAX_LOOKS, 200, 60, 20):  # fewer looks per window until the file fits its cap
            samples: dict[str, Any] = timeline.samples_json(drawn, windows, max_looks=looks)
            data = (json.dumps(samples, separators=(",", ":")) + "\n").encode()
            if len(data) <= self.keeper.folder.per_file:
                break
        self._write("threads-samples", "threads.json", data, "application/json",
                    f"the observer's looks the picture was drawn from ({names})", files)
