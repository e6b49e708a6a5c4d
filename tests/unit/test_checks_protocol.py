"""The protocol checks' pure logic (parameters, parsing, judging, messages), the checks on a lab
on the in-memory engine (fakes.FakeBackend), and the harness's HTTP client against local servers
on loopback; no Docker. The integration tests prove the checks on real containers
(tests/integration/test_checks_protocol.py)."""

from __future__ import annotations

import base64
import hashlib
import importlib
import importlib.util
import re
import socket
import sys
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from labctl.backends.base import ExecResult
from labctl.checks import CheckContext, load_catalog
from labctl.checks import protocol as P
from labctl.checks.common import EXEC_MARGIN, explain_transport
from labctl.errors import LabctlError
from unit.loopback import LocalServer

from .fakes import FakeBackend, up_lab

HARNESS = Path(P.__file__).resolve().parents[1] / "harness"


def harness_module(name: str):
    """Import labctl/harness/<name>.py as the containers do (`harness` is a top-level package there)."""
    if "harness" not in sys.modules:
        spec = importlib.util.spec_from_file_location("harness", HARNESS / "__init__.py",
                                                      submodule_search_locations=[str(HARNESS)])
        module = importlib.util.module_from_spec(spec)
        sys.modules["harness"] = module
        spec.loader.exec_module(module)
    return importlib.import_module(f"harness.{name}")


def step(head: str = "", body: bytes = b"", **facts) -> dict:
    """Harness facts of one exchange that got `head` + `body` and ended with the server closing."""
    base = {"action": "exchange", "connected": True, "connect_seconds": 0.001, "request_bytes": 20, "sent": 20,
            "segments": 1, "end": "closed", "head": head, "head_complete": head.endswith("\r\n\r\n"),
            "received": len(head) + len(body), "body_bytes": len(body),
            "body_sha256": hashlib.sha256(body).hexdigest(), "body": base64.b64encode(body).decode(),
            "first_byte_seconds": 0.002, "seconds": 0.003}
    base.update(facts)
    return base


def ok(body: bytes = b"hello\n", status: str = "200 OK", headers: str = "Content-Type: text/plain\r\n") -> dict:
    return step(f"HTTP/1.0 {status}\r\n{headers}Content-Length: {len(body)}\r\n\r\n", body)


REFUSED = {"action": "exchange", "connected": False, "end": "refused",
           "connect_error": "ConnectionRefusedError: [Errno 111] Connection refused", "seconds": 0.001}


# -- the catalog ------------------------------------------------------------------------------------

def test_the_five_checks_are_registered_with_documented_parameters():
    catalog = load_catalog()
    for name in ("http", "malformed_request", "client_reset", "trickled_request", "syn_flood"):
        definition = catalog[name]
        assert definition.summary
        for field_name, field in definition.params.model_fields.items():
            assert field.description, f"{name}.{field_name} has no description"
        definition.params()   # every parameter has a sensible default
    for field_name, field in P.Expect.model_fields.items():
        assert field.description, f"expect.{field_name} has no description"


# -- parameters -------------------------------------------------------------------------------------

def test_raw_requests_decode_backslash_escapes_and_bytes_pass_as_they_are():
    assert P.HttpParams(raw=r"GET / HTTP/1.0\r\n\r\n").request_bytes("server") == b"GET / HTTP/1.0\r\n\r\n"
    assert P.HttpParams(raw="GET / HTTP/1.0\r\n\r\n").request_bytes("server") == b"GET / HTTP/1.0\r\n\r\n"
    assert P.HttpParams(raw=b"\x00\xff\\n").request_bytes("server") == b"\x00\xff\\n"
    assert P.decode_escapes(r"\x16\x03") == b"\x16\x03"


def test_a_request_is_built_with_host_and_content_length():
    params = P.HttpParams(method="POST", path="/form?x=1", headers={"X-Test": "1"}, body="héllo")
    assert params.request_bytes("server") == (b"POST /form?x=1 HTTP/1.0\r\nHost: server\r\nX-Test: 1\r\n"
                                              b"Content-Length: 6\r\n\r\nh\xc3\xa9llo")
    assert P.HttpParams(headers={"host": "example"}).request_bytes("server") == \
        b"GET / HTTP/1.0\r\nhost: example\r\n\r\n"
    assert params.label() == "POST /form?x=1"
    assert P.HttpParams(raw=r"GET\r\n\r\n").label() == r"the request 'GET\r\n\r\n'"


