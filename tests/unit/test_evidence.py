"""The builders of a failed check's evidence, from what real labs recorded (tests/unit/recorded) and from
packets made with scapy: the thread timeline and its picture, the samples file, the pcap reader and the
connection table, the evidence folder and its caps. No engine.

Recorded on this project's images (Linux 6.18, x86_64): the blocking solution idle (asleep in accept4), the
busy_poll mutant idle (running at every look), tests/servers/model_threaded_busy idle and while four
connections were held (a thread per client asleep in recvfrom, one housekeeping thread that spins), and the
packets of one GET / to the blocking solution (tcpdump in the client).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import matplotlib
import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.utils import wrpcap

from labctl import observe
from labctl.errors import LabctlError
from labctl.evidence import pcap, timeline
from labctl.evidence.capture import packets_for
from labctl.evidence.folder import MANIFEST, EvidenceFolder, Full, slug

RECORDED = Path(__file__).parent / "recorded"


def recorded(name: str) -> observe.Sample:
    return observe.Sample.from_json(json.loads((RECORDED / name).read_text()))


def held_and_idle() -> list[tuple[str, observe.Sample]]:
    data = json.loads((RECORDED / "threaded-busy-idle-and-held.json").read_text())
    return [("idle", observe.Sample.from_json(data["idle"])),
            ("while 4 connections were held", observe.Sample.from_json(data["loaded"]))]


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


# -- the timeline --------------------------------------------------------------------------------

def test_a_busy_loop_is_a_lane_that_runs_at_every_look_with_its_cpu():
    drawn = timeline.timeline("idle-cpu", [("idle", recorded("busy-poll-idle.json"))])
    [lane] = drawn.lanes
    assert lane.main and lane.comm == "python3"
    assert {mark.wait for mark in lane.marks} == {"runs"} and {mark.state for mark in lane.marks} == {"R"}
    assert lane.running_share == 1.0
    # Its own ticks say what the cgroup said (62% of a CPU on a shared machine), within a tick's rounding.
    assert lane.cpu_percent == pytest.approx(recorded("busy-poll-idle.json").cpu_percent, abs=10)
    assert all(mark.cpu_percent is not None for mark in lane.marks[1:]) and lane.marks[0].cpu_percent is None
    [window] = drawn.windows
    assert window.label == "idle" and window.looks == len(lane.marks) == 16


def test_a_blocking_server_idle_is_a_lane_asleep_in_accept4_at_zero_cpu():
    drawn = timeline.timeline("asleep-in-accept", [("idle", recorded("blocking-solution-idle.json"))])
    [lane] = drawn.lanes
    assert {(mark.state, mark.wait, mark.syscall) for mark in lane.marks} == {("S", "new-connection", "accept4")}
    assert lane.cpu_percent == 0.0 and lane.running_share == 0.0


def test_two_windows_lie_on_one_time_axis_and_the_lanes_say_which_thread_spins():
    drawn = timeline.timeline("io-model", held_and_idle())
    assert [window.label for window in drawn.windows] == ["idle", "while 4 connections were held"]
    first, second = drawn.windows
    assert 0.0 == first.start < first.end < second.start < second.end
    assert [lane.tid for lane in drawn.lanes] == sorted(lane.tid for lane in drawn.lanes)  # drawn in tid order
    spinner = next(lane for lane in drawn.lanes if lane.tid == 15)
    assert spinner.running_share == 1.0 and spinner.cpu_percent > 20
    main = next(lane for lane in drawn.lanes if lane.main)
    assert {mark.syscall for mark in main.marks} == {"accept4"} and main.cpu_percent == 0.0
    clients = [lane for lane in drawn.lanes if lane.tid in (18, 19, 20, 21)]
    assert len(clients) == 4 and all(lane.marks[-1].syscall == "recvfrom" for lane in clients)
    assert all(mark.at >= second.start for lane in clients for mark in lane.marks), "born while held"


def test_lanes_beyond_the_cap_are_counted_the_busiest_kept():
    drawn = timeline.timeline("io-model", held_and_idle(), max_lanes=2)
    assert drawn.left_out == 4
    assert {lane.tid for lane in drawn.lanes} >= {15}, "the thread that spins is drawn first"


def test_the_picture_is_a_png_that_grows_with_its_lanes():
    one = timeline.render_png(timeline.timeline("idle-cpu", [("idle", recorded("busy-poll-idle.json"))]), "idle-cpu")
    six = timeline.render_png(timeline.timeline("io-model", held_and_idle()), "io-model")
    (width_one, height_one), (width_six, height_six) = png_size(one), png_size(six)
    assert width_one == width_six == round(timeline.WIDTH_INCHES * 100)
    assert height_six - height_one == round(5 * timeline.LANE_INCHES * 100)
    assert len(six) < 200_000


def hostile_sample(comm: str) -> observe.Sample:
    def look(at: float) -> dict:
        return {"machine": "x86_64", "clk_tck": 100, "time": at, "init": None, "errors": [],
                "processes": [{"pid": 7, "ppid": 1, "comm": comm, "uid": 1000, "cmdline": "x" * 10_000, "ticks": 0,
                               "child_ticks": 0,
                               "threads": [{"tid": 7, "comm": comm, "state": "R", "syscall": "running",
                                            "ticks": round(at * 100)}]}]}
    return observe.Sample.from_json({"snapshots": [look(0.1 * i) for i in range(5)], "elapsed": 0.5,
                                     "cpu_seconds": 0.5})


def test_a_thread_name_the_server_chose_is_shown_escaped_and_never_parsed(monkeypatch):
    comm = "$\\frac{1}{0}$\x1b[2J::error\u202eevil🙂" + "x" * 80
    shown = timeline.label_text(comm)
    assert shown.isascii() and "\x1b" not in shown and "\u202e" not in shown and len(shown) == timeline.NAME_CHARS
    assert "\\x1b" in shown
    # A user's matplotlibrc asking for LaTeX does not reach the picture: no TeX run (none is installed here),
    # no math parsing of "$...$" (a bad fraction would raise).
    monkeypatch.setitem(matplotlib.rcParams, "text.usetex", True)
    drawn = timeline.timeline("idle-cpu", [("idle $x^$", hostile_sample(comm))])
    data = timeline.render_png(drawn, f"idle-cpu {comm}")
    assert png_size(data)[0] > 0
    assert matplotlib.rcParams["text.usetex"] is True, "the picture's settings are its own, the caller's are back"
    samples = timeline.samples_json(drawn, [("idle", hostile_sample(comm))])
    assert samples["lanes"][0]["comm"] == comm, "the samples file keeps the name as it was (JSON escapes it)"
    assert len(samples["windows"][0]["snapshots"][0]["processes"][0]["cmdline"]) == timeline.CMDLINE_CHARS


def test_the_samples_file_is_what_sample_from_json_reads_back():
    sample = recorded("busy-poll-idle.json")
    drawn = timeline.timeline("idle-cpu", [("idle", sample)])
    samples = json.loads(json.dumps(timeline.samples_json(drawn, [("idle", sample)])))
    [window] = samples["windows"]
    assert observe.Sample.from_json(window) == sample
    assert window["label"] == "idle" and window["looks"] == 16
    assert samples["lanes"][0]["marks"][3]["wait"] == "runs" and samples["wait_words"]["runs"] == "runs"
    thinned = timeline.samples_json(drawn, [("idle", sample)], max_looks=4)
    looks = thinned["windows"][0]["snapshots"]
    assert len(looks) == 4 and looks[0]["time"] == sample.snapshots[0].time
    assert looks[-1]["time"] == sample.snapshots[-1].time


# -- packets --------------------------------------------------------------------------------------

CLIENT, SERVER, PORT = "10.213.0.2", "10.213.0.3", 8080


def segment(at: float, sport: int, flags: str, payload: bytes = b"", inbound: bool = True):
    src, dst = (CLIENT, SERVER) if inbound else (SERVER, CLIENT)
    ports = (sport, PORT) if inbound else (PORT, sport)
    packet = Ether() / IP(src=src, dst=dst) / TCP(sport=ports[0], dport=ports[1], flags=flags)
    if payload:
        packet = packet / Raw(payload)
    packet.time = at
    return packet


def pcap_of(tmp_path: Path, packets: list) -> bytes:
    path = tmp_path / "made.pcap"
    wrpcap(str(path), packets)
    return path.read_bytes()


def test_the_recorded_get_reads_as_one_connection_the_server_closed():
    capture = pcap.read((RECORDED / "blocking-get-index.pcap").read_bytes())
    assert capture.records == len(capture.packets) == 10 and capture.complete and capture.snaplen == 256
    [connection] = pcap.connections(capture, SERVER, PORT)
    assert connection.client.startswith(CLIENT + ":") and connection.syns == 1
    assert connection.ended == "closed" and connection.sent > 0 and connection.received > 0
    start = connection.start
    assert start < connection.synack_at < connection.first_byte_at <= connection.last_byte_at < connection.ended_at
    table = pcap.table([connection], capture, SERVER, PORT)
    assert "1 in 10 packets" in table and "closed by the server at" in table


def test_every_way_a_connection_ends_has_its_word(tmp_path):
    packets = [
        # 40001: refused (RST to its SYN); 40002: no answer to two SYNs; 40003: answered, then the server's RST;
        # 40004: whole answer, the client closes first; 40005: held open; 40006 used twice.
        segment(0.00, 40001, "S"), segment(0.001, 40001, "RA", inbound=False),
        segment(0.01, 40002, "S"), segment(1.01, 40002, "S"),
        segment(0.02, 40003, "S"), segment(0.021, 40003, "SA", inbound=False), segment(0.022, 40003, "A"),
        segment(0.03, 40003, "PA", b"GET / HTTP/1.0\r\n\r\n"), segment(0.05, 40003, "R", inbound=False),
        segment(0.10, 40004, "S"), segment(0.101, 40004, "SA", inbound=False), segment(0.102, 40004, "PA", b"GET /"),
        segment(0.2, 40004, "PA", b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", inbound=False),
        segment(0.3, 40004, "FA"), segment(0.301, 40004, "FA", inbound=False),
        segment(0.40, 40005, "S"), segment(0.401, 40005, "SA", inbound=False), segment(0.402, 40005, "A"),
        segment(0.50, 40006, "S"), segment(0.501, 40006, "SA", inbound=False), segment(0.6, 40006, "FA", inbound=False),
        segment(0.61, 40006, "FA"), segment(0.70, 40006, "S"), segment(0.701, 40006, "SA", inbound=False),
        segment(0.72, 40006, "RA"),
        # Another conversation on the network is not the server's.
        Ether() / IP(src=CLIENT, dst="10.213.0.9") / TCP(sport=1, dport=PORT, flags="S"),
    ]
    capture = pcap.read(pcap_of(tmp_path, packets))
    found = pcap.connections(capture, SERVER, PORT)
    assert [(c.client.split(":")[1], c.ended) for c in found] == [
        ("40001", "refused"), ("40002", "connect-timeout"), ("40003", "reset"), ("40004", "client-closed"),
        ("40005", "open"), ("40006", "closed"), ("40006", "client-reset")]
    retried = found[1]
    assert retried.syns == 2 and retried.synack_at is None
    answered = found[3]
    assert answered.received == len(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok") and answered.sent == 5
    assert answered.since_start(answered.first_byte_at) == pytest.approx(0.1)
    table = pcap.table(found, capture, SERVER, PORT, rows=3, cap_note="a cap")
    assert "7 in 26 packets (a cap)" in table and "... and 4 more connections" in table
    assert "1 connection sent their SYN more than once" in table
    for words in ("connection refused", "no answer to its SYN", "connection reset", "closed by the client",
                  "still open"):
        assert words in table
    assert "GET" not in table and "HTTP/1.0 200" not in table, "no byte of a payload is shown"


def test_a_pcap_is_cut_at_a_records_edge_and_a_damaged_one_read_as_far_as_it_goes(tmp_path):
    data = pcap_of(tmp_path, [segment(0.1 * i, 40000 + i, "S") for i in range(10)])
    cut = pcap.cut(data, 200)
    assert len(cut) <= 200 and pcap.read(cut).complete and 0 < pcap.read(cut).records < 10
    assert pcap.cut(data, 10) == b"" and pcap.cut(data, len(data)) == data
    damaged = pcap.read(data[:-7])
    assert not damaged.complete and damaged.records == 9
    assert pcap.read(b"not a pcap at all" * 10) == pcap.Capture((), 0, 0, False)
    lying = bytearray(data)
    lying[FIRST_CAPLEN] = 0xFF  # a record that says it is huge
    assert pcap.read(bytes(lying)).records == 0


FIRST_CAPLEN = pcap.FILE_HEADER + 11  # the high byte of the first record's captured length (little-endian)


def test_a_capture_cap_in_packets_fits_the_file_cap():
    most = packets_for(2 * 2**20)
    assert pcap.FILE_HEADER + most * (pcap.RECORD_HEADER + 256) <= 2 * 2**20
    assert pcap.FILE_HEADER + (most + 1) * (pcap.RECORD_HEADER + 256) > 2 * 2**20


# -- the folder -----------------------------------------------------------------------------------

def test_the_folder_is_made_only_for_a_file_and_lists_what_it_holds(tmp_path):
    folder = EvidenceFolder.prepare(tmp_path / "evidence" / "run1")
    assert not (tmp_path / "evidence").exists(), "nothing is made before there is something to keep"
    entry = folder.write("Idle CPU!", 3, "threads-picture", "threads.png", b"\x89PNG data", "image/png", "a picture")
    assert entry.path == "03-idle-cpu.threads.png" and entry.bytes == 9
    manifest = json.loads((folder.path / MANIFEST).read_text())
    assert manifest["files"] == [{"check": "Idle CPU!", **entry.model_dump()}]
    assert sorted(path.name for path in folder.path.iterdir()) == [entry.path, MANIFEST]
    # The next grading into it replaces the earlier evidence, and only that.
    again = EvidenceFolder.prepare(folder.path)
    assert list(again.path.iterdir()) == []


def test_a_folder_with_files_labctl_did_not_write_is_refused(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    with pytest.raises(LabctlError, match=r"holds files labctl did not write there \(thesis.tex\)"):
        EvidenceFolder.prepare(mine)
    assert (mine / "thesis.tex").read_text() == "years of work"
    (mine / MANIFEST).write_text(json.dumps({"files": [{"path": "../thesis.tex"}]}))
    with pytest.raises(LabctlError, match="did not write"):
        EvidenceFolder.prepare(mine)  # a manifest cannot name a file outside, or one labctl would not write
    with pytest.raises(LabctlError, match="it is a file"):
        EvidenceFolder.prepare(mine / "thesis.tex")


def test_caps_per_file_and_per_grading(tmp_path):
    folder = EvidenceFolder.prepare(tmp_path / "evidence", per_file=100, per_grading=250)
    with pytest.raises(Full, match="over the cap of 100 bytes per file"):
        folder.write("a", 1, "packets", "packets.pcap", b"x" * 101, "application/vnd.tcpdump.pcap", "packets")
    folder.write("a", 1, "packets", "packets.pcap", b"x" * 100, "application/vnd.tcpdump.pcap", "packets")
    folder.write("b", 2, "packets", "packets.pcap", b"x" * 100, "application/vnd.tcpdump.pcap", "packets")
    with pytest.raises(Full, match="the grading's evidence cap of 250 bytes was reached"):
        folder.write("c", 3, "packets", "packets.pcap", b"x" * 100, "application/vnd.tcpdump.pcap", "packets")
    assert folder.used == 200 and sum(path.stat().st_size for path in folder.path.glob("*.pcap")) == 200


def test_file_names_are_made_of_the_checks_name_alone():
    assert slug("get-index") == "get-index" and slug("../../etc/passwd") == "etc-passwd" and slug("!!!") == "check"


# -- the harness's side of the capture ------------------------------------------------------------

def test_stopping_a_capture_never_signals_a_process_that_is_not_it(tmp_path):
    import subprocess

    from labctl.harness import packets

    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        facts = packets.tcpdump_stop(sleeper.pid, str(tmp_path / "capture.pcap"), keep=True)
        assert facts["stopped"] is False and sleeper.poll() is None, "a pid is never signalled on trust"
        assert facts["error"].startswith("FileNotFoundError")
    finally:
        sleeper.kill()
        sleeper.wait()


def test_tcpdumps_own_counts_are_read_from_what_it_says_as_it_ends():
    from labctl.harness import packets

    said = ("tcpdump: listening on eth0, link-type EN10MB (Ethernet), snapshot length 256 bytes\n"
            "10 packets captured\n10 packets received by filter\n3 packets dropped by kernel\n")
    assert (packets._count(said, "captured"), packets._count(said, "dropped by kernel")) == (10, 3)
    assert packets._count("tcpdump: eth0: No such device exists", "captured") is None
