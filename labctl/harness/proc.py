"""Process-side facts: the server's processes and threads, read from /proc in the observer.

The observer container shares the server container's PID namespace (pid_mode=container:
server) and holds SYS_PTRACE + DAC_READ_SEARCH, so it can read every server thread's
/proc/<pid>/task/<tid>/{stat,status,syscall,wchan}. These commands report what they read,
nothing more: which syscall a number is, whether a state is good, is decided on the host
(labctl/observe.py, labctl/checks/process.py).

Which processes are the server's (`server_pids`):
    the server's processes are PID 1 of the namespace and its descendants, less an init
    shim at PID 1. The observer joins the SERVER's namespace, so PID 1 is the server
    container's first process: docker-init (`/sbin/docker-init -- sh -c 'exec ...'`),
    whose child is the submission. Everything another container or `docker exec` puts in
    the namespace (the observer's `sleep infinity`, this harness and its `timeout`, a
    `labctl shell server`) is started from outside the namespace, so its PPid reads 0 and
    it is never in PID 1's tree; orphans of the server are re-parented to PID 1 and stay
    in it. The rule does not look at uids: lab.yaml chooses the server's user (it may be
    root), and docker-init runs as that same user, so a uid says neither "server" nor
    "not server". PID 1 itself counts as the server only when it is not an init shim
    (docker-init, tini, dumb-init, catatonit): a lab started without an init runs the
    server as PID 1.

On a host with no containers (labctl's local backend) there is no namespace of the server's:
there the server's processes are the descendants of its node's supervisor, whose pid the
backend gives in $LABCTL_PROC_TREE, and the supervisor plays the init shim (it starts the
server, reaps orphans, and is labctl's, not the submission's).

One command also runs in the CLIENT: `hold_connections` opens N connections to the
server and holds them (optionally with a partial request, and one full "probe" request
while they are held), so the observer can look at the server while it has clients.
"""

from __future__ import annotations

import os
import socket
import time

from . import client, waits  # relative: the package is `harness` in a container, `labctl.harness` in tests
from .wire import Hold, Probe, ProcSnapshot, ServerProcess, Task

#: What a PID 1 that only starts the real server and forwards signals is called.
INIT_SHIMS = frozenset({"docker-init", "tini", "dumb-init", "catatonit"})

#: Where the server's process tree starts when it is not PID 1 of a namespace (the local backend).
TREE_ROOT_ENV = "LABCTL_PROC_TREE"

#: How much of a command line is reported.
CMDLINE_MAX = 200


# -- parsing /proc text (pure functions: unit-tested on recorded samples) ----------------------

def parse_stat(text: str) -> dict:
    """The fields of /proc/<pid>[/task/<tid>]/stat that matter here.

    The command name is in parentheses and may itself hold spaces and ')', so the fields
    are counted from the LAST ')' (proc(5)).
    """
    open_at, close_at = text.index("("), text.rindex(")")
    rest = text[close_at + 2:].split()
    # rest[0] is field 3 (state); field k of proc(5) is rest[k - 3].
    return {
        "pid": int(text[:open_at]),
        "comm": text[open_at + 1:close_at],
        "state": rest[0],
        "ppid": int(rest[1]),
        "utime": int(rest[11]),
        "stime": int(rest[12]),
        "cutime": int(rest[13]),
        "cstime": int(rest[14]),
        "num_threads": int(rest[17]),
        "starttime": int(rest[19]),
    }


def parse_status(text: str) -> dict:
    """Real uid, thread group id, context switches and the tracer's pid (0: none) from
    /proc/<pid>[/task/<tid>]/status."""
    found: dict = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        value = value.strip()
        if key == "Uid":
            found["uid"] = int(value.split()[0])
        elif key == "Tgid":
            found["tgid"] = int(value)
        elif key == "PPid":
            found["ppid"] = int(value)
        elif key == "TracerPid":
            found["tracer"] = int(value)
        elif key == "voluntary_ctxt_switches":
            found["voluntary"] = int(value)
        elif key == "nonvoluntary_ctxt_switches":
            found["nonvoluntary"] = int(value)
    return found