@pytest.mark.parametrize("params, words", [
    ({"raw": "GET / HTTP/1.0\r\n\r\n", "path": "/x"}, "do not also give path"),
    ({"method": "GET /"}, "a method is one word"),
    ({"path": "/a b"}, "a path has no spaces"),
    ({"raw": r"\x4"}, "bad backslash escape"),
    ({"expect": {"regex": "("}}, "not a valid regular expression"),
    ({"expect": {"status": 99}}, "99 is not an HTTP status code"),
    ({"expect": {"status": [200, 700]}}, "700 is not an HTTP status code"),
    ({"expect": {"file": "/etc/passwd"}}, "relative to the exercise's docroot"),
    ({"expect": {"file": "../secret"}}, "relative to the exercise's docroot"),
    ({"expect": {"bdy": "x"}}, "Extra inputs are not permitted"),
    ({"timeout": 0}, "greater than 0"),
])
def test_http_parameters_are_validated(params, words):
    with pytest.raises(ValidationError, match=re.escape(words)):
        P.HttpParams(**params)


def test_other_parameters_are_validated():
    with pytest.raises(ValidationError, match="at least one variant"):
        P.MalformedParams(variants=[])
    with pytest.raises(ValidationError, match="Input should be 'garbage'"):
        P.MalformedParams(variants=["nonsense"])
    with pytest.raises(ValidationError, match="weird: bad backslash escape"):
        P.MalformedParams(custom={"weird": r"\x"})
    with pytest.raises(ValidationError, match="segment_min is larger than segment_max"):
        P.TrickleParams(segment_min=5, segment_max=2)
    with pytest.raises(ValidationError, match="less than or equal to 5000"):
        P.SynFloodParams(syns=100000)
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        P.SynFloodParams(injector_syncookies=0)  # the server's namespace decides: an exercise sets its sysctls


def test_the_trickle_delay_shrinks_to_fit_the_time_bound():
    params = P.TrickleParams(delay=0.5, max_send_seconds=2.0, segment_min=1, segment_max=3)
    assert params.effective_delay(100) == pytest.approx(2.0 / 50)
    assert P.TrickleParams(delay=0.01).effective_delay(70) == 0.01


# -- responses --------------------------------------------------------------------------------------

def test_parse_head_reads_the_status_line_and_headers():
    response = P.parse_head("HTTP/1.0 404 Not Found\r\nContent-Type: text/plain\r\nX-A:  b \r\nbroken line\r\n\r\n")
    assert (response.version, response.status, response.reason) == ("1.0", 404, "Not Found")
    assert response.values("content-type") == ["text/plain"] and response.values("X-A") == ["b"]
    assert P.parse_head("HTTP/1.1 200\r\n\r\n").reason == ""
    assert P.parse_head("200 OK\r\n\r\n") is None
    assert P.parse_head("HTTP/1.0 2000 OK\r\n\r\n") is None


@pytest.mark.parametrize("facts, words", [
    (REFUSED, "could not connect to the server on port 8080 for GET /: connection refused"),
    ({"connected": False, "end": "connect-timeout", "connect_error": "TimeoutError: timed out", "seconds": 3.0},
     "connecting to the server on port 8080 for GET / timed out after 3.00 s (no answer to its SYN"),
    ({"skipped": True, "skip_reason": "an earlier connection to the server failed"},
     "GET / was not sent: an earlier connection to the server failed"),
    (step(end="closed"), "the server closed the connection without answering GET /"),
    (step(end="reset"), "the server reset the connection without answering GET / (did it crash?)"),
    (step(end="timeout", seconds=5.0), "the server accepted the connection but sent nothing within 5.00 s after GET /"),
    (step(end="closed", sent=3), "(after only 3 of its 20 bytes had been sent)"),
    (step("HTTP/1.0 200 OK\nContent-Length: 2\n\nhi"),
     "never ended its headers with a blank line (\\r\\n\\r\\n) before the connection ended (its lines end with \\n "
     "alone: HTTP lines end with \\r\\n)"),
    (step("hello\r\n\r\n"), "does not start with a status line like 'HTTP/1.0 200 OK'; it starts with 'hello\\r\\n\\r\\n'"),
    (step("HTTP/1.0 200 OK\r\n\r\n", b"partial", end="timeout", seconds=5.0),
     "did not close the connection within 5.00 s; without a Content-Length header"),
])
def test_transport_problems_are_told_in_words(facts, words):
    assert words in explain_transport(facts, "GET /", 8080)


