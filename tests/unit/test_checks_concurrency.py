"""The concurrency checks' logic without Docker: percentiles, verdicts, messages, the harness contract.

The judges (`judge_*`) turn harness facts into an Outcome; here they get hand-made facts
shaped like what the harness returns. The check functions run on a lab up on the in-memory
engine (fakes.FakeBackend), whose client's harness answers what each test scripts. A few
harness pieces (the HTTP response reader, the timed request, counting closed sockets) run
against tiny servers on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import socket
import time

import pytest
from pydantic import ValidationError

from labctl.checks import REGISTRY, CheckContext
from labctl.checks import concurrency as conc
from labctl.checks.concurrency import (
    ConcurrentClientsParams,
    IdleConnectionsParams,
    SlowClientParams,
    SlowReaderParams,
    judge_concurrent_clients,
    judge_idle_connections,
    judge_slow_client,
    judge_slow_reader,
    percentile,
    seconds_text,
)
from labctl.errors import LabctlError
from labctl.harness import concurrency as harness
from unit.fakes import FakeBackend
from unit.loopback import LocalServer


def good_probe(seconds: float = 0.004, path: str = "/index.html") -> dict:
    """A timed request's facts (harness client.timed_request): a whole 200 answer."""
    return {"path": path, "timeout": 3.0, "seconds": seconds, "connected": True, "connect_seconds": 0.0003,
            "first_byte_seconds": seconds - 0.0001, "error": None, "elapsed": seconds, "end": "content-length",
            "head": "HTTP/1.0 200 OK\r\nContent-Length: 94\r\n\r\n", "head_complete": True, "status": 200,
            "status_line": "HTTP/1.0 200 OK", "content_length": 94, "body_bytes": 94, "received": 133,
            "complete": True, "body_sha256": "x"}


def timed_out_probe(waited: float = 3.0, connected: bool = True) -> dict:
    """Connected and nothing came (a server busy with another client), or no SYN-ACK at all."""
    facts = {"path": "/index.html", "timeout": waited, "seconds": None, "connected": connected,
             "first_byte_seconds": None, "elapsed": waited, "status": None, "status_line": None,
             "content_length": None, "body_bytes": 0, "received": 0, "complete": False, "head": "",
             "head_complete": False, "body_sha256": None}
    if connected:
        return {**facts, "connect_seconds": 0.0004, "end": "timeout", "error": "timeout"}
    return {**facts, "connect_seconds": waited, "end": "connect-timeout", "error": "connect-timeout",
            "connect_error": "TimeoutError: timed out"}


def refused_probe() -> dict:
    return {"path": "/index.html", "timeout": 3.0, "seconds": None, "connected": False, "connect_seconds": 0.001,
            "end": "refused", "error": "refused", "elapsed": 0.001,
            "connect_error": "ConnectionRefusedError: [Errno 111] Connection refused"}


# -- percentiles and words ---------------------------------------------------------------------------

def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(1, 101)]          # 1..100
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile(list(reversed(values)), 1) == 1   # order of the input does not matter
    assert percentile([0.2, 0.1, 0.3], 50) == 0.2
    assert percentile([7.0], 99) == 7.0


def test_percentile_of_few_values_is_a_measured_value():
    values = [0.01] * 9 + [5.0]                          # one slow request out of ten
    assert percentile(values, 50) == 0.01
    assert percentile(values, 90) == 0.01
    assert percentile(values, 99) == 5.0                 # the slow one is the p99: never averaged away


def test_percentile_of_nothing_and_bad_q():
    assert percentile([], 50) is None
    with pytest.raises(ValueError):
        percentile([1.0], 0)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_seconds_text_reads_well():
    assert seconds_text(0.0016) == "1.6 ms"
    assert seconds_text(0.035) == "35 ms"
    assert seconds_text(3.004) == "3.00 s"
    assert seconds_text(None) == "-"
    assert seconds_text(1e-6) == "0.001 ms"


# -- parameters ------------------------------------------------------------------------------------

def test_the_four_checks_are_registered_with_documented_params():
    for name, model in [("slow_client", SlowClientParams), ("concurrent_clients", ConcurrentClientsParams),
                        ("idle_connections", IdleConnectionsParams), ("slow_reader", SlowReaderParams)]:
        definition = REGISTRY[name]
        assert definition.params is model
        assert definition.summary
        for field_name, field in model.model_fields.items():
            assert field.description, f"{name}.{field_name} has no description"