def parse_syscall(text: str) -> dict:
    """/proc/<pid>/task/<tid>/syscall: the syscall a task is blocked in.

    "running": the task is running (or runnable), not blocked at all.
    "-1 sp pc": blocked, but not in a syscall (e.g. a page fault, or stopped).
    "nr arg0 ... arg5 sp pc": blocked in syscall nr (its arguments in hex).
    Returns {"syscall": nr | "running" | -1, "arg0": first argument or None, "args": the six
    arguments (empty when not in a syscall)}.
    """
    fields = text.split()
    if not fields:
        return {"syscall": None, "arg0": None, "args": []}
    if fields[0] == "running":
        return {"syscall": "running", "arg0": None, "args": []}
    nr = int(fields[0])
    args = [int(field, 16) for field in fields[1:7]] if nr >= 0 else []
    return {"syscall": nr, "arg0": args[0] if args else None, "args": args}


def server_pids(parents: dict[int, int], comms: dict[int, str], root: int = 1) -> tuple[int | None, list[int]]:
    """(the init shim's pid or None, the server's pids): PID 1's tree, less a shim at PID 1.

    `parents` maps every visible pid to its ppid. See the module's docstring for why
    the rule is "descendants of PID 1", not "uid 1000". With another `root` (a supervisor's
    pid, the local backend), its tree less the root itself, which is always the shim.
    """
    if root not in parents:
        return None, []
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        if pid != ppid:
            children.setdefault(ppid, []).append(pid)
    if root != 1:
        tree, todo = [], [root]
        while todo:
            pid = todo.pop()
            tree.append(pid)
            todo.extend(children.get(pid, []))
        return root, sorted(pid for pid in tree if pid != root)
    tree, todo = [], [1]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    shim = 1 if comms.get(1) in INIT_SHIMS else None
    return shim, sorted(pid for pid in tree if pid != shim)


# -- reading /proc ------------------------------------------------------------------------------

def _read(path: str, errors: list[str] | None = None) -> str | None:
    """A /proc file's text; None when the task went away (or, noted in `errors`, was unreadable)."""
    try:
        with open(path, "rb") as handle:
            return handle.read().decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError as error:
        if errors is not None and len(errors) < 20:
            errors.append(f"{path}: {type(error).__name__}: {error.strerror or error}")
        return None


def _pids(root: str) -> list[int]:
    return sorted(int(name) for name in os.listdir(root) if name.isdigit())


def _task(root: str, pid: int, tid: int, errors: list[str], rules: dict[str, str] | None = None,
          fds: dict[int, str] | None = None) -> Task | None:
    base = f"{root}/{pid}/task/{tid}"
    stat_text = _read(f"{base}/stat")
    if stat_text is None:
        return None
    stat = parse_stat(stat_text)
    status = parse_status(_read(f"{base}/status") or "")
    syscall_text = _read(f"{base}/syscall", errors)
    syscall = parse_syscall(syscall_text) if syscall_text is not None else {"syscall": None, "arg0": None, "args": []}
    wchan = (_read(f"{base}/wchan") or "").strip()
    task: Task = {
        "tid": tid, "comm": stat["comm"], "state": stat["state"],
        "syscall": syscall["syscall"], "arg0": syscall["arg0"], "args": syscall["args"],
        "wchan": "" if wchan == "0" else wchan,
        "ticks": stat["utime"] + stat["stime"],
        "voluntary": status.get("voluntary"), "nonvoluntary": status.get("nonvoluntary"),
        "uid": status.get("uid"),
    }
    if rules is not None and fds is not None and isinstance(syscall["syscall"], int) and stat["state"] != "R":
        on = waits.watched(root, pid, rules.get(str(syscall["syscall"])), syscall["args"], fds)
        if on is not None:
            task["waits_on"] = on
    return task


def _cmdline(root: str, pid: int) -> str:
    raw = _read(f"{root}/{pid}/cmdline") or ""
    return raw.replace("\0", " ").strip()[:CMDLINE_MAX]


def _machine() -> str:
    return os.uname().machine


