"""Checks of the catalog: protocol side -- what a client sees on the wire.

- `http`: one request, the status, headers, body (exact, contains, regex, or a docroot file's sha256);
- `malformed_request`: bad request lines get 400, and the server still answers afterwards;
- `client_reset`: connections reset (RST) in the middle of a request do not kill the server;
- `trickled_request`: a request arriving in many tiny TCP segments is still answered right;
- `syn_flood`: with the SYN queue flooded by half-open connections, a normal client still gets in.
  Whether the server's kernel uses SYN cookies is the server's net.ipv4.tcp_syncookies: an exercise
  sets it (`submission: {sysctls: ...}`); the check reports it.

The harness (labctl/harness/protocol.py, raw.py) runs the exchanges inside the client and
injector containers and returns facts; this module turns them into a verdict, a message a
student understands and the numbers behind it. The pure parts (request building, response
parsing, judging) are plain functions so that unit tests can feed them facts.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from labctl.checks import PACKETS, CheckContext, CheckParams, Outcome, check
from labctl.checks.common import (
    Response,
    answered,
    decode_escapes,
    exit_note,
    explain_transport,
    harness_budget,
    parse_head,
    run_harness,
    server_evidence,
    show,
)
from labctl.errors import LabctlError
from labctl.harness.wire import Exchange, words

TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


# -- bytes and text ---------------------------------------------------------------------------------

def status_text(code: int) -> str:
    try:
        return f"{code} {HTTPStatus(code).phrase}"
    except ValueError:
        return str(code)


def expected_status_text(expected: int | list[int]) -> str:
    codes = expected if isinstance(expected, list) else [expected]
    return " or ".join(status_text(code) for code in codes)


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


# -- parameters -------------------------------------------------------------------------------------

class Expect(CheckParams):
    """What the answer must be. Every expectation given must hold."""

    status: int | list[int] | None = Field(
        200, description="Expected status code, or a list of acceptable ones; null accepts any status.")
    headers: dict[str, str] = Field(
        default_factory=dict,
        description="Headers the response must have (a subset match): names are case-insensitive, values are "
                    "compared with surrounding spaces trimmed and case ignored; the value '*' only asks that the "
                    "header be present.")
    body: str | None = Field(None, description="The exact body expected (UTF-8 text).")
    contains: str | list[str] | None = Field(None, description="Text (or texts) the body must contain.")
    regex: str | None = Field(None, description="A Python regular expression the body must match (re.search).")
    file: str | None = Field(
        None, description="A file the exercise ships, relative to its docroot: the body must be exactly that file "
                          "(compared by sha256 digest).")
    content_length: bool = Field(
        True, description="When the response has a Content-Length header, the body must have exactly that many bytes.")

    @field_validator("status")
    @classmethod
    def _status_range(cls, value):
        for code in value if isinstance(value, list) else [value] if value is not None else []:
            if not 100 <= code <= 599:
                raise ValueError(f"{code} is not an HTTP status code (100-599)")
        return value

    @field_validator("regex")
    @classmethod
    def _regex_compiles(cls, value):
        if value is not None:
            try:
                re.compile(value)
            except re.error as error:
                raise ValueError(f"not a valid regular expression: {error}") from None
        return value

    @field_validator("file")
    @classmethod
    def _relative(cls, value):
        if value is not None and (Path(value).is_absolute() or ".." in Path(value).parts):
            raise ValueError("give a path relative to the exercise's docroot (no leading '/', no '..')")
        return value


class RequestFields(CheckParams):
    """The request to send: built from method/path/headers/body, or given whole as `raw`."""

    method: str = Field("GET", description="The request method.")
    path: str = Field("/", description="The request target (path and query), starting with '/'.")
    version: str = Field("HTTP/1.0", description="The protocol version on the request line.")
    headers: dict[str, str] = Field(
        default_factory=dict,
        description="Request headers; 'Host: <server node>' is added unless given.")
    body: str | None = Field(None, description="A request body (Content-Length is added).")
    raw: str | bytes | None = Field(
        None, description=r"The whole request as bytes, sent as it is instead of method/path/headers/body; "
                          r"backslash escapes (\r \n \xNN) are decoded.")

    @field_validator("method")
    @classmethod
    def _method_token(cls, value):
        if not TOKEN.fullmatch(value):
            raise ValueError("a method is one word of letters (GET, HEAD, POST ...); use `raw` to send a bad one")
        return value

    @field_validator("path")
    @classmethod
    def _path_shape(cls, value):
        if not value or any(ch in value for ch in " \r\n"):
            raise ValueError("a path has no spaces or line breaks; use `raw` to send a bad one")
        return value

    @field_validator("raw")
    @classmethod
    def _raw_decodes(cls, value):
        if value is not None:
            try:
                decode_escapes(value)
            except (ValueError, UnicodeError) as error:
                raise ValueError(f"bad backslash escape: {error}") from None
        return value

    @model_validator(mode="after")
    def _raw_alone(self):
        if self.raw is not None:
            mixed = sorted(self.model_fields_set & {"method", "path", "version", "headers", "body"})
            if mixed:
                raise ValueError(f"`raw` is the whole request: do not also give {', '.join(mixed)}")
        return self

    def request_bytes(self, host: str) -> bytes:
        if self.raw is not None:
            return decode_escapes(self.raw)
        return build_request(self.method, self.path, self.version, self.headers, self.body, host)

    def label(self) -> str:
        """How messages name this request: 'GET /index.html', or the raw request's first line."""
        if self.raw is not None:
            return f"the request {show(decode_escapes(self.raw), 40)}"
        return f"{self.method} {self.path}"


