"""The wire between the host and the harness: what each command takes and what it answers.

A harness command runs in a lab container (`python3 -m harness COMMAND --params JSON`) and prints
one JSON object; the host decides what it means. Both sides read this one module: the harness
imports it as `harness.wire`, the host as `labctl.harness.wire`. It is stdlib only (typing), like
the rest of the harness, and holds no behaviour: TypedDicts for the parameters and facts of every
command, checked by the type checker on both sides, and the one vocabulary for how a connection
ended (ENDINGS), which every command reports in and every check explains from.

Facts are plain JSON on the wire (dicts, lists, numbers, strings): a TypedDict is a dict at run
time, so nothing is converted on either side.
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict

# -- how a connection ended: one word for each way ------------------------------------------------

#: How a connection to the server ended, or why it never began. Every harness command reports in
#: these words ("end" of an exchange, the keys of error counts); labctl/checks/common.py explains them.
Ending = Literal[
    "refused",          # connect: nothing listens on the port (RST to the SYN)
    "connect-timeout",  # connect: no SYN-ACK in time (a full backlog drops SYNs; a server gone)
    "unresolved",       # the server's name did not resolve (its container has gone)
    "unreachable",      # connect failed another way (no route, network down)
    "closed",           # the server closed the connection (EOF)
    "reset",            # the server reset the connection (RST)
    "broken-pipe",      # sending failed: the server had closed its side
    "timeout",          # the server went silent: nothing more came in time
    "content-length",   # the whole answer came, as long as its Content-Length said
    "limit",            # the client stopped reading at its own limit (a runaway answer)
    "error",            # another socket error (its text is in the facts)
]

#: The words for people, for every Ending: what a student reads in a message or a count.
ENDING_WORDS: dict[str, str] = {
    "refused": "connection refused",
    "connect-timeout": "connect timed out",
    "unresolved": "name not resolved",
    "unreachable": "server unreachable",
    "closed": "closed by the server",
    "reset": "connection reset",
    "broken-pipe": "broken pipe",
    "timeout": "timeout",
    "content-length": "complete",
    "limit": "stopped at the read limit",
    "error": "socket error",
}

#: Endings before a connection was made: the request was never sent.
CONNECT_ENDINGS = frozenset({"refused", "connect-timeout", "unresolved", "unreachable"})

#: What a timed request that did not get a whole good answer counts as, besides an Ending: the
#: server answered, but not well.
Problem = Literal["no-answer", "incomplete-headers", "incomplete-body", "bad-status"]
PROBLEM_WORDS: dict[str, str] = {
    "no-answer": "closed without a response",
    "incomplete-headers": "incomplete headers",
    "incomplete-body": "incomplete body",
    "bad-status": "not 200",
}


def words(kind: str) -> str:
    """An Ending or a Problem (or any other count key) in words."""
    return ENDING_WORDS.get(kind) or PROBLEM_WORDS.get(kind) or kind


# -- one exchange: the facts of one connection, as every command reports them ---------------------

class Exchange(TypedDict, total=False):
    """One connection: connect, send, read the answer (harness/client.py's `exchange`)."""

    connected: bool
    connect_error: str              # the error's text when it did not connect
    connect_seconds: float
    first_byte_seconds: float | None
    request_bytes: int
    sent: int
    segments: int
    planned_segments: int
    send_seconds: float
    send_error: str
    answered_early: bool            # the server answered before it had the whole request
    end: Ending                     # how the connection ended (or why it never began)
    read_error: str                 # the error's text when reading failed
    head: str                       # the answer up to its blank line (latin-1), or all that came
    head_complete: bool
    head_bytes: int
    received: int                   # every byte that came back
    status: int | None              # from the status line, when the head is complete and one
    status_line: str | None
    content_length: int | None
    body_bytes: int
    body_sha256: str | None
    body: str                       # base64 of the first max_body bytes of the body
    body_truncated: bool
    complete: bool                  # a head, and the whole body (by Content-Length, or to EOF)
    seconds: float | None           # connect to the end of the answer (a TimedRequest: None without a good one)
    # http_sequence's own keys on each of its steps
    name: str
    action: Literal["exchange", "reset"]
    skipped: bool
    skip_reason: str
    server_spoke_first: bool        # reset: the server said something before the RST
    # play_scenario's own keys on each of its exchanges
    client: int                     # the client's number in the scenario
    started_at: float               # wall clock when it began to connect


class TimedRequest(Exchange, total=False):
    """One whole GET, timed (client.timed_request): an Exchange, and how long the answer took."""

    path: str
    timeout: float
    elapsed: float                  # from connect to the end, answered or not
    error: str | None               # None: a whole 200 answer; else an Ending or a Problem


# -- commands: parameters and facts ---------------------------------------------------------------

class Step(TypedDict, total=False):
    """One step of http_sequence: one connection."""

    name: str
    action: Literal["exchange", "reset"]
    data: str                       # base64 of the bytes to send
    timeout: float
    pause_after: float
    always: bool                    # run it even after a connect failure
    max_body: int
    segment_min: int
    segment_max: int
    delay: float
    seed: int
    nodelay: bool
    pause: float                    # reset: the pause before the RST


class HttpSequence(TypedDict, total=False):
    address: str
    resolve_error: str
    steps: list[Exchange]
    seconds: float


class Probe(TypedDict, total=False):
    """A new client's one request while others are held (hold_connections, io_model's warm-up)."""

    answered: bool
    status_line: str
    seconds: float                  # until the first bytes of the answer
    bytes: int
    error: str


class Hold(TypedDict, total=False):
    requested: int
    connected: int
    connect_errors: list[str]
    started_at: float                          # time.time() in the client when the hold began
    connected_after: float
    still_open: int
    closed_by_server: int
    answered: int
    held_for: float
    probe: Probe | None


class SlowClient(TypedDict, total=False):
    slow_clients: int
    slow_connected: int
    slow_connect_errors: dict[str, int]        # Ending -> count
    slow_closed_before_probe: dict[str, int]   # "closed", "sent data", or an Ending -> count
    slow_closed_after_probe: dict[str, int]
    probe: TimedRequest
    slow_answered_after_finishing: int


class ConcurrentClients(TypedDict, total=False):
    clients: int
    clients_started: int
    requests_per_client: int
    syn_retried: int
    attempted: int
    ok: int
    errors: dict[str, int]                     # Ending or Problem -> count
    error_examples: list[dict[str, Any]]
    not_run: int
    latencies: list[float]
    wall_seconds: float


class LoadStep(TypedDict, total=False):
    """One step of a load curve (harness/load.py's load_step): N connections making requests for a while."""

    connections_asked: int
    connections: int                           # after clamping to the client's nofile limit
    clamped: bool
    nofile: Nofile
    seconds: float                             # the step's length: no request starts after it
    read_delay: float                          # seconds each client stops reading once its answer has begun
    interval: float                            # seconds between the starts of one slot's two requests, at least
    requests: int                              # requests started (connections opened)
    answered: int                              # whole 200 answers
    errors: dict[str, int]                     # Ending, Problem or "status N" -> count
    client_errors: dict[str, int]              # the client's own failures (out of descriptors): not the server's
    error_examples: list[dict[str, Any]]
    unfinished: int                            # requests the step's budget cut off
    syn_retried: int                           # connects that waited for a SYN to be sent again
    answered_early: int                        # connections that broke before their client read
    wall_seconds: float                        # from the step's start to its last answer
    latencies: list[float]                     # of the answered requests, sorted (thinned past MAX_LATENCIES)
    latencies_thinned: bool


class Nofile(TypedDict):
    soft_before: int
    hard: int                                  # -1: unlimited
    soft: int


class IdleConnections(TypedDict, total=False):
    asked: int
    nofile: Nofile
    target: int
    clamped: bool
    connected: int
    connect_failures: dict[str, int]           # Ending -> count
    first_failure_after: int | None
    batches: int
    open_seconds: float
    stopped: str | None
    closed_before_probe: dict[str, int]
    closed_after_probe: dict[str, int]
    probe: TimedRequest


class SlowReader(TypedDict, total=False):
    path: str
    rcvbuf_asked: int
    rcvbuf: int
    slow_error: str                            # an Ending
    slow_first_byte_seconds: float | None
    slow_bytes_before_probe: int
    slow_bytes_during_probe: int
    drain_seconds: float
    slow: Exchange                  # the slow reader's answer, as it came
    probe: TimedRequest


class WaitListening(TypedDict, total=False):
    listening: bool
    attempts: int
    last_error: str


class TcpPortStats(TypedDict, total=False):
    pid: int
    port: int
    readable: bool
    states: dict[str, int]
    accept_queue: int | None
    counters: dict[str, int]
    tcp_error: str
    tcp6_error: str
    netstat_error: str


class TcpdumpStarted(TypedDict, total=False):
    """A packet capture started around a check (harness/packets.py), or why it could not start."""

    listening: bool
    pid: int                        # of the capture (`timeout` around tcpdump), to stop it by
    file: str
    ready_seconds: float
    exit_code: int | None
    error: str                      # tcpdump's own words when it did not start


class TcpdumpStopped(TypedDict, total=False):
    stopped: bool                   # it was running and was stopped
    captured: int | None            # tcpdump's count of packets written
    dropped: int | None             # ... and of packets the kernel dropped before tcpdump read them
    bytes: int                      # the file's size
    truncated: bool                 # the file was larger than what was sent back
    pcap_base64: str
    error: str


# -- the observer: what it reads of the server's processes (harness/proc.py, agent.py) ------------

class WaitsOn(TypedDict, total=False):
    """The descriptors a blocked syscall waits on (harness/waits.py's `watched`)."""

    fds: list[list[Any]]            # [[fd, kind], ...], at most MAX_WATCHED
    count: int                      # how many, in all
    kinds: dict[str, int]           # kind -> how many: listen, client, tcp, udp, unix, pipe, eventfd, file, ...
    via: str                        # the syscall's rule: "fd", "poll", "select" or "epoll"
    unread: bool                    # the set could not be read (the count is the syscall's own)


class Task(TypedDict, total=False):
    """One thread of a server process at one look."""

    tid: int
    comm: str
    state: str                      # R, S, D, T, t, Z, ...
    syscall: int | str | None       # its number; "running"; -1 blocked outside a syscall; None unreadable
    arg0: int | None
    args: list[int]
    wchan: str
    ticks: int
    voluntary: int | None
    nonvoluntary: int | None
    uid: int | None
    waits_on: WaitsOn


class ServerProcess(TypedDict, total=False):
    pid: int
    ppid: int
    comm: str
    uid: int | None
    state: str
    cmdline: str
    ticks: int
    child_ticks: int
    threads: list[Task]
    holds: dict[str, int]           # its descriptors by kind ("client": its client connections)


class ProcSnapshot(TypedDict, total=False):
    """The server's processes and threads at one look (proc_snapshot; each line of proc_agent)."""

    at: float                       # proc_agent: the wall-clock time of the look
    machine: str
    clk_tck: int
    time: float
    init: dict[str, Any] | None
    processes: list[ServerProcess]
    process_count: int
    thread_count: int
    errors: list[str]


# -- impairments: what is set on a node's path to the server, and how (harness/impair.py) -------------

#: How an impairment is made: harness/impair.py decides on the kernel it runs on; the host says it in words.
Mechanism = Literal["netem", "nfqueue", "iptables-statistic", "htb"]
MECHANISM_WORDS: dict[str, str] = {
    "netem": "tc netem",
    "nfqueue": "nfqueue, each packet held in user space by labctl's reader",
    "iptables-statistic": "iptables statistic, a random share dropped",
    "htb": "tc htb, shaped",
}
#: Which packets an impairment acts on, seen from the node.
Direction = Literal["from-server", "to-server"]
DIRECTION_WORDS: dict[str, str] = {
    "from-server": "on the server's packets as they arrive",
    "to-server": "on the packets to the server",
}


class ImpairSet(TypedDict):
    """What is asked for; 0 is "not set"."""

    delay_ms: float
    jitter_ms: float
    loss_percent: float
    rate_bit: int


class Reader(TypedDict, total=False):
    """The NFQUEUE reader (delay without netem) and the kernel's counts for its queue."""

    pid: int
    running: bool
    holding: int                    # packets held right now
    queue_dropped: int              # the kernel's queue overflowed (fail-open lets them pass: counted anyway)
    user_dropped: int               # messages the reader's socket could not take
    packets: int                    # packets queued so far (the queue's id sequence)


class Impaired(TypedDict, total=False):
    """impair_set, impair_show and impair_clear: what is set on this node, how, and what is wrong with it."""

    set: ImpairSet | None           # None: nothing
    was: ImpairSet | None           # impair_clear: what was set before
    server: str                     # the server's address: only its packets are touched
    interface: str
    tc_device: str                  # where the tc qdiscs are: the ifb device, or the interface itself
    mechanisms: dict[str, str]      # "delay", "jitter", "loss", "rate" -> a Mechanism
    directions: dict[str, str]      # the same keys -> a Direction
    unavailable: dict[str, str]     # "netem", "ifb" -> why not (the kernel's words)
    reader: Reader
    problems: list[str]             # impair_show: what no longer holds
    removed: list[str]              # impair_clear: what was taken away


# -- labctl trace: the observer's strace, the client's scenario and its packets -------------------

class StraceRun(TypedDict, total=False):
    """What strace wrote while it held the server's threads (harness/tracer.py's trace_threads)."""

    pids: list[int]                 # the server's processes when the trace began
    threads: dict[str, list[list[Any]]]  # pid -> [[tid, comm], ...] when the trace began
    attached_at: float              # wall clock: every thread held from here on
    attached_threads: int
    stopped_at: float
    stopped_by: str                 # "stop" (the host), "time", "size" (max_bytes), "strace-exit", "error"
    strace_exit: int | None
    text: str                       # strace -f -ttt -T -yy output, at most max_bytes of it
    bytes: int                      # how much strace wrote in all
    truncated: bool
    strace_messages: str            # strace's own stderr (warnings), its end
    error: str


class TracePacket(TypedDict):
    """One TCP segment the client's capture saw."""

    time: float                     # the kernel's timestamp of it (wall clock)
    src: str
    dst: str
    sport: int
    dport: int
    flags: str                      # "S", "SA", "A", "PA", "FA", "R"...
    seq: int
    ack: int
    length: int                     # payload bytes
    payload: str                    # its first bytes (latin-1): the server's, when it sent them


class ScenarioRun(TypedDict, total=False):
    """A scenario played by the client, and the packets captured meanwhile (harness/scenarios.py)."""

    scenario: str
    server: str                     # the server's address
    port: int
    client: str | None              # the client's own address
    began: float                    # wall clock, just before the first connect
    ended: float                    # wall clock, after the last answer
    warm_ups: list[dict[str, Any]]  # the requests before the scenario: {connect_began, connected_at, port, error}
    stamped: bool                   # the last warm-up's packets were stamped by the kernel on their way
    exchanges: list[Exchange]
    packets: list[TracePacket]
    truncated: bool


class Failure(TypedDict, total=False):
    """What every command answers when it could not run at all (harness/__main__.py)."""

    error: str
    traceback: str


#: Every harness command and the facts it answers: the one table both sides agree on (a unit test
#: holds the harness's command functions to it). Parameters are each function's keyword arguments.
FACTS: dict[str, str] = {
    "wait_listening": "WaitListening",
    "capture": "dict",                  # {"packets", "truncated", "pcap_base64"}
    "http_sequence": "HttpSequence",
    "tcp_port_stats": "TcpPortStats",
    "syn_flood": "dict",                # raw.py: counts of SYNs sent and SYN-ACKs seen
    "syn_flood_cleanup": "dict",
    "slow_client": "SlowClient",
    "concurrent_clients": "ConcurrentClients",
    "idle_connections": "IdleConnections",
    "slow_reader": "SlowReader",
    "load_step": "LoadStep",
    "proc_snapshot": "ProcSnapshot",
    "hold_connections": "Hold",
    "probe": "Probe",
    "proc_agent": "dict",               # {"looks": n}: its looks go to its log, one ProcSnapshot a line
    "tcpdump_start": "TcpdumpStarted",
    "tcpdump_stop": "TcpdumpStopped",
    "impair_set": "Impaired",
    "impair_show": "Impaired",
    "impair_clear": "Impaired",
    "impair_reader": "dict",            # nfqueue.hold's counts, in its log when it stops


    "trace_threads": "StraceRun",
    "play_scenario": "ScenarioRun",
}
