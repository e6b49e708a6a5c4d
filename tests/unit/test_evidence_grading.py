"""`--evidence` through grade() on the fake engine, and the reports that show it.

The exercise: two network checks that pass or fail on what the client's harness answers (GET / gets 200,
anything else 501), a process check on a server that spins (idle_cpu), and a hidden one of each. tcpdump
in the client is the fake's harness handler: it says it listens, and gives back packets made with scapy.
What is proven: verdicts are the same with and without evidence (and without it, no capture is even
started); only failed checks leave files, the right files; a student's view keeps nothing of a hidden
check; a capture that cannot run is a note, never a verdict; the json, gradescope and prairielearn reports
point at or embed the evidence, within their caps, valid against their schemas, the server's text escaped.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from pathlib import Path

import jsonschema
import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.utils import wrpcap

from labctl.backends.base import ALL_FEATURES
from labctl.checks import load_catalog
from labctl.evidence import embed
from labctl.evidence.folder import MANIFEST
from labctl.exercise import CheckSpec, Exercise
from labctl.grading import GradeOptions, grade
from labctl.report import RENDERERS, SCHEMAS_DIR, terminal
from labctl.results import GradeReport

from .fakes import Doing, FakeBackend, FakeProject, ObservedServer, write_lab


def look(at: float) -> dict:
    """The observer's look at a server whose one thread runs all the time (its ticks grow at one CPU's rate)."""
    return {"machine": "x86_64", "clk_tck": 1000, "time": at, "init": None, "errors": [],
            "processes": [{"pid": 7, "ppid": 1, "comm": "python3", "uid": 1000, "cmdline": "python3 server.py",
                           "ticks": 0, "child_ticks": 0,
                           "threads": [{"tid": 7, "comm": "python3", "state": "R", "syscall": "running",
                                        "ticks": round(1000 * at)}]}]}


BUSY = Doing(look, cpu=1.0)


def exchange(path: str, message: str = "Not Implemented") -> dict:
    status, body = (200, b"ok") if path == "/" else (501, message.encode())
    head = f"HTTP/1.0 {status} {'OK' if status == 200 else message}\r\nContent-Length: {len(body)}\r\n\r\n"
    return {"action": "exchange", "connected": True, "connect_seconds": 0.001, "request_bytes": 20, "sent": 20,
            "segments": 1, "end": "closed", "head": head, "head_complete": True, "received": len(head) + len(body),
            "body_bytes": len(body), "body_sha256": hashlib.sha256(body).hexdigest(),
            "body": base64.b64encode(body).decode(), "first_byte_seconds": 0.002, "seconds": 0.003}


def checks() -> list[CheckSpec]:
    load_catalog()
    http = "http"
    return [CheckSpec(name="get-index", check=http, params={"path": "/"}),
            CheckSpec(name="get-missing", check=http, params={"path": "/missing"}),
            CheckSpec(name="idle-cpu", check="idle_cpu", params={"window": 0.5}),
            CheckSpec(name="secret-get", check=http, params={"path": "/secret"}, visibility="hidden"),
            CheckSpec(name="secret-cpu", check="idle_cpu", params={"window": 0.5}, visibility="hidden")]


class Client:
    """The client's harness on the fake: requests answered by path, and tcpdump (what it was asked)."""

    def __init__(self, fake: FakeBackend, tmp_path: Path, tcpdump: bool = True, message: str = "Not Implemented"):
        self.fake, self.tmp_path, self.message = fake, tmp_path, message
        self.started: list[dict] = []
        self.stopped: list[dict] = []
        self.paths: list[str] = []
        self.server: str | None = None            # the server's address, as the engine gives it
        fake.harness["client"]["http_sequence"] = self.http_sequence
        if tcpdump:
            fake.harness["client"]["tcpdump_start"] = self.tcpdump_start
            fake.harness["client"]["tcpdump_stop"] = self.tcpdump_stop

    def http_sequence(self, params: dict) -> dict:
        request = base64.b64decode(params["steps"][0]["data"]).decode()
        path = request.split(" ")[1]
        self.paths.append(path)
        return {"address": "10.213.0.3", "steps": [exchange(path, self.message)], "seconds": 0.01}

    def tcpdump_start(self, params: dict) -> dict:
        self.started.append(dict(params, during=len(self.paths)))
        return {"listening": True, "pid": 4242, "file": params["file"], "ready_seconds": 0.01}

    def tcpdump_stop(self, params: dict) -> dict:
        self.stopped.append(params)
        server = self.server = self.fake.container("server").info().address
        packets = []
        for at, flags, inbound, payload in ((0.0, "S", True, b""), (0.001, "SA", False, b""),
                                            (0.002, "PA", True, b"GET / HTTP/1.0\r\n\r\n"),
                                            (0.004, "PA", False, b"HTTP/1.0 501 X\r\n\r\n<script>"),
                                            (0.005, "FA", False, b"")):
            src, dst, sport, dport = ("10.213.0.2", server, 41000, 8080) if inbound else (server, "10.213.0.2", 8080,
                                                                                         41000)
            packet = Ether() / IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags)
            packet = packet / Raw(payload) if payload else packet
            packet.time = 1000.0 + at
            packets.append(packet)
        path = self.tmp_path / "tcpdump-made.pcap"
        wrpcap(str(path), packets)
        data = path.read_bytes()
        answer = {"stopped": True, "captured": len(packets), "dropped": 0, "bytes": len(data), "truncated": False}
        if params["keep"]:
            answer["pcap_base64"] = base64.b64encode(data).decode()
        return answer


