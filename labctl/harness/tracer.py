"""In the observer: trace the server's threads with strace while the host plays a scenario.

Only the observer holds SYS_PTRACE, and it shares the server's PID namespace, so strace runs
here (`strace -f -ttt -T -p PID...`: every thread of every server process, and every thread or
process they start while traced). This module runs strace and reports what it wrote, nothing
more: which line is which syscall, and what that says, is decided on the host
(labctl/trace/strace.py parses it as the hostile text it is).

Why the host can line strace's times up with the client's packet times: `-ttt` stamps each
syscall with the wall clock (CLOCK_REALTIME) read by strace, and the client's capture stamps each
packet with the same clock (the kernel's skb timestamp); both containers run on the one kernel
of the engine's host, which has one realtime clock. Nothing to convert, no offset to guess.

How the host and this command meet, with two files of the observer's own /tmp (the server, in
another mount namespace, sees neither):
- READY is written once strace holds every thread of the server (TracerPid set in each task's
  status): from then on, nothing the server does is missed, and the host starts the scenario;
- STOP is written by the host when the scenario is over: strace detaches, the server runs on.

strace writes to a file in the observer's /tmp (memory-backed, capped by lab.yaml's disk limit),
not to a pipe: it writes each call's start before it starts the call's stopwatch, and a write to a
pipe that wakes a reader made every measured return ~40 µs early (-T's durations lose what comes
between). Bounded: at most `seconds` of tracing (and strace itself runs under timeout(1), so it
ends even if this process is killed), at most `max_bytes` of its output (more: strace is stopped
and the trace is cut there). Tracing slows every syscall of the server: it is for looking, never
for grading (no check runs it).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time

from . import proc  # relative: the package is `harness` in a container, `labctl.harness` in tests
from .wire import StraceRun

#: The most strace output kept (bytes); a server that makes more syscalls than this is cut short.
MAX_BYTES = 4 * 2**20
#: The longest trace, whatever the host says (seconds).
MAX_SECONDS = 120.0
#: How long strace may take to hold every thread of the server.
ATTACH_TIMEOUT = 10.0
#: Characters of each string argument strace shows (the request and the response's first bytes).
STRING_CHARS = 64
#: How often the stop file and strace's state are looked at.
POLL = 0.02
#: The most of strace's own messages (stderr: warnings, errors) reported.
MESSAGES_MAX = 4000


def control_paths(token: str) -> tuple[str, str]:
    """(READY, STOP): the two files through which the host and a trace meet (see the module's docstring)."""
    if not token.isascii() or not token.isalnum() or len(token) > 32:
        raise ValueError("a trace token is up to 32 letters and digits")
    return f"/tmp/labctl-trace-{token}.ready", f"/tmp/labctl-trace-{token}.stop"


def output_path(token: str) -> str:
    """Where strace writes (the observer's /tmp)."""
    control_paths(token)
    return f"/tmp/labctl-trace-{token}.strace"


def strace_command(pids: list[int], seconds: float, output: str, strings: int = STRING_CHARS) -> list[str]:
    """strace on every thread of `pids` (-f: also what they start), wall-clock entry times (-ttt) and
    durations (-T), under timeout(1) so that it ends on its own.

    strace reads the time it prints when a call enters, then decodes and writes out the call's start,
    and only then starts -T's stopwatch: entry + duration is the return less what came between. So:
    - not -y/-yy, whose look-ups of every descriptor made that ~1 ms here (returns seen before the
      packets that caused them);
    - `-e status=` all but "unavailable": with a status filter strace keeps each call's line in memory
      until the call returns and writes it whole then (no "unfinished"/"resumed" halves), instead of
      writing its start to the file before the stopwatch starts (10-30 µs here, more when the
      observer's CPU share runs out). The calls left out (no return status: exit, execve in a child)
      still end their thread's lane: "+++ exited" lines are not syscalls."""
    command = ["timeout", "-k", "2", f"{seconds + 5:g}",
               "strace", "-f", "-q", "-ttt", "-T", "-e", "status=successful,failed,unfinished,detached",
               "-s", str(int(strings)), "-o", output]
    for pid in pids:
        command += ["-p", str(pid)]
    return command


def _tracers(proc_root: str, pids: list[int]) -> dict[int, int | None]:
    """tid -> the pid tracing it (0: none; None: gone) for every thread of `pids`, now."""
    found: dict[int, int | None] = {}
    for pid in pids:
        try:
            tids = sorted(int(name) for name in os.listdir(f"{proc_root}/{pid}/task") if name.isdigit())
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"{proc_root}/{pid}/task/{tid}/status", encoding="ascii", errors="replace") as handle:
                    found[tid] = proc.parse_status(handle.read()).get("tracer", 0)
            except OSError:
                found[tid] = None
    return found


