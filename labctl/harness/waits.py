"""What a server's thread waits on: the descriptors of its blocked syscall, and what each one is.

A syscall number alone does not say what a thread waits for: poll() on ONE socket is what
Python's socket.settimeout() does before every recv and accept, and read() on a pipe is a
wake-up, not a client. So the observer reads, per thread, the syscall's arguments
(/proc/<tid>/syscall), the descriptors they name, and, per process, what each descriptor is:

- /proc/<pid>/fd/N links: socket:[inode], pipe:[inode], anon_inode:[eventpoll|eventfd|...], a path;
- the server's own /proc/<pid>/net/{tcp,tcp6,udp,udp6,unix}: which socket inode is a listening
  TCP socket, a connected one (a client), UDP or a UNIX socket;
- /proc/<pid>/fdinfo/<epfd>: the descriptors an epoll instance watches ("tfd: N" lines);
- /proc/<pid>/mem at the syscall's pointer arguments: the pollfd array of poll/ppoll and the
  fd_set bitmaps of select/pselect6 (the observer holds SYS_PTRACE, which reading them needs).

Which syscall names its descriptors how is NOT known here (the harness has no syscall table):
the host gives `fd_rules` from labctl/syscalls.py, {machine: {number: "fd"|"poll"|"select"|"epoll"}}.
Everything read is bounded (MAX_WATCHED descriptors reported per thread) and a file that cannot
be read leaves the answer partial, never an error.
"""

from __future__ import annotations

import os
import struct

from .wire import WaitsOn

#: Descriptor kinds, as reported: the host words them.
LISTEN, CLIENT, TCP, UDP, UNIX, PIPE, FILE, OTHER = "listen", "client", "tcp", "udp", "unix", "pipe", "file", "other"
#: anon_inode:[name] -> kind
ANON = {"eventpoll": "epoll", "eventfd": "eventfd", "timerfd": "timerfd", "signalfd": "signalfd",
        "inotify": "inotify", "[io_uring]": "io_uring", "io_uring": "io_uring"}
#: TCP states (the 4th column of /proc/net/tcp, hex) of a connection a client holds open.
_CONNECTED = {"01", "02", "03", "04", "05", "08", "09", "0B"}  # ESTABLISHED ... CLOSE_WAIT, LAST_ACK, CLOSING
_LISTEN = "0A"
#: The most descriptors listed per thread (the count is always whole).
MAX_WATCHED = 32
#: The most pollfd entries or select bits read from a process's memory.
MAX_POLLED = 4096


def socket_kinds(root: str, pid: int) -> dict[int, str]:
    """inode -> kind for every socket of the network namespace `pid` is in."""
    kinds: dict[int, str] = {}
    for table in ("tcp", "tcp6"):
        for fields in _rows(f"{root}/{pid}/net/{table}"):
            if len(fields) > 9 and fields[9].isdigit():
                state = fields[3]
                kinds[int(fields[9])] = LISTEN if state == _LISTEN else CLIENT if state in _CONNECTED else TCP
    for table in ("udp", "udp6"):
        for fields in _rows(f"{root}/{pid}/net/{table}"):
            if len(fields) > 9 and fields[9].isdigit():
                kinds[int(fields[9])] = UDP
    for fields in _rows(f"{root}/{pid}/net/unix"):
        if len(fields) > 6 and fields[6].isdigit():
            kinds[int(fields[6])] = UNIX
    return kinds


def _rows(path: str) -> list[list[str]]:
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            return [line.split() for line in handle.read().splitlines()[1:]]
    except OSError:
        return []


def fd_kinds(root: str, pid: int, sockets: dict[int, str]) -> dict[int, str]:
    """fd -> kind for every open descriptor of process `pid`."""
    kinds: dict[int, str] = {}
    try:
        names = os.listdir(f"{root}/{pid}/fd")
    except OSError:
        return kinds
    for name in names:
        if not name.isdigit():
            continue
        try:
            target = os.readlink(f"{root}/{pid}/fd/{name}")
        except OSError:
            continue  # closed since the listing
        kinds[int(name)] = describe(target, sockets)
    return kinds


