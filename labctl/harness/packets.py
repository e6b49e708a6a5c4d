"""A bounded packet capture around one check, in the client: tcpdump started before, stopped after.

`labctl grade --evidence` keeps the packets of a failed network check (labctl/evidence/capture.py).
tcpdump captures in C from the kernel's ring (TPACKET_V3), so the client's own work -- the check --
is not slowed by it, as a Python sniffer would be. It is bounded three ways from here: its snaplen
(the headers and the first bytes of each payload), its packet count (-c: the file cannot pass
24 + count * (16 + snaplen) bytes), and `timeout` (it ends on its own if nobody stops it).

--immediate-mode hands each packet to tcpdump as it comes (-U writes it at once): without it the kernel
holds packets in a block for up to a second, and a check shorter than that, stopped by SIGINT, left an
empty file.

tcpdump changes its user as it starts (to "tcpdump", or to root with -Z root); even to root it
re-sets its groups, which needs CAP_SETGID beside CAP_NET_RAW (lab.yaml gives the client both).
Without it tcpdump stops at once, and `tcpdump_start` says so: the check runs all the same.

Stdlib only; runs inside the client container.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import time

from .wire import TcpdumpStarted, TcpdumpStopped

#: Seconds tcpdump is given to open its capture ("listening on ...").
READY = 3.0
#: Seconds tcpdump is given to write its last packets and exit once asked.
STOP = 3.0
#: The most of tcpdump's own messages reported.
LOG_SHOWN = 600


def _log_text(path: str) -> str:
    try:
        with open(path, "rb") as handle:
            return handle.read(64 * 1024).decode(errors="replace")
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    """The process runs (a zombie does not: docker-init reaps it a moment later)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read().decode(errors="replace")
    except OSError:
        return False
    return stat[stat.rfind(")") + 2:][:1] not in ("Z", "X", "")


def _ours(pid: int, file: str) -> bool:
    """Process `pid` is the capture that writes `file` (a pid is never signalled on trust: it may be reused)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            words = handle.read().split(b"\0")
    except OSError:
        return False
    return file.encode() in words and any(word.endswith(b"tcpdump") for word in words)


def tcpdump_start(address: str, port: int, file: str, snaplen: int = 256, max_packets: int = 1000,
                  seconds: float = 60.0, iface: str = "eth0") -> TcpdumpStarted:
    """Start tcpdump on `iface` for the TCP packets between this node and `address`:`port`, into `file`.

    Returns once it listens (or has failed): a packet the check sends after this is captured."""
    for stale in (file, file + ".log"):
        if os.path.exists(stale):
            os.unlink(stale)
    command = ["timeout", "-s", "INT", f"{max(1.0, seconds):.0f}",
               "tcpdump", "-i", iface, "-Z", "root", "-n", "-U", "--immediate-mode", "-s", str(int(snaplen)),
               "-c", str(int(max_packets)), "-w", file, f"tcp and host {address} and port {int(port)}"]
    with open(file + ".log", "wb") as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                                   start_new_session=True)
    started = time.monotonic()
    while time.monotonic() - started < READY:
        text = _log_text(file + ".log")
        if "listening on" in text:
            return {"listening": True, "pid": process.pid, "file": file,
                    "ready_seconds": round(time.monotonic() - started, 4)}
        if process.poll() is not None:
            break
        time.sleep(0.01)
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(STOP)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if os.path.exists(file):
        os.unlink(file)
    text = _log_text(file + ".log").strip()
    os.unlink(file + ".log")
    return {"listening": False, "exit_code": process.returncode, "error": text[-LOG_SHOWN:] or "no message"}


def _count(text: str, what: str) -> int | None:
    match = re.search(rf"(\d+) packets? {what}", text)
    return int(match.group(1)) if match else None


def tcpdump_stop(pid: int, file: str, keep: bool = False, max_bytes: int = 2 * 2**20) -> TcpdumpStopped:
    """Stop the capture `tcpdump_start` began, and give its file back (base64, at most `max_bytes`) when
    `keep`; the file goes either way."""
    stopped = False
    if _ours(pid, file):
        os.kill(pid, signal.SIGINT)  # `timeout` hands it on to tcpdump, which writes the rest and exits
        until = time.monotonic() + STOP
        while _alive(pid) and time.monotonic() < until:
            time.sleep(0.02)
        if _alive(pid) and _ours(pid, file):
            os.kill(pid, signal.SIGKILL)
        stopped = True
    log = _log_text(file + ".log")
    facts: TcpdumpStopped = {"stopped": stopped, "captured": _count(log, "captured"),
                             "dropped": _count(log, "dropped by kernel"), "bytes": 0, "truncated": False}
    try:
        facts["bytes"] = os.path.getsize(file)
        if keep:
            with open(file, "rb") as handle:
                data = handle.read(max_bytes)
            facts["truncated"] = facts["bytes"] > len(data)
            facts["pcap_base64"] = base64.b64encode(data).decode()
    except OSError as error:
        facts["error"] = f"{type(error).__name__}: {error}"
    for path in (file, file + ".log"):
        if os.path.exists(path):
            os.unlink(path)
    return facts


COMMANDS = {"tcpdump_start": tcpdump_start, "tcpdump_stop": tcpdump_stop}