def proc_snapshot(proc_root: str = "/proc", fd_rules: dict[str, dict[str, str]] | None = None) -> ProcSnapshot:
    """The server's processes and threads, now.

    Per process: pid, ppid, comm, uid, cmdline, its own CPU ticks (utime+stime of all its
    threads, living and exited) and its reaped children's (cutime+cstime), and per thread:
    tid, comm, state (R, S, D, ...), syscall (number, "running", -1 = blocked outside a
    syscall, or None when unreadable), arg0 (the syscall's first argument: often the fd),
    wchan (the kernel function it sleeps in: shown, never graded; names differ between
    kernel builds), ticks (utime+stime), voluntary/nonvoluntary context switches, uid.
    Ticks are 1/clk_tck s. They say which thread used the CPU, never how much the server used
    in all: a child reaped with SIGCHLD ignored leaves no ticks anywhere (the host reads that
    total from the server's cgroup instead).

    With `fd_rules` (labctl.syscalls.fd_rules(): which syscalls name which descriptors), also
    per process "holds" (its descriptors by kind: client connections, listening sockets, pipes...)
    and per blocked thread "waits_on": the descriptors its syscall waits on, and their kinds
    (harness/waits.py).
    """
    errors: list[str] = []
    parents: dict[int, int] = {}
    stats: dict[int, dict] = {}
    for pid in _pids(proc_root):
        text = _read(f"{proc_root}/{pid}/stat")
        if text is None:
            continue
        stat = parse_stat(text)
        parents[pid], stats[pid] = stat["ppid"], stat
    root = int(os.environ.get(TREE_ROOT_ENV) or 1)
    shim, pids = server_pids(parents, {pid: stat["comm"] for pid, stat in stats.items()}, root)
    rules = (fd_rules or {}).get(_machine()) if fd_rules else None
    sockets = waits.socket_kinds(proc_root, pids[0]) if rules is not None and pids else {}
    processes: list[ServerProcess] = []
    for pid in pids:
        stat = stats[pid]
        status = parse_status(_read(f"{proc_root}/{pid}/status") or "")
        threads = []
        try:
            tids = _pids(f"{proc_root}/{pid}/task")
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited since the listing
        fds = waits.fd_kinds(proc_root, pid, sockets) if rules is not None else None
        for tid in tids:
            task = _task(proc_root, pid, tid, errors, rules, fds)
            if task is not None:
                threads.append(task)
        if not threads:
            continue
        own, children = stat["utime"] + stat["stime"], stat["cutime"] + stat["cstime"]
        process: ServerProcess = {"pid": pid, "ppid": stat["ppid"], "comm": stat["comm"], "uid": status.get("uid"),
                   "state": stat["state"], "cmdline": _cmdline(proc_root, pid),
                   "ticks": own, "child_ticks": children, "threads": threads}
        if fds is not None:
            process["holds"] = waits.held(fds)
        processes.append(process)
    init = None
    if shim is not None:
        init = {"pid": shim, "comm": stats[shim]["comm"], "cmdline": _cmdline(proc_root, shim)}
    elif 1 in stats and root == 1:
        init = {"pid": 1, "comm": stats[1]["comm"], "cmdline": _cmdline(proc_root, 1), "is_server": True}
    return {
        "machine": _machine(),
        "clk_tck": os.sysconf("SC_CLK_TCK"),
        "time": time.monotonic(),
        "init": init,
        "processes": processes,
        "process_count": len(processes),
        "thread_count": sum(len(process["threads"]) for process in processes),
        "errors": errors,
    }


# -- in the client: hold connections open while the observer looks ------------------------------