def test_a_complete_answer_has_no_transport_problem():
    assert explain_transport(ok(), "GET /", 8080) is None
    assert explain_transport({**ok(), "end": "content-length"}, "GET /", 8080) is None


def judge(facts: dict, digest=None, **expect) -> list[str]:
    return P.judge_exchange(facts, P.Expect(**expect), "GET /x", 8080, digest)


def test_expectations_status_and_headers():
    assert judge(ok()) == []
    assert judge(ok(status="404 Not Found")) == ["the server answered 404 Not Found to GET /x; expected 200 OK"]
    assert judge(ok(), status=[301, 302]) == ["the server answered 200 OK to GET /x; expected 301 Moved Permanently "
                                              "or 302 Found"]
    assert judge(ok(), status=None) == []
    assert judge(ok(), headers={"content-type": " TEXT/plain", "Content-Length": "*"}) == []
    assert judge(ok(), headers={"Server": "*"}) == ["the answer to GET /x has no Server header"]
    assert judge(ok(), headers={"Content-Type": "text/html"}) == [
        "the Content-Type header of the answer to GET /x is 'text/plain'; expected 'text/html'"]


def test_expectations_content_length_and_body():
    lying = step("HTTP/1.0 200 OK\r\nContent-Length: 10\r\n\r\n", b"hello\n")
    assert judge(lying) == ["the Content-Length header of the answer to GET /x says 10 bytes, but the body has 6 bytes"]
    assert judge(lying, content_length=False) == []
    superscript = step("HTTP/1.0 200 OK\r\nContent-Length: \u00b2\r\n\r\n", b"hello\n")  # "²": a digit to isdigit()
    assert judge(superscript) == ["the Content-Length header of the answer to GET /x says \u00b2 bytes, but the body "
                                  "has 6 bytes"]
    assert judge(ok(), body="hello\n", contains=["ell", "lo"], regex=r"^h.llo$") == []
    assert judge(ok(), body="hell") == ["the body of the answer to GET /x is not the expected text: expected 'hell' "
                                        "(4 bytes), got 'hello\\n' (6 bytes)"]
    assert judge(ok(), contains="bye") == ["the body of the answer to GET /x does not contain 'bye'"]
    assert judge(ok(), regex="^bye") == ["the body of the answer to GET /x does not match the pattern '^bye'"]


def test_expectation_file_compares_digests(tmp_path):
    (tmp_path / "f.bin").write_bytes(b"\x00\x01\x02")
    digest = P.file_digest(tmp_path, "f.bin")
    assert digest.sha256 == hashlib.sha256(b"\x00\x01\x02").hexdigest() and digest.size == 3
    assert judge(ok(b"\x00\x01\x02"), digest) == []
    [problem] = judge(ok(b"\x00\x01"), digest)
    got = hashlib.sha256(b"\x00\x01").hexdigest()
    assert problem == (f"the body of the answer to GET /x is not the file f.bin: expected 3 bytes with sha256 "
                       f"{digest.sha256[:12]}…, got 2 bytes with sha256 {got[:12]}…")
    with pytest.raises(LabctlError, match="not in the docroot"):
        P.file_digest(tmp_path, "missing.bin")
    with pytest.raises(LabctlError, match="has no docroot"):
        P.file_digest(None, "f.bin")


def test_judge_http_reports_numbers(tmp_path):
    (tmp_path / "hello.txt").write_bytes(b"hello\n")
    params = P.HttpParams(path="/hello.txt", expect={"file": "hello.txt"})
    digest = P.file_digest(tmp_path, "hello.txt")
    outcome = P.judge_http(ok(), params, 8080, digest)
    assert outcome.passed and outcome.message == "GET /hello.txt: 200 OK, 6 bytes, as expected (0.003 s)"
    assert outcome.evidence["body_sha256"] == outcome.evidence["expected_sha256"]
    assert {"connect_seconds", "first_byte_seconds", "total_seconds", "status", "headers"} <= set(outcome.evidence)
    outcome = P.judge_http(ok(b"bye\n"), params, 8080, digest)
    assert not outcome.passed and "is not the file hello.txt" in outcome.message


