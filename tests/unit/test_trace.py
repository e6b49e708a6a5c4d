"""labctl trace without an engine: strace's output parsed, the timeline and its links, the clock check,
the terminal view, the HTML page, the JSON shape, and the recording's protocol on the one FakeBackend.

tests/unit/traces/*.json are real recordings (labctl.trace.record on this engine, Linux 6.18, x86_64,
a loaded 2-core machine): the observer's strace run and the client's scenario with its packets, for the
reference solutions. threaded-unfinished.strace is real strace output of the threaded reference taken
without the status filter (calls cut in two by another thread's), its last lines (close, exit, a signal,
a restarted sleep, the detach) in strace's own forms.
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import jsonschema
import pytest
from rich.console import Console

from labctl.backends.base import ALL_FEATURES
from labctl.errors import LabctlError
from labctl.harness import scenarios, tracer
from labctl.trace import links, page, record, strace, terminal, timeline

TRACES = Path(__file__).parent / "traces"
SCHEMA = json.loads((Path(__file__).parents[2] / "labctl" / "schemas" / "trace.schema.json").read_text())


def recorded(name: str) -> timeline.Timeline:
    data = json.loads((TRACES / f"{name}.json").read_text())
    return timeline.build(data["strace"], data["scenario"])


def run(text: str, threads: dict | None = None, packets: list | None = None, began: float | None = None,
        server: str = "10.0.0.2", port: int = 8080) -> timeline.Timeline:
    """A timeline from strace text and packets written in a test."""
    traced = {"text": text, "threads": threads or {"7": [[7, "python3"]]}, "attached_at": began or 100.0,
              "stopped_at": 200.0, "stopped_by": "stop"}
    played = {"scenario": "one", "server": server, "port": port, "client": "10.0.0.3", "began": began or 100.0,
              "packets": packets or [], "stamped": True}
    return timeline.build(traced, played)  # type: ignore[arg-type]


def packet(at: float, flags: str, inbound: bool = True, client_port: int = 40000, seq: int = 1000, length: int = 0,
           payload: str = "") -> dict:
    ends = ("10.0.0.3", "10.0.0.2") if inbound else ("10.0.0.2", "10.0.0.3")
    ports = (client_port, 8080) if inbound else (8080, client_port)
    return {"time": at, "src": ends[0], "dst": ends[1], "sport": ports[0], "dport": ports[1], "flags": flags,
            "seq": seq, "ack": 0, "length": length, "payload": payload}


def handshake(port: int, at: float) -> list[dict]:
    return [packet(at, "S", client_port=port, seq=1000), packet(at + 0.00005, "SA", False, port, seq=5000),
            packet(at + 0.00006, "A", client_port=port, seq=1001)]


# -- strace's output --------------------------------------------------------------------------------------

def test_a_recorded_trace_parses_whole():
    data = json.loads((TRACES / "polling-slow-client.json").read_text())
    parsed = strace.parse(data["strace"]["text"])
    assert parsed.unparsed == 0 and not parsed.cut
    names = {call.name for call in parsed.calls}
    assert {"epoll_wait", "accept4", "recvfrom", "sendto", "close"} <= names
    last = parsed.calls[-1]
    assert last.name == "epoll_wait" and last.running_at_end and last.returned is None  # when strace let go


def test_calls_cut_in_two_are_joined_and_every_form_is_read():
    parsed = strace.parse((TRACES / "threaded-unfinished.strace").read_text())
    assert parsed.unparsed == 0
    futex = next(call for call in parsed.calls if call.name == "futex" and call.tid == 6)
    assert futex.entered == pytest.approx(1796306797.857279, abs=1e-6)
    assert futex.duration == pytest.approx(0.000646, abs=1e-6)
    assert futex.next_seen == pytest.approx(1796306797.857976, abs=1e-6)  # the resumed half: printed when it returned
    received = next(call for call in parsed.calls if call.name == "recvfrom")
    assert received.tid == 144 and received.ret == 36 and received.fd == 4 and '"GET / HTTP/1.0' in received.args
    assert received.returned == pytest.approx(1796306797.858067 + 0.073975, abs=1e-6)
    clone = next(call for call in parsed.calls if call.name == "clone")
    assert strace.child_of(clone) == (144, True)
    failed = next(call for call in parsed.calls if call.name == "clone3")
    assert failed.ret == -1 and failed.errno == "ENOSYS" and strace.child_of(failed) is None
    accepted = parsed.calls[0]
    assert accepted.name == "accept4" and strace.peer_port(accepted) == 52476 and accepted.ret == 4
    assert [(exit_.tid, exit_.how) for exit_ in parsed.exits] == [(144, "exited with 0")]
    assert [signal.name for signal in parsed.signals] == ["SIGCHLD"]
    restarted = next(call for call in parsed.calls if call.restarted)
    assert restarted.name == "clock_nanosleep" and restarted.duration == pytest.approx(0.1, abs=1e-6)
    assert parsed.calls[-1].running_at_end and parsed.calls[-1].name == "accept4"
    never = next(call for call in parsed.calls if call.name == "exit")
    assert never.returned is None and never.result == "?" and not never.running_at_end


def test_the_server_s_strings_never_decide_where_a_call_ends():
    hostile = ('7     100.000100 write(1, "\\33[2J) = 0 <9.999999> <unfinished ...> = 5", 40) = 40 <0.000010>\n'
               '7     100.000200 recvfrom(4, ") = 9 <1.0>", 4096, 0, NULL, NULL <unfinished ...>\n'
               '7     100.000300 <... recvfrom resumed>) = 11 <0.000100>\n'
               '7     100.000400 ' + "x" * 5000 + '\n'
               'not strace at all\n'
               '7     100.000500 sendto(4, "' + "A" * 2000 + '", 2000, 0, NULL, 0) = 2000 <0.000020>\n')
    parsed = strace.parse(hostile)
    write, received, sent = parsed.calls
    assert write.name == "write" and write.ret == 40 and write.duration == pytest.approx(0.00001, abs=1e-6)
    assert received.ret == 11 and received.args.startswith('4, ") = 9 <1.0>"')
    assert len(sent.args) <= strace.MAX_ARGS + 3 and sent.ret == 2000
    assert parsed.unparsed == 2 and len(parsed.examples) == 2 and all(len(line) <= 200 for line in parsed.examples)


def test_the_parser_stops_at_its_line_limit(monkeypatch):
    monkeypatch.setattr(strace, "MAX_LINES", 3)
    text = "".join(f"7     100.{index:06d} getpid() = 7 <0.000001>\n" for index in range(10))
    parsed = strace.parse(text)
    assert parsed.cut and len(parsed.calls) == 3


def test_what_poll_select_and_epoll_said_was_ready():
    def ready(line: str) -> set[int] | None:
        return strace.ready_fds(strace.parse(f"7     100.000000 {line}\n").calls[0])

    assert ready("poll([{fd=3, events=POLLIN}, {fd=5, events=POLLIN}], 2, 500) = 1 ([{fd=5, revents=POLLIN}]) "
                 "<0.1>") == {5}
    assert ready("pselect6(6, [3 5], NULL, NULL, NULL, NULL) = 2 (in [3 5]) <0.1>") == {3, 5}
    assert ready("epoll_wait(3, [{events=EPOLLIN, data={u32=4, u64=140690243715076}}], 2, -1) = 1 <0.1>") == {4}
    assert ready("epoll_wait(3, [], 2, 500) = 0 <0.5>") == set()
    assert ready("io_uring_enter(4, 0, 1, IORING_ENTER_GETEVENTS, NULL, 8) = 0 <0.1>") == set()


# -- the timeline -----------------------------------------------------------------------------------------

def test_the_polling_reference_epoll_wait_returns_are_linked_to_the_packets_that_woke_them():
    trace = recorded("polling-slow-client")
    assert [lane.tid for lane in trace.lanes] == [7] and trace.lanes[0].existed
    epoll = [link for link in trace.links if trace.calls[link.call].name == "epoll_wait"]
    assert len(epoll) >= 4 and sum(link.woke for link in epoll) >= 3
    for link in epoll:
        assert link.latency > 0 and trace.packets[link.packet].inbound
        assert trace.calls[link.call].returned >= trace.packets[link.packet].time or link.bounded
    handshake_link = next(link for link in trace.links if trace.packets[link.packet].kind == "handshake")
    assert handshake_link.how == "listener" and trace.calls[handshake_link.accepted].name == "accept4"
    assert trace.latencies()["multiplexer"].count >= 3
    assert trace.clock.pairs >= 5 and trace.clock.wrong == 0 and trace.clock.sends == 1 and trace.clock.wrong_sends == 0


def test_one_return_that_answers_several_packets_is_woken_by_the_first():
    trace = recorded("polling-concurrent")  # one epoll_wait return named two new connections
    by_call: dict[int, list[timeline.Link]] = {}
    for link in trace.links:
        by_call.setdefault(link.call, []).append(link)
    shared = [group for group in by_call.values() if len(group) > 1]
    assert shared and any(link.shared for group in shared for link in group)
    for group in by_call.values():
        assert sum(link.woke for link in group) <= 1
        assert all(not link.woke for link in group[1:]), "only the first packet can have woken it"


def test_the_threaded_reference_gives_each_connection_a_new_thread():
    trace = recorded("threaded-concurrent")
    main, *workers = trace.lanes
    assert main.existed and main.tid == main.pid and len(workers) == 4
    assert all(not lane.existed and lane.born is not None and lane.parent == main.tid and lane.pid == main.pid
               for lane in workers)
    received = {trace.packets[link.packet].client_port: link.tid for link in trace.links if link.how == "received"}
    accepted = {trace.packets[link.packet].client_port: link.tid for link in trace.links if link.how == "accepted"}
    assert len(accepted) == 4 and set(accepted.values()) == {main.tid}
    assert len(set(received.values())) == len(received) >= 3 and main.tid not in received.values()


def test_the_blocking_reference_does_everything_in_one_thread():
    trace = recorded("blocking-concurrent")
    assert len(trace.lanes) == 1 and {link.tid for link in trace.links} == {trace.lanes[0].tid}
    assert sorted(link.how for link in trace.links) == ["accepted"] * 4 + ["received"] * 4
    assert trace.clock.wrong == 0


def test_only_what_happened_from_the_scenario_on_is_shown():
    text = ("7     99.000000 accept4(3, {sa_family=AF_INET, sin_port=htons(39999), sin_addr=inet_addr(\"10.0.0.3\")}, "
            "[16], SOCK_CLOEXEC) = 4 <0.100000>\n"
            "7     99.200000 close(4) = 0 <0.000010>\n"
            "7     99.300000 accept4(3, {sa_family=AF_INET, sin_port=htons(40000), sin_addr=inet_addr(\"10.0.0.3\")}, "
            "[16], SOCK_CLOEXEC) = 4 <1.000200>\n"
            "7     100.300300 recvfrom(4, \"GET\", 4096, 0, NULL, NULL) = 3 <0.000010>\n")
    trace = run(text, packets=handshake(40000, 100.3) + [packet(100.3001, "PA", seq=1001, length=3)], began=100.0)
    assert [call.name for call in trace.calls] == ["accept4", "recvfrom"]  # the warm-up's are left out
    assert [call.index for call in trace.calls] == [0, 1]
    link = trace.links[0]
    assert link.how == "accepted" and link.woke and link.latency == pytest.approx(100.3002 - 100.30006, abs=1e-6)


def test_a_return_strace_put_before_its_packet_is_linked_with_its_latency_bounded():
    # accept4's stopwatch started late: entry + duration is 40 µs before the handshake's ACK, its thread's
    # next line 150 µs after it. It cannot have returned before the ACK: linked, latency at most 150 µs.
    text = ("7     99.950000 getpid() = 7 <0.000001>\n"  # its first call, made after strace attached
            "7     100.000000 accept4(3, {sa_family=AF_INET, sin_port=htons(40000), sin_addr=inet_addr(\"10.0.0.3\")}, "
            "[16], SOCK_CLOEXEC) = 4 <0.500000>\n"
            "7     100.500250 getsockname(4, {sa_family=AF_INET}, [16]) = 0 <0.000010>\n")
    trace = run(text, packets=handshake(40000, 100.50004), began=99.9)
    link, = trace.links
    assert link.bounded and link.woke and link.latency == pytest.approx(0.00015, abs=1e-6)
    assert trace.clock.early == 1 and trace.clock.wrong == 0
    assert terminal.latency_words(link) == "≤ 150 µs"
    assert trace.latencies() == {}  # a bound is no measure: counted apart, never in a median


def test_a_closed_descriptor_is_no_longer_the_connection_when_its_number_comes_back():
    # The server closes the connection (fd 4), opens a file that gets fd 4, reads it; then the client's FIN
    # comes. A read of the file is not a receive on the connection: the FIN links to nothing.
    text = ("7     100.000000 accept4(3, {sa_family=AF_INET, sin_port=htons(40000), sin_addr=inet_addr(\"10.0.0.3\")}, "
            "[16], SOCK_CLOEXEC) = 4 <0.100000>\n"
            "7     100.100100 recvfrom(4, \"GET\", 4096, 0, NULL, NULL) = 3 <0.000010>\n"
            "7     100.100200 close(4) = 0 <0.000010>\n"
            "7     100.100300 openat(AT_FDCWD, \"/srv/www/index.html\", O_RDONLY|O_CLOEXEC) = 4 <0.000010>\n"
            "7     100.100400 read(4, \"<!doctype\", 9) = 9 <0.000500>\n")
    packets = handshake(40000, 100.09) + [packet(100.1000, "PA", seq=1001, length=3),
                                          packet(100.1004, "FA", seq=1004)]
    trace = run(text, packets=packets, began=99.9)
    assert strace.parse(text).calls[2].fd == 4
    assert [trace.packets[link.packet].kind for link in trace.links] == ["handshake", "request"]


def test_a_fork_copies_the_connection_to_the_child():
    text = ("7     100.000000 accept4(3, {sa_family=AF_INET, sin_port=htons(40000), sin_addr=inet_addr(\"10.0.0.3\")}, "
            "[16], SOCK_CLOEXEC) = 4 <0.100000>\n"
            "7     100.100100 clone(child_stack=NULL, flags=CLONE_CHILD_CLEARTID|CLONE_CHILD_SETTID|SIGCHLD) = 9 "
            "<0.000100>\n"
            "7     100.100300 close(4) = 0 <0.000010>\n"
            "9     100.100400 recvfrom(4, \"GET\", 4096, 0, NULL, NULL) = 3 <0.010000>\n")
    packets = handshake(40000, 100.09) + [packet(100.1100, "PA", seq=1001, length=3)]
    trace = run(text, packets=packets, began=99.9)
    child = trace.lane(9)
    assert child is not None and child.pid == 9 and child.parent == 7 and not child.existed
    received = next(link for link in trace.links if link.how == "received")
    assert received.tid == 9 and received.woke and received.latency == pytest.approx(0.0004, abs=1e-6)


def test_a_capture_whose_stamps_did_not_hold_is_said_so():
    traced = {"text": "", "threads": {}, "attached_at": 1.0, "stopped_at": 2.0, "stopped_by": "size",
              "truncated": True, "bytes": 10, "strace_messages": "strace: detach: tkill(7,0): Operation not permitted\n"
                                                                 "strace: \x1b[31mreal trouble"}
    played = {"scenario": "one", "server": "s", "port": 1, "began": 1.0, "packets": [], "stamped": False,
              "warm_ups": [{}, {}], "truncated": True}
    notes = timeline.build(traced, played).notes  # type: ignore[arg-type]
    said = " | ".join(notes)
    assert "not to be trusted" in said and "cut" not in said and "ends early" in said
    assert "its output reached its limit" in said and "packet limit" in said
    assert "real trouble" in said and "tkill" not in said


def test_the_json_has_its_documented_shape_and_the_server_s_strings_escaped():
    for name in ("blocking-concurrent", "threaded-concurrent", "polling-slow-client", "polling-concurrent"):
        jsonschema.validate(recorded(name).to_json(), SCHEMA)
    hostile = run('7     100.000100 write(1, "\\33[2J", 4) = 4 <0.000010>\n',
                  threads={"7": [[7, "\x1b]0;pwned\x07$\\frac{"]]})
    document = hostile.to_json()
    jsonschema.validate(document, SCHEMA)
    assert "\x1b" not in json.dumps(document, ensure_ascii=False)
    assert document["threads"][0]["comm"].startswith("\\x1b]0;pwned\\x07")


# -- showing it ---------------------------------------------------------------------------------------------

def hostile_timeline() -> timeline.Timeline:
    text = ("7     100.000000 accept4(3, {sa_family=AF_INET, sin_port=htons(40000), sin_addr=inet_addr(\"10.0.0.3\")}, "
            "[16], SOCK_CLOEXEC) = 4 <0.300200>\n"
            "7     100.300300 recvfrom(4, \"GET\", 4096, 0, NULL, NULL) = 3 <0.000010>\n"
            "7     100.300400 sendto(4, \"HTTP/1.0 200 <script>alert(1)</script>\\33[2J\", 40, 0, NULL, 0) = 40 "
            "<0.000010>\n")
    packets = handshake(40000, 100.3) + [packet(100.3001, "PA", seq=1001, length=3, payload="GET"),
                                         packet(100.3005, "PA", False, seq=5001, length=40,
                                                payload="HTTP/1.0 200 <script>\x1b[2J$x^$")]
    return run(text, packets=packets, threads={"7": [[7, "<b>\x1b[2J$\\frac{}$"]]}, began=99.9)


def test_the_terminal_says_what_woke_the_server_and_shows_nothing_raw():
    console = Console(record=True, width=200, color_system=None)
    console.print(terminal.renderable(recorded("polling-slow-client")))
    text = console.export_text()
    assert "What woke the server" in text and "epoll_wait" in text and "woke it" in text and "µs" in text
    console = Console(record=True, width=200, color_system=None)
    console.print(terminal.renderable(hostile_timeline()))
    shown = console.export_text()
    assert "\x1b" not in shown and "\\x1b[2J" in shown
    sentence = terminal.link_sentence(recorded("blocking-concurrent"), recorded("blocking-concurrent").links[0])
    assert "accept4 returned" in sentence and "returned this connection" in sentence


def test_the_page_is_self_contained_and_escapes_the_server_s_text(tmp_path):
    written = page.write(recorded("threaded-concurrent"), tmp_path / "trace.html")
    html = written.read_text()
    assert html.startswith("<!doctype html>") and html.count("<svg") == 1 + len(page.bursts(recorded("threaded-concurrent")))
    assert "<script" not in html
    assert " src=" not in html and "@import" not in html
    assert set(re.findall(r"url\(([^)]*)\)", html)) <= {f"#{name}" for name in re.findall(r'id="([^"]+)"', html)}
    assert set(re.findall(r'"(https?://[^"]*)"', html)) <= {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}
    hostile = page.render(hostile_timeline())  # "$\frac{}$" as a lane's name: text, never math text
    assert "<script>alert" not in hostile and "&lt;script&gt;" in hostile and "\x1b" not in hostile
    assert "<b>" not in hostile.split("<svg")[0]


def test_bursts_hold_their_packets_and_the_returns_they_caused():
    trace = recorded("polling-slow-client")
    windows = page.bursts(trace)
    assert 1 < len(windows) <= page.MAX_ZOOMS
    for link in trace.links:
        returned = links.latest_return(trace.calls[link.call]) if link.bounded else trace.calls[link.call].returned
        assert any(start <= trace.packets[link.packet].time and returned <= end for start, end in windows)


# -- recording, on the one FakeBackend ------------------------------------------------------------------------

def test_no_trace_on_a_backend_that_cannot_ptrace_or_capture():
    from tests.unit.fakes import FakeBackend

    fake = FakeBackend(features=frozenset({"thread_waits"}))
    with pytest.raises(LabctlError, match="cannot run on the fake backend, which does not offer hand-made packets"):
        record.refuse_without_features(fake)
    record.refuse_without_features(FakeBackend(features=ALL_FEATURES))


def test_the_local_backend_is_refused_by_name():
    import shutil
    import tempfile

    from labctl.backends.local import LocalBackend

    root = Path(tempfile.mkdtemp(prefix="labctl-unit-", dir="/tmp"))  # a folder every uid may pass through
    try:
        with pytest.raises(LabctlError, match="cannot run on the local backend, which does not offer hand-made packets"):
            record.refuse_without_features(LocalBackend(root))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _scripted(fake, fail_client: bool = False) -> dict:
    """The observer's trace_threads as the harness plays it: READY, then wait for STOP (scripted commands)."""
    data = json.loads((TRACES / "polling-slow-client.json").read_text())
    seen: dict = {"stopped": threading.Event()}

    def trace_threads(params: dict) -> dict:
        ready, stop = tracer.control_paths(params["token"])
        fake.commands["observer"][f"test -e {ready}"] = lambda argv: __import__(
            "labctl.backends.base", fromlist=["ExecResult"]).ExecResult(0, b"", b"")
        fake.commands["observer"][f"touch {stop}"] = lambda argv: (seen["stopped"].set(), __import__(
            "labctl.backends.base", fromlist=["ExecResult"]).ExecResult(0, b"", b""))[1]
        assert seen["stopped"].wait(10), "the host never wrote STOP"
        return data["strace"]

    def play_scenario(params: dict) -> dict:
        seen["params"] = params
        if fail_client:
            raise KeyboardInterrupt
        return data["scenario"]

    fake.harness["observer"]["trace_threads"] = trace_threads
    fake.harness["client"]["play_scenario"] = play_scenario
    return seen


