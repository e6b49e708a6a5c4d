"""Checks of the catalog: concurrency side.

Can the server serve one client while another is slow, many clients at once, thousands
of idle connections, and a client that reads slowly? Each check runs one harness command
in the client container (labctl/harness/concurrency.py), which measures and returns
facts; the functions `judge_*` below turn those facts into a verdict and a message in
plain words. They are pure (facts in, Outcome out), so they are unit-tested without a lab.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from labctl.checks import PACKETS, CheckContext, CheckParams, Outcome, check
from labctl.checks.common import (
    counts_text,
    explain_failure,
    harness_budget,
    plural,
    request_failure,
    request_ok,
    run_harness,
    seconds_text,
    server_evidence,
    size_text,
)
from labctl.errors import LabctlError
from labctl.harness.wire import ConcurrentClients, Exchange, IdleConnections, SlowClient, SlowReader, TimedRequest

#: How much longer than the limit the timed request waits, so a late answer is measured, not just missed.
LATE_MARGIN = 1.0

SERVE_MANY_HINT = ("Serve each client in its own thread, or watch every socket with poll/epoll "
                   "(Python: selectors.DefaultSelector) and only call recv()/send() on the ready ones.")


def percentile(values: Iterable[float], q: float) -> float | None:
    """The q-th percentile (0 < q <= 100) by the nearest-rank method; None for no values.

    Nearest rank: the smallest value with at least q % of the values at or below it. It
    is always one of the measured values (no interpolation between two requests).
    """
    ordered = sorted(values)
    if not ordered:
        return None
    if not 0 < q <= 100:
        raise ValueError(f"percentile {q} is not in (0, 100]")
    rank = math.ceil(q / 100 * len(ordered))
    return ordered[max(0, rank - 1)]


def silent(request: TimedRequest) -> bool:
    """It connected (the listen backlog takes connections whatever the server does) and nothing came."""
    return bool(request.get("connected")) and not request.get("received") and request.get("end") == "timeout"


def probe_evidence(probe: TimedRequest) -> dict[str, Any]:
    keys = ("path", "status", "seconds", "connect_seconds", "first_byte_seconds", "elapsed", "error", "end", "received")
    return {key: probe.get(key) for key in keys}


def measure(ctx: CheckContext, command: str, params: dict[str, Any]) -> Any:
    """A concurrency harness command in the client, at the server, within the check's budget."""
    return run_harness(ctx, ctx.client, command, {"host": ctx.host, "port": ctx.port, **params,
                                                  "budget": max(1.0, harness_budget(ctx))})


# -- slow_client ------------------------------------------------------------------------------------

class SlowClientParams(CheckParams):
    slow_clients: int = Field(1, ge=1, le=1000, description=(
        "How many connections send an unfinished request (the request line, no blank line) and keep "
        "it open while the other client is timed."))
    path: str = Field("/index.html", pattern=r"^/", description=(
        "The file the timed client asks for (the slow clients begin to ask for it too)."))
    limit: float = Field(2.0, gt=0, le=60, description=(
        "Seconds within which the timed client's whole response must arrive."))
    settle: float = Field(0.3, ge=0, le=10, description=(
        "Seconds between opening the slow connections and the timed request, so the server has "
        "picked the slow clients up."))


