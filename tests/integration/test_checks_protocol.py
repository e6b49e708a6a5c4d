"""The protocol checks on the real engine: each one PASSES on a correct server and FAILS on a
server wrong in exactly the way the check exists to catch.

One lab per server (class-scoped: several checks run on it, it is removed when the class ends).
The server is tests/servers/proto/server.py: correct, or with the one marked bug its $BUG names
(each class sets `bug`); it serves tests/servers/proto_docroot.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

from labctl.checks import CheckContext, Outcome, load_catalog

ROOT = Path(__file__).resolve().parents[2]
SERVERS = ROOT / "tests" / "servers"
SERVER = SERVERS / "proto"
DOCROOT = SERVERS / "proto_docroot"
LOGO_SHA = hashlib.sha256((DOCROOT / "logo.bin").read_bytes()).hexdigest()
SYNCOOKIES = "net.ipv4.tcp_syncookies"


@pytest.fixture(scope="class")
def lab(request, project, images):
    """A lab running tests/servers/proto with the class's `bug` as $BUG, serving the protocol docroot."""
    from labctl.lab import Lab, Submission

    lab = Lab.create(project.spec, project.backend)
    try:
        lab.up(images, Submission(path=SERVER, docroot=DOCROOT, env={"BUG": request.cls.bug}))
        yield lab
    finally:
        lab.down()


def run(lab, name: str, budget: float = 30.0, **params) -> Outcome:
    """Run catalog check `name` with `params` (validated by its model) against the lab."""
    definition = load_catalog()[name]
    ctx = CheckContext(lab=lab, port=8080, deadline=time.monotonic() + budget, docroot=DOCROOT)
    started = time.monotonic()
    outcome = definition.run(ctx, definition.params(**params))
    print(f"\n[{name} {time.monotonic() - started:.2f} s] passed={outcome.passed}: {outcome.message}")
    return outcome


def start_without_syncookies(start_lab, bug: str):
    """A lab running tests/servers/proto with $BUG `bug` whose kernel has SYN cookies off: the exercise's
    `submission: {sysctls: {net.ipv4.tcp_syncookies: 0}}`, set in the server's network namespace."""
    lab = start_lab(SERVER, docroot=DOCROOT, env={"BUG": bug}, sysctls={SYNCOOKIES: "0"})
    assert lab.exec("server", ["cat", "/proc/sys/net/ipv4/tcp_syncookies"]).text.strip() == "0"
    return lab


