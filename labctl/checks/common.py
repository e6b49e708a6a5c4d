"""What every check shares: running a harness command within the check's budget, the server's state
when it stopped answering, the one explanation of a connection that did not give an answer, and the
words of numbers.

One place for each: a check module that needs a runner, a margin, "is the server still alive?" or
`plural` takes it from here, so that the same fact is said the same way by every check.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from labctl.checks import CheckContext, Outcome
from labctl.errors import BudgetTooShort, LabctlError
from labctl.harness.wire import Exchange, TimedRequest, words

#: Seconds of a check's budget kept back for `docker exec` and the harness's own start.
EXEC_MARGIN = 1.5
#: Seconds a command that has a known amount of work may run past it before the host stops waiting.
EXEC_SLACK = 5.0
#: Seconds a server that stopped answering is given to show as stopped (its container's state lags
#: its death by a moment).
SETTLE = 1.5


# -- running harness commands -----------------------------------------------------------------------

def harness_budget(ctx: CheckContext, cap: float | None = None) -> float:
    """The `budget` to give a harness command: what is left of the check's, less the exec margin."""
    budget = max(0.3, ctx.remaining - EXEC_MARGIN)
    return min(budget, cap) if cap else budget


def run_harness(ctx: CheckContext, node: str, command: str, params: Mapping[str, Any],
                work: float | None = None) -> dict:
    """A harness command's facts; an error (not a verdict on the server) when the harness failed.

    Without `work`, the command bounds itself by the `budget` in its parameters (harness_budget) and
    the exec waits for what is left of the check. With `work` (seconds the command takes by design,
    like a hold of connections), the check must have that much left, and the exec waits that long
    plus EXEC_SLACK.
    """
    timeout = None
    if work is not None:
        if ctx.remaining < work + 0.5:
            raise BudgetTooShort(f"the check's time budget ({ctx.remaining:.1f} s left) is too short for {command} "
                              f"({work:.1f} s of work): give the check a longer timeout")
        timeout = work + EXEC_SLACK
    facts = ctx.harness(node, command, dict(params), timeout=timeout)
    if "error" in facts:
        raise LabctlError(f"harness {command} in {node} failed: {facts['error']}")
    return facts


# -- the server's state, when it stopped answering --------------------------------------------------

def server_evidence(ctx: CheckContext, settle: float = SETTLE, lines: int = 15) -> dict[str, Any]:
    """Whether the server still runs (its state given `settle` s to catch up with a death), its exit
    code, its log tail: evidence for a check that saw it stop answering. Never raises."""
    evidence: dict[str, Any] = {}
    try:
        info = ctx.lab.server_info(settle=settle)
        evidence["server_status"] = info.status
        if not info.running:
            evidence["server_exit_code"] = info.exit_code
            if info.oom_killed:
                evidence["server_oom_killed"] = True
    except Exception as error:  # evidence only: never let it hide the verdict
        evidence["server_state_error"] = f"{type(error).__name__}: {error}"
    try:
        evidence["server_log_tail"] = ctx.lab.log_tail(ctx.server, lines=lines)
    except Exception:  # evidence only
        pass
    return evidence


def exit_note(evidence: Mapping[str, Any]) -> str:
    """One sentence when the evidence says the server is no longer running; '' while it runs."""
    if "server_exit_code" not in evidence:
        return ""
    how = "it was killed for using too much memory" if evidence.get("server_oom_killed") \
        else f"it exited with code {evidence['server_exit_code']}"
    return f" The server is no longer running: {how} (its log is in the evidence; `labctl logs server`)."


def explain_failure(ctx: CheckContext, outcome: Outcome, settle: float = 0.0) -> Outcome:
    """On a failure, add the server's log tail and, if it is no longer running, say so."""
    if outcome.passed:
        return outcome
    evidence = server_evidence(ctx, settle=settle, lines=25)
    outcome.evidence.update(evidence)
    outcome.message = outcome.message.rstrip() + exit_note(evidence)
    return outcome


# -- answers -----------------------------------------------------------------------------------------

STATUS_LINE = re.compile(r"^HTTP/(\d+\.\d+) (\d{3})(?: (.*))?$")


@dataclass
class Response:
    """An answer's status line and headers."""

    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]]

    def values(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]


def parse_head(head: str) -> Response | None:
    """The status line and headers of an answer's head (latin-1 text); None if the status line is bad."""
    lines = head.split("\r\n")
    match = STATUS_LINE.match(lines[0])
    if not match:
        return None
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if colon and name and name == name.strip():
            headers.append((name, value.strip()))
    return Response(match.group(1), int(match.group(2)), match.group(3) or "", headers)


def answered(step: Exchange) -> Response:
    """The status line and headers of an exchange that explain_transport found well-formed."""
    response = parse_head(step.get("head", ""))
    if response is None:
        raise AssertionError("an answer explain_transport let through has a bad status line")
    return response


# -- one explanation of a connection that gave no good answer --------------------------------------