def test_defaults():
    assert SlowClientParams().slow_clients == 1 and SlowClientParams().limit == 2.0
    assert ConcurrentClientsParams().clients == 20 and ConcurrentClientsParams().max_errors == 0
    assert ConcurrentClientsParams().p99_limit is None
    assert IdleConnectionsParams().connections == 2000 > 1024   # above select()'s FD_SETSIZE
    assert SlowReaderParams().min_size == 4 << 20


def test_params_reject_typos_and_nonsense():
    with pytest.raises(ValidationError):
        SlowClientParams(slow_client=3)                 # typo of slow_clients: an error, not ignored
    with pytest.raises(ValidationError):
        SlowClientParams(path="index.html")             # a URL path starts with /
    with pytest.raises(ValidationError):
        ConcurrentClientsParams(clients=256, requests=1000)   # 256000 requests: too many
    with pytest.raises(ValidationError):
        IdleConnectionsParams(connections=0)


# -- slow_client -----------------------------------------------------------------------------------

def slow_facts(probe: dict, slow: int = 1, **more) -> dict:
    return {"slow_clients": slow, "slow_connected": slow, "slow_connect_errors": {},
            "slow_closed_before_probe": {}, "probe": probe, "slow_closed_after_probe": {},
            "slow_answered_after_finishing": slow, **more}


def test_slow_client_passes_when_the_second_client_is_answered_in_time():
    outcome = judge_slow_client(slow_facts(good_probe(0.0026)), SlowClientParams())
    assert outcome.passed
    assert outcome.message == ("a second client was answered in 2.6 ms while one slow client was connected "
                               "with an unfinished request (limit 2 s)")
    assert outcome.evidence["response_seconds"] == 0.0026


def test_slow_client_fails_a_server_that_serves_one_client_at_a_time():
    outcome = judge_slow_client(slow_facts(timed_out_probe(3.0)), SlowClientParams())
    assert not outcome.passed
    assert outcome.message.startswith("a second client waited 3.00 s and got no response while one slow "
                                      "client was connected: the server serves one client at a time")
    assert "listen backlog" in outcome.message


def test_with_several_slow_clients_the_message_does_not_claim_one_at_a_time():
    outcome = judge_slow_client(slow_facts(timed_out_probe(3.0), slow=9), SlowClientParams(slow_clients=9))
    assert not outcome.passed
    assert "the server serves at most 9 clients at once (one at a time, or a pool of at most 9 workers" \
        in outcome.message
    assert "serves one client at a time" not in outcome.message


def test_slow_client_fails_a_late_answer_and_says_how_late():
    outcome = judge_slow_client(slow_facts(good_probe(2.5), slow=3), SlowClientParams(slow_clients=3))
    assert not outcome.passed
    assert "waited 2.50 s for its response while 3 slow clients were connected (limit 2 s)" in outcome.message


def test_slow_client_other_failures_are_described():
    refused = refused_probe()
    outcome = judge_slow_client(slow_facts(refused), SlowClientParams())
    assert not outcome.passed and "connection refused" in outcome.message
    not_found = dict(good_probe(), status=404, status_line="HTTP/1.0 404 Not Found", error="bad-status", seconds=None,
                     head="HTTP/1.0 404 Not Found\r\nContent-Length: 94\r\n\r\n")
    outcome = judge_slow_client(slow_facts(not_found), SlowClientParams())
    assert not outcome.passed and '"HTTP/1.0 404 Not Found" instead of a 200' in outcome.message
    outcome = judge_slow_client({"slow_connected": 0, "slow_connect_errors": {"refused": 1},
                                 "probe": refused}, SlowClientParams())
    assert not outcome.passed and outcome.message.startswith("could not open the slow connections")


def test_slow_client_notes_a_server_that_dropped_the_slow_clients():
    facts = slow_facts(good_probe(), slow_closed_before_probe={"closed": 1})
    outcome = judge_slow_client(facts, SlowClientParams())
    assert outcome.passed and "closed 1 of the 1 slow connection" in outcome.message


# -- concurrent_clients ----------------------------------------------------------------------------

def concurrent_facts(latencies: list[float], errors: dict[str, int] | None = None, not_run: int = 0,
                     wall: float = 0.5) -> dict:
    return {"clients": 20, "clients_started": 20, "requests_per_client": 10, "latencies": latencies,
            "errors": errors or {}, "error_examples": [], "not_run": not_run, "wall_seconds": wall,
            "attempted": len(latencies) + sum((errors or {}).values()), "ok": len(latencies)}