def trace_threads(token: str, seconds: float = 30.0, max_bytes: int = MAX_BYTES, strings: int = STRING_CHARS,
                  proc_root: str = "/proc") -> StraceRun:
    """Trace every thread of the server until the host writes STOP, `seconds` pass, or `max_bytes` of output.

    Answers strace's output (text, cut at `max_bytes`), the server's processes and threads when the
    trace began, when every thread was held (`attached_at`, wall clock) and when and why it stopped.
    """
    ready_path, stop_path = control_paths(token)
    seconds = max(0.5, min(float(seconds), MAX_SECONDS))
    before = proc.proc_snapshot(proc_root)
    pids = [process["pid"] for process in before["processes"]]
    threads = {str(process["pid"]): [[task["tid"], task["comm"]] for task in process["threads"]]
               for process in before["processes"]}
    facts: StraceRun = {"pids": pids, "threads": threads, "text": "", "truncated": False, "bytes": 0}
    if not pids:
        facts["error"] = "the server has no process to trace (has it exited?)"
        return facts
    output = output_path(token)
    limit = max(1024, int(max_bytes))
    # timeout(1) around this command, or the host's exec ending, stops it with SIGTERM: strace must be
    # stopped with it (the finally below), not left tracing the server until its own limit.
    signal.signal(signal.SIGTERM, _terminate)
    started = time.time()
    try:
        tracer = subprocess.Popen(strace_command(pids, seconds, output, strings), stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    except OSError as error:
        facts["error"] = f"strace could not start: {type(error).__name__}: {error}"
        return facts
    messages: list[bytes] = []
    reader = threading.Thread(target=lambda: messages.append(tracer.stderr.read() if tracer.stderr else b""),
                              daemon=True)
    reader.start()
    stopped_by = "time"
    try:
        attach_by = started + ATTACH_TIMEOUT
        while True:
            tracers = _tracers(proc_root, pids)
            held = [tid for tid, by in tracers.items() if by]
            if tracers and len(held) == len([by for by in tracers.values() if by is not None]):
                facts["attached_at"] = time.time()
                facts["attached_threads"] = len(held)
                break
            if tracer.poll() is not None or time.time() >= attach_by:
                facts["error"] = (f"strace did not hold every thread of the server within {ATTACH_TIMEOUT:g} s "
                                  f"({len(held)} of {len(tracers)})" if tracer.poll() is None
                                  else f"strace ended before it held the server (exit {tracer.returncode})")
                stopped_by = "error"
                break
            time.sleep(POLL)
        if stopped_by != "error":
            with open(ready_path, "w") as handle:
                json.dump({"attached_at": facts["attached_at"]}, handle)
            until = facts["attached_at"] + seconds
            while True:
                if os.path.exists(stop_path):
                    stopped_by = "stop"
                    break
                if _size(output) > limit:
                    stopped_by = "size"
                    break
                if tracer.poll() is not None:
                    stopped_by = "strace-exit"
                    break
                if time.time() >= until:
                    break
                time.sleep(POLL)
    finally:
        facts["stopped_at"] = time.time()
        _stop(tracer)
        reader.join(2.0)
        written = _size(output)
        kept = b""
        try:
            with open(output, "rb") as handle:
                kept = handle.read(limit)
        except OSError:
            pass
        if written > len(kept):
            kept = kept[:kept.rfind(b"\n") + 1]  # cut at a line's end: half a line is no line
        for path in (ready_path, stop_path, output):
            try:
                os.unlink(path)
            except OSError:
                pass
    facts["stopped_by"] = stopped_by
    facts["strace_exit"] = tracer.returncode
    facts["text"] = kept.decode("utf-8", errors="replace")
    facts["bytes"] = written
    facts["truncated"] = written > len(kept)
    facts["strace_messages"] = (b"".join(messages)).decode("utf-8", errors="replace")[-MESSAGES_MAX:]
    return facts


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _stop(tracer: subprocess.Popen) -> None:
    """Make strace detach (SIGTERM to timeout(1), which passes it on; strace detaches from every thread and
    exits), and kill it if it does not within a few seconds."""
    if tracer.poll() is not None:
        return
    try:
        tracer.send_signal(signal.SIGTERM)
        tracer.wait(5.0)
    except subprocess.TimeoutExpired:
        tracer.kill()
        tracer.wait(5.0)
    except OSError:
        pass


COMMANDS = {"trace_threads": trace_threads}
