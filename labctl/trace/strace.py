"""strace's output, read as the hostile text it is: calls, signals and exits per thread.

What is parsed is `strace -f -q -ttt -T` written to a file (harness/tracer.py): every line starts
with the thread's id and the wall-clock time strace stamped it with (when the call entered), then
one of

    TID TIME name(args) = result <duration>            a whole call
    TID TIME name(args <unfinished ...>                 a call another thread's event cut in two...
    TID TIME <... name resumed>args) = result <dur>     ...and its end
    TID TIME name(args <detached ...>                   a call still running when strace let go
    TID TIME name(args                                  the same, with a status filter (-e status=...)
    TID TIME name(args) = ?                             a call that never returns (exit, exit_group)
    TID TIME restart_syscall(<... resuming interrupted name ...>) = result <dur>
    TID TIME --- SIGNAME {...} ---                      a signal delivered
    TID TIME +++ exited with N +++ / +++ killed by SIGNAME +++

Times: strace reads the wall clock when a call enters (before it decodes the arguments) and
starts -T's stopwatch after decoding; the stopwatch stops when the call returns. So
`entered + duration` is when the call returned, less strace's decoding of that call's arguments
(microseconds without -y). A call's time is strace's view: strace is woken to look, so every time
is a little after the kernel's moment, never before.

The strings in the arguments are the client's request, the server's answer, its paths: the
server's bytes. strace escapes what is not printable, and nothing here acts on them; whatever is
shown goes through labctl.untrusted.printable (terminal) or html.escape (the page). The result
is always found at the END of a line (a string in the arguments may hold ") = 0 <1.0>", never
the line's end), and every line that fits no form is counted, never a reason to fail. Bounded:
at most MAX_LINES lines, MAX_ARGS characters of a call's arguments kept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

#: The most lines read (4 MiB of strace output is about 40,000).
MAX_LINES = 200_000
#: The most characters of a call's arguments kept (the request's first bytes, a sockaddr).
MAX_ARGS = 400
#: Lines that fit no form, kept as examples.
EXAMPLES = 5

_HEAD = re.compile(r"^(\d{1,10})\s+(\d{1,12}\.\d{1,9}) (.*)$")
_SIGNAL = re.compile(r"^--- (SIG[A-Z0-9+]+|SIGRT_\d+) .*---$")
_EXIT = re.compile(r"^\+\+\+ (exited with -?\d+|killed by SIG[A-Z0-9]+(?: \(core dumped\))?) \+\+\+$")
_RESUMED = re.compile(r"^<\.\.\. ([a-z_0-9]{1,40}) resumed>(.*)$")
_CALL = re.compile(r"^([a-z_0-9]{1,40})\((.*)$")
_RESTART = re.compile(r"^<\.\.\. resuming interrupted ([a-z_0-9]{1,40}) \.\.\.>")
_DURATION = re.compile(r" <(\d{1,9}\.\d{1,9})>$")
#: The end of a call's arguments and its result: the LAST ") = " of the line (see the docstring).
_RESULT = re.compile(r"^(.*)\)\s+= (\?|-?\d+|0x[0-9a-f]+)(.*)$")
_ERRNO = re.compile(r"^ (E[A-Z0-9_]+) \(")
_FIRST_FD = re.compile(r"^\s*(\d+)\s*(?:,|$)")


@dataclass
class Call:
    """One syscall of one thread, as strace saw it."""

    tid: int
    name: str
    entered: float                  # wall clock
    returned: float | None          # entered + duration; None: not returned while traced
    args: str                       # at most MAX_ARGS characters
    result: str = ""                # what follows "= ": "4", "-1 EAGAIN (Resource temporarily unavailable)", "?"
    ret: int | None = None          # the return value, when a number
    errno: str | None = None
    line: int = 0                   # its (first) line in strace's output, from 1
    restarted: bool = False         # restart_syscall: the same call, resumed after a signal
    index: int = -1                 # its place in Parsed.calls
    #: The time of the thread's next line: strace saw this call return before it (an upper bound of the return).
    next_seen: float | None = None
    #: `returned` is next_seen, not entered + duration (a call that was running when strace attached: see
    #: timeline.py; strace's stopwatch for it starts late).
    bounded: bool = False
    #: Still running when strace let go (detached, or cut in two and never resumed).
    running_at_end: bool = False

    @property
    def duration(self) -> float | None:
        return None if self.returned is None else self.returned - self.entered

    @property
    def fd(self) -> int | None:
        """Its first argument, when that is a descriptor's number (accept4, recvfrom, read, epoll_wait...)."""
        found = _FIRST_FD.match(self.args)
        return int(found.group(1)) if found else None


