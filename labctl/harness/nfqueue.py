"""A small NETLINK_NETFILTER client for one NFQUEUE queue: hold packets in user space, release them later.

Why this exists: this kernel has no sch_netem, and delay needs a real mechanism. iptables' NFQUEUE
target hands each packet to the process bound to a queue and waits for its verdict; holding the
verdict for `delay` seconds delays the packet by that much. The images have no libnetfilter_queue
binding, so this speaks the protocol itself (linux/netfilter/nfnetlink_queue.h), stdlib only.

Choices, and why:
- copy mode META: only the packet's id is needed, never its bytes (nothing is copied to user space);
- batch verdicts (NFQNL_MSG_VERDICT_BATCH: "accept every id up to N"): packets are released in the
  order they came, so one message releases all that are due, and a packet whose message was lost
  (a full socket buffer, ENOBUFS) is released by the next batch instead of staying held for ever;
- NFQA_CFG_F_FAIL_OPEN: when the kernel's queue is full, packets pass undelayed instead of being
  dropped, and the iptables rule carries --queue-bypass: with no reader bound, packets pass. A
  stopped or crashed reader never leaves the node unable to talk to the server;
- on SIGTERM the reader releases everything it holds before it unbinds: clearing loses no packet.

Only packets FROM the server are queued (the INPUT hook): holding a node's outgoing packets throttles
its own TCP senders (TCP small queues count a held packet as still in flight: 2 packets per delay,
~230 kbit/s at 100 ms, measured), while packets that arrived are no sender's business any more.
"""

from __future__ import annotations

import collections
import errno
import os
import random
import select
import signal
import socket
import struct
import time

NETLINK_NETFILTER = 12
SO_RCVBUFFORCE = 33
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG, NFQNL_MSG_VERDICT_BATCH = 0, 1, 2, 3
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQA_CFG_CMD, NFQA_CFG_PARAMS, NFQA_CFG_QUEUE_MAXLEN, NFQA_CFG_MASK, NFQA_CFG_FLAGS = 1, 2, 3, 4, 5
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NFQA_CFG_F_FAIL_OPEN, NFQA_CFG_F_GSO = 1, 4
NF_ACCEPT = 1
NLA_TYPE_MASK = 0x3FFF
_HEADER = struct.Struct("=IHHII")      # nlmsghdr: length, type, flags, sequence, port id
_NFGEN = struct.Struct("=BBH")         # nfgenmsg: family, version, res_id (big endian, packed by hand)
_ATTR = struct.Struct("=HH")           # nlattr: length, type

#: The most packets the kernel holds for the reader; past it, packets pass undelayed (FAIL_OPEN).
QUEUE_MAXLEN = 16384


def _attribute(kind: int, payload: bytes) -> bytes:
    length = _ATTR.size + len(payload)
    return _ATTR.pack(length, kind) + payload + b"\0" * (-length % 4)


def message(kind: int, queue: int, attributes: list[bytes], flags: int = NLM_F_REQUEST, sequence: int = 0) -> bytes:
    """One nfnetlink message of the queue subsystem: `kind` is an NFQNL_MSG_*, `queue` the queue number."""
    body = _NFGEN.pack(socket.AF_UNSPEC, 0, socket.htons(queue)) + b"".join(attributes)
    return _HEADER.pack(_HEADER.size + len(body), (NFNL_SUBSYS_QUEUE << 8) | kind, flags, sequence, 0) + body


def bind_messages(queue: int, maxlen: int = QUEUE_MAXLEN) -> list[bytes]:
    """Bind `queue` to this socket, then ask for metadata only, a longer queue, fail-open and GSO."""
    flags = struct.pack(">I", NFQA_CFG_F_FAIL_OPEN | NFQA_CFG_F_GSO)
    return [
        message(NFQNL_MSG_CONFIG, queue, [_attribute(NFQA_CFG_CMD, struct.pack("=BBH", NFQNL_CFG_CMD_BIND, 0,
                                                                                socket.htons(socket.AF_INET)))],
                NLM_F_REQUEST | NLM_F_ACK, 1),
        message(NFQNL_MSG_CONFIG, queue, [_attribute(NFQA_CFG_PARAMS, struct.pack(">IB", 0, NFQNL_COPY_META)),
                                          _attribute(NFQA_CFG_QUEUE_MAXLEN, struct.pack(">I", maxlen)),
                                          _attribute(NFQA_CFG_MASK, flags), _attribute(NFQA_CFG_FLAGS, flags)],
                NLM_F_REQUEST | NLM_F_ACK, 2),
    ]


def accept_up_to(queue: int, packet_id: int) -> bytes:
    """A batch verdict: accept every packet of `queue` whose id is at most `packet_id`."""
    return message(NFQNL_MSG_VERDICT_BATCH, queue, [_attribute(NFQA_VERDICT_HDR, struct.pack(">II", NF_ACCEPT,
                                                                                            packet_id))])