class TestCorrectServer:
    """No bug: every protocol check passes, and `http` fails only when the expectation is wrong."""

    bug = ""

    def test_http_checks_status_headers_text_and_file_digest(self, lab):
        outcome = run(lab, "http", path="/index.html",
                      expect={"status": 200, "headers": {"content-type": "text/html", "Content-Length": "*"},
                              "file": "index.html", "contains": "It works"})
        assert outcome.passed, outcome.message
        assert outcome.evidence["status"] == 200 and outcome.evidence["body_sha256"] == outcome.evidence["expected_sha256"]
        assert outcome.evidence["total_seconds"] < 2

        outcome = run(lab, "http", path="/logo.bin", expect={"file": "logo.bin"})
        assert outcome.passed, outcome.message
        assert outcome.evidence["body_sha256"] == LOGO_SHA and outcome.evidence["body_bytes"] == 65536

        outcome = run(lab, "http", raw=r"GET /hello.txt HTTP/1.0\r\n\r\n",
                      expect={"body": "hello\n", "regex": r"^hel+o$"})
        assert outcome.passed, outcome.message

        outcome = run(lab, "http", path="/no/such/file", expect={"status": 404})
        assert outcome.passed, outcome.message

        outcome = run(lab, "http", method="HEAD", path="/index.html", expect={"headers": {"Content-Length": "165"}})
        assert outcome.passed, outcome.message
        assert outcome.evidence["body_bytes"] == 0

    def test_http_fails_when_the_answer_differs_from_the_expectation(self, lab):
        outcome = run(lab, "http", path="/index.html", expect={"status": 404, "headers": {"Content-Type": "text/plain"}})
        assert not outcome.passed
        assert "the server answered 200 OK to GET /index.html; expected 404 Not Found" in outcome.message
        assert "Content-Type header of the answer to GET /index.html is 'text/html'; expected 'text/plain'" \
            in outcome.message

    def test_malformed_request_passes(self, lab):
        outcome = run(lab, "malformed_request", variants=["garbage", "missing_path", "bad_version", "extra_token",
                                                          "binary", "bad_header"],
                      custom={"lowercase_version": r"GET / http/1.0\r\n\r\n"})
        assert outcome.passed, outcome.message
        assert all(entry["status"] == 400 for entry in outcome.evidence["requests"].values())
        assert outcome.evidence["alive"]["status"] == 200

    def test_client_reset_passes(self, lab):
        outcome = run(lab, "client_reset", times=5)
        assert outcome.passed, outcome.message
        assert outcome.evidence["resets_done"] == 5

    def test_trickled_request_passes(self, lab):
        outcome = run(lab, "trickled_request", path="/hello.txt", expect={"body": "hello\n"})
        assert outcome.passed, outcome.message
        assert outcome.evidence["segments"] >= 20

    def test_syn_flood_passes(self, lab):
        outcome = run(lab, "syn_flood", syns=256)
        assert outcome.passed, outcome.message
        evidence = outcome.evidence
        assert evidence["syns_sent"] == 256 and evidence["synacks_seen"] > 0 and evidence["probe_succeeded"]
        assert evidence["cleanup"]["rules_removed"] == 1
        # Nothing sets it for this lab: read inside the server, the default of a network namespace.
        assert (evidence["server_syncookies"], evidence["server_syncookies_source"]) == (1, "read in the server")

    def test_syn_flood_passes_without_syncookies_when_the_backlog_holds_the_flood(self, start_lab):
        lab = start_without_syncookies(start_lab, self.bug)
        outcome = run(lab, "syn_flood", syns=64)
        assert outcome.passed, outcome.message
        assert outcome.evidence["server"]["half_open_during_flood"] >= 60
        assert outcome.evidence["synacks_seen"] == 64
        assert (outcome.evidence["server_syncookies"], outcome.evidence["server_syncookies_source"]) == \
            (0, "set by the lab for the server")
        assert "SYN cookies are off in the server's kernel (net.ipv4.tcp_syncookies=0)" in outcome.message


class TestServerThatNeverSays400:
    bug = "no400"

    def test_http_passes(self, lab):
        assert run(lab, "http", path="/hello.txt", expect={"body": "hello\n"}).passed

    def test_malformed_request_fails_naming_the_wrong_status(self, lab):
        outcome = run(lab, "malformed_request")
        assert not outcome.passed
        assert "the server answered 200 OK to a request line with no path ('GET\\r\\n\\r\\n'); " \
               "expected 400 Bad Request" in outcome.message
        assert outcome.evidence["requests"]["garbage"]["status"] == 200
        assert outcome.evidence["alive"]["status"] == 200      # it is alive, only wrong


class TestServerThatCrashesOnGarbage:
    bug = "crash_on_garbage"

    def test_http_passes(self, lab):
        assert run(lab, "http", path="/hello.txt", expect={"body": "hello\n"}).passed

    def test_malformed_request_fails_because_the_server_died(self, lab):
        outcome = run(lab, "malformed_request")
        assert not outcome.passed
        assert outcome.message.startswith("after the bad requests the server stopped answering")
        assert "It stopped at two words that are no request line ('HELLO THERE\\r\\n\\r\\n')" in outcome.message
        assert "The server is no longer running: it exited with code 1" in outcome.message
        assert outcome.evidence["server_status"] == "exited"
        assert "ValueError" in outcome.evidence["server_log_tail"]