def explain_transport(facts: Exchange, label: str, port: int | None = None) -> str | None:
    """Why no well-formed answer came back on this connection, in words a student can act on; None
    when one did. Every check explains a connection this way (facts: wire.Exchange)."""
    # A timed request's "seconds" is its good answer's time (None without one); "elapsed" what it waited.
    times: Mapping[str, object] = facts
    elapsed = times.get("elapsed", times.get("seconds"))
    waited = seconds_text(elapsed if isinstance(elapsed, (int, float)) else None)
    if facts.get("skipped"):
        return f"{label} was not sent: {facts.get('skip_reason', 'the time budget ran out')}"
    if not facts.get("connected"):
        return _connect_problem(facts, label, port, waited)
    head = facts.get("head", "")
    end = facts.get("end")
    if not facts.get("received"):
        early = ""
        if facts.get("sent", 0) < facts.get("request_bytes", 0):
            early = f" (after only {facts.get('sent', 0)} of its {facts.get('request_bytes')} bytes had been sent)"
        if end == "closed":
            return f"the server closed the connection without answering {label}{early}"
        if end == "reset":
            return f"the server reset the connection without answering {label}{early} (did it crash?)"
        if end == "timeout":
            return (f"the server accepted the connection but sent nothing within {waited} after {label} (the kernel "
                    "completes connections in the listen backlog, but nobody read the request)")
        return f"no answer to {label}: {facts.get('read_error') or words(end or 'error')}"
    if not facts.get("head_complete"):
        hint = " (its lines end with \\n alone: HTTP lines end with \\r\\n)" if "\n\n" in head else ""
        how = "within " + waited if end == "timeout" else "before the connection ended"
        return (f"the answer to {label} never ended its headers with a blank line (\\r\\n\\r\\n) {how}{hint}; "
                f"it starts with {show(head)}")
    if parse_head(head) is None:
        return (f"the answer to {label} does not start with a status line like 'HTTP/1.0 200 OK'; "
                f"it starts with {show(head)}")
    if end == "timeout" and facts.get("content_length") is None:
        return (f"the server sent its answer to {label} but did not close the connection within {waited}; "
                "without a Content-Length header an HTTP/1.0 client knows the body is complete only when the "
                "server closes the connection")
    if end in ("reset", "error", "broken-pipe"):
        return f"the connection was reset while the server was sending its answer to {label}"
    return None


def _connect_problem(facts: Exchange, label: str, port: int | None, waited: str) -> str:
    end, error = facts.get("end"), facts.get("connect_error", "")
    where = f"the server on port {port}" if port else "the server"
    if end == "refused":
        return (f"could not connect to {where} for {label}: connection refused "
                "(the server is not listening: did it exit?)")
    if end == "connect-timeout":
        return (f"connecting to {where} for {label} timed out after {waited} (no answer to "
                "its SYN: the listen backlog is full, or the server is gone)")
    if end == "unresolved":
        return f"could not find the server for {label}: {error} (has its container stopped?)"
    return f"could not connect to {where} for {label}: {error or words(end or 'error')}"


def request_failure(request: TimedRequest, label: str, port: int | None = None) -> str:
    """Why a timed request (harness client.timed_request) got no whole 200 answer, as the end of a
    sentence like "a second client ..."."""
    problem = explain_transport(request, label, port)
    if problem:
        return problem
    status, line = request.get("status"), request.get("status_line") or "no status line"
    if status is not None and status != 200:
        return f"got \"{line}\" instead of a 200 answer to {label}"
    if request.get("error") in ("incomplete-body", "timeout", "closed") or not request.get("complete"):
        return (f"got a cut-off answer to {label} ({size_text(request.get('body_bytes'))} of "
                f"{size_text(request.get('content_length'))}) before the connection ended")
    return f"got no complete answer to {label}"


def request_ok(request: TimedRequest) -> bool:
    """The timed request got a whole 200 answer."""
    return request.get("error") is None and request.get("seconds") is not None


# -- words for numbers and bytes --------------------------------------------------------------------

def plural(count: int, word: str, many: str | None = None) -> str:
    """'1 thread', '4 threads', '2 processes' (`many` for an irregular plural)."""
    if many is None:
        many = word + "es" if word.endswith(("s", "x", "sh", "ch")) else word + "s"
    return f"{count} {word if count == 1 else many}"


def seconds_text(seconds: float | None) -> str:
    """A duration for a student: 0.8 ms, 35 ms, 1.25 s."""
    if seconds is None:
        return "-"
    if seconds < 0.0001:
        return f"{seconds * 1000:.3f} ms"
    if seconds < 0.01:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds:.2f} s"


def size_text(size: int | None) -> str:
    if size is None:
        return "?"
    if size >= 1 << 20:
        return f"{size / (1 << 20):.1f} MiB"
    if size >= 1 << 10:
        return f"{size / (1 << 10):.1f} KiB"
    return f"{size} bytes"


def counts_text(counts: Mapping[str, int]) -> str:
    """{'refused': 3, 'timeout': 1} -> '3 connection refused, 1 timeout' (largest first, in words)."""
    return ", ".join(f"{number} {words(kind)}" for kind, number in sorted(counts.items(), key=lambda item: -item[1]))


def show(data: bytes | str, limit: int = 60) -> str:
    """Bytes as a student can read them in a message: 'GET / HTTP/1.0\\r\\n\\r\\n', cut at `limit`."""
    if isinstance(data, str):
        data = data.encode("latin-1", errors="replace")
    text = repr(data[:limit])[2:-1]
    return f"'{text}…'" if len(data) > limit else f"'{text}'"


def decode_escapes(text: str | bytes) -> bytes:
    r"""Request bytes from a parameter: bytes as they are; text with backslash escapes decoded
    (\r \n \t \\ \xNN), so 'GET / HTTP/1.0\r\n\r\n' works in single quotes too; other characters UTF-8."""
    if isinstance(text, bytes):
        return text
    return codecs.escape_decode(text.encode("utf-8"))[0]