def test_the_answer_to_head_has_no_body_despite_its_content_length():
    head_answer = step("HTTP/1.0 200 OK\r\nContent-Length: 165\r\n\r\n")
    assert P.judge_http(head_answer, P.HttpParams(method="HEAD"), 8080, None).passed
    assert not P.judge_http(head_answer, P.HttpParams(method="GET"), 8080, None).passed


# -- malformed_request ------------------------------------------------------------------------------

def malformed(params: P.MalformedParams, answers: list[dict]):
    requests = P.malformed_requests(params)
    named = [{**facts, "name": name} for facts, name in zip(answers, [*requests, "alive"], strict=True)]
    return P.judge_malformed(named, requests, params, 8080)


def test_malformed_passes_when_every_bad_request_gets_400_and_the_server_lives():
    params = P.MalformedParams(variants=["garbage", "missing_path"])
    outcome = malformed(params, [ok(b"bad\n", "400 Bad Request")] * 2 + [ok()])
    assert outcome.passed
    assert outcome.message == "all 2 bad requests got 400 Bad Request and the server still answered GET / afterwards"
    assert outcome.evidence["requests"]["garbage"]["status"] == 400


def test_malformed_fails_naming_each_wrong_answer():
    params = P.MalformedParams(variants=["garbage", "missing_path"], custom={"lower": r"get / HTTP/1.0\r\n\r\n"})
    outcome = malformed(params, [ok(b"bad\n", "400 Bad Request"), ok(), ok(), ok()])
    assert not outcome.passed
    assert outcome.message == ("the server answered 200 OK to a request line with no path ('GET\\r\\n\\r\\n'); "
                               "expected 400 Bad Request; the server answered 200 OK to a custom bad request "
                               "('get / HTTP/1.0\\r\\n\\r\\n'); expected 400 Bad Request.")


def test_malformed_names_the_request_that_killed_the_server():
    params = P.MalformedParams(variants=["garbage", "missing_path", "bad_version"])
    skipped = {"skipped": True, "skip_reason": "an earlier connection to the server failed"}
    # killed while handling missing_path: that connection was reset, the next connect refused
    outcome = malformed(params, [ok(b"", "400 Bad Request"), step(end="reset"), REFUSED, REFUSED])
    assert not outcome.passed
    assert outcome.message.startswith("after the bad requests the server stopped answering: could not connect")
    assert "It stopped at a request line with no path ('GET\\r\\n\\r\\n')" in outcome.message
    # answered missing_path, then was gone
    outcome = malformed(params, [ok(b"", "400 Bad Request"), ok(b"", "400 Bad Request"), REFUSED, REFUSED])
    assert "It stopped after a request line with no path" in outcome.message
    outcome = malformed(params, [REFUSED, skipped, skipped, REFUSED])
    assert "It did not accept connections from the first bad request on" in outcome.message


# -- client_reset -----------------------------------------------------------------------------------

def resets(n: int, refused_from: int | None = None) -> list[dict]:
    done = {"action": "reset", "connected": True, "sent": 10, "server_spoke_first": False}
    return [REFUSED if refused_from is not None and i >= refused_from else done for i in range(n)]


def test_client_reset_passes_when_the_server_answers_afterwards():
    outcome = P.judge_reset(resets(5) + [ok()], P.ResetParams(times=5), 8080)
    assert outcome.passed
    assert outcome.message.startswith("after 5 connections reset (RST) in the middle of a request")
    assert outcome.evidence["resets_done"] == 5


def test_client_reset_fails_when_the_server_stops_accepting_or_answering():
    outcome = P.judge_reset(resets(5, refused_from=1) + [REFUSED], P.ResetParams(times=5), 8080)
    assert not outcome.passed
    assert outcome.message.startswith("the server stopped accepting connections after the 1st reset "
                                      "(connection refused)")
    assert "ConnectionResetError" in outcome.message
    outcome = P.judge_reset(resets(3) + [step(end="timeout", seconds=3.0)], P.ResetParams(times=3), 8080)
    assert not outcome.passed
    assert "the server accepted the connection but sent nothing within 3.00 s" in outcome.message


# -- trickled_request -------------------------------------------------------------------------------