def hold_connections(host: str, port: int, connections: int = 4, hold: float = 3.0,
                     request: str = "GET / HTTP/1.0\r\n", connect_timeout: float = 2.0,
                     probe: bool = False, probe_after: float = 0.5, probe_timeout: float = 1.0,
                     probe_request: str | None = None,
                     path: str = "/") -> Hold:
    """Open `connections` TCP connections, send each `request` (a PARTIAL request by default:
    the server is left waiting for the rest), hold them `hold` seconds from the start, close.
    Connecting stops after hold/2 s (a server whose backlog is full lets SYNs go unanswered).

    With `probe`, `probe_after` s after the start one more client sends a whole request
    and waits up to `probe_timeout` s: whether a server answers a new client while others
    are held is what tells an event loop from a one-at-a-time server.
    Reports how many connected, and at the end how many the server had closed or answered, and
    `started_at`: when the hold began on this container's clock (time.time(): the engine host's, which
    the observer's sampler stamps its looks with), so the host can read the looks of the hold itself
    however late this exec started.
    """
    started, started_at = time.monotonic(), time.time()
    connect_by = started + max(0.1, hold / 2)  # a full backlog drops SYNs: never spend the hold connecting
    held: list[socket.socket] = []
    errors: list[str] = []
    address, problem = client.resolve(host, max(0.1, hold / 2))
    if address is None:
        return {"requested": int(connections), "connected": 0, "connect_errors": [f"cannot resolve {host!r}: {problem}"],
                "started_at": started_at, "still_open": 0, "closed_by_server": 0, "answered": 0,
                "held_for": round(time.monotonic() - started, 4), "probe": None}
    for _ in range(int(connections)):
        left = connect_by - time.monotonic()
        if left <= 0:
            errors.append(f"stopped connecting after {hold / 2:g} s")
            break
        try:
            sock = socket.create_connection((address, port), timeout=min(connect_timeout, left))
        except OSError as error:
            if len(errors) < 5:
                errors.append(f"{type(error).__name__}: {error}")
            continue
        held.append(sock)
        try:
            if request:
                sock.sendall(request.encode())
        except OSError as error:
            if len(errors) < 5:
                errors.append(f"sending: {type(error).__name__}: {error}")
    connected_at = time.monotonic() - started
    probe_result: Probe | None = None
    if probe:
        time.sleep(max(0.0, started + probe_after - time.monotonic()))
        probe_result = send_probe(address, port, path, probe_timeout, probe_request)
    time.sleep(max(0.0, started + hold - time.monotonic()))
    open_, closed, answered = 0, 0, 0
    for sock in held:
        try:
            sock.setblocking(False)
            data = sock.recv(1)
            if data:
                answered += 1
            else:
                closed += 1
        except BlockingIOError:
            open_ += 1
        except OSError:
            closed += 1
        finally:
            sock.close()
    return {"requested": int(connections), "connected": len(held), "connect_errors": errors,
            "started_at": started_at, "connected_after": round(connected_at, 4), "still_open": open_,
            "closed_by_server": closed, "answered": answered, "held_for": round(time.monotonic() - started, 4),
            "probe": probe_result}


def send_probe(host: str, port: int, path: str = "/", timeout: float = 1.0, request: str | None = None) -> Probe:
    """One new client: an HTTP GET of `path`, or `request` as it is (another protocol: "PING\r\n");
    answered when any byte comes back (`seconds`: until the first), then read to its end within
    `timeout`. hold_connections' probe, and io_model's warm-up."""
    started = time.monotonic()
    address, problem = client.resolve(host, timeout)
    if address is None:
        return {"answered": False, "error": f"cannot resolve {host!r}: {problem}",
                "seconds": round(time.monotonic() - started, 4)}
    data = request.encode("latin-1", "replace") if request is not None else client.get_request(path, host)
    facts = client.exchange(address, port, data, max(0.05, started + timeout - time.monotonic()),
                            max_body=0, quiet=client.QUIET)
    if not facts.get("received"):
        why = facts.get("connect_error") or facts.get("read_error") or (
            f"no answer within {timeout:g} s" if facts.get("end") == "timeout" else facts.get("end", "no answer"))
        return {"answered": False, "error": why, "seconds": round(time.monotonic() - started, 4)}
    return {"answered": True, "status_line": facts.get("status_line") or "",
            "seconds": round(facts.get("first_byte_seconds") or 0.0, 4), "bytes": facts.get("received", 0)}


COMMANDS = {"proc_snapshot": proc_snapshot, "hold_connections": hold_connections, "probe": send_probe}