def describe(target: str, sockets: dict[int, str]) -> str:
    """What an /proc/<pid>/fd link points at, as a kind."""
    if target.startswith("socket:["):
        return sockets.get(int(target[8:-1]), OTHER) if target[8:-1].isdigit() else OTHER
    if target.startswith("pipe:["):
        return PIPE
    if target.startswith("anon_inode:"):
        name = target[len("anon_inode:"):].strip("[]")
        return ANON.get(name, OTHER)
    if target.startswith("/"):
        return FILE
    return OTHER


def epoll_set(root: str, pid: int, epfd: int) -> list[int]:
    """The descriptors the epoll instance `epfd` of `pid` watches."""
    try:
        with open(f"{root}/{pid}/fdinfo/{epfd}", encoding="ascii", errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return []
    watched = []
    for line in lines:
        if line.startswith("tfd:"):
            field = line.split()[1]
            if field.isdigit():
                watched.append(int(field))
    return watched


def _memory(root: str, pid: int, address: int, size: int) -> bytes | None:
    if address <= 0 or size <= 0:
        return None
    try:
        with open(f"{root}/{pid}/mem", "rb", buffering=0) as handle:
            handle.seek(address)
            return handle.read(size)
    except (OSError, ValueError, OverflowError):
        return None


def poll_set(root: str, pid: int, address: int, count: int) -> list[int] | None:
    """The descriptors of a pollfd array (struct pollfd {int fd; short events; short revents;}) in
    the memory of `pid`; None when it cannot be read. Negative fds (ignored by poll) are left out."""
    count = min(count, MAX_POLLED)
    data = _memory(root, pid, address, 8 * count)
    if data is None or len(data) < 8 * count:
        return None
    return [fd for fd, _, _ in struct.iter_unpack("=ihh", data) if fd >= 0]


def select_set(root: str, pid: int, count: int, *addresses: int) -> list[int] | None:
    """The descriptors set in select's fd_set bitmaps (read and write sets) at `addresses`."""
    count = min(count, MAX_POLLED)
    size = (count + 7) // 8
    found: set[int] = set()
    readable = False
    for address in addresses:
        if not address:
            continue
        data = _memory(root, pid, address, size)
        if data is None:
            continue
        readable = True
        for index, byte in enumerate(data):
            for bit in range(8):
                if byte >> bit & 1 and index * 8 + bit < count:
                    found.add(index * 8 + bit)
    return sorted(found) if readable else None


def watched(root: str, pid: int, rule: str | None, args: list[int], fds: dict[int, str]) -> WaitsOn | None:
    """What a thread blocked with `args` under `rule` waits on: {"fds": [[fd, kind], ...] (at most
    MAX_WATCHED), "count": how many, "kinds": {kind: n}, "via": the rule}, or None when the syscall
    names no descriptor (a sleep, a lock)."""
    if rule is None or len(args) < 3:
        return None
    if rule == "fd":
        targets: list[int] | None = [args[0]]
    elif rule == "epoll":
        targets = epoll_set(root, pid, args[0])
    elif rule == "poll":
        targets = [] if args[1] == 0 else poll_set(root, pid, args[0], args[1])
    else:  # select: nfds, readfds, writefds
        targets = [] if args[0] == 0 else select_set(root, pid, args[0], args[1], args[2])
    if targets is None:
        unread: WaitsOn = {"fds": [], "count": args[1] if rule == "poll" else args[0], "kinds": {}, "via": rule,
                           "unread": True}
        return unread
    kinds: dict[str, int] = {}
    listed: list[list[int | str]] = []
    for fd in targets:
        kind = fds.get(fd, "closed")
        kinds[kind] = kinds.get(kind, 0) + 1
        if len(listed) < MAX_WATCHED:
            listed.append([fd, kind])
    found: WaitsOn = {"fds": listed, "count": len(targets), "kinds": kinds, "via": rule}
    return found


def held(fds: dict[int, str]) -> dict[str, int]:
    """How many descriptors of each kind a process holds (its client connections among them)."""
    counts: dict[str, int] = {}
    for kind in fds.values():
        counts[kind] = counts.get(kind, 0) + 1
    return counts