def test_trickle_passes_and_reports_segments():
    params = P.TrickleParams(path="/hello.txt")
    trickle = {**ok(), "segments": 40, "planned_segments": 40, "request_bytes": 80, "sent": 80}
    outcome = P.judge_trickle([ok(), trickle], params, 8080, None, 0.01)
    assert outcome.passed
    assert outcome.message.startswith("GET /hello.txt sent in 40 pieces of 1-3 bytes, 10 ms apart was answered 200")


def test_trickle_fails_with_a_single_recv_hint_when_the_whole_request_works():
    params = P.TrickleParams(path="/hello.txt")
    cut = {**ok(b"bad\n", "400 Bad Request"), "segments": 2, "planned_segments": 40, "request_bytes": 80,
           "sent": 4, "answered_early": True}
    outcome = P.judge_trickle([ok(), cut], params, 8080, None, 0.01)
    assert not outcome.passed
    assert outcome.message.startswith("the server answers GET /hello.txt sent in one piece, but the same request sent "
                                      "in 40 pieces of 1-3 bytes, 10 ms apart was not answered right: the server "
                                      "answered 400 Bad Request to GET /hello.txt; expected 200 OK.")
    assert "It answered after only 4 of the request's 80 bytes had been sent." in outcome.message
    assert "keep calling recv()" in outcome.message


def test_trickle_does_not_blame_trickling_when_the_whole_request_fails_too():
    outcome = P.judge_trickle([REFUSED, {"skipped": True}], P.TrickleParams(), 8080, None, 0.01)
    assert not outcome.passed
    assert outcome.message.startswith("the server does not answer GET / right even when it is sent in one piece: "
                                      "could not connect")


# -- syn_flood --------------------------------------------------------------------------------------

def flood_facts(**facts) -> dict:
    return {"target": "10.0.0.2", "syns_sent": 64, "synacks_seen": 64, "send_seconds": 0.2, "rst_rule": True,
            **facts}


def stats(cookies: int, drops: int, half_open: int) -> dict:
    counters = {"TCPReqQFullDoCookies": 0, "TCPReqQFullDrop": 0, "SyncookiesSent": 0, "ListenDrops": 0}
    during = {"TCPReqQFullDoCookies": cookies, "TCPReqQFullDrop": drops, "SyncookiesSent": cookies,
              "ListenDrops": drops}
    return {"before": {"states": {"LISTEN": 1}, "counters": counters},
            "during": {"states": {"LISTEN": 1, "SYN_RECV": half_open}, "counters": during}}


def test_syn_flood_passes_when_the_probe_gets_in():
    outcome = P.judge_syn_flood(flood_facts(), ok(), stats(62, 0, 2), {"rules_removed": 1}, P.SynFloodParams(), 8080)
    assert outcome.passed
    assert outcome.message == ("during a SYN flood (64 SYNs from the injector that never complete the handshake, 64 "
                               "SYN-ACKs back), a normal request (GET /) from the client was answered 200 in 0.003 s. "
                               "2 half-open connections were pending on the server; its kernel answered 62 SYNs with "
                               "SYN cookies once the SYN queue was full.")
    assert outcome.evidence["server"] == {"half_open_during_flood": 2, "syn_queue_full_cookies": 62,
                                          "syn_queue_full_drops": 0, "syncookies_sent": 62, "listen_drops": 0}
    assert outcome.evidence["probe_succeeded"] is True
    assert (outcome.evidence["server_syncookies"], outcome.evidence["server_syncookies_source"]) == (None, "unknown")


def test_syn_flood_passing_says_the_servers_syncookies_setting():
    outcome = P.judge_syn_flood(flood_facts(), ok(), stats(62, 0, 2), {}, P.SynFloodParams(), 8080, 1, "read in the server")
    assert outcome.passed
    assert outcome.message.endswith("once the SYN queue was full. SYN cookies are on in the server's kernel, for when "
                                    "its SYN queue is full (net.ipv4.tcp_syncookies=1).")
    assert (outcome.evidence["server_syncookies"], outcome.evidence["server_syncookies_source"]) == \
        (1, "read in the server")