def test_concurrent_clients_passes_and_gives_the_numbers():
    latencies = [0.010] * 190 + [0.020] * 8 + [0.100, 0.200]
    outcome = judge_concurrent_clients(concurrent_facts(latencies, wall=0.5), ConcurrentClientsParams())
    assert outcome.passed
    assert outcome.message == ("20 clients at once, 10 requests each: all 200 answered "
                               "(p50 10 ms, p99 20 ms, 400 requests/s)")
    stats = outcome.evidence["latency_seconds"]                # rank 198 of 200 is the p99
    assert stats["p50"] == 0.010 and stats["p99"] == 0.020 and stats["max"] == 0.200
    assert outcome.evidence["requests_per_second"] == 400


def test_concurrent_clients_fails_on_errors_and_names_them():
    facts = concurrent_facts([0.02] * 21, {"reset": 138, "no-answer": 41})
    outcome = judge_concurrent_clients(facts, ConcurrentClientsParams())
    assert not outcome.passed
    assert "179 of 200 requests failed (138 connection reset, 41 closed without a response); none may fail" \
        in outcome.message


def test_concurrent_clients_tolerates_the_errors_allowed():
    facts = concurrent_facts([0.02] * 198, {"timeout": 2})
    assert judge_concurrent_clients(facts, ConcurrentClientsParams(max_errors=2)).passed
    assert not judge_concurrent_clients(facts, ConcurrentClientsParams(max_errors=1)).passed


def test_concurrent_clients_p99_limit():
    facts = concurrent_facts([0.01] * 190 + [1.5] * 10)
    assert judge_concurrent_clients(facts, ConcurrentClientsParams()).passed          # no limit: passes
    outcome = judge_concurrent_clients(facts, ConcurrentClientsParams(p99_limit=0.5))
    assert not outcome.passed
    assert "the 99th percentile of latency is 1.50 s, above the limit of 500 ms" in outcome.message


def test_concurrent_clients_requests_never_made_are_a_failure():
    outcome = judge_concurrent_clients(concurrent_facts([0.5] * 150, not_run=50), ConcurrentClientsParams())
    assert not outcome.passed and "50 of 200 requests could not even be made" in outcome.message


# -- idle_connections -------------------------------------------------------------------------------

def idle_facts(connected: int = 2000, probe: dict | None = None, failures: dict | None = None,
               closed: dict | None = None, target: int = 2000, **more) -> dict:
    return {"asked": 2000, "target": target, "clamped": target < 2000,
            "nofile": {"soft_before": 8192, "hard": 8192, "soft": 8192}, "connected": connected,
            "connect_failures": failures or {}, "first_failure_after": connected if failures else None,
            "open_seconds": 1.0, "closed_before_probe": closed or {}, "closed_after_probe": closed or {},
            "probe": probe or good_probe(0.0016), **more}


def test_idle_connections_passes_a_server_that_holds_them_all():
    outcome = judge_idle_connections(idle_facts(), IdleConnectionsParams())
    assert outcome.passed
    assert outcome.message == ("the server held 2000 idle connections and still answered a new request "
                               "in 1.6 ms (limit 2 s)")


def test_idle_connections_names_select_when_the_log_does():
    facts = idle_facts(1100, timed_out_probe(connected=False), {"refused": 100}, {"closed": 1100})
    log = "Traceback ...\nValueError: filedescriptor out of range in select()"
    outcome = judge_idle_connections(facts, IdleConnectionsParams(), log_tail=log)
    assert not outcome.passed
    assert outcome.message.startswith("with 2000 idle connections opened: the server stopped taking new "
                                      "connections after about 1100 idle ones")
    assert "the server closed 1100 of the 1100 idle connections" in outcome.message
    assert "The server's log says select() failed" in outcome.message and "FD_SETSIZE" in outcome.message


def test_idle_connections_names_threads_when_the_log_does():
    facts = idle_facts(640, timed_out_probe(connected=False), {"connect timed out": 160})
    outcome = judge_idle_connections(facts, IdleConnectionsParams(), log_tail="RuntimeError: can't start new thread")
    assert not outcome.passed and "could not start a new thread" in outcome.message


def test_idle_connections_generic_hint_without_a_log():
    facts = idle_facts(130, timed_out_probe(connected=False), {"connect-timeout": 70})
    outcome = judge_idle_connections(facts, IdleConnectionsParams(), port=8080)
    assert not outcome.passed
    assert "only 130 of 2000 connected; 70 connect timed out" in outcome.message
    assert ("connecting to the server on port 8080 for GET /index.html timed out after 3.00 s (no answer to its SYN"
            in outcome.message)
    assert "poll/epoll" in outcome.message