def build_request(method: str, path: str, version: str, headers: dict[str, str], body: str | None,
                  host: str) -> bytes:
    lines = [f"{method} {path} {version}"]
    names = {name.lower() for name in headers}
    if "host" not in names:
        lines.append(f"Host: {host}")
    lines += [f"{name}: {value}" for name, value in headers.items()]
    data = (body or "").encode("utf-8")
    if body is not None and "content-length" not in names:
        lines.append(f"Content-Length: {len(data)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + data


class HttpParams(RequestFields):
    expect: Expect = Field(default_factory=Expect, description="What the answer must be.")
    timeout: float = Field(5.0, gt=0, le=300, description="Seconds for the whole exchange: connect, send, and read "
                                                          "until the server closes the connection (or, when the "
                                                          "response has a Content-Length, until that many bytes "
                                                          "of body arrived).")


MALFORMED: dict[str, tuple[bytes, str]] = {
    "garbage": (b"HELLO THERE\r\n\r\n", "two words that are no request line"),
    "missing_path": (b"GET\r\n\r\n", "a request line with no path"),
    "bad_version": (b"GET / XTTP/1.0\r\n\r\n", "a request line whose version is not HTTP/x.y"),
    "extra_token": (b"GET / HTTP/1.0 extra\r\n\r\n", "a request line with four words"),
    "binary": (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(range(32)) + b"\r\n\r\n",
               "binary bytes (the start of a TLS handshake: an https client on the http port)"),
    "bad_header": (b"GET / HTTP/1.0\r\nthis line has no colon\r\n\r\n", "a header line without a colon"),
}
MalformedName = Literal["garbage", "missing_path", "bad_version", "extra_token", "binary", "bad_header"]
DEFAULT_MALFORMED: list[MalformedName] = ["garbage", "missing_path", "bad_version", "extra_token", "binary"]


class MalformedParams(CheckParams):
    variants: list[MalformedName] = Field(
        default_factory=lambda: list(DEFAULT_MALFORMED),
        description="Built-in bad requests to send: garbage, missing_path, bad_version, extra_token, binary "
                    "(default: these five) and bad_header.")
    custom: dict[str, str] = Field(
        default_factory=dict,
        description=r"More bad requests, name: raw request (backslash escapes like \r\n are decoded).")
    expect_status: int | list[int] = Field(400, description="The status each bad request must get.")
    alive_path: str = Field("/", description="The good request sent afterwards: GET of this path.")
    alive_status: int | list[int] | None = Field(
        None, description="The status the good request must get; null accepts any well-formed answer.")
    timeout: float = Field(3.0, gt=0, le=60, description="Seconds for each request's answer.")

    @field_validator("custom")
    @classmethod
    def _custom_decodes(cls, value):
        for name, raw in value.items():
            try:
                decode_escapes(raw)
            except (ValueError, UnicodeError) as error:
                raise ValueError(f"{name}: bad backslash escape: {error}") from None
        return value

    @model_validator(mode="after")
    def _something_to_send(self):
        if not self.variants and not self.custom:
            raise ValueError("give at least one variant or custom request")
        return self


class ResetParams(CheckParams):
    times: int = Field(5, ge=1, le=100, description="How many connections to reset.")
    partial: str = Field(r"GET / HTTP/1.0\r\nHost: server\r\nUser-Ag",
                         description=r"The half request sent before each reset (backslash escapes decoded).")
    pause: float = Field(0.05, ge=0, le=5, description="Seconds between the half request and the reset.")
    alive_path: str = Field("/", description="The good request sent afterwards: GET of this path.")
    alive_status: int | list[int] | None = Field(
        None, description="The status the good request must get; null accepts any well-formed answer.")
    timeout: float = Field(3.0, gt=0, le=60, description="Seconds for each connection and for the good answer.")


class TrickleParams(RequestFields):
    headers: dict[str, str] = Field(
        default_factory=lambda: {"User-Agent": "labctl-trickle", "Accept": "*/*"},
        description="Request headers; 'Host: <server node>' is added unless given.")
    expect: Expect = Field(default_factory=Expect, description="What the answer must be.")
    segment_min: int = Field(1, ge=1, le=64, description="Fewest bytes per send (TCP_NODELAY: one segment each).")
    segment_max: int = Field(3, ge=1, le=64, description="Most bytes per send.")
    delay: float = Field(0.01, ge=0, le=1, description="Seconds between two sends.")
    max_send_seconds: float = Field(5.0, gt=0, le=60, description="Bound on the whole trickle: the delay shrinks "
                                                                  "so that sending takes at most this long.")
    timeout: float = Field(5.0, gt=0, le=60, description="Seconds for the answer after the last byte.")
    baseline: bool = Field(True, description="First send the same request in one piece, to tell a server that "
                                             "cannot handle trickling from one that cannot answer at all.")
    seed: int = Field(1, description="Seed of the segment sizes (the same seed, the same segments).")

    @model_validator(mode="after")
    def _sizes(self):
        if self.segment_min > self.segment_max:
            raise ValueError("segment_min is larger than segment_max")
        return self

    def effective_delay(self, size: int) -> float:
        """The delay between sends, shrunk so that the whole trickle takes at most max_send_seconds."""
        segments = max(1, round(size / ((self.segment_min + self.segment_max) / 2)))
        return min(self.delay, self.max_send_seconds / segments)


class SynFloodParams(CheckParams):
    syns: int = Field(256, ge=1, le=5000, description="How many SYNs to send (random source ports, never "
                                                      "completed).")
    listen: float = Field(1.0, ge=0.1, le=10, description="Seconds to keep counting SYN-ACKs after the last SYN.")
    probe_path: str = Field("/", description="The normal request made from the client during the flood: GET of "
                                             "this path.")
    probe_status: int | list[int] | None = Field(
        None, description="The status the normal request must get; null accepts any well-formed answer.")
    probe_timeout: float = Field(3.0, gt=0, le=30, description="Seconds the normal request may take (the client "
                                                               "retries its SYN after 1 s and 3 s).")
    seed: int | None = Field(None, description="Seed of the source ports and sequence numbers (null: random).")


# -- responses --------------------------------------------------------------------------------------

def step_body(step: Exchange) -> bytes:
    return base64.b64decode(step.get("body") or "")


@dataclass(frozen=True)
class FileDigest:
    name: str
    size: int
    sha256: str


def file_digest(docroot: Path | None, name: str) -> FileDigest:
    """The digest of a docroot file on the host; an error for the instructor when it is missing."""
    if docroot is None:
        raise LabctlError(f"the check expects the file {name!r} but the exercise has no docroot")
    path = docroot / name
    if not path.is_file():
        raise LabctlError(f"the check expects the file {name!r}, which is not in the docroot {docroot}")
    data = path.read_bytes()
    return FileDigest(name, len(data), hashlib.sha256(data).hexdigest())


def expectation_problems(response: Response, step: Exchange, expect: Expect, label: str,
                         digest: FileDigest | None = None) -> list[str]:
    """What in a well-formed response differs from `expect`, one sentence each."""
    body = step_body(step)
    size = step.get("body_bytes", len(body))
    return (_status_problems(response, expect, label) + _header_problems(response, expect, label)
            + _length_problems(response, expect, label, size) + _body_problems(body, size, step, expect, label, digest))


def _status_problems(response: Response, expect: Expect, label: str) -> list[str]:
    if expect.status is None:
        return []
    wanted = expect.status if isinstance(expect.status, list) else [expect.status]
    if response.status in wanted:
        return []
    got = f"{response.status} {response.reason}".strip()
    return [f"the server answered {got} to {label}; expected {expected_status_text(expect.status)}"]


def _header_problems(response: Response, expect: Expect, label: str) -> list[str]:
    problems = []
    for name, value in expect.headers.items():
        found = response.values(name)
        if not found:
            problems.append(f"the answer to {label} has no {name} header"
                            + ("" if value.strip() == "*" else f"; expected '{value}'"))
        elif value.strip() != "*" and not any(v.strip().lower() == value.strip().lower() for v in found):
            problems.append(f"the {name} header of the answer to {label} is '{found[0]}'; expected '{value}'")
    return problems


def _length_problems(response: Response, expect: Expect, label: str, size: int) -> list[str]:
    if not expect.content_length:
        return []
    lengths = response.values("Content-Length")
    if len(set(lengths)) > 1:
        return [f"the answer to {label} has conflicting Content-Length headers: {', '.join(lengths)}"]
    if lengths and (not (lengths[0].isascii() and lengths[0].isdigit()) or int(lengths[0]) != size):
        return [f"the Content-Length header of the answer to {label} says {lengths[0]} bytes, "
                f"but the body has {size} bytes"]
    return []


def _body_problems(body: bytes, size: int, step: Exchange, expect: Expect, label: str,
                   digest: FileDigest | None) -> list[str]:
    problems = []
    if expect.body is not None:
        wanted_body = expect.body.encode("utf-8")
        if body != wanted_body or size != len(wanted_body):
            problems.append(f"the body of the answer to {label} is not the expected text: expected "
                            f"{show(wanted_body)} ({len(wanted_body)} bytes), got {show(body)} ({size} bytes)")
    text = body.decode("utf-8", errors="replace")
    for needle in [expect.contains] if isinstance(expect.contains, str) else expect.contains or []:
        if needle not in text:
            problems.append(f"the body of the answer to {label} does not contain {show(needle)}")
    if expect.regex is not None and not re.search(expect.regex, text):
        problems.append(f"the body of the answer to {label} does not match the pattern {show(expect.regex)}")
    if digest is not None and (step.get("body_sha256") != digest.sha256 or size != digest.size):
        problems.append(f"the body of the answer to {label} is not the file {digest.name}: expected {digest.size} "
                        f"bytes with sha256 {digest.sha256[:12]}…, got {size} bytes with sha256 "
                        f"{(step.get('body_sha256') or '')[:12]}…")
    return problems


def judge_exchange(step: Exchange, expect: Expect | None, label: str, port: int,
                   digest: FileDigest | None = None) -> list[str]:
    """All problems of one exchange: a transport problem alone, or the unmet expectations."""
    problem = explain_transport(step, label, port)
    if problem:
        return [problem]
    if expect is None:
        return []
    return expectation_problems(answered(step), step, expect, label, digest)


def exchange_evidence(step: Exchange) -> dict:
    """The numbers of one exchange for the report."""
    evidence: dict[str, Any] = {}
    for key in ("connected", "connect_error", "connect_seconds", "first_byte_seconds", "sent", "request_bytes",
                "segments", "end", "read_error", "send_error", "answered_early", "body_bytes", "body_sha256",
                "skipped", "skip_reason"):
        if step.get(key) is not None:
            evidence[key] = step[key]
    if step.get("seconds") is not None:
        evidence["total_seconds"] = step["seconds"]   # connect to the end of the answer
    response = parse_head(step.get("head", "")) if step.get("head_complete") else None
    if response is not None:
        evidence["status"] = response.status
        evidence["reason"] = response.reason
        evidence["headers"] = dict(response.headers[:30])
    elif step.get("head"):
        evidence["received_start"] = show(step["head"], 200)
    return evidence


# -- running harness commands -----------------------------------------------------------------------

def run_steps(ctx: CheckContext, steps: list[dict], cap: float | None = None) -> list[Exchange]:
    """Run request steps from the client (one harness call); the data is given as bytes."""
    wire = [{**step, "data": base64.b64encode(step["data"]).decode()} for step in steps]
    result = run_harness(ctx, ctx.client, "http_sequence",
                         {"host": ctx.host, "port": ctx.port, "steps": wire, "budget": harness_budget(ctx, cap)})
    return result["steps"]


def _get(path: str, host: str) -> bytes:
    return build_request("GET", path, "HTTP/1.0", {}, None, host)


def _join(problems: list[str], limit: int = 3) -> str:
    shown = "; ".join(problems[:limit])
    more = len(problems) - limit
    return shown + (f"; and {more} more" if more > 0 else "")


# -- http -------------------------------------------------------------------------------------------

@check("http", HttpParams, "One HTTP request: status, headers and body (text, pattern or a docroot file's digest).",
       default_timeout=20.0, proof=PACKETS)
def http(ctx: CheckContext, params: HttpParams) -> Outcome:
    digest = file_digest(ctx.docroot, params.expect.file) if params.expect.file else None
    data = params.request_bytes(ctx.server)
    [step] = run_steps(ctx, [{"name": "request", "data": data, "timeout": params.timeout}])
    outcome = judge_http(step, params, ctx.port, digest)
    if not outcome.passed and not step.get("received"):
        # No answer at all: a server that crashed on the request is seen as stopped (its state settles).
        outcome.evidence.update(server_evidence(ctx))
        outcome.message += exit_note(outcome.evidence)
    return outcome


def judge_http(step: Exchange, params: HttpParams, port: int, digest: FileDigest | None) -> Outcome:
    label = params.label()
    expect = params.expect
    if params.raw is None and params.method == "HEAD":   # the answer to HEAD has headers only
        expect = expect.model_copy(update={"content_length": False})
    problems = judge_exchange(step, expect, label, port, digest)
    evidence = {"request": label, **exchange_evidence(step)}
    if digest is not None:
        evidence["expected_file"] = digest.name
        evidence["expected_sha256"] = digest.sha256
        evidence["expected_bytes"] = digest.size
    if problems:
        return Outcome(False, _join(problems, 4), evidence)
    response = answered(step)
    return Outcome(True, f"{label}: {response.status} {response.reason}".rstrip()
                   + f", {step.get('body_bytes', 0)} bytes, as expected ({step.get('seconds', 0):.3f} s)", evidence)


# -- malformed_request ------------------------------------------------------------------------------

@check("malformed_request", MalformedParams,
       "Bad requests get 400 Bad Request, and the server still answers a good request afterwards.",
       default_timeout=30.0, proof=PACKETS)
def malformed_request(ctx: CheckContext, params: MalformedParams) -> Outcome:
    requests = malformed_requests(params)
    steps = [{"name": name, "data": data, "timeout": params.timeout} for name, (data, _) in requests.items()]
    steps.append({"name": "alive", "data": _get(params.alive_path, ctx.server), "timeout": params.timeout,
                  "always": True})
    results = run_steps(ctx, steps)
    outcome = judge_malformed(results, requests, params, ctx.port)
    if not outcome.passed and explain_transport(results[-1], "", ctx.port):
        outcome.evidence.update(server_evidence(ctx))
        outcome.message += exit_note(outcome.evidence)
    return outcome


def malformed_requests(params: MalformedParams) -> dict[str, tuple[bytes, str]]:
    requests: dict[str, tuple[bytes, str]] = {name: MALFORMED[name] for name in params.variants}
    for name, raw in params.custom.items():
        requests[name] = (decode_escapes(raw), "a custom bad request")
    return requests


def _where_it_stopped(steps: list[Exchange], requests: dict[str, tuple[bytes, str]], first_dead: str | None) -> str:
    """Which bad request a server that stopped answering stopped at, in a sentence."""
    names = list(requests)
    dead_step = next((step for step in steps if step["name"] == first_dead), None)
    if dead_step is None or first_dead is None:
        return "It answered the bad requests but not the good one after them"
    if dead_step.get("connected"):
        # No answer on an accepted connection: it went down while handling this one.
        data, what = requests[first_dead]
        return f"It stopped at {what} ({show(data, 40)})"
    if names.index(first_dead) > 0:
        data, what = requests[names[names.index(first_dead) - 1]]
        return f"It stopped after {what} ({show(data, 40)})"
    return "It did not accept connections from the first bad request on"


def judge_malformed(results: list[Exchange], requests: dict[str, tuple[bytes, str]], params: MalformedParams,
                    port: int) -> Outcome:
    *variant_steps, alive = results
    expect = Expect(status=params.expect_status, content_length=False)
    wrong, evidence_requests = [], {}
    first_dead: str | None = None
    for step in variant_steps:
        data, what = requests[step["name"]]
        label = f"{what} ({show(data, 40)})"
        problems = judge_exchange(step, expect, label, port)
        response = parse_head(step.get("head", "")) if step.get("head_complete") else None
        evidence_requests[step["name"]] = {"request": show(data, 80), "status": response.status if response else None,
                                           "problem": problems[0] if problems else None,
                                           "seconds": step.get("seconds")}
        if problems and not step.get("skipped"):
            wrong.append(problems[0])
        if first_dead is None and explain_transport(step, label, port) and not step.get("skipped"):
            first_dead = step["name"]
    alive_label = f"the good request GET {params.alive_path}"
    alive_problems = judge_exchange(alive, Expect(status=params.alive_status, content_length=False),
                                    alive_label, port)
    evidence: dict[str, Any] = {"requests": evidence_requests, "alive": exchange_evidence(alive),
                                "expected_status": params.expect_status}
    if alive_problems and explain_transport(alive, alive_label, port):
        where = _where_it_stopped(variant_steps, requests, first_dead)
        message = (f"after the bad requests the server stopped answering: {alive_problems[0]}. {where}; "
                   "a server must survive bad input: catch the error for that one request, answer "
                   "400 Bad Request, close that connection and keep serving.")
        return Outcome(False, message, evidence)
    if wrong:
        return Outcome(False, _join(wrong) + ".", evidence)
    if alive_problems:
        return Outcome(False, f"the bad requests were answered {expected_status_text(params.expect_status)}, "
                              f"but afterwards {alive_problems[0]}.", evidence)
    return Outcome(True, f"all {len(variant_steps)} bad requests got {expected_status_text(params.expect_status)} "
                         f"and the server still answered GET {params.alive_path} afterwards", evidence)


# -- client_reset -----------------------------------------------------------------------------------

@check("client_reset", ResetParams,
       "Connections reset (RST) in the middle of a request must not stop the server.", default_timeout=30.0,
       proof=PACKETS)
def client_reset(ctx: CheckContext, params: ResetParams) -> Outcome:
    partial = decode_escapes(params.partial)
    steps = [{"name": f"reset{i + 1}", "action": "reset", "data": partial, "pause": params.pause,
              "timeout": params.timeout, "pause_after": 0.05} for i in range(params.times)]
    steps[-1]["pause_after"] = 0.2   # give a crashing server the time to be gone before the good request
    steps.append({"name": "alive", "data": _get(params.alive_path, ctx.server), "timeout": params.timeout,
                  "always": True})
    results = run_steps(ctx, steps)
    outcome = judge_reset(results, params, ctx.port)
    if not outcome.passed:
        outcome.evidence.update(server_evidence(ctx))
        outcome.message += exit_note(outcome.evidence)
    return outcome


def judge_reset(results: list[Exchange], params: ResetParams, port: int) -> Outcome:
    *resets, alive = results
    connected = [step for step in resets if step.get("connected")]
    first_refused = next((i for i, step in enumerate(resets) if not step.get("connected") and not step.get("skipped")),
                         None)
    alive_label = f"the good request GET {params.alive_path}"
    problems = judge_exchange(alive, Expect(status=params.alive_status, content_length=False), alive_label, port)
    evidence: dict[str, Any] = {
        "resets_asked": params.times, "resets_done": len(connected), "partial_bytes": len(decode_escapes(params.partial)),
        "resets": [{"connected": step.get("connected"), "connect_error": step.get("connect_error"),
                    "server_spoke_first": step.get("server_spoke_first")} for step in resets],
        "alive": exchange_evidence(alive)}
    what = (f"{len(connected)} connection{'s' if len(connected) != 1 else ''} reset (RST) in the middle of a "
            f"request ({show(decode_escapes(params.partial), 30)} then SO_LINGER 0 close)")
    if first_refused is not None:
        after = (f"after the {_ordinal(first_refused)} reset" if first_refused else "from the first reset on")
        return Outcome(False, f"the server stopped accepting connections {after} "
                              f"({words(resets[first_refused].get('end') or 'error')}). A reset makes recv() raise "
                              "ConnectionResetError (ECONNRESET): catch it, close that connection and keep serving.",
                       evidence)
    if problems:
        return Outcome(False, f"after {what}, {problems[0]}. A reset makes recv() raise ConnectionResetError "
                              "(ECONNRESET) or send() raise BrokenPipeError: catch it, close that connection and "
                              "keep serving.", evidence)
    response = answered(alive)
    return Outcome(True, f"after {what}, the server still answered GET {params.alive_path} "
                         f"({response.status} in {alive.get('seconds', 0):.3f} s)", evidence)


# -- trickled_request -------------------------------------------------------------------------------

@check("trickled_request", TrickleParams,
       "A request arriving in many tiny TCP segments is answered like one sent whole (no single-recv() servers).",
       default_timeout=30.0, proof=PACKETS)
def trickled_request(ctx: CheckContext, params: TrickleParams) -> Outcome:
    digest = file_digest(ctx.docroot, params.expect.file) if params.expect.file else None
    data = params.request_bytes(ctx.server)
    delay = params.effective_delay(len(data))
    steps = []
    if params.baseline:
        steps.append({"name": "baseline", "data": data, "timeout": params.timeout, "pause_after": 0.05})
    steps.append({"name": "trickle", "data": data, "timeout": params.max_send_seconds + params.timeout,
                  "segment_min": params.segment_min, "segment_max": params.segment_max, "delay": delay,
                  "seed": params.seed, "nodelay": True})
    results = run_steps(ctx, steps)
    return judge_trickle(results, params, ctx.port, digest, delay)


def judge_trickle(results: list[Exchange], params: TrickleParams, port: int, digest: FileDigest | None,
                  delay: float) -> Outcome:
    label = params.label()
    trickle = results[-1]
    baseline = results[0] if len(results) > 1 else None
    pieces = trickle.get("planned_segments", trickle.get("segments", 0))
    how = (f"{pieces} pieces of {params.segment_min}-{params.segment_max} bytes, "
           f"{delay * 1000:.0f} ms apart")
    evidence: dict[str, Any] = {"request": label, "request_bytes": trickle.get("request_bytes"),
                                "segments": trickle.get("segments"), "delay": round(delay, 4),
                                "trickle": exchange_evidence(trickle)}
    if baseline is not None:
        evidence["baseline"] = exchange_evidence(baseline)
        base_problems = judge_exchange(baseline, params.expect, label, port, digest)
        if base_problems:
            return Outcome(False, f"the server does not answer {label} right even when it is sent in one piece: "
                                  f"{_join(base_problems)}", evidence)
    problems = judge_exchange(trickle, params.expect, label, port, digest)
    if not problems:
        response = answered(trickle)
        return Outcome(True, f"{label} sent in {how} was answered {response.status} "
                             f"({trickle.get('seconds', 0):.2f} s)", evidence)
    early = ""
    if trickle.get("sent", 0) < trickle.get("request_bytes", 0):
        early = (f" It answered after only {trickle.get('sent', 0)} of the request's "
                 f"{trickle.get('request_bytes')} bytes had been sent.")
    first = "the same request" if baseline is not None else label
    message = (f"{first} sent in {how} was not answered right: {problems[0]}.{early} "
               "One recv() returns whatever has arrived so far, not a whole request: keep calling recv() "
               "until the blank line (\\r\\n\\r\\n) that ends the headers has arrived.")
    if baseline is not None:
        message = f"the server answers {label} sent in one piece, but " + message
    return Outcome(False, message, evidence)


# -- syn_flood --------------------------------------------------------------------------------------

@check("syn_flood", SynFloodParams,
       "While a SYN flood fills the server's SYN queue with half-open connections, a normal client still gets in.",
       default_timeout=40.0, needs=frozenset({"raw_packets", "own_network", "server_sysctls"}), proof=PACKETS)
def syn_flood(ctx: CheckContext, params: SynFloodParams) -> Outcome:
    observe = ctx.observer in ctx.lab.spec.nodes
    syncookies, syncookies_source = server_syncookies(ctx)
    stats: dict[str, dict] = {}

    def snapshot(name: str) -> None:
        if not observe:
            return
        try:
            stats[name] = run_harness(ctx, ctx.observer, "tcp_port_stats", {"port": ctx.port})
        except LabctlError as error:
            stats[name] = {"error": str(error)}

    snapshot("before")
    flood: dict = {}
    probe: Exchange = {}
    cleanup: dict = {}
    try:
        flood = run_harness(ctx, ctx.injector, "syn_flood", {
            "host": ctx.host, "port": ctx.port, "count": params.syns, "listen": params.listen,
            "seed": params.seed, "budget": harness_budget(ctx, 5.0 + params.syns * 0.02 + params.listen)})
        snapshot("during")
        [probe] = run_steps(ctx, [{"name": "probe", "data": _get(params.probe_path, ctx.server),
                                   "timeout": params.probe_timeout}], cap=params.probe_timeout + 0.5)
    finally:
        try:
            cleanup = run_harness(ctx, ctx.injector, "syn_flood_cleanup",
                                  {"host": ctx.host, "port": ctx.port, "budget": min(5.0, harness_budget(ctx))})
        except LabctlError as error:
            cleanup = {"error": str(error)}
    return judge_syn_flood(flood, probe, stats, cleanup, params, ctx.port, syncookies, syncookies_source)


SYNCOOKIES = "net.ipv4.tcp_syncookies"


def server_syncookies(ctx: CheckContext) -> tuple[int | None, str]:
    """The server's net.ipv4.tcp_syncookies, and where it was learnt (for the evidence).

    SYN cookies are decided by the listener's network namespace, the server's. The value the lab gave
    the server container (lab.yaml, the exercise) when there is one; else it is read inside the server,
    whose /proc/sys shows its own namespace (the observer's /proc/sys would show the observer's: it
    shares the server's PID namespace only). None when neither works (the check still runs).
    """
    try:
        configured = ctx.lab.sysctls(ctx.server).get(SYNCOOKIES)
        if configured is not None:
            return int(configured), "set by the lab for the server"
        result = ctx.lab.exec(ctx.server, ["cat", "/proc/sys/net/ipv4/tcp_syncookies"],
                              timeout=min(5.0, harness_budget(ctx)))
        if result.exit_code == 0:
            return int(result.text.strip()), "read in the server"
    except (LabctlError, ValueError):
        pass
    return None, "unknown"


def _delta(stats: dict[str, dict], name: str) -> int | None:
    before = stats.get("before", {}).get("counters", {})
    during = stats.get("during", {}).get("counters", {})
    if name in before and name in during:
        return during[name] - before[name]
    return None


def judge_syn_flood(flood: dict, probe: Exchange, stats: dict[str, dict], cleanup: dict,
                    params: SynFloodParams, port: int, syncookies: int | None = None,
                    syncookies_source: str = "unknown") -> Outcome:
    sent = flood.get("syns_sent", 0)
    if not sent:
        raise LabctlError(f"the SYN flood could not be sent from the injector: {flood}")
    half_open = stats.get("during", {}).get("states", {}).get("SYN_RECV")
    cookies = _delta(stats, "TCPReqQFullDoCookies")
    dropped = _delta(stats, "TCPReqQFullDrop")
    server_side = {"half_open_during_flood": half_open, "syn_queue_full_cookies": cookies,
                   "syn_queue_full_drops": dropped, "syncookies_sent": _delta(stats, "SyncookiesSent"),
                   "listen_drops": _delta(stats, "ListenDrops")}
    evidence: dict[str, Any] = {
        "syns_sent": sent, "synacks_seen": flood.get("synacks_seen"), "send_seconds": flood.get("send_seconds"),
        "rst_rule": flood.get("rst_rule"), "target": f"{flood.get('target')}:{port}",
        "server_syncookies": syncookies, "server_syncookies_source": syncookies_source,
        "server": {key: value for key, value in server_side.items() if value is not None},
        "probe": exchange_evidence(probe), "cleanup": cleanup}
    if "rst_rule_error" in flood:
        evidence["rst_rule_error"] = flood["rst_rule_error"]
    label = f"a normal request (GET {params.probe_path}) from the client"
    problems = judge_exchange(probe, Expect(status=params.probe_status, content_length=False), label, port)
    evidence["probe_succeeded"] = not problems
    flood_text = (f"{sent} SYNs from the injector that never complete the handshake, "
                  f"{flood.get('synacks_seen', 0)} SYN-ACKs back")
    kernel = []
    if half_open is not None:
        kernel.append(f"{half_open} half-open connections were pending on the server")
    if cookies:
        kernel.append(f"its kernel answered {cookies} SYNs with SYN cookies once the SYN queue was full")
    if dropped:
        kernel.append(f"its kernel dropped {dropped} SYNs because the SYN queue was full")
    kernel_text = ("; ".join(kernel) + ".") if kernel else ""
    if not problems:
        response = answered(probe)
        return Outcome(True, f"during a SYN flood ({flood_text}), {label} was answered {response.status} in "
                             f"{probe.get('seconds', 0):.3f} s. {kernel_text} {_syncookies_text(syncookies)}"
                             .replace("  ", " ").rstrip(), evidence)
    return Outcome(False, f"during a SYN flood ({flood_text}), {problems[0]}. {kernel_text} "
                          f"{_syn_flood_advice(syncookies, cookies, dropped)}".replace("  ", " "), evidence)


def _syncookies_text(syncookies: int | None) -> str:
    """The server's SYN cookie setting in a sentence ('' when unknown)."""
    if syncookies is None:
        return ""
    return {0: "SYN cookies are off in the server's kernel (net.ipv4.tcp_syncookies=0).",
            1: "SYN cookies are on in the server's kernel, for when its SYN queue is full "
               "(net.ipv4.tcp_syncookies=1).",
            2: "The server's kernel answers every SYN with a SYN cookie (net.ipv4.tcp_syncookies=2).",
            }.get(syncookies, f"The server's kernel has net.ipv4.tcp_syncookies={syncookies}.")


def _syn_flood_advice(syncookies: int | None, cookies: int | None, dropped: int | None) -> str:
    """Why a client may not get in during a SYN flood, from the server's SYN cookie setting.

    SYN cookies belong to the listener's kernel (the server's network namespace): with them on, a full
    SYN queue is no longer a problem, as the kernel answers a SYN with a cookie instead of an entry.
    With them off, the SYN queue (sized by the listen() backlog) must hold the flood.
    """
    queue = ("The SYN queue's size follows the backlog given to listen() (at most net.core.somaxconn): "
             "a larger backlog (listen(128) or more) holds the half-open connections and leaves room for real "
             "clients.")
    setting = ("a setting of the server's network namespace that the exercise chooses, not something your "
               "code changes")
    if syncookies == 0:
        return (f"SYN cookies are off in the server's kernel (net.ipv4.tcp_syncookies=0, {setting}): once the "
                f"SYN queue is full, the kernel drops new SYNs, a real client's too. {queue}")
    if syncookies in (1, 2) or (syncookies is None and cookies and not dropped):
        value = f" (net.ipv4.tcp_syncookies={syncookies})" if syncookies is not None else ""
        return (f"The server's kernel uses SYN cookies{value}: once the SYN queue is full it answers a SYN with "
                "a cookie instead of keeping a half-open entry, so the flood alone should not lock clients out. "
                "Something else kept this client waiting: does the server keep calling accept()? (A full "
                "accept queue drops new connections, cookies or not.)")
    return (f"The half-open connections filled the server's SYN queue. {queue} Whether the kernel falls back to "
            f"SYN cookies when the SYN queue is full is net.ipv4.tcp_syncookies, {setting}.")