def graded(fake: FakeBackend, tmp_path: Path, evidence: Path | None, student_view: bool = False,
           order: list[CheckSpec] | None = None, budget: float = 120) -> GradeReport:
    ObservedServer(fake, BUSY)
    folder = tmp_path / "submission"
    folder.mkdir(exist_ok=True)
    (folder / "server.py").write_text("print('spinning')\n")
    project = FakeProject(tmp_path / "project", fake, write_lab(tmp_path / "project"))
    exercise = Exercise(title="Evidence", model="blocking", budget=budget, checks=order or checks(), id="evidence",
                        dir=tmp_path)
    report = grade(project, exercise, folder, GradeOptions(evidence=evidence, student_view=student_view))
    assert fake.containers == {} and fake.networks == {}
    return report


def verdicts(report: GradeReport) -> list[tuple[str, str, float]]:
    return [(result.name, result.status, result.points) for result in report.results]


@pytest.fixture(scope="module")
def report_with_evidence(tmp_path_factory) -> tuple[GradeReport, Client]:
    """One grading with evidence for the report tests (they only read it): the server's reason phrase is hostile."""
    fake = FakeBackend()
    fake.harness["client"]["wait_listening"] = lambda params: {"listening": True}
    folder = tmp_path_factory.mktemp("graded")
    client = Client(fake, folder, message="<script>alert(1)</script> ::error::pwned")
    return graded(fake, folder, folder / "evidence"), client