class TestServerThatDiesOnReset:
    bug = "dies_on_reset"

    def test_http_and_malformed_request_pass(self, lab):
        assert run(lab, "http", path="/hello.txt", expect={"body": "hello\n"}).passed
        assert run(lab, "malformed_request").passed

    def test_client_reset_fails(self, lab):
        outcome = run(lab, "client_reset", times=3)
        assert not outcome.passed
        assert "stopped accepting connections after the 1st reset" in outcome.message
        assert "ConnectionResetError" in outcome.message
        assert outcome.evidence["server_status"] == "exited"
        assert "ConnectionResetError" in outcome.evidence["server_log_tail"]


class TestServerThatReadsWithOneRecv:
    bug = "single_recv"

    def test_http_and_malformed_request_pass(self, lab):
        assert run(lab, "http", path="/hello.txt", expect={"body": "hello\n"}).passed
        assert run(lab, "malformed_request").passed

    def test_trickled_request_fails(self, lab):
        outcome = run(lab, "trickled_request", path="/hello.txt", expect={"body": "hello\n"})
        assert not outcome.passed
        assert outcome.message.startswith("the server answers GET /hello.txt sent in one piece, but the same request "
                                          "sent in")
        assert "400 Bad Request" in outcome.message and "keep calling recv()" in outcome.message
        assert outcome.evidence["baseline"]["status"] == 200
        assert outcome.evidence["trickle"]["sent"] < outcome.evidence["request_bytes"]


class TestServerThatAltersFiles:
    bug = "wrong_body"

    def test_http_passes_on_a_plain_text_file(self, lab):
        assert run(lab, "http", path="/hello.txt", expect={"file": "hello.txt"}).passed

    def test_http_fails_on_a_binary_file_by_digest(self, lab):
        outcome = run(lab, "http", path="/logo.bin", expect={"file": "logo.bin"})
        assert not outcome.passed
        assert "the body of the answer to GET /logo.bin is not the file logo.bin: expected 65536 bytes with sha256 " \
               f"{LOGO_SHA[:12]}…" in outcome.message
        assert outcome.evidence["expected_sha256"] == LOGO_SHA
        assert outcome.evidence["body_sha256"] != LOGO_SHA

    def test_http_fails_on_a_wrong_content_type(self, lab):
        outcome = run(lab, "http", path="/", expect={"headers": {"Content-Type": "text/html"}})
        assert not outcome.passed
        assert "the Content-Type header of the answer to GET / is 'text/plain'; expected 'text/html'" in outcome.message


class TestServerWithABacklogOfOne:
    """syn_flood discriminates on the server's SYN queue only where the server's kernel does not use
    SYN cookies; with cookies on (the default in a container's network namespace) even listen(1) passes."""

    bug = "small_backlog"

    def test_syn_flood_passes_with_syncookies_on(self, lab):
        outcome = run(lab, "syn_flood", syns=64)
        assert outcome.passed, outcome.message
        assert outcome.evidence["server"]["syn_queue_full_cookies"] > 0
        assert outcome.evidence["server_syncookies"] == 1

    def test_syn_flood_fails_with_syncookies_off_and_leaves_no_damage(self, start_lab):
        lab = start_without_syncookies(start_lab, self.bug)
        outcome = run(lab, "syn_flood", syns=64)
        assert not outcome.passed
        assert "timed out" in outcome.message and "listen()" in outcome.message
        assert "SYN cookies are off in the server's kernel (net.ipv4.tcp_syncookies=0" in outcome.message
        assert outcome.evidence["server"]["syn_queue_full_drops"] > 0
        assert outcome.evidence["server"]["half_open_during_flood"] <= 4
        assert outcome.evidence["server_syncookies"] == 0
        # The cleanup reset the half-open entries: a client gets in right away, cookies still off.
        assert run(lab, "http", path="/hello.txt", expect={"body": "hello\n"}, budget=5).passed