def test_syn_flood_fails_with_syncookies_off_and_points_at_the_backlog():
    probe = {"connected": False, "end": "connect-timeout", "connect_error": "TimeoutError: timed out", "seconds": 3.0}
    outcome = P.judge_syn_flood(flood_facts(synacks_seen=2), probe, stats(0, 62, 2), {}, P.SynFloodParams(), 8080,
                                0, "set by the lab for the server")
    assert not outcome.passed
    assert "SYN cookies are off in the server's kernel (net.ipv4.tcp_syncookies=0, a setting of the server's " \
           "network namespace" in outcome.message
    assert "the kernel drops new SYNs, a real client's too" in outcome.message
    assert "a larger backlog (listen(128) or more)" in outcome.message
    assert outcome.evidence["server_syncookies"] == 0


def test_syn_flood_fails_with_syncookies_on_and_does_not_blame_the_backlog():
    probe = {"connected": False, "end": "connect-timeout", "connect_error": "TimeoutError: timed out", "seconds": 3.0}
    outcome = P.judge_syn_flood(flood_facts(), probe, stats(62, 0, 2), {}, P.SynFloodParams(), 8080, 1, "read in the server")
    assert not outcome.passed
    assert "The server's kernel uses SYN cookies (net.ipv4.tcp_syncookies=1)" in outcome.message
    assert "does the server keep calling accept()?" in outcome.message
    assert "listen(128)" not in outcome.message


def test_syn_flood_fails_and_explains_the_full_syn_queue():
    probe = {"connected": False, "end": "connect-timeout", "connect_error": "TimeoutError: timed out", "seconds": 3.0}
    outcome = P.judge_syn_flood(flood_facts(synacks_seen=2), probe, stats(0, 62, 2), {}, P.SynFloodParams(), 8080)
    assert not outcome.passed
    assert "connecting to the server on port 8080 for a normal request (GET /) from the client timed out" \
        in outcome.message
    assert "its kernel dropped 62 SYNs because the SYN queue was full" in outcome.message
    assert "a larger backlog (listen(128) or more)" in outcome.message
    assert outcome.evidence["probe_succeeded"] is False


def test_syn_flood_without_observer_still_judges_and_a_flood_not_sent_is_an_error():
    outcome = P.judge_syn_flood(flood_facts(), ok(), {}, {}, P.SynFloodParams(), 8080)
    assert outcome.passed and outcome.evidence["server"] == {}
    with pytest.raises(LabctlError, match="could not be sent"):
        P.judge_syn_flood(flood_facts(syns_sent=0), ok(), {}, {}, P.SynFloodParams(), 8080)


# -- the checks on a lab on the fake engine ----------------------------------------------------------

#: The node each harness command of these checks runs in: a command sent anywhere else finds no handler.
NODE_OF = {"http_sequence": "client", "syn_flood": "injector", "syn_flood_cleanup": "injector",
           "tcp_port_stats": "observer"}
SYNCOOKIES_READ = ["cat", "/proc/sys/net/ipv4/tcp_syncookies"]


def scripted(fake: FakeBackend, answers: dict) -> list[tuple[str, str, dict]]:
    """The harness of the node each command runs in (NODE_OF) answers it with its facts, or an ExecResult
    (a broken or timed-out exec); returns the calls (node, command, params) as the harness got them."""
    calls: list[tuple[str, str, dict]] = []

    def handler(node: str, command: str, answer):
        def handle(params: dict):
            calls.append((node, command, params))
            return answer
        return handle

    for command, answer in answers.items():
        fake.harness[NODE_OF[command]][command] = handler(NODE_OF[command], command, answer)
    return calls


def server_execs(fake: FakeBackend) -> list[list[str]]:
    """The commands run in the server's container (where nothing of the grader runs but a read of /proc/sys)."""
    return [run.command for run in fake.execs if run.node == "server"]


def ctx(lab, budget=30.0) -> CheckContext:
    return CheckContext(lab=lab, port=8080, deadline=time.monotonic() + budget)


def test_http_check_sends_the_request_within_the_budget(fake, lab):
    calls = scripted(fake, {"http_sequence": {"steps": [ok()]}})
    outcome = P.http(ctx(lab, budget=10), P.HttpParams(path="/hello.txt", expect={"body": "hello\n"}))
    assert outcome.passed
    [(node, command, params)] = calls
    assert (node, command, params["host"], params["port"]) == ("client", "http_sequence", "server", 8080)
    assert base64.b64decode(params["steps"][0]["data"]) == b"GET /hello.txt HTTP/1.0\r\nHost: server\r\n\r\n"
    assert params["budget"] <= 10 - EXEC_MARGIN + 0.01
    [run] = fake.execs
    assert params["budget"] < run.timeout <= 10            # the harness stops before docker exec gives up


