"""A failed network check's packets: the pcap file read on the host, cut to a size, and its connections
as a timing table (connect, first byte, last byte, how each one ended).

Read with the standard library (struct), never with scapy: the host side of labctl needs no raw-packet
library, and this reader is small enough to be bounded by construction. The file comes from tcpdump in
the client, but its payloads are the server's bytes: nothing here shows them, only counts them; a
record that does not fit what its header says ends the reading (never an exception to the grading).

How a connection ended is said in the harness's words (labctl/harness/wire.py, Ending) where the wire
tells the same thing a client does -- refused, connect-timeout, closed, reset: the server's doing --
and in words of its own for what only a capture shows: the client ended it, or it was still open.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from labctl.harness.wire import ENDING_WORDS

#: The pcap file header and a record header (libpcap's format; tcpdump -w writes it).
FILE_HEADER = 24
RECORD_HEADER = 16
_MAGICS = {b"\xd4\xc3\xb2\xa1": ("<", 1e-6), b"\xa1\xb2\xc3\xd4": (">", 1e-6),
           b"\x4d\x3c\xb2\xa1": ("<", 1e-9), b"\xa1\xb2\x3c\x4d": (">", 1e-9)}
#: Link types read: Ethernet (a container's eth0), Linux cooked capture (any), raw IPv4.
ETHERNET, LINUX_SLL, RAW_IP = 1, 113, 101

FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10

#: How a connection ended, seen on the wire: wire.Ending's words where a client would say the same.
ENDED_WORDS: dict[str, str] = {
    "refused": ENDING_WORDS["refused"],                    # RST to the SYN
    "connect-timeout": "no answer to its SYN",             # what a client then reports as connect-timeout
    "closed": ENDING_WORDS["closed"],                      # the server's FIN first
    "reset": ENDING_WORDS["reset"],                        # the server's RST
    "client-closed": "closed by the client",               # the client's FIN first (its answer was whole, or it
    "client-reset": "reset by the client",                 #  gave up: the first/last byte columns tell which)
    "open": "still open when the check ended",
}
#: The most connections a table lists (every one is still counted).
TABLE_ROWS = 1000


@dataclass(frozen=True)
class Packet:
    """One TCP segment of the capture: when, between whom, its flags and how many payload bytes."""

    at: float
    src: str
    sport: int
    dst: str
    dport: int
    flags: int
    payload: int


@dataclass(frozen=True)
class Capture:
    """A pcap file's packets (TCP over IPv4; the rest is skipped) and what its header says."""

    packets: tuple[Packet, ...]
    records: int                     # every record in the file
    snaplen: int
    complete: bool                   # False: the file ended inside a record (cut, or damaged)


def _header(data: bytes) -> tuple[str, float, int, int] | None:
    if len(data) < FILE_HEADER or data[:4] not in _MAGICS:
        return None
    endian, unit = _MAGICS[data[:4]]
    snaplen, linktype = struct.unpack(endian + "II", data[16:24])
    return endian, unit, snaplen, linktype


def records(data: bytes) -> tuple[list[tuple[float, bytes]], bool]:
    """(time, captured bytes) of every whole record, and whether the file ended on a record's edge."""
    header = _header(data)
    if header is None:
        return [], False
    endian, unit, snaplen, _ = header
    found: list[tuple[float, bytes]] = []
    offset = FILE_HEADER
    while offset + RECORD_HEADER <= len(data):
        seconds, fraction, caplen, _ = struct.unpack(endian + "IIII", data[offset:offset + RECORD_HEADER])
        end = offset + RECORD_HEADER + caplen
        if caplen > max(snaplen, 1) + 64 * 1024 or end > len(data):
            return found, False
        found.append((seconds + fraction * unit, data[offset + RECORD_HEADER:end]))
        offset = end
    return found, offset == len(data)