def judge_slow_client(facts: SlowClient, params: SlowClientParams, port: int | None = None) -> Outcome:
    probe: TimedRequest = facts.get("probe") or {}
    slow = facts.get("slow_connected", 0)
    closed = sum((facts.get("slow_closed_before_probe") or {}).values())
    evidence = {"slow_clients": params.slow_clients, "slow_connected": slow, "limit": params.limit,
                "response_seconds": probe.get("seconds"), "slow_closed_by_server": closed,
                "slow_answered_after_finishing": facts.get("slow_answered_after_finishing"),
                "probe": probe_evidence(probe)}
    who = ("one slow client was" if slow == 1 else f"{slow} slow clients were") + " connected"
    # With several slow clients, "one at a time" is only one of the possible causes: a pool of
    # workers no larger than the slow clients is held up just the same.
    serves = ("the server serves one client at a time" if slow == 1 else
              f"the server serves at most {slow} clients at once (one at a time, or a pool of at most {slow} "
              "workers all waiting on slow clients)")
    if slow == 0:
        connect = counts_text(facts.get("slow_connect_errors") or {}) or "no connection"
        return Outcome(False, f"could not open the slow connections ({connect}): is the server running?",
                       evidence)
    seconds = probe.get("seconds") or 0.0
    if request_ok(probe) and seconds <= params.limit:
        message = (f"a second client was answered in {seconds_text(seconds)} while {who} "
                   f"with an unfinished request (limit {params.limit:g} s)")
        if closed:
            message += (f"; note: the server had closed {closed} of the {plural(slow, 'slow connection')} "
                        f"before their requests were finished")
        return Outcome(True, message, evidence)
    if request_ok(probe):
        return Outcome(False, (
            f"a second client waited {seconds_text(seconds)} for its response while {who} "
            f"(limit {params.limit:g} s): {serves}. While it waits in recv() "
            f"for a slow client's request to end, nobody else is served. {SERVE_MANY_HINT}"), evidence)
    if silent(probe):
        return Outcome(False, (
            f"a second client waited {seconds_text(probe.get('elapsed'))} and got no response while {who}: "
            f"{serves} (its connect succeeded only because the kernel queues "
            f"connections in the listen backlog). While the server waits in recv() for a slow client's "
            f"request to end, nobody else is served. {SERVE_MANY_HINT}"), evidence)
    return Outcome(False, f"while {who}, a second client got no good answer: "
                          f"{request_failure(probe, f'GET {params.path}', port)}", evidence)


@check("slow_client", SlowClientParams, default_timeout=20.0, proof=PACKETS,
       summary="A client that sends half a request must not stop the server from answering another one.")
def slow_client(ctx: CheckContext, params: SlowClientParams) -> Outcome:
    facts = measure(ctx, "slow_client", {
        "slow_clients": params.slow_clients, "path": params.path, "settle": params.settle,
        "timeout": params.limit + LATE_MARGIN})
    return explain_failure(ctx, judge_slow_client(facts, params, ctx.port))


# -- concurrent_clients -----------------------------------------------------------------------------

class ConcurrentClientsParams(CheckParams):
    clients: int = Field(20, ge=1, le=256, description="How many clients run at the same time (one thread each).")
    requests: int = Field(10, ge=1, le=1000, description=(
        "Requests each client makes one after the other, each on a fresh connection (HTTP/1.0)."))
    path: str = Field("/index.html", pattern=r"^/", description="The file every request asks for.")
    max_errors: int = Field(0, ge=0, description=(
        "How many requests may fail (no answer, reset, not 200, cut-off body) for the check to pass."))
    p99_limit: float | None = Field(None, gt=0, description=(
        "If given, the 99th percentile of the successful requests' latency must be at most this many "
        "seconds."))
    request_timeout: float = Field(5.0, gt=0, le=60, description=(
        "Seconds the server has to answer one request, beyond the time connecting may take."))
    ramp: float = Field(0.5, ge=0, le=30, description=(
        "Seconds over which the clients start (evenly): they run at once, but do not all connect in the same "
        "millisecond. A burst of connects larger than the server's listen() backlog overflows its queue "
        "whenever the server is slow to accept (a busy machine), which would make the verdict depend on the "
        "machine's load rather than on the server; 0 starts them all in one instant."))
    connect_timeout: float = Field(10.0, gt=0, le=60, description=(
        "Seconds connecting may take: one request counts as an error only when it got no whole answer in "
        "connect_timeout + request_timeout. When many clients arrive at once a listen queue can overflow for "
        "a moment; the kernel then sends the SYN (or the server's SYN-ACK) again after 1, 3 and 7 s. That is "
        "slow, not wrong, and how often it happens depends on how busy the machine is: the default lets three "
        "retries through, so the verdict does not depend on the grading machine's load (the latency shows "
        "them, and the message counts the connects that waited)."))

    @model_validator(mode="after")
    def _bounded(self) -> ConcurrentClientsParams:
        if self.clients * self.requests > 20000:
            raise ValueError(f"clients x requests = {self.clients * self.requests}: at most 20000 requests")
        return self