def test_only_failed_checks_leave_evidence_and_the_verdicts_are_the_same_without_it(fake, tmp_path):
    client = Client(fake, tmp_path)
    without = graded(fake, tmp_path, evidence=None)
    assert client.started == [] and client.stopped == [], "without --evidence no capture is even started"
    client.paths.clear()
    with_evidence = graded(fake, tmp_path, tmp_path / "evidence")
    assert verdicts(with_evidence) == verdicts(without) == [
        ("get-index", "passed", 1.0), ("get-missing", "failed", 0.0), ("idle-cpu", "failed", 0.0),
        ("secret-get", "failed", 0.0), ("secret-cpu", "failed", 0.0)]
    files = {result.name: [(entry.kind, entry.path) for entry in result.evidence_files]
             for result in with_evidence.results}
    assert files == {
        "get-index": [],
        "get-missing": [("packets", "02-get-missing.packets.pcap"), ("connections", "02-get-missing.connections.txt")],
        "idle-cpu": [("threads-picture", "03-idle-cpu.threads.png"), ("threads-samples", "03-idle-cpu.threads.json")],
        "secret-get": [("packets", "04-secret-get.packets.pcap"), ("connections", "04-secret-get.connections.txt")],
        "secret-cpu": [("threads-picture", "05-secret-cpu.threads.png"),
                       ("threads-samples", "05-secret-cpu.threads.json")]}
    folder = Path(with_evidence.evidence_dir or "")
    assert folder == (tmp_path / "evidence").absolute()
    assert sorted(path.name for path in folder.iterdir()) == sorted(
        [path for entries in files.values() for _, path in entries] + [MANIFEST])
    # tcpdump ran around each network check only, began before its request, and was kept only for a failure.
    assert [(start["during"], start["port"]) for start in client.started] == [(0, 8080), (1, 8080), (2, 8080)]
    assert [stop["keep"] for stop in client.stopped] == [False, True, True]
    assert {start["address"] for start in client.started} == {client.server}, "filtered on the server's address"
    table = (folder / "02-get-missing.connections.txt").read_text()
    assert "closed by the server" in table and "<script>" not in table
    samples = json.loads((folder / "03-idle-cpu.threads.json").read_text())
    assert {mark["wait"] for mark in samples["lanes"][0]["marks"]} == {"runs"}
    assert samples["windows"][0]["label"] == "idle" and samples["windows"][0]["cpu_percent"] > 90
    assert (folder / "03-idle-cpu.threads.png").read_bytes().startswith(embed.PNG_MAGIC)


def test_a_students_view_keeps_nothing_of_a_hidden_check(fake, tmp_path):
    client = Client(fake, tmp_path)
    first, second, third, secret_get, secret_cpu = checks()
    # Hidden checks first and in between: the numbers of the files do not say where they ran either.
    report = graded(fake, tmp_path, tmp_path / "evidence", student_view=True,
                    order=[secret_get, first, second, secret_cpu, third])
    folder = Path(report.evidence_dir or "")
    names = sorted(path.name for path in folder.iterdir())
    assert names == ["02-get-missing.connections.txt", "02-get-missing.packets.pcap", "03-idle-cpu.threads.json",
                     "03-idle-cpu.threads.png", MANIFEST]
    assert "secret" not in (folder / MANIFEST).read_text()
    assert len(client.started) == 2, "no capture runs during a hidden check"
    view = report.for_students()
    [summary] = view.hidden
    assert summary.evidence_files == [] and summary.evidence_left_out == []
    assert "secret" not in RENDERERS["json"].render(view) and "secret" not in RENDERERS["prairielearn"].render(view)


def test_a_capture_that_cannot_run_is_a_note_never_a_verdict(fake, tmp_path):
    Client(fake, tmp_path, tcpdump=False)  # the client's harness has no tcpdump commands: they fail
    report = graded(fake, tmp_path, tmp_path / "evidence")
    missing = next(result for result in report.results if result.name == "get-missing")
    assert missing.status == "failed" and missing.evidence_files == []
    assert missing.evidence_left_out and missing.evidence_left_out[0].startswith("no packets: harness tcpdump_start")


def test_a_backend_without_a_network_of_its_own_says_why_there_are_no_packets(tmp_path):
    fake = FakeBackend(features=ALL_FEATURES - {"raw_packets"})
    fake.harness["client"]["wait_listening"] = lambda params: {"listening": True}
    client = Client(fake, tmp_path)
    report = graded(fake, tmp_path, tmp_path / "evidence")
    missing = next(result for result in report.results if result.name == "get-missing")
    assert missing.evidence_left_out == ["no packets: the fake backend shares the host's network, where capturing "
                                         "would need root (`--backend docker` captures them)"]
    assert client.started == []
    assert [entry.kind for entry in report.results[2].evidence_files] == ["threads-picture", "threads-samples"]


