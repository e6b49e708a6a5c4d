"""In the client: play a scenario against the server while capturing its packets (`labctl trace`).

A scenario is a few requests made in a way that shows how the server waits:
- "one": one client, one request;
- "slow-client": one client that sends its request in pieces, with pauses between them (each piece
  wakes a server that waits for it);
- "concurrent": several clients at once (a blocking server serves them one after the other, a
  thread per client or an event loop serves them together).

Before the scenario, one plain request warms the server up, its packets not captured: a thread
asleep when strace attached is in a call strace restarted, whose timing strace cannot give well
(labctl/trace/timeline.py), and the warm-up ends those calls; the scenario then finds every thread
in a call strace saw begin. Every request goes through the harness's one HTTP client
(client.exchange). The packets are captured here, with scapy (NET_RAW), from before the first
SYN until a moment after the last answer; each is reported with the kernel's timestamp of it (wall clock, the clock strace stamps
the server's syscalls with: see harness/tracer.py), its addresses, flags, and its payload's size
and first bytes. Bounded: at most `max_packets` packets, every exchange within `timeout`.
"""

from __future__ import annotations

import threading
import time

from . import client
from .raw import _scapy
from .wire import Exchange, ScenarioRun, TracePacket

#: The scenarios, one word each (the host's `labctl trace --scenario` offers these).
SCENARIOS = ("one", "slow-client", "concurrent")
#: Bytes of each packet's payload reported (a request line, a status line).
PAYLOAD_SHOWN = 64
#: The most packets kept.
MAX_PACKETS = 5000
#: Seconds the capture goes on after the last answer: the server's last packets (FIN, ACK).
TAIL = 0.3
#: Seconds between the warm-up's answer and the capture: the server back in its wait.
SETTLE = 0.1
#: TCP flag bits, in the order tcpdump writes them.
_FLAGS = (("F", 0x01), ("S", 0x02), ("R", 0x04), ("P", 0x08), ("A", 0x10), ("U", 0x20))


def flags_word(bits: int) -> str:
    """TCP flags as letters: "S", "SA", "PA", "FA", "R"... (scapy's order, never the server's words)."""
    return "".join(letter for letter, bit in _FLAGS if bits & bit)


def _pieces(data: bytes, count: int) -> list[bytes]:
    """`data` cut into `count` pieces of about equal size (the last one ends the request)."""
    count = max(1, min(int(count), len(data)))
    size = -(-len(data) // count)
    return [data[index:index + size] for index in range(0, len(data), size)]


def play(address: str, port: int, scenario: str, path: str = "/", clients: int = 4, pieces: int = 4,
         pause: float = 0.25, timeout: float = 5.0) -> list[Exchange]:
    """The scenario's exchanges, each with "started_at" (wall clock) and "client" (its number)."""
    request = client.get_request(path, address)
    if scenario not in SCENARIOS:
        raise ValueError(f"no scenario {scenario!r}; known: {', '.join(SCENARIOS)}")
    if scenario == "one":
        plans: list[dict] = [{}]
    elif scenario == "slow-client":
        plans = [{"pieces": _pieces(request, pieces), "delay": max(0.0, min(float(pause), 2.0)), "nodelay": True}]
    else:
        plans = [{} for _ in range(max(1, min(int(clients), 32)))]
    results: list[Exchange | None] = [None] * len(plans)
    start = threading.Barrier(len(plans))

    def one(number: int, plan: dict) -> None:
        try:
            start.wait(timeout)
        except threading.BrokenBarrierError:
            pass
        began = time.time()
        facts = client.exchange(address, port, request, timeout, max_body=0, **plan)
        results[number] = {**facts, "client": number, "started_at": began}

    workers = [threading.Thread(target=one, args=(number, plan), daemon=True) for number, plan in enumerate(plans)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout + 10 * len(plans) * max(0.0, float(pause)) + 5)
    return [facts for facts in results if facts is not None]


def _packet(packet, IP, TCP) -> TracePacket | None:
    if IP not in packet or TCP not in packet:
        return None
    segment = packet[TCP]
    payload = bytes(segment.payload)
    return {"time": float(packet.time), "src": packet[IP].src, "dst": packet[IP].dst, "sport": int(segment.sport),
            "dport": int(segment.dport), "flags": flags_word(int(segment.flags)), "seq": int(segment.seq),
            "ack": int(segment.ack), "length": len(payload),
            "payload": payload[:PAYLOAD_SHOWN].decode("latin-1")}


def play_scenario(host: str, port: int, scenario: str = "one", path: str = "/", clients: int = 4, pieces: int = 4,
                  pause: float = 0.25, timeout: float = 5.0, iface: str = "eth0",
                  max_packets: int = MAX_PACKETS) -> ScenarioRun:
    """Capture the packets to and from host:port while the scenario plays; answer both."""
    address, problem = client.resolve(host, 5.0)
    if address is None:
        raise OSError(f"cannot resolve {host!r}: {problem}")
    warm_up = client.exchange(address, port, client.get_request(path, address), timeout, max_body=0)
    time.sleep(SETTLE)
    conf, IP, TCP, AsyncSniffer = _scapy()
    ready = threading.Event()
    sniffer = AsyncSniffer(iface=iface, filter=f"tcp and host {address} and port {int(port)}", store=True,
                           count=max(1, min(int(max_packets), MAX_PACKETS)), started_callback=ready.set)
    sniffer.start()
    if not ready.wait(10.0):
        sniffer.stop()
        raise OSError("the packet capture did not start within 10 s")
    began = time.time()
    exchanges = play(address, port, scenario, path, clients, pieces, pause, timeout)
    ended = time.time()
    time.sleep(TAIL)
    try:
        captured = sniffer.stop(join=True) or []
    except Exception:  # a sniffer that stopped on its own (its count reached) has nothing more to give
        captured = sniffer.results or []
    packets = [found for found in (_packet(packet, IP, TCP) for packet in captured) if found is not None]
    return {"scenario": scenario, "server": address, "port": int(port), "client": _own_address(address),
            "began": began, "ended": ended, "warm_up": warm_up, "exchanges": exchanges, "packets": packets,
            "truncated": len(captured) >= max_packets}


def _own_address(server: str) -> str | None:
    """This container's address toward the server (the source of the packets it sends)."""
    import socket

    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((server, 9))
            return probe.getsockname()[0]
    except OSError:
        return None


COMMANDS = {"play_scenario": play_scenario}
