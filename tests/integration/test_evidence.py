"""`labctl grade --evidence` on the real engine: a busy-polling server leaves the picture that proves it,
a failed http check leaves packets scapy reads and that are the lab's own, the solution leaves nothing,
and every submission gets the same verdicts without --evidence. Few gradings, each with --only.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

from conftest import ROOT
from matplotlib import image as mpimage
from scapy.layers.inet import IP, TCP
from scapy.utils import rdpcap

from integration.test_cli import labctl

BLOCKING = ROOT / "exercises" / "blocking"
BUSY_POLL = ROOT / "exercises" / "polling" / "mutants" / "busy_poll"


def graded(tmp_path: Path, name: str, submission: Path, only: list[str], evidence: bool) -> tuple[int, dict, str]:
    """(exit code, json report, stdout) of `labctl grade blocking` with --only, with or without --evidence."""
    report = tmp_path / f"{name}.json"
    extra = ["--evidence", str(tmp_path / f"{name}-evidence")] if evidence else []
    result = labctl("grade", "blocking", "--submission", str(submission), *[arg for check in only for arg in
                                                                            ("--only", check)],
                    "--report", f"json:{report}", "--report", "terminal", *extra, timeout=180)
    assert report.exists(), result.stdout + result.stderr
    return result.returncode, json.loads(report.read_text()), result.stdout


def verdicts(report: dict) -> list[tuple[str, str]]:
    return [(result["name"], result["status"]) for result in report["results"]]


def test_a_busy_polling_server_leaves_a_timeline_of_its_idle_cpu_with_the_verdicts_of_a_grading_without(
        project, tmp_path):
    only = ["get-index", "asleep-in-accept", "idle-cpu"]
    code, report, out = graded(tmp_path, "with", BUSY_POLL, only, evidence=True)
    code_without, without, _ = graded(tmp_path, "without", BUSY_POLL, only, evidence=False)
    assert code == code_without == 1
    assert verdicts(report) == verdicts(without) == [("get-index", "passed"), ("asleep-in-accept", "failed"),
                                                     ("idle-cpu", "failed")]
    assert without["evidence_dir"] is None and all(not r["evidence_files"] for r in without["results"])
    folder = Path(report["evidence_dir"])
    assert folder == tmp_path / "with-evidence"
    files = {r["name"]: {entry["kind"]: entry for entry in r["evidence_files"]} for r in report["results"]}
    assert files["get-index"] == {}, "a check that passed leaves nothing"
    assert set(files["idle-cpu"]) == set(files["asleep-in-accept"]) == {"threads-picture", "threads-samples"}
    assert sorted(path.name for path in folder.iterdir()) == sorted(
        [entry["path"] for kinds in files.values() for entry in kinds.values()] + ["evidence.json"])
    picture = files["idle-cpu"]["threads-picture"]
    pixels = mpimage.imread(folder / picture["path"])
    assert pixels.shape[1] == 1100 and pixels.shape[0] > 200, "a PNG that opens, one lane tall at least"
    samples = json.loads((folder / files["idle-cpu"]["threads-samples"]["path"]).read_text())
    [lane] = samples["lanes"]
    running = sum(1 for mark in lane["marks"] if mark["wait"] == "runs") / len(lane["marks"])
    assert lane["main"] and running > 0.8, "the one thread runs at (nearly) every look while nobody is connected"
    [window] = samples["windows"]
    assert window["label"] == "idle" and window["looks"] >= 20 and window["cpu_percent"] > 5
    assert f"evidence: {folder / picture['path']}" in out, "the terminal says where the picture is"


def test_a_failed_http_check_leaves_the_labs_packets_and_a_connection_table(project, tmp_path):
    only = ["get-index", "not-found"]
    code, report, _ = graded(tmp_path, "with", BLOCKING / "starter", only, evidence=True)
    code_without, without, _ = graded(tmp_path, "without", BLOCKING / "starter", only, evidence=False)
    assert code == code_without == 1
    assert verdicts(report) == verdicts(without) == [("get-index", "failed"), ("not-found", "failed")]
    folder = Path(report["evidence_dir"])
    first = {entry["kind"]: entry for entry in report["results"][0]["evidence_files"]}
    assert set(first) == {"packets", "connections"}, report["results"][0]["evidence_left_out"]
    packets = rdpcap(str(folder / first["packets"]["path"]))
    pool = ipaddress.ip_network(project.spec.network.pool)
    assert len(packets) >= 5 and all(IP in packet and TCP in packet for packet in packets)
    assert all(ipaddress.ip_address(packet[IP].src) in pool and ipaddress.ip_address(packet[IP].dst) in pool
               for packet in packets), "only the lab's own network"
    assert all(8080 in (packet[TCP].sport, packet[TCP].dport) for packet in packets)
    assert packets[0][TCP].flags == "S" and packets[0][TCP].dport == 8080, "from the client's first SYN"
    answers = [bytes(packet[TCP].payload) for packet in packets if packet[TCP].sport == 8080]
    assert any(answer.startswith(b"HTTP/1.0 501 Not Implemented") for answer in answers)
    table = (folder / first["connections"]["path"]).read_text()
    assert "connections to " in table and ":8080: 1 in " in table
    assert first["packets"]["bytes"] == (folder / first["packets"]["path"]).stat().st_size < 2 * 2**20


def test_the_solution_graded_with_evidence_leaves_nothing_and_the_same_verdicts(project, tmp_path):
    only = ["get-index", "asleep-in-accept"]
    code, report, _ = graded(tmp_path, "with", BLOCKING / "solution", only, evidence=True)
    code_without, without, _ = graded(tmp_path, "without", BLOCKING / "solution", only, evidence=False)
    assert code == code_without == 0
    assert verdicts(report) == verdicts(without) == [(name, "passed") for name in only]
    assert report["evidence_dir"] is None and not (tmp_path / "with-evidence").exists()