def cut(data: bytes, most: int) -> bytes:
    """The pcap with as many whole records as fit in `most` bytes (b"" when not even its header does)."""
    if len(data) <= most:
        return data
    if most < FILE_HEADER or _header(data) is None:
        return b""
    endian = _MAGICS[data[:4]][0]
    offset = FILE_HEADER
    while offset + RECORD_HEADER <= len(data):
        caplen = struct.unpack(endian + "I", data[offset + 8:offset + 12])[0]
        end = offset + RECORD_HEADER + caplen
        if end > most:
            break
        offset = end
    return data[:offset]


def _ipv4(frame: bytes, linktype: int) -> bytes | None:
    if linktype == ETHERNET:
        if len(frame) < 14:
            return None
        kind, start = struct.unpack("!H", frame[12:14])[0], 14
        if kind == 0x8100 and len(frame) >= 18:  # a VLAN tag
            kind, start = struct.unpack("!H", frame[16:18])[0], 18
        return frame[start:] if kind == 0x0800 else None
    if linktype == LINUX_SLL:
        return frame[16:] if len(frame) >= 16 and struct.unpack("!H", frame[14:16])[0] == 0x0800 else None
    if linktype == RAW_IP:
        return frame if frame[:1] and frame[0] >> 4 == 4 else None
    return None


def _segment(at: float, ip: bytes) -> Packet | None:
    if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 6:
        return None
    ihl = (ip[0] & 0x0F) * 4
    total = struct.unpack("!H", ip[2:4])[0]
    if ihl < 20 or len(ip) < ihl + 14:
        return None
    tcp = ip[ihl:]
    sport, dport = struct.unpack("!HH", tcp[:4])
    offset = (tcp[12] >> 4) * 4
    payload = max(0, total - ihl - offset)  # from the headers: a snaplen keeps only the first bytes
    return Packet(at=at, src=".".join(str(b) for b in ip[12:16]), sport=sport,
                  dst=".".join(str(b) for b in ip[16:20]), dport=dport, flags=tcp[13], payload=payload)


def read(data: bytes) -> Capture:
    """The TCP/IPv4 packets of a pcap file, in its order."""
    header = _header(data)
    if header is None:
        return Capture((), 0, 0, False)
    linktype = header[3]
    found, complete = records(data)
    packets = []
    for at, frame in found:
        ip = _ipv4(frame, linktype)
        segment = _segment(at, ip) if ip is not None else None
        if segment is not None:
            packets.append(segment)
    return Capture(tuple(packets), len(found), header[2], complete)


# -- connections ----------------------------------------------------------------------------------

@dataclass
class Connection:
    """One client connection to the server, as its packets tell it (times: seconds on the capture's clock)."""

    client: str                      # address:port of the client's side
    first_seen: float
    syns: int = 0                    # SYNs the client sent (more than one: the kernel sent it again)
    syn_at: float | None = None
    synack_at: float | None = None
    first_byte_at: float | None = None
    last_byte_at: float | None = None
    sent: int = 0                    # payload bytes client -> server
    received: int = 0                # payload bytes server -> client
    ended: str = "open"              # a key of ENDED_WORDS
    ended_at: float | None = None
    segments: int = 0
    _server_fin: bool = field(default=False, repr=False)

    @property
    def start(self) -> float:
        return self.syn_at if self.syn_at is not None else self.first_seen

    def since_start(self, moment: float | None) -> float | None:
        return None if moment is None else moment - self.start


def connections(capture: Capture, server: str, port: int) -> list[Connection]:
    """Every connection between a client and `server`:`port` in the capture, in the order they began."""
    current: dict[tuple[str, int], Connection] = {}
    every: list[Connection] = []
    for packet in capture.packets:
        if packet.dst == server and packet.dport == port:
            key, inbound = (packet.src, packet.sport), True
        elif packet.src == server and packet.sport == port:
            key, inbound = (packet.dst, packet.dport), False
        else:
            continue
        connection = current.get(key)
        fresh_syn = inbound and packet.flags & SYN and not packet.flags & ACK
        if connection is None or (fresh_syn and connection.ended not in ("open", "connect-timeout")):
            # A new connection (or the client's port used again once the one before ended).
            connection = current[key] = Connection(client=f"{key[0]}:{key[1]}", first_seen=packet.at)
            every.append(connection)
        _account(connection, packet, inbound)
    return sorted(every, key=lambda connection: connection.start)


