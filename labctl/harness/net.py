"""Network-side measurements made from the client/injector container."""

from __future__ import annotations

import socket
import time

from .wire import WaitListening


def wait_listening(host: str, port: int, timeout: float = 1.0, interval: float = 0.02) -> WaitListening:
    """Try to connect until one succeeds or `timeout` passes.

    Used by `labctl up` to know when the server is ready: a refused connection is
    retried every `interval` s, so readiness is seen within tens of milliseconds.
    """
    deadline = time.monotonic() + timeout
    attempts = 0
    last_error = ""
    while True:
        attempts += 1
        try:
            with socket.create_connection((host, port), timeout=max(0.05, deadline - time.monotonic())):
                return {"listening": True, "attempts": attempts}
        except OSError as error:
            last_error = f"{type(error).__name__}: {error}"
        if time.monotonic() + interval >= deadline:
            return {"listening": False, "attempts": attempts, "last_error": last_error}
        time.sleep(interval)


def capture(seconds: float = 10.0, packet_filter: str = "tcp port 8080", iface: str = "eth0",
            max_packets: int = 20000) -> dict:
    """Capture packets on this container's interface for `seconds`: a pcap, base64 in JSON.

    scapy sniffs (NET_RAW; libpcap applies the filter) rather than tcpdump, which wants
    to drop to its own user and so needs capabilities the lab does not give.
    """
    import base64
    import io

    from scapy.all import sniff
    from scapy.utils import PcapWriter

    packets = sniff(iface=iface, filter=packet_filter or None, timeout=seconds, count=max_packets, store=True)
    buffer = io.BytesIO()
    writer = PcapWriter(buffer, sync=True)
    writer.write(list(packets))
    writer.flush()
    return {"packets": len(packets), "truncated": len(packets) >= max_packets,
            "pcap_base64": base64.b64encode(buffer.getvalue()).decode()}


COMMANDS = {"wait_listening": wait_listening, "capture": capture}