def latency_summary(latencies: list[float], wall_seconds: float | None) -> dict[str, Any]:
    ok = len(latencies)
    return {"p50": percentile(latencies, 50), "p90": percentile(latencies, 90), "p99": percentile(latencies, 99),
            "max": max(latencies) if latencies else None,
            "mean": round(sum(latencies) / ok, 6) if ok else None,
            "requests_per_second": round(ok / wall_seconds, 1) if ok and wall_seconds else None}


def judge_concurrent_clients(facts: ConcurrentClients, params: ConcurrentClientsParams) -> Outcome:
    latencies = [float(value) for value in facts.get("latencies") or []]
    errors: dict[str, int] = facts.get("errors") or {}
    failed = sum(errors.values())
    not_run = facts.get("not_run", 0)
    total = params.clients * params.requests
    stats = latency_summary(latencies, facts.get("wall_seconds"))
    evidence: dict[str, Any] = {
        "clients": params.clients, "requests_per_client": params.requests, "requests": total,
        "ok": len(latencies), "failed": failed, "errors": errors, "not_run": not_run,
        "latency_seconds": stats, "wall_seconds": facts.get("wall_seconds"),
        "requests_per_second": stats["requests_per_second"], "error_examples": facts.get("error_examples") or [],
        "max_errors": params.max_errors, "p99_limit": params.p99_limit,
        "clients_started": facts.get("clients_started", params.clients),
        "connects_retried": facts.get("syn_retried", 0)}
    shape = f"{plural(params.clients, 'client')} at once, {plural(params.requests, 'request')} each"
    numbers = (f"p50 {seconds_text(stats['p50'])}, p99 {seconds_text(stats['p99'])}"
               + (f", {stats['requests_per_second']:g} requests/s" if stats["requests_per_second"] else ""))
    problems = []
    if failed > params.max_errors:
        allowed = "none may fail" if params.max_errors == 0 else f"at most {params.max_errors} may"
        problems.append(f"{failed} of {total} requests failed ({counts_text(errors)}); {allowed}. "
                        "A server that answers one client at a time correctly but drops or resets "
                        "connections when several arrive together is not ready for real traffic: look for "
                        "a listen backlog that is too small, a limit on workers that closes the extra "
                        "connections, or state shared between clients without a lock")
    if not_run:
        problems.append(f"{not_run} of {total} requests could not even be made within the check's time "
                        "budget: the server answers too slowly")
    if params.p99_limit is not None and stats["p99"] is not None and stats["p99"] > params.p99_limit:
        problems.append(f"the 99th percentile of latency is {seconds_text(stats['p99'])}, above the limit "
                        f"of {seconds_text(params.p99_limit)}")
    if not latencies and not problems:
        problems.append("no request succeeded")
    if problems:
        return Outcome(False, f"{shape}: " + "; ".join(problems) + f" ({numbers})", evidence)
    ok_text = f"all {total} answered" if failed == 0 else f"{total - failed} of {total} answered ({failed} allowed to fail)"
    retried = facts.get("syn_retried", 0)
    note = (f"; {plural(retried, 'connect')} had to wait for the kernel to resend its SYN (the listen queue was "
            "full for a moment: a larger listen() backlog avoids that)" if retried else "")
    return Outcome(True, f"{shape}: {ok_text} ({numbers}){note}", evidence)


@check("concurrent_clients", ConcurrentClientsParams, default_timeout=60.0, proof=PACKETS,
       summary="Many clients at once, a fresh connection per request: no errors, latency percentiles.")
def concurrent_clients(ctx: CheckContext, params: ConcurrentClientsParams) -> Outcome:
    facts = measure(ctx, "concurrent_clients", {
        "clients": params.clients, "requests": params.requests, "path": params.path,
        "request_timeout": params.request_timeout, "connect_timeout": params.connect_timeout, "ramp": params.ramp})
    return explain_failure(ctx, judge_concurrent_clients(facts, params))


# -- idle_connections -------------------------------------------------------------------------------