def _account(connection: Connection, packet: Packet, inbound: bool) -> None:
    """One packet's part in its connection's story."""
    connection.segments += 1
    flags = packet.flags
    if inbound:
        if flags & SYN and not flags & ACK:
            connection.syns += 1
            if connection.syn_at is None:
                connection.syn_at = packet.at
                connection.ended = "connect-timeout"  # until the server answers
        connection.sent += packet.payload
        if connection.ended in ("open", "connect-timeout") and connection.synack_at is not None:
            if flags & RST:
                connection.ended, connection.ended_at = "client-reset", packet.at
            elif flags & FIN:
                connection.ended, connection.ended_at = "client-closed", packet.at
        return
    if flags & SYN and flags & ACK and connection.synack_at is None:
        connection.synack_at = packet.at
        if connection.ended == "connect-timeout":
            connection.ended = "open"
    if packet.payload:
        connection.received += packet.payload
        if connection.first_byte_at is None:
            connection.first_byte_at = packet.at
        connection.last_byte_at = packet.at
    if connection.ended in ("open", "connect-timeout"):
        if flags & RST:
            connection.ended = "refused" if connection.synack_at is None else "reset"
            connection.ended_at = packet.at
        elif flags & FIN:
            connection.ended, connection.ended_at = "closed", packet.at


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.3f} s"


def table(found: list[Connection], capture: Capture, server: str, port: int, *, rows: int = TABLE_ROWS,
          cap_note: str = "") -> str:
    """The connections as a fixed-width text table for people: when each began (from the first packet),
    how long its handshake took, its first and last byte from the server (from its SYN), bytes each way,
    how it ended. Every value is labctl's own text: no byte of a payload is in it."""
    origin = capture.packets[0].at if capture.packets else 0.0
    head = (f"{'#':>4}  {'client':<21} {'start':>10} {'SYNs':>4} {'connect':>10} {'first byte':>11} "
            f"{'last byte':>11} {'sent':>8} {'received':>9}  ended")
    lines = [f"connections to {server}:{port}: {len(found)} in {capture.records} packets"
             + (f" ({cap_note})" if cap_note else ""),
             "times: start from the capture's first packet; connect, first byte, last byte and the end from "
             "each connection's SYN", "", head]
    for number, connection in enumerate(found[:rows], start=1):
        ended = ENDED_WORDS[connection.ended]
        if connection.ended_at is not None:
            ended += f" at {_ms(connection.since_start(connection.ended_at))}"
        lines.append(f"{number:>4}  {connection.client:<21} {_ms(connection.start - origin):>10} "
                     f"{connection.syns:>4} {_ms(connection.since_start(connection.synack_at)):>10} "
                     f"{_ms(connection.since_start(connection.first_byte_at)):>11} "
                     f"{_ms(connection.since_start(connection.last_byte_at)):>11} {connection.sent:>8} "
                     f"{connection.received:>9}  {ended}")
    if len(found) > rows:
        lines.append(f"... and {len(found) - rows} more connections (the pcap has them)")
    counts: dict[str, int] = {}
    for connection in found:
        counts[connection.ended] = counts.get(connection.ended, 0) + 1
    if counts:
        lines += ["", "ended: " + ", ".join(f"{count} {ENDED_WORDS[key]}" for key, count in
                                            sorted(counts.items(), key=lambda item: -item[1]))]
    retried = sum(1 for connection in found if connection.syns > 1)
    if retried:
        lines.append(f"{retried} connection{'s' if retried != 1 else ''} sent their SYN more than once "
                     "(no SYN-ACK in time: the listen queue was full, or the server was gone)")
    return "\n".join(lines) + "\n"