def test_idle_connections_closed_by_the_server():
    facts = idle_facts(probe=good_probe(), closed={"closed": 3})
    assert not judge_idle_connections(facts, IdleConnectionsParams()).passed
    assert judge_idle_connections(facts, IdleConnectionsParams(max_closed=3)).passed


def test_idle_connections_says_when_the_client_could_not_hold_them_all():
    facts = idle_facts(connected=1000, target=1000, nofile={"soft_before": 1064, "hard": 1064, "soft": 1064})
    outcome = judge_idle_connections(facts, IdleConnectionsParams())
    assert outcome.passed
    assert "the client could hold only 1000 of the 2000 asked: its nofile limit is 1064" in outcome.message


# -- slow_reader ------------------------------------------------------------------------------------

SIZE = 8 << 20


def reader_facts(probe: dict, body_bytes: int = SIZE, complete: bool = True, closed: bool = False,
                 sha: str | None = "abc", status: int = 200) -> dict:
    return {"path": "/large.bin", "rcvbuf": 8192, "slow_first_byte_seconds": 0.02,
            "slow_bytes_before_probe": 11264, "slow_bytes_during_probe": 1024, "drain_seconds": 0.2,
            "slow": {"status": status, "content_length": SIZE, "body_bytes": body_bytes, "received": body_bytes + 44,
                     "complete": complete, "end": "closed" if closed else "content-length", "body_sha256": sha,
                     "status_line": f"HTTP/1.0 {status} X"},
            "probe": probe}


def test_slow_reader_passes():
    outcome = judge_slow_reader(reader_facts(good_probe(0.0013)), SlowReaderParams(), (SIZE, "abc"))
    assert outcome.passed
    assert outcome.message == ("while a client read /large.bin (8.0 MiB) slowly, a second client was answered "
                               "in 1.3 ms (limit 2 s), and the slow reader then got the whole file")


def test_slow_reader_fails_a_server_stuck_in_sendall():
    outcome = judge_slow_reader(reader_facts(timed_out_probe()), SlowReaderParams())
    assert not outcome.passed
    assert "a second client waited 3.00 s and got no response: the server is stuck in send()/sendall()" \
        in outcome.message


def test_slow_reader_fails_a_short_file():
    facts = reader_facts(good_probe(), body_bytes=47_700, complete=False, closed=True, sha=None)
    outcome = judge_slow_reader(facts, SlowReaderParams(), (SIZE, "abc"))
    assert not outcome.passed
    assert "received only 46.6 KiB of 8.0 MiB before the server closed the connection" in outcome.message


def test_slow_reader_fails_a_corrupt_file():
    outcome = judge_slow_reader(reader_facts(good_probe(), sha="def"), SlowReaderParams(), (SIZE, "abc"))
    assert not outcome.passed and "differ from the file" in outcome.message


def test_slow_reader_missing_file_is_the_servers_fault_small_file_the_exercises():
    outcome = judge_slow_reader(reader_facts(good_probe(), status=404), SlowReaderParams())
    assert not outcome.passed and '"HTTP/1.0 404 X" instead of a 200' in outcome.message
    with pytest.raises(LabctlError, match="less than min_size"):
        judge_slow_reader(reader_facts(good_probe()), SlowReaderParams(), (1000, "abc"))


def test_expected_file_reads_size_and_digest_inside_the_docroot_only(tmp_path):
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "big.bin").write_bytes(b"x" * 5000)
    (tmp_path / "secret").write_bytes(b"no")
    assert conc.expected_file(tmp_path / "www", "/big.bin") == (5000, hashlib.sha256(b"x" * 5000).hexdigest())
    assert conc.expected_file(tmp_path / "www", "/../secret") is None
    assert conc.expected_file(tmp_path / "www", "/missing") is None
    assert conc.expected_file(None, "/big.bin") is None


# -- the check functions on a lab on the fake engine ------------------------------------------------

def answers(fake: FakeBackend, command: str, facts: dict, then=None) -> list[dict]:
    """The client's harness answers `command` with `facts` (after `then()`, what the server does
    meanwhile); returns the params of each call, as the harness got them."""
    asked: list[dict] = []

    def handler(params: dict) -> dict:
        asked.append(params)
        if then is not None:
            then()
        return facts

    fake.harness["client"][command] = handler
    return asked