@dataclass(frozen=True)
class Signal:
    tid: int
    time: float
    name: str
    line: int


@dataclass(frozen=True)
class Exit:
    tid: int
    time: float
    how: str                        # "exited with 0", "killed by SIGKILL"
    line: int


@dataclass
class Parsed:
    """Everything strace's output said, in the order of its lines (which is its order in time)."""

    calls: list[Call] = field(default_factory=list)
    signals: list[Signal] = field(default_factory=list)
    exits: list[Exit] = field(default_factory=list)
    lines: int = 0
    unparsed: int = 0
    examples: list[str] = field(default_factory=list)
    cut: bool = False               # more than MAX_LINES lines: the rest was not read

    @property
    def tids(self) -> list[int]:
        return sorted({call.tid for call in self.calls} | {exit_.tid for exit_ in self.exits})


def parse(text: str) -> Parsed:
    """strace -f -ttt -T output -> calls (unfinished and resumed halves joined), signals, exits."""
    parsed = Parsed()
    pending: dict[int, Call] = {}  # tid -> its call cut in two, waiting for its "resumed" half
    last: dict[int, Call] = {}     # tid -> its last call, until its next line says when it was seen
    for number, raw in enumerate(text.splitlines(), start=1):
        if number > MAX_LINES:
            parsed.cut = True
            break
        parsed.lines = number
        before = len(parsed.calls)
        if not _line(parsed, pending, number, raw):
            parsed.unparsed += 1
            if len(parsed.examples) < EXAMPLES:
                parsed.examples.append(raw[:200])
            continue
        head = _HEAD.match(raw)
        if head is None:
            continue
        tid, time = int(head.group(1)), float(head.group(2))
        previous = last.pop(tid, None)
        if previous is not None and previous.next_seen is None:
            previous.next_seen = time
        if len(parsed.calls) > before:
            done = parsed.calls[-1]
            if done.line != number:  # a resumed half: printed when the call returned
                done.next_seen = time
            last[done.tid] = done
    for call in pending.values():  # cut in two and never resumed: still running when strace let go
        call.running_at_end = True
        _add(parsed, call)
    parsed.calls.sort(key=lambda call: (call.entered, call.line))
    for index, call in enumerate(parsed.calls):
        call.index = index
    return parsed


def _line(parsed: Parsed, pending: dict[int, Call], number: int, raw: str) -> bool:
    head = _HEAD.match(raw)
    if head is None:
        return False
    tid, time, rest = int(head.group(1)), float(head.group(2)), head.group(3)
    if rest.startswith("--- "):
        found = _SIGNAL.match(rest)
        if found is None:
            return False
        parsed.signals.append(Signal(tid, time, found.group(1), number))
        return True
    if rest.startswith("+++ "):
        found = _EXIT.match(rest)
        if found is None:
            return False
        parsed.exits.append(Exit(tid, time, found.group(1), number))
        return True
    resumed = _RESUMED.match(rest)
    if resumed is not None:
        name, tail = resumed.group(1), resumed.group(2)
        call = pending.pop(tid, None)
        if call is None or call.name != name:
            if call is not None:
                _add(parsed, call)
            call = Call(tid, name, time, None, "", line=number)
            return _finish(parsed, call, tail, time, entered_unknown=True)
        return _finish(parsed, call, tail, time)
    found = _CALL.match(rest)
    if found is None:
        return False
    name, tail = found.group(1), found.group(2)
    call = Call(tid, name, time, None, "", line=number)
    if name == "restart_syscall":
        interrupted = _RESTART.match(tail)
        if interrupted is not None:
            call.name, call.restarted = interrupted.group(1), True
    if tail.endswith("<unfinished ...>"):
        call.args = _cut(tail[:-len("<unfinished ...>")].rstrip())
        if tid in pending:  # two unfinished calls of one thread: the first never resumed
            _add(parsed, pending.pop(tid))
        pending[tid] = call
        return True
    if tail.endswith("<detached ...>"):
        call.args = _cut(tail[:-len("<detached ...>")].rstrip())
        call.running_at_end = True
        _add(parsed, call)
        return True
    if _finish(parsed, call, tail, time):
        return True
    if _DURATION.search(tail) is None and not _RESULT.match(tail):
        # Its start and nothing more: what strace writes, with a status filter, for a call still running
        # when it lets go (no "<detached ...>" then).
        call.args = _cut(tail.rstrip())
        call.running_at_end = True
        _add(parsed, call)
        return True
    return False


