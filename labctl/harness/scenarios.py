"""In the client: play a scenario against the server while capturing its packets (`labctl trace`).

A scenario is a few requests made in a way that shows how the server waits:
- "one": one client, one request;
- "slow-client": one client that sends its request in pieces, with pauses between them (each piece
  wakes a server that waits for it);
- "concurrent": several clients at once (a blocking server serves them one after the other, a
  thread per client or an event loop serves them together).

Before the scenario, one plain request warms the server up: a thread asleep when strace attached
is in a call strace restarted, whose timing strace cannot give well (labctl/trace/timeline.py), and
the warm-up ends those calls, so the scenario finds every thread in a call strace saw begin. The
warm-up also proves that the capture's timestamps are the kernel's (play_scenario). Its packets are
not reported.

The requests go through the harness's one HTTP client (client.exchange). The packets are captured
here with scapy (NET_RAW), each with the kernel's timestamp of it (wall clock: the clock strace
stamps the server's syscalls with, see harness/tracer.py), its addresses, flags, sequence numbers,
and its payload's size and first bytes. Bounded: at most `max_packets` packets, every exchange
within `timeout`.
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
#: Seconds after a warm-up's answer: the server back in its wait, its last packets captured.
SETTLE = 0.1
#: The most warm-up requests made before the capture's timestamps hold.
WARM_UPS = 10
#: Seconds a warm-up waits for the server's answer.
WARM_UP_WAIT = 2.0
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
    """Capture the packets to and from host:port while the scenario plays; answer both.

    The capture starts first, then the warm-up request (see the module's docstring), whose packets
    also prove the capture's timestamps are the kernel's: its SYN stamped after connect() began and
    its SYN-ACK before connect() returned. A packet the kernel did not stamp on its way (the stamping
    is switched on for the whole host a moment after a capture asks, later on a busy machine) is
    stamped when the capture reads it, late; so the warm-up is made again until its stamps hold
    (WARM_UPS at most; `stamped` says whether they did). Its packets are not reported."""
    address, problem = client.resolve(host, 5.0)
    if address is None:
        raise OSError(f"cannot resolve {host!r}: {problem}")
    conf, IP, TCP, AsyncSniffer = _scapy()
    limit = max(1, min(int(max_packets), MAX_PACKETS))
    seen: list[TracePacket] = []
    lock = threading.Lock()

    def keep(packet) -> None:
        found = _packet(packet, IP, TCP)
        with lock:
            if found is not None and len(seen) < limit:
                seen.append(found)

    ready = threading.Event()
    sniffer = AsyncSniffer(iface=iface, filter=f"tcp and host {address} and port {int(port)}", store=False,
                           prn=keep, started_callback=ready.set)
    sniffer.start()
    try:
        if not ready.wait(10.0):
            raise OSError("the packet capture did not start within 10 s")
        request = client.get_request(path, address)
        warm_ups: list[dict] = []
        stamped = False
        give_up = time.monotonic() + 2 * timeout  # a server that never answers: the scenario still runs
        for _ in range(WARM_UPS):
            facts = _warm_up(address, port, request, min(timeout, WARM_UP_WAIT))
            time.sleep(SETTLE)
            with lock:
                stamped = _stamps_hold(facts, seen, address, port)
            warm_ups.append(facts)
            if stamped or "connected_at" not in facts or time.monotonic() >= give_up:
                break
        began = time.time()
        exchanges = play(address, port, scenario, path, clients, pieces, pause, timeout)
        ended = time.time()
        time.sleep(TAIL)
    finally:
        try:
            sniffer.stop(join=True)
        except Exception:  # a sniffer that never started: nothing to stop
            pass
    with lock:
        packets = sorted((packet for packet in seen if packet["time"] >= began), key=lambda packet: packet["time"])
        full = len(seen) >= limit
    return {"scenario": scenario, "server": address, "port": int(port), "client": _own_address(address),
            "began": began, "ended": ended, "warm_ups": warm_ups, "stamped": stamped, "exchanges": exchanges,
            "packets": packets, "truncated": full}


def _warm_up(address: str, port: int, request: bytes, timeout: float) -> dict:
    """One whole request on a connection whose local port is noted, with the wall-clock times of its connect."""
    import socket

    facts: dict = {"connect_began": time.time()}
    deadline = time.monotonic() + timeout
    try:
        with socket.create_connection((address, port), timeout=timeout) as sock:
            facts["connected_at"] = time.time()
            facts["port"] = sock.getsockname()[1]
            sock.sendall(request)
            while time.monotonic() < deadline:
                sock.settimeout(max(0.05, deadline - time.monotonic()))
                if not sock.recv(65536):
                    break
    except OSError as error:
        facts["error"] = client.error_text(error)
    return facts


def _stamps_hold(facts: dict, seen: list[TracePacket], address: str, port: int) -> bool:
    """Were the warm-up's SYN and SYN-ACK stamped between the start and the end of its connect()?"""
    local = facts.get("port")
    if local is None or "connected_at" not in facts:
        return False
    syn = next((packet for packet in seen if packet["flags"] == "S" and packet["sport"] == local), None)
    synack = next((packet for packet in seen if packet["flags"] == "SA" and packet["dport"] == local
                   and packet["src"] == address), None)
    return (syn is not None and synack is not None
            and facts["connect_began"] <= syn["time"] <= synack["time"] <= facts["connected_at"])


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