class IdleConnectionsParams(CheckParams):
    connections: int = Field(2000, ge=1, le=19000, description=(
        "How many idle connections to open and hold (2000 is above select()'s FD_SETSIZE of 1024). "
        "Clamped, and said so, when the client container's nofile limit is lower."))
    batch: int = Field(100, ge=1, le=1000, description=(
        "Connections opened at once; the next batch waits `pause` seconds so a server that accepts "
        "quickly is not judged on the size of its listen backlog."))
    pause: float = Field(0.05, ge=0, le=5, description="Seconds between two batches.")
    connect_timeout: float = Field(3.0, gt=0, le=30, description=(
        "Seconds a batch's connects may take (covers the kernel's SYN retransmission after 1 s when a "
        "listen backlog overflowed for a moment). Opening stops at the first batch in which a connection "
        "fails: the server stopped accepting."))
    hold: float = Field(1.0, ge=0, le=60, description=(
        "Seconds the idle connections are held before the timed request."))
    path: str = Field("/index.html", pattern=r"^/", description="The file the timed request asks for.")
    limit: float = Field(2.0, gt=0, le=60, description=(
        "Seconds within which the timed request's whole response must arrive while the idle "
        "connections are open."))
    max_closed: int = Field(0, ge=0, description=(
        "How many idle connections the server may close during the check (a few seconds) and still pass."))


SELECT_SIGNS = ("out of range in select", "fd_setsize", "filedescriptor out of range")
THREAD_SIGNS = ("can't start new thread", "can not start new thread", "resource temporarily unavailable",
                "pthread_create")


def judge_idle_connections(facts: IdleConnections, params: IdleConnectionsParams, log_tail: str | None = None,
                           port: int | None = None) -> Outcome:
    probe: TimedRequest = facts.get("probe") or {}
    target = facts.get("target", params.connections)
    connected = facts.get("connected", 0)
    failures: dict[str, int] = facts.get("connect_failures") or {}
    closed_counts: dict[str, int] = facts.get("closed_after_probe") or facts.get("closed_before_probe") or {}
    closed = max(sum((facts.get("closed_before_probe") or {}).values()), sum(closed_counts.values()))
    evidence: dict[str, Any] = {
        "asked": params.connections, "target": target, "clamped": bool(facts.get("clamped")),
        "client_nofile": facts.get("nofile"), "connected": connected, "connect_failures": failures,
        "first_failure_after": facts.get("first_failure_after"), "open_seconds": facts.get("open_seconds"),
        "closed_by_server": closed, "closed_kinds": closed_counts, "limit": params.limit,
        "response_seconds": probe.get("seconds"), "probe": probe_evidence(probe)}
    clamp_note = ""
    if facts.get("clamped"):
        limits = facts.get("nofile")
        nofile = limits["soft"] if limits else None
        clamp_note = (f" (the client could hold only {target} of the {params.connections} asked: its nofile "
                      f"limit is {nofile}; raise nodes.client.limits.nofile in lab.yaml)")
    problems = []
    if connected < target:
        when = facts.get("first_failure_after")
        problems.append(f"the server stopped taking new connections after about {when if when is not None else connected} "
                        f"idle ones (only {connected} of {target} connected; {counts_text(failures) or 'none failed'})")
    if closed > params.max_closed:
        problems.append(f"the server closed {closed} of the {connected} idle connections it had "
                        f"({counts_text(closed_counts)})")
    seconds = probe.get("seconds") or 0.0
    late = _late_or_failed(probe, params.limit, f"GET {params.path}", port)
    if late:
        problems.append(f"a new request then {late}")
    if not problems:
        message = (f"the server held {connected} idle connections and still answered a new request in "
                   f"{seconds_text(seconds)} (limit {params.limit:g} s)")
        return Outcome(True, message + clamp_note, evidence)
    return Outcome(False, f"with {plural(target, 'idle connection')} opened: " + "; ".join(problems)
                   + clamp_note + ". " + _idle_hint(log_tail), evidence)


def _late_or_failed(request: TimedRequest, limit: float, label: str, port: int | None) -> str | None:
    """None when the timed request got a whole answer within `limit`; else what happened, as the end of
    'a new request then ...'."""
    seconds = request.get("seconds") or 0.0
    if request_ok(request) and seconds <= limit:
        return None
    if request_ok(request):
        return f"took {seconds_text(seconds)} (limit {limit:g} s)"
    return f"got no good answer: {request_failure(request, label, port)}"