def test_a_failing_harness_is_an_error_not_a_verdict(fake, lab):
    scripted(fake, {"http_sequence": {"error": "OSError: boom", "traceback": "..."}})
    with pytest.raises(LabctlError, match="harness http_sequence in client failed: OSError: boom"):
        P.http(ctx(lab), P.HttpParams())


def test_syn_flood_always_cleans_up_even_when_the_probe_cannot_run(fake, lab):
    calls = scripted(fake, {"tcp_port_stats": {"states": {}, "counters": {}}, "syn_flood": flood_facts(),
                            "http_sequence": ExecResult(-1, b"", b"", timed_out=True),
                            "syn_flood_cleanup": {"resets_sent": 64, "rules_removed": 1}})
    with pytest.raises(LabctlError, match="harness http_sequence on client did not finish"):
        P.syn_flood(ctx(lab), P.SynFloodParams(syns=64))
    assert [command for _, command, _ in calls] == ["tcp_port_stats", "syn_flood", "tcp_port_stats",
                                                    "http_sequence", "syn_flood_cleanup"]
    assert [node for node, command, _ in calls if command.startswith("syn_flood")] == ["injector", "injector"]


def syn_flood_answers(fake: FakeBackend) -> list[tuple[str, str, dict]]:
    return scripted(fake, {"tcp_port_stats": {"states": {}, "counters": {}}, "syn_flood": flood_facts(),
                           "http_sequence": {"steps": [ok()]}, "syn_flood_cleanup": {"rules_removed": 1}})


def test_syn_flood_reports_the_servers_syncookies_set_by_the_lab_without_asking_the_server(fake, tmp_path):
    lab = up_lab(fake, tmp_path / "project",
                 edit=lambda data: data["nodes"]["server"].update(sysctls={"net.ipv4.tcp_syncookies": 0}))
    calls = syn_flood_answers(fake)
    outcome = P.syn_flood(ctx(lab), P.SynFloodParams(syns=64))
    assert (outcome.evidence["server_syncookies"], outcome.evidence["server_syncookies_source"]) == \
        (0, "set by the lab for the server")
    assert server_execs(fake) == []
    assert all("syncookies" not in str(params) for _, _, params in calls), "nothing is set in the injector"


def test_syn_flood_reads_the_servers_syncookies_inside_the_server_when_the_lab_sets_none(fake, lab):
    syn_flood_answers(fake)
    fake.commands["server"][" ".join(SYNCOOKIES_READ)] = lambda command: ExecResult(0, b"1\n", b"")
    outcome = P.syn_flood(ctx(lab), P.SynFloodParams(syns=64))
    assert server_execs(fake) == [SYNCOOKIES_READ]
    assert (outcome.evidence["server_syncookies"], outcome.evidence["server_syncookies_source"]) == \
        (1, "read in the server")


def test_syn_flood_runs_when_the_servers_syncookies_cannot_be_read(fake, lab):
    syn_flood_answers(fake)
    fake.fail_on("exec", container="server")
    outcome = P.syn_flood(ctx(lab), P.SynFloodParams(syns=64))
    assert outcome.passed
    assert server_execs(fake) == [SYNCOOKIES_READ]         # it was tried
    assert (outcome.evidence["server_syncookies"], outcome.evidence["server_syncookies_source"]) == (None, "unknown")


# -- the harness's HTTP client on loopback ----------------------------------------------------------

def read_request(conn) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def answer(conn, body=b"hello\n", length=True):
    conn.sendall(b"HTTP/1.0 200 OK\r\n" + (b"Content-Length: %d\r\n" % len(body) if length else b"") + b"\r\n" + body)


@pytest.fixture
def local():
    servers = []

    def make(handle):
        servers.append(LocalServer(handle))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


REQUEST = b"GET / HTTP/1.0\r\nHost: x\r\nUser-Agent: labctl-test\r\n\r\n"


def test_exchange_reads_a_response_and_hashes_the_body(local):
    proto = harness_module("protocol")
    server = local(lambda conn: (read_request(conn), answer(conn, b"x" * 100000, length=False)))
    facts = proto.exchange("127.0.0.1", server.port, REQUEST, timeout=3)
    assert facts["end"] == "closed" and facts["head"] == "HTTP/1.0 200 OK\r\n\r\n"
    assert facts["body_bytes"] == 100000 and facts["body_sha256"] == hashlib.sha256(b"x" * 100000).hexdigest()
    facts = proto.exchange("127.0.0.1", server.port, REQUEST, timeout=3, max_body=10)
    assert facts["body_truncated"] and base64.b64decode(facts["body"]) == b"x" * 10