def test_a_grading_with_nothing_failed_leaves_no_folder(fake, tmp_path):
    Client(fake, tmp_path)
    ObservedServer(fake, BUSY)
    folder = tmp_path / "submission"
    folder.mkdir()
    project = FakeProject(tmp_path / "project", fake, write_lab(tmp_path / "project"))
    exercise = Exercise(title="Evidence", model="blocking", budget=60, checks=checks()[:1], id="evidence", dir=tmp_path)
    report = grade(project, exercise, folder, GradeOptions(evidence=tmp_path / "evidence"))
    assert report.all_passed and report.evidence_dir is None and not (tmp_path / "evidence").exists()


def test_a_folder_that_cannot_be_used_stops_the_grading_before_a_lab_is_made(fake, tmp_path):
    (tmp_path / "evidence").mkdir()
    (tmp_path / "evidence" / "notes.txt").write_text("mine")
    report = graded(fake, tmp_path, tmp_path / "evidence")
    assert not report.gradable and report.failure == "infrastructure" and "notes.txt" in (report.error or "")
    assert fake.calls == [] and (tmp_path / "evidence" / "notes.txt").read_text() == "mine"


# -- reports ----------------------------------------------------------------------------------------

def schema(name: str) -> dict:
    return json.loads((SCHEMAS_DIR / name).read_text())


def test_the_json_report_points_at_the_files_and_validates(report_with_evidence):
    report, _ = report_with_evidence
    data = json.loads(RENDERERS["json"].render(report))
    jsonschema.validate(data, schema("labctl-report.schema.json"))
    assert data["evidence_dir"] == report.evidence_dir
    entry = data["results"][2]["evidence_files"][0]
    assert entry["kind"] == "threads-picture" and entry["media_type"] == "image/png" and entry["bytes"] > 1000
    assert Path(data["evidence_dir"], entry["path"]).stat().st_size == entry["bytes"]


def test_gradescope_embeds_the_picture_in_an_html_output_with_the_servers_text_escaped(report_with_evidence):
    report, _ = report_with_evidence
    results = json.loads(RENDERERS["gradescope"].render(report))
    jsonschema.validate(results, schema("gradescope-results.schema.json"))
    tests = {test["name"]: test for test in results["tests"]}
    cpu = tests["idle-cpu"]
    assert cpu["output_format"] == "html"
    assert '<img src="data:image/png;base64,' in cpu["output"]
    encoded = cpu["output"].split('src="data:image/png;base64,')[1].split('"')[0]
    assert base64.b64decode(encoded) == Path(report.evidence_dir or "", "03-idle-cpu.threads.png").read_bytes()
    missing = tests["get-missing"]
    assert missing["output_format"] == "html" and "<img" not in missing["output"]
    assert "closed by the server" in missing["output"], "the connection table's first rows"
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in missing["output"] and "<script>" not in missing["output"]
    assert tests["get-index"]["output_format"] == "text", "a passed check has no evidence"
    # A hidden check's picture goes with its test, which students see once grades are published.
    assert tests["secret-cpu"]["visibility"] == "after_published" and "<img" in tests["secret-cpu"]["output"]


def test_prairielearn_gives_each_failed_public_check_its_images_and_never_a_hidden_ones(report_with_evidence):
    report, _ = report_with_evidence
    results = json.loads(RENDERERS["prairielearn"].render(report))
    jsonschema.validate(results, schema("prairielearn-results.schema.json"))
    tests = {test["name"]: test for test in results["tests"]}
    [image] = tests["idle-cpu"]["images"]
    assert image["url"].startswith("data:image/png;base64,") and "threads" in image["label"]
    assert "images" not in tests["get-missing"] and "closed by the server" in tests["get-missing"]["output"]
    assert "secret" not in json.dumps(results) and all("images" not in test for test in results["tests"]
                                                       if test["name"] == "hidden checks")
    assert len(json.dumps(results)) < 1_000_000


def test_pictures_over_the_reports_cap_are_named_not_embedded(report_with_evidence, monkeypatch):
    report, _ = report_with_evidence
    monkeypatch.setattr(embed, "REPORT_PICTURE_BYTES", 10)
    results = json.loads(RENDERERS["gradescope"].render(report))
    cpu = next(test for test in results["tests"] if test["name"] == "idle-cpu")
    assert "<img" not in cpu["output"] and "03-idle-cpu.threads.png is not shown here" in cpu["output"]