def parse(data: bytes) -> tuple[list[int], list[int]]:
    """(the ids of the packets in these netlink messages, the errno of each error message; 0 is an ACK)."""
    ids: list[int] = []
    errors: list[int] = []
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, kind, _, _, _ = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size or offset + length > len(data):
            break
        if kind == NLMSG_ERROR and length >= _HEADER.size + 4:
            errors.append(-struct.unpack_from("=i", data, offset + _HEADER.size)[0])
        elif kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
            at = offset + _HEADER.size + _NFGEN.size
            while at + _ATTR.size <= offset + length:
                size, attribute = _ATTR.unpack_from(data, at)
                if size < _ATTR.size:
                    break
                if attribute & NLA_TYPE_MASK == NFQA_PACKET_HDR and size >= _ATTR.size + 4:
                    ids.append(struct.unpack_from(">I", data, at + _ATTR.size)[0])
                at += (size + 3) & ~3
        offset += (length + 3) & ~3
    return ids, errors


class Held:
    """Packets held in arrival order, each until its own time: the delay, plus a jitter drawn per packet
    (uniform in [-jitter, +jitter], as netem draws it), never before the packet ahead of it: order is kept,
    so TCP sees no reordering (netem would reorder under jitter)."""

    def __init__(self, delay: float, jitter: float = 0.0, seed: int | None = None):
        self.delay, self.jitter = delay, jitter
        self.random = random.Random(seed)
        self.queue: collections.deque[tuple[float, int]] = collections.deque()
        self.last_release = 0.0
        self.count = 0

    def add(self, packet_id: int, now: float) -> float:
        wait = self.delay + (self.random.uniform(-self.jitter, self.jitter) if self.jitter else 0.0)
        release = max(now + max(0.0, wait), self.last_release)
        self.last_release = release
        self.queue.append((release, packet_id))
        self.count += 1
        return release

    def due(self, now: float) -> int | None:
        """The highest id whose time has come (all before it are due too), taken off; None: none yet."""
        last = None
        while self.queue and self.queue[0][0] <= now:
            last = self.queue.popleft()[1]
        return last

    def everything(self) -> int | None:
        """Every held packet, due or not (the reader stops): the highest id."""
        last = self.queue[-1][1] if self.queue else None
        self.queue.clear()
        return last

    def next_due(self) -> float | None:
        return self.queue[0][0] if self.queue else None


def open_queue(queue: int) -> socket.socket:
    """A netlink socket bound to `queue` (OSError with the kernel's errno when it refuses)."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    try:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)   # NET_ADMIN: past rmem_max
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        sock.bind((0, 0))
        sock.settimeout(5.0)
        for request in bind_messages(queue):
            sock.send(request)
            _, errors = parse(sock.recv(65536))
            failed = [code for code in errors if code]
            if failed or not errors:
                code = failed[0] if failed else errno.EPROTO
                raise OSError(code, f"NFQUEUE {queue}: {os.strerror(code)}")
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def hold(queue: int, delay: float, jitter: float = 0.0, ready_fd: int | None = None, seed: int | None = None) -> dict:
    """Bind `queue` and release each packet after its delay, until SIGTERM; then release all, unbind.

    `ready_fd`: a pipe to write "ok" (or the error) to once bound, then closed: whoever starts the reader
    adds the iptables rule only after that, so no packet waits for a reader that is not there.
    """
    stop = False

    def on_signal(number, frame) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # A signal wakes the select below at once (Python would otherwise resume it until its timeout).
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_read, False)
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    try:
        sock = open_queue(queue)
    except OSError as error:
        if ready_fd is not None:
            os.write(ready_fd, f"error: {error}\n".encode())
            os.close(ready_fd)
        return {"error": str(error)}
    if ready_fd is not None:
        os.write(ready_fd, b"ok\n")
        os.close(ready_fd)
    held = Held(delay, jitter, seed)
    facts = {"held": 0, "overflows": 0, "netlink_errors": 0}
    with sock:
        while not stop:
            due = held.next_due()
            timeout = 1.0 if due is None else max(0.0, due - time.monotonic())
            readable, _, _ = select.select([sock.fileno(), wake_read], [], [], timeout)
            if wake_read in readable:
                os.read(wake_read, 512)
            if sock.fileno() in readable:
                _drain(sock, held, facts)
            last = held.due(time.monotonic())
            if last is not None:
                _send(sock, accept_up_to(queue, last), facts)
        last = held.everything()
        if last is not None:
            _send(sock, accept_up_to(queue, last), facts)
    facts["held"] = held.count
    return facts  # the harness prints it: the last line of the reader's log


def _drain(sock: socket.socket, held: Held, facts: dict) -> None:
    """Read every message waiting; each packet is held from the moment it is read (never less than its delay)."""
    while True:
        try:
            data = sock.recv(1 << 16)
        except BlockingIOError:
            return
        except OSError as error:
            if error.errno == errno.ENOBUFS:   # messages were lost: the next batch verdict releases them too
                facts["overflows"] += 1
                continue
            raise
        now = time.monotonic()
        ids, errors = parse(data)
        facts["netlink_errors"] += sum(1 for code in errors if code)
        for packet_id in ids:
            held.add(packet_id, now)


def _send(sock: socket.socket, data: bytes, facts: dict) -> None:
    while True:
        try:
            sock.send(data)
            return
        except BlockingIOError:
            select.select([], [sock], [], 0.1)
        except OSError:
            facts["netlink_errors"] += 1
            return