def test_a_recording_meets_the_observer_then_plays_then_stops_the_trace(tmp_path):
    from tests.unit.fakes import FakeBackend, up_lab

    fake = FakeBackend()
    lab = up_lab(fake, tmp_path)
    seen = _scripted(fake)
    said: list[str] = []
    recording = record.record(lab, "slow-client", pieces=3, pause=0.1, progress=said.append)
    assert seen["stopped"].is_set()
    assert seen["params"]["scenario"] == "slow-client" and seen["params"]["pieces"] == 3
    assert recording.scenario["scenario"] == "slow-client" and "epoll_wait" in recording.strace["text"]
    nodes = [(item.node, item.command[:4]) for item in fake.execs]
    assert nodes[0][0] == "observer" and any(node == "client" for node, _ in nodes)
    assert [node for node, command in nodes if command[:1] == ["touch"]] == ["observer"]
    assert any("strace attaching" in line for line in said)


def test_a_recording_interrupted_while_the_client_plays_still_stops_the_trace(tmp_path):
    from tests.unit.fakes import FakeBackend, up_lab

    fake = FakeBackend()
    lab = up_lab(fake, tmp_path)
    seen = _scripted(fake, fail_client=True)
    with pytest.raises(KeyboardInterrupt):
        record.record(lab, "one")
    assert seen["stopped"].is_set()