def _idle_hint(log_tail: str | None) -> str:
    """What to do about idle connections a server could not hold, from what its log says."""
    log = (log_tail or "").lower()
    if any(sign in log for sign in SELECT_SIGNS):
        return ("The server's log says select() failed: select() cannot watch a descriptor numbered 1024 or "
                "more (FD_SETSIZE), so a select() server breaks past about 1020 connections. Use poll() or "
                "epoll (Python: selectors.DefaultSelector) instead.")
    if any(sign in log for sign in THREAD_SIGNS):
        return ("The server's log says it could not start a new thread: a thread per connection needs a thread "
                "for every idle client, and this lab allows a few hundred. Watch the sockets with poll/epoll "
                "(Python: selectors.DefaultSelector) instead.")
    return ("Idle connections cost nothing to a server that waits with poll/epoll; a server that serves one "
            "client at a time never takes more than its listen backlog, a thread per connection runs out of "
            "threads (this lab allows a few hundred), and select() breaks past descriptor 1023 (FD_SETSIZE).")


@check("idle_connections", IdleConnectionsParams, default_timeout=60.0, proof=PACKETS,
       summary="Thousands of idle connections (more than select() can watch) and a new request is still served.")
def idle_connections(ctx: CheckContext, params: IdleConnectionsParams) -> Outcome:
    facts = measure(ctx, "idle_connections", {
        "connections": params.connections, "batch": params.batch, "pause": params.pause,
        "connect_timeout": params.connect_timeout, "hold": params.hold, "path": params.path,
        "timeout": params.limit + LATE_MARGIN})
    outcome = judge_idle_connections(facts, params, port=ctx.port)
    if not outcome.passed:  # judge again knowing what the server's log says (select, threads)
        tail = server_evidence(ctx, settle=0.0, lines=25).get("server_log_tail")
        outcome = judge_idle_connections(facts, params, log_tail=tail, port=ctx.port)
    return explain_failure(ctx, outcome)


# -- slow_reader ------------------------------------------------------------------------------------

class SlowReaderParams(CheckParams):
    path: str = Field("/large.bin", pattern=r"^/", description=(
        "A large file the slow reader asks for: it must be larger than the kernel's socket buffers hold "
        "(several MB), or a server's send() never has to wait."))
    probe_path: str = Field("/index.html", pattern=r"^/", description=(
        "The file the other, timed client asks for while the slow reader reads."))
    limit: float = Field(2.0, gt=0, le=60, description=(
        "Seconds within which the timed client's whole response must arrive."))
    rcvbuf: int = Field(4096, ge=1024, le=1 << 20, description=(
        "The slow reader's SO_RCVBUF in bytes (the kernel doubles it): a small window fills the server's "
        "send buffer fast."))
    read_size: int = Field(1024, ge=1, le=1 << 20, description="Bytes the slow reader takes per read.")
    read_pause: float = Field(0.05, ge=0.001, le=5, description="Seconds the slow reader waits between two reads.")
    settle: float = Field(0.5, ge=0, le=10, description=(
        "Seconds the slow reader reads slowly before the timed request, so the server's send has filled "
        "the buffers and waits."))
    min_size: int = Field(4 << 20, ge=0, description=(
        "Smallest size of `path` for the check to mean something; a smaller file is an error of the "
        "exercise (not of the student)."))
    drain_timeout: float = Field(10.0, gt=0, le=120, description=(
        "Seconds the slow reader may then take to read the rest of the file at full speed."))


def expected_file(docroot: Path | None, path: str) -> tuple[int, str] | None:
    """(size, sha256) of the file a URL path names in the exercise's docroot, if it is there."""
    if docroot is None:
        return None
    file = (docroot / path.lstrip("/")).resolve()
    if not file.is_file() or docroot.resolve() not in file.parents:
        return None
    digest = hashlib.sha256()
    with file.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return file.stat().st_size, digest.hexdigest()


