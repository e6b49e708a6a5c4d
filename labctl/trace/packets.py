"""The client's capture as the timeline reads it: each TCP segment with its kind and its place in its stream.

Kinds are told from flags and from what came before on the connection: the client's first pure ACK
after the SYN-ACK completes the handshake (what makes a connection ready for accept), a segment with
bytes is a request (to the server) or a response (from it). Each segment with bytes also carries
where its payload ends in its direction's byte stream (`end`, from its sequence number and the SYN's),
so a segment sent again counts once (links.certain_pairs).
"""

from __future__ import annotations

from dataclasses import dataclass

#: What each kind of packet is called, for people.
PACKET_WORDS = {"syn": "SYN", "syn-ack": "SYN-ACK", "handshake": "ACK (handshake done)", "request": "request data",
                "response": "response data", "ack": "ACK", "fin": "FIN", "rst": "RST"}
#: Packets to the server that can wake it: the ones that are linked.
WAKING = frozenset({"handshake", "request", "fin", "rst"})


@dataclass(frozen=True)
class Packet:
    """One TCP segment between the client and the server, as the client's capture saw it."""

    index: int
    time: float
    inbound: bool                   # to the server
    client_port: int
    flags: str
    length: int
    seq: int
    ack: int
    kind: str                       # a key of PACKET_WORDS
    payload: str                    # its first bytes (the server's own when outbound): escape to show
    end: int | None = None          # bytes of its direction of the connection up to its payload's end (by sequence)

    @property
    def words(self) -> str:
        size = f" {self.length} B" if self.length else ""
        way = "to" if self.inbound else "from"
        return f"{PACKET_WORDS[self.kind]}{size} {way} the server (client port {self.client_port})"


def classify_packets(captured: list, server: str, port: int) -> list[Packet]:
    """The capture's segments in time order, each with its kind (PACKET_WORDS)."""
    ordered = sorted((item for item in captured if isinstance(item, dict)), key=lambda item: float(item["time"]))
    packets: list[Packet] = []
    handshaking: set[int] = set()   # client ports whose SYN-ACK came and whose last ACK has not
    first_seq: dict[tuple[int, bool], int] = {}  # (client port, to the server) -> the sequence number of byte 0
    for item in ordered:
        inbound = item["dst"] == server and int(item["dport"]) == port
        client_port = int(item["sport"] if inbound else item["dport"])
        flags, length = str(item["flags"]), int(item["length"])
        if "R" in flags:
            kind = "rst"
        elif "S" in flags:
            kind = "syn-ack" if "A" in flags else "syn"
            if kind == "syn-ack":
                handshaking.add(client_port)
        elif "F" in flags:
            kind = "fin"
        elif length:
            kind = "request" if inbound else "response"
        elif inbound and client_port in handshaking:
            kind = "handshake"
        else:
            kind = "ack"
        if inbound and kind != "syn":
            handshaking.discard(client_port)
        seq = int(item.get("seq", 0))
        way = (client_port, inbound)
        if "S" in flags:
            first_seq[way] = (seq + 1) % 2**32
        elif length:
            first_seq.setdefault(way, seq)  # no SYN seen: count from the first bytes seen
        end = (seq + length - first_seq[way]) % 2**32 if length and way in first_seq else None
        packets.append(Packet(len(packets), float(item["time"]), inbound, client_port, flags, length, seq,
                              int(item.get("ack", 0)), kind, str(item.get("payload", "")), end))
    return packets