def test_an_unknown_scenario_is_refused_before_anything_runs(tmp_path):
    from tests.unit.fakes import FakeBackend, up_lab

    fake = FakeBackend()
    lab = up_lab(fake, tmp_path)
    before = len(fake.execs)
    with pytest.raises(LabctlError, match="no scenario 'flood'; expected one of one, slow-client, concurrent"):
        record.record(lab, "flood")
    assert len(fake.execs) == before


# -- the harness's pure parts -----------------------------------------------------------------------------

def test_the_harness_halves():
    assert scenarios._pieces(b"GET / HTTP/1.0\r\n\r\n", 4) == [b"GET /", b" HTTP", b"/1.0\r", b"\n\r\n"]
    assert scenarios.flags_word(0x12) == "SA" and scenarios.flags_word(0x18) == "PA" and scenarios.flags_word(0x11) == "FA"
    command = tracer.strace_command([7, 9], 30, "/tmp/x.strace")
    assert command[:4] == ["timeout", "-k", "2", "35"] and "-f" in command and "-T" in command and "-ttt" in command
    assert command[-4:] == ["-p", "7", "-p", "9"] and "status=successful,failed,unfinished,detached" in command
    assert "-y" not in command and "-yy" not in command
    with pytest.raises(ValueError):
        tracer.control_paths("../../etc/passwd")
    warm = {"connect_began": 10.0, "connected_at": 10.01, "port": 40000}
    caught = [packet(10.001, "S", client_port=40000), packet(10.002, "SA", False, 40000)]
    caught[1]["src"] = "10.0.0.2"
    assert scenarios._stamps_hold(warm, caught, "10.0.0.2", 8080)  # type: ignore[arg-type]
    late = [dict(caught[0], time=10.02), dict(caught[1], time=10.021)]  # stamped when the capture read them
    assert not scenarios._stamps_hold(warm, late, "10.0.0.2", 8080)  # type: ignore[arg-type]
    assert not scenarios._stamps_hold(warm, [dict(caught[0], time=10.003), caught[1]], "10.0.0.2", 8080)  # type: ignore[arg-type]


def test_a_load_curve_measured_after_the_trace_is_drawn_on_the_page_and_kept_in_the_json(tmp_path):
    from labctl.trace.load import LoadCurve

    from .test_checks_load import BLOCKING, rows_of

    load = LoadCurve(rows_of(BLOCKING), "p99 grew 34x from 1 to 64 clients: <b>one at a time</b>", passed=False)
    built = recorded("threaded-concurrent")
    html = page.render(built, load)
    assert "Under load" in html and "It would fail" in html
    assert html.count("<svg") == 2 + len(page.bursts(built))   # the timelines and the curve
    assert "&lt;b&gt;one at a time&lt;/b&gt;" in html and "<b>one" not in html
    document = {**built.to_json(), "load_curve": load.to_json()}
    jsonschema.validate(document, SCHEMA)
    assert "Under load" not in page.render(built)