def test_a_report_read_elsewhere_never_reads_a_path_labctl_did_not_write(report_with_evidence, tmp_path):
    report, _ = report_with_evidence
    (tmp_path / "secret.png").write_bytes(embed.PNG_MAGIC + b"private")
    cpu = report.results[2]
    forged = cpu.model_copy(update={"evidence_files": [cpu.evidence_files[0].model_copy(
        update={"path": "../secret.png", "bytes": 15})]})
    embedder = embed.Embedder(report)
    assert embedder.pictures(forged) == [] and "could not be read" in embedder.notes["idle-cpu"][0]


def test_the_terminal_says_where_the_files_are(report_with_evidence):
    report, _ = report_with_evidence
    text = terminal.render(report, width=200)
    assert f"evidence: {report.evidence_dir}/03-idle-cpu.threads.png" in text
    assert "evidence of the failed checks: 8 files" in text and str(report.evidence_dir) in text


def test_evidence_that_cannot_be_drawn_is_a_note_and_the_verdict_stays(fake, tmp_path, monkeypatch):
    from labctl.evidence import timeline

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug in drawing")

    monkeypatch.setattr(timeline, "timeline", broken)
    Client(fake, tmp_path)
    report = graded(fake, tmp_path, tmp_path / "evidence")
    cpu = next(result for result in report.results if result.name == "idle-cpu")
    assert cpu.status == "failed" and cpu.evidence_files == []
    assert cpu.evidence_left_out == ["the evidence could not be kept: ZeroDivisionError: a bug in drawing"]
    assert [entry.kind for entry in report.results[1].evidence_files] == ["packets", "connections"]


def test_a_check_that_did_not_run_has_no_evidence_and_no_note(fake, tmp_path):
    client = Client(fake, tmp_path)
    original = client.http_sequence

    def dies(params: dict) -> dict:  # the server exits during the first check that fails
        answer = original(params)
        if client.paths[-1] != "/":
            fake.stop("server", 1)
        return answer

    fake.harness["client"]["http_sequence"] = dies
    report = graded(fake, tmp_path, tmp_path / "evidence")
    not_run = [result for result in report.results if result.message.startswith("not run")]
    assert not_run and all(not r.evidence_files and not r.evidence_left_out for r in not_run)
    assert len(client.started) == 2, "no capture for a check that is not run"


def test_junit_and_github_name_the_evidence_files(report_with_evidence):
    report, _ = report_with_evidence
    junit = RENDERERS["junit"].render(report)
    assert "evidence file: 03-idle-cpu.threads.png (the server's threads at each look" in junit
    assert "evidence file: 02-get-missing.packets.pcap" in RENDERERS["github"].render(report)


def test_the_time_evidence_takes_is_not_counted_in_the_gradings_budget(fake, tmp_path):
    """Four failing checks in a budget of 3 s, each capture taking 1 s to start and stop (a loaded machine):
    counted, the third would find less than 1 s left and not run; not counted, every one runs, as without."""
    client = Client(fake, tmp_path)

    def slowly(handler):
        def slow(params: dict) -> dict:
            time.sleep(0.5)
            return handler(params)
        return slow

    fake.harness["client"]["tcpdump_start"] = slowly(client.tcpdump_start)
    fake.harness["client"]["tcpdump_stop"] = slowly(client.tcpdump_stop)
    load_catalog()
    order = [CheckSpec(name=f"get-{number}", check="http", params={"path": f"/{number}"}) for number in range(4)]
    without = graded(fake, tmp_path, None, order=order, budget=3)
    with_evidence = graded(fake, tmp_path, tmp_path / "evidence", order=order, budget=3)
    assert verdicts(with_evidence) == verdicts(without) == [(f"get-{n}", "failed", 0.0) for n in range(4)]
    assert not with_evidence.budget_exhausted and len(client.stopped) == 4
    assert with_evidence.duration > 4 * 1.0 > 3, "the captures took longer than the whole budget"