def _finish(parsed: Parsed, call: Call, tail: str, time: float, entered_unknown: bool = False) -> bool:
    """The end of a call: its arguments' rest, its result and its duration (from the line's end)."""
    duration = None
    found = _DURATION.search(tail)
    if found is not None:
        duration = float(found.group(1))
        tail = tail[:found.start()]
    result = _RESULT.match(tail)
    if result is None:
        return False
    call.args = _cut(call.args + result.group(1))
    value, rest = result.group(2), result.group(3)
    call.result = _cut(value + rest)
    if value != "?":
        call.ret = int(value, 16) if value.startswith("0x") else int(value)
    errno = _ERRNO.match(rest)
    if errno is not None:
        call.errno = errno.group(1)
    if duration is not None:
        if entered_unknown:
            call.entered = time - duration
        call.returned = call.entered + duration
    _add(parsed, call)
    return True


def _add(parsed: Parsed, call: Call) -> None:
    parsed.calls.append(call)


def _cut(text: str) -> str:
    return text if len(text) <= MAX_ARGS else text[:MAX_ARGS] + "..."


# -- what some calls' arguments and results say -----------------------------------------------------

_PEER_PORT = re.compile(r"sin6?_port=htons\((\d{1,5})\)")
_POLL_READY = re.compile(r"fd=(\d+), revents=")
_SELECT_READY = re.compile(r"(?:^|\()(?:in|out) \[([\d ]*)\]")
_EPOLL_DATA = re.compile(r"data=\{u32=(\d+),")
_CHILD = re.compile(r"^(\d+)")


def peer_port(call: Call) -> int | None:
    """The client's port an accept/accept4 returned (from the sockaddr strace decoded), or None."""
    found = _PEER_PORT.search(call.args)
    return int(found.group(1)) if found and call.ret is not None and call.ret >= 0 else None


def ready_fds(call: Call) -> set[int] | None:
    """The descriptors a poll/select/epoll call said are ready; None when its answer does not name them.

    epoll names what the program registered with each descriptor (its data word), which is the
    descriptor itself in Python's selectors, libuv and most loops, and a pointer in others: the
    caller keeps only the numbers it knows as descriptors (timeline.py)."""
    if call.ret is None or call.ret <= 0:
        return set() if call.ret == 0 else None
    if call.name in ("poll", "ppoll"):
        return {int(fd) for fd in _POLL_READY.findall(call.result)} or None
    if call.name in ("select", "pselect6"):
        found = _SELECT_READY.findall(call.result.lstrip("0123456789 "))
        return {int(fd) for group in found for fd in group.split()} or None
    if call.name.startswith("epoll_"):
        return {int(fd) for fd in _EPOLL_DATA.findall(call.args)} or None
    return None


def child_of(call: Call) -> tuple[int, bool] | None:
    """(the new task's id, whether it is a thread) for a clone/clone3/fork/vfork that made one."""
    if call.name not in ("clone", "clone3", "fork", "vfork") or call.ret is None or call.ret <= 0:
        return None
    return call.ret, "CLONE_THREAD" in call.args