def test_exchange_stops_at_content_length_and_times_out_on_silence(local):
    proto = harness_module("protocol")
    server = local(lambda conn: (read_request(conn), answer(conn), time.sleep(1)))
    facts = proto.exchange("127.0.0.1", server.port, REQUEST, timeout=3)
    assert facts["end"] == "content-length" and facts["seconds"] < 0.5
    silent = local(lambda conn: (read_request(conn), time.sleep(1)))
    facts = proto.exchange("127.0.0.1", silent.port, REQUEST, timeout=0.3)
    assert facts["end"] == "timeout" and facts["received"] == 0 and 0.3 <= facts["seconds"] < 0.6


def test_trickled_exchange_sends_tiny_segments_and_notices_an_early_answer(local):
    proto = harness_module("protocol")
    chunks: list[int] = []

    def patient(conn):
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            chunks.append(len(chunk))
            data += chunk
        answer(conn)

    server = local(patient)
    facts = proto.exchange("127.0.0.1", server.port, REQUEST, timeout=5, segment_min=1, segment_max=3, delay=0.005,
                           nodelay=True)
    assert facts["sent"] == len(REQUEST) and facts["segments"] == facts["planned_segments"] >= len(REQUEST) // 3
    assert facts["head"].startswith("HTTP/1.0 200 OK") and max(chunks) <= 3 * 2
    hasty = local(lambda conn: (conn.recv(4096), conn.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")))
    facts = proto.exchange("127.0.0.1", hasty.port, REQUEST, timeout=5, segment_min=1, segment_max=3, delay=0.02,
                           nodelay=True)
    assert facts.get("answered_early") or facts.get("send_error")
    assert facts["sent"] < len(REQUEST) and facts["head"].startswith("HTTP/1.0 400")


def test_reset_makes_the_server_see_a_connection_reset(local):
    proto = harness_module("protocol")
    server = local(read_request)
    facts = proto.reset("127.0.0.1", server.port, b"GET / HT", timeout=2, pause=0.05)
    assert facts["connected"] and facts["sent"] == 8 and facts["server_spoke_first"] is False
    for _ in range(50):
        if server.errors:
            break
        time.sleep(0.02)
    assert server.errors == ["ConnectionResetError"]


def test_sequence_skips_after_a_failed_connect_but_runs_the_always_steps():
    proto = harness_module("protocol")
    with socket.socket() as probe:     # a port with nobody listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = base64.b64encode(REQUEST).decode()
    result = proto.http_sequence("127.0.0.1", port, [{"name": "a", "data": data}, {"name": "b", "data": data},
                                                     {"name": "c", "data": data, "always": True}], budget=3)
    a, b, c = result["steps"]
    assert not a["connected"] and "refused" in a["connect_error"].lower()
    assert b["skipped"] and b["skip_reason"] == "an earlier connection to the server failed"
    assert not c.get("skipped") and not c["connected"]


def test_sequence_reports_a_name_that_does_not_resolve():
    proto = harness_module("protocol")
    result = proto.http_sequence("no-such-host.invalid", 80, [{"name": "a", "data": ""}], budget=2)
    assert result["resolve_error"] and not result["steps"][0]["connected"]


def test_tcp_port_stats_reads_this_process_namespace():
    proto = harness_module("protocol")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        port = listener.getsockname()[1]
        facts = proto.tcp_port_stats(port, pid=__import__("os").getpid())
    assert facts["readable"] and facts["states"] == {"LISTEN": 1} and facts["accept_queue"] == 0
    assert "TCPReqQFullDrop" in facts.get("counters", {}) or "netstat_error" in facts


def test_netstat_counters_are_parsed():
    proto = harness_module("protocol")
    text = "TcpExt: SyncookiesSent ListenDrops TCPReqQFullDrop Other\nTcpExt: 3 4 5 6\nIpExt: A\nIpExt: 1\n"
    assert proto._netstat_counters(text) == {"SyncookiesSent": 3, "ListenDrops": 4, "TCPReqQFullDrop": 5}