def context(lab, budget: float = 20.0, **kwargs) -> CheckContext:
    return CheckContext(lab=lab, port=8080, deadline=time.monotonic() + budget, **kwargs)


def test_a_check_runs_its_harness_command_in_the_client_within_its_budget(fake, lab):
    asked = answers(fake, "slow_client", slow_facts(good_probe()))
    outcome = conc.slow_client(context(lab, budget=20), SlowClientParams(limit=1.5, slow_clients=2))
    assert outcome.passed
    [params] = asked
    [run] = fake.execs
    assert (run.node, run.harness_command, run.params) == ("client", "slow_client", params)
    assert params["host"] == "server" and params["port"] == 8080 and params["slow_clients"] == 2
    assert params["timeout"] == pytest.approx(2.5)          # the limit, plus time to measure a late answer
    assert params["budget"] < run.timeout <= 20              # the harness stops before docker exec gives up
    assert "server_log_tail" not in outcome.evidence         # a pass carries no log


def test_a_failure_carries_the_log_and_says_the_server_exited(fake, lab):
    def crash() -> None:                                     # the server dies while the client measures
        fake.log("server", "Traceback\nBoom\n")
        fake.stop("server", 1)

    answers(fake, "slow_client", slow_facts(timed_out_probe()), then=crash)
    outcome = conc.slow_client(context(lab), SlowClientParams())
    assert not outcome.passed
    assert outcome.evidence["server_log_tail"] == "Traceback\nBoom"
    assert outcome.evidence["server_exit_code"] == 1
    assert outcome.message.endswith("The server is no longer running: it exited with code 1 "
                                    "(its log is in the evidence; `labctl logs server`).")


def test_idle_connections_check_reads_the_log_for_its_hint(fake, lab):
    fake.log("server", "ValueError: filedescriptor out of range in select()\n")
    answers(fake, "idle_connections", idle_facts(1100, timed_out_probe(connected=False), {"refused": 100}))
    outcome = conc.idle_connections(context(lab, budget=60), IdleConnectionsParams())
    assert not outcome.passed and "select() failed" in outcome.message


def test_a_harness_that_could_not_run_is_an_error_not_a_failure(fake, lab):
    answers(fake, "concurrent_clients", {"error": "OSError: [Errno 24] Too many open files", "traceback": "..."})
    with pytest.raises(LabctlError, match="harness concurrent_clients in client failed: OSError"):
        conc.concurrent_clients(context(lab), ConcurrentClientsParams())


def test_slow_reader_refuses_an_exercise_whose_file_is_too_small(fake, lab, tmp_path):
    (tmp_path / "large.bin").write_bytes(b"x" * 1000)
    with pytest.raises(LabctlError, match="give the exercise a larger file"):
        conc.slow_reader(context(lab, docroot=tmp_path), SlowReaderParams())
    assert fake.execs == []                                  # found out before any measurement


# -- harness pieces on 127.0.0.1 ----------------------------------------------------------------------

def test_harness_slow_client_on_a_one_at_a_time_server():
    server = LocalServer()
    try:
        facts = harness.slow_client("127.0.0.1", server.port, slow_clients=1, timeout=0.5, settle=0.1, budget=5)
    finally:
        server.close()
    assert facts["slow_connected"] == 1
    assert facts["probe"]["error"] == "timeout" and facts["probe"]["connect_seconds"] is not None
    assert facts["slow_answered_after_finishing"] == 1      # the slow request, once finished, was served
    assert not judge_slow_client(facts, SlowClientParams(limit=0.3)).passed


def test_count_closed_sees_what_the_server_did_to_idle_sockets():
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        clients = [socket.create_connection(("127.0.0.1", port), timeout=2) for _ in range(3)]
        accepted = [listener.accept()[0] for _ in range(3)]
        accepted[0].close()                                  # the server closes one
        accepted[1].sendall(b"HTTP/1.0 503 busy\r\n\r\n")    # writes to another
        time.sleep(0.05)
        started = time.monotonic()
        counts = harness._count_closed(clients)
        assert time.monotonic() - started < 0.5              # never waits on a socket's timeout
        assert counts == {"closed": 1, "sent data": 1}
        for sock in clients + accepted:
            sock.close()


def test_harness_commands_are_exported():
    assert set(harness.COMMANDS) == {"slow_client", "concurrent_clients", "idle_connections", "slow_reader"}
