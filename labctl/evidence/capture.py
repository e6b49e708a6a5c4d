"""tcpdump in the client around one network check: started before the check's clock starts, stopped
after it ended, its file brought back only when the check failed (harness/packets.py runs it).

Bounded: SNAPLEN bytes of each packet (every header, the start of each payload: a request line, a
status line), at most `packets_for(per_file)` packets so the file fits its cap by construction (and
is cut again on the host, at a record's edge, whatever came back), and `timeout` in the container
for the check's budget and a margin. Nothing here can fail a check: a capture that cannot start or
stop is a note in the result (`evidence_left_out`), the check runs as it would without it.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

from labctl.errors import LabctlError
from labctl.evidence import pcap

#: Bytes of each packet kept.
SNAPLEN = 256
#: Seconds tcpdump lives past the check's budget if nobody stops it (a labctl killed mid-check).
MARGIN = 30.0
#: Seconds the host waits for each of the two harness commands.
START_TIMEOUT, STOP_TIMEOUT = 10.0, 20.0
#: Where the capture is written in the client (a memory-backed folder of the node's own).
FOLDER = "/tmp"


def packets_for(per_file: int, snaplen: int = SNAPLEN) -> int:
    """The most packets whose pcap (header, records of at most `snaplen` bytes) fits in `per_file` bytes."""
    return max(1, (per_file - pcap.FILE_HEADER) // (pcap.RECORD_HEADER + snaplen))


@dataclass
class PacketCapture:
    """One running capture, for one check."""

    lab: Any
    node: str
    address: str
    port: int
    file: str
    pid: int
    max_packets: int
    per_file: int
    facts: dict = field(default_factory=dict)

    @classmethod
    def start(cls, lab, node: str, address: str, port: int, tag: str, seconds: float,
              per_file: int) -> PacketCapture:
        """tcpdump listening in `node` for the packets to and from `address`:`port`; LabctlError when it is not."""
        file = f"{FOLDER}/labctl-evidence-{tag}.pcap"
        most = packets_for(per_file)
        answer = lab.harness(node, "tcpdump_start", {"address": address, "port": port, "file": file,
                                                     "snaplen": SNAPLEN, "max_packets": most,
                                                     "seconds": seconds + MARGIN}, timeout=START_TIMEOUT)
        if not answer.get("listening"):
            why = str(answer.get("error") or "no reason given").strip().splitlines()[-1][:300]
            hint = (" (the client node needs the SETGID capability beside NET_RAW: lab.yaml, "
                    "nodes.<client>.capabilities)" if "Couldn't change" in why else "")
            raise LabctlError(f"tcpdump did not start in {node}: {why}{hint}")
        return cls(lab, node, address, port, file, int(answer["pid"]), most, per_file)

    def stop(self, keep: bool) -> bytes | None:
        """Stop the capture; its pcap (cut to whole records within the cap) when `keep`. LabctlError when the
        harness could not say."""
        answer = self.lab.harness(self.node, "tcpdump_stop", {"pid": self.pid, "file": self.file, "keep": keep,
                                                              "max_bytes": self.per_file}, timeout=STOP_TIMEOUT)
        if "error" in answer and "pcap_base64" not in answer:
            raise LabctlError(f"the capture in {self.node} could not be read back: {answer['error']}")
        self.facts = {key: answer.get(key) for key in ("captured", "dropped", "bytes", "truncated", "stopped")}
        if not keep:
            return None
        data = base64.b64decode(answer.get("pcap_base64") or "")
        return pcap.cut(data, self.per_file)

    @property
    def reached_cap(self) -> bool:
        """tcpdump stopped at its packet count: the capture holds the check's first packets only."""
        return bool(self.facts.get("captured") is not None and self.facts["captured"] >= self.max_packets)