def judge_slow_reader(facts: SlowReader, params: SlowReaderParams, expected: tuple[int, str] | None = None,
                      port: int | None = None) -> Outcome:
    slow: Exchange = facts.get("slow") or {}
    probe: TimedRequest = facts.get("probe") or {}
    size = expected[0] if expected else slow.get("content_length")
    evidence: dict[str, Any] = {
        "path": params.path, "file_bytes": size, "limit": params.limit, "response_seconds": probe.get("seconds"),
        "slow_status": slow.get("status"), "slow_received": slow.get("body_bytes"),
        "slow_complete": slow.get("complete"), "slow_bytes_before_probe": facts.get("slow_bytes_before_probe"),
        "slow_bytes_during_probe": facts.get("slow_bytes_during_probe"), "slow_rcvbuf": facts.get("rcvbuf"),
        "drain_seconds": facts.get("drain_seconds"), "probe": probe_evidence(probe)}
    if slow.get("status") != 200:
        got = slow.get("status_line") or facts.get("slow_error") or "no answer"
        return Outcome(False, f"the request for {params.path} (a large file this check reads slowly) got "
                              f"\"{got}\" instead of a 200 response", evidence)
    if size is not None and size < params.min_size:
        raise LabctlError(f"slow_reader: {params.path} has {size_text(size)}, less than min_size "
                          f"{size_text(params.min_size)}: the server's send() would never have to wait; "
                          "give the exercise a larger file")
    reader = f"while a client read {params.path} ({size_text(size)}) slowly"
    seconds = probe.get("seconds") or 0.0
    if not (request_ok(probe) and seconds <= params.limit):
        return Outcome(False, _stuck_behind_the_reader(reader, probe, params, port), evidence)
    received = slow.get("body_bytes") or 0
    if not slow.get("complete") or (size is not None and received < size):
        how = "before the server closed the connection" if slow.get("end") == "closed" else \
            f"(the rest did not come within {params.drain_timeout:g} s)"
        return Outcome(False, (
            f"{reader}, a second client was answered in {seconds_text(seconds)}, but the slow reader "
            f"received only {size_text(received)} of {size_text(size)} {how}: send() on a non-blocking socket "
            "may take only part of the data; keep the rest and send it when the socket is writable again."),
            evidence)
    if expected and slow.get("body_sha256") and slow.get("body_sha256") != expected[1]:
        return Outcome(False, (
            f"{reader}, the slow reader received {size_text(received)} but they differ from the file: parts "
            "were sent twice, skipped or out of order. After a partial send(), continue exactly where it "
            "stopped."), evidence)
    return Outcome(True, (f"{reader}, a second client was answered in {seconds_text(seconds)} "
                          f"(limit {params.limit:g} s), and the slow reader then got the whole file"), evidence)


def _stuck_behind_the_reader(reader: str, probe: TimedRequest, params: SlowReaderParams, port: int | None) -> str:
    """Why the second client was not answered in time while the slow reader read."""
    if request_ok(probe):
        what = f"waited {seconds_text(probe.get('seconds'))} for its response (limit {params.limit:g} s)"
    elif silent(probe):
        what = f"waited {seconds_text(probe.get('elapsed'))} and got no response"
    else:
        return f"{reader}, a second client got no good answer: {request_failure(probe, f'GET {params.probe_path}', port)}"
    return (f"{reader}, a second client {what}: the server is stuck in send()/sendall() to the slow reader. "
            "A blocking send waits until the reader has taken the data, and meanwhile nobody else is served. "
            "Serve each client in its own thread, or in an event loop use non-blocking sockets: keep what "
            "send() did not take and send it when poll/epoll says the socket is writable again.")


@check("slow_reader", SlowReaderParams, default_timeout=30.0, proof=PACKETS,
       summary="A client that reads a large file slowly must not stop the server from answering another one.")
def slow_reader(ctx: CheckContext, params: SlowReaderParams) -> Outcome:
    expected = expected_file(ctx.docroot, params.path)
    if expected is not None and expected[0] < params.min_size:
        raise LabctlError(f"slow_reader: {params.path} in the exercise's docroot has {size_text(expected[0])}, "
                          f"less than min_size {size_text(params.min_size)}: the server's send() would never "
                          "have to wait; give the exercise a larger file")
    facts = measure(ctx, "slow_reader", {
        "path": params.path, "probe_path": params.probe_path, "timeout": params.limit + LATE_MARGIN,
        "rcvbuf": params.rcvbuf, "read_size": params.read_size, "read_pause": params.read_pause,
        "settle": params.settle, "drain_timeout": params.drain_timeout})
    return explain_failure(ctx, judge_slow_reader(facts, params, expected, ctx.port))
