"""Impairments without an engine: the model and its words, the commands harness/impair.py builds, the NFQUEUE
wire format and hold order, and, on the fake engine, where a lab, a check and a backend set, restore and refuse
them. The measured behaviour (a delay added, a share lost, a rate held) is tests/integration/test_impair.py's."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import pytest

from labctl import impair
from labctl.backends.base import ALL_FEATURES
from labctl.errors import LabctlError
from labctl.exercise import CheckSpec, Exercise
from labctl.grading import GradeOptions, grade
from labctl.harness import impair as harness
from labctl.harness import nfqueue
from labctl.impairment import Impairment, from_options
from labctl.lab import Lab

from .fakes import IMAGES, FakeBackend, FakeProject, up_lab, write_lab

# -- the model -----------------------------------------------------------------------------------------


def test_an_impairment_in_the_words_of_lab_yaml_and_in_the_harness_numbers():
    impairment = Impairment(delay="1.5S", jitter="20ms", loss="0.5%", rate="2Mbit")
    assert (impairment.delay, impairment.rate) == ("1.5s", "2mbit"), "kept in lower case"
    assert impairment.params() == {"delay_ms": 1500.0, "jitter_ms": 20.0, "loss_percent": 0.5, "rate_bit": 2_000_000}
    assert str(impairment) == "delay 1.5s ±20ms, loss 0.5%, rate 2mbit"
    assert Impairment.of(impairment.params()) == Impairment(delay="1500ms", jitter="20ms", loss="0.5%", rate="2mbit")
    assert Impairment.of({"delay_ms": 2000.0, "jitter_ms": 0.0, "loss_percent": 0.0, "rate_bit": 500_000}) == \
        Impairment(delay="2s", rate="500kbit")
    assert Impairment(delay="250us").params()["delay_ms"] == 0.25


def test_command_line_values_are_checked_like_the_yaml_and_said_as_options():
    assert from_options(delay="100ms", loss="1%") == Impairment(delay="100ms", loss="1%")
    with pytest.raises(LabctlError) as caught:
        from_options(delay="100", jitter="5ms", rate="1mbps")
    assert str(caught.value) == (
        "--delay: expected a time like 100ms, 1.5s or 500us, found '100'; --rate: expected a rate in bits per second "
        "like 1mbit, 500kbit or 10gbit, found '1mbps' (tc's kbps and mbps are bytes per second: write kbit or mbit)")
    with pytest.raises(LabctlError, match=r"^--jitter: expected a delay with it"):
        from_options(jitter="5ms")
    with pytest.raises(LabctlError, match=r"^--delay: expected at most 10s, found '11s'$"):
        from_options(delay="11s")


def test_a_checks_impairment_needs_a_network_of_the_labs_own(tmp_path):
    from labctl.checks import load_catalog

    load_catalog()
    plain = CheckSpec(name="index", check="http")
    impaired = CheckSpec(name="index", check="http", impair={"delay": "100ms"})
    assert plain.needs == frozenset() and impaired.needs == frozenset({"own_network"})
    syn = CheckSpec(name="flood", check="syn_flood", impair={"loss": "1%"})
    assert syn.needs == CheckSpec(name="flood", check="syn_flood").needs | {"own_network"}


# -- the commands the harness builds ----------------------------------------------------------------------


def test_netem_takes_the_delay_its_jitter_and_the_loss():
    assert harness.netem_args(100.0, 10.0, 1.0) == ["delay", "100ms", "10ms", "loss", "1%"]
    assert harness.netem_args(0.25, 0.0, 0.0) == ["delay", "0.25ms"]
    assert harness.netem_args(0.0, 0.0, 30.0) == ["loss", "30%"]


def test_the_servers_packets_go_through_an_ifb_with_one_htb_class():
    assert harness.ingress_commands("eth0", "10.0.0.4") == [
        ["ip", "link", "add", "labctl-ifb", "type", "ifb"], ["ip", "link", "set", "labctl-ifb", "up"],
        ["tc", "qdisc", "add", "dev", "eth0", "clsact"],
        ["tc", "filter", "add", "dev", "eth0", "ingress", "protocol", "ip", "prio", "1", "u32", "match", "ip", "src",
         "10.0.0.4/32", "action", "mirred", "egress", "redirect", "dev", "labctl-ifb"]]
    # On the ifb everything is the server's: the class is the default.
    assert harness.htb_commands("labctl-ifb", 1_000_000, None) == [
        ["tc", "qdisc", "add", "dev", "labctl-ifb", "root", "handle", "1:", "htb", "default", "1"],
        ["tc", "class", "add", "dev", "labctl-ifb", "parent", "1:", "classid", "1:1", "htb", "rate", "1000000bit",
         "ceil", "1000000bit", "quantum", "12500"]]
    # On the interface itself (no ifb) only packets to the server are classified; the rest passes (default 0).
    egress = harness.htb_commands("eth0", 2_000_000, "10.0.0.4")
    assert egress[0][-1] == "htb" and egress[-1][-5:] == ["ip", "dst", "10.0.0.4/32", "flowid", "1:1"]
    assert harness.quantum(8_000) == 1514 and harness.quantum(10**10) == 200_000


def test_a_rates_queue_holds_about_a_second_and_netem_also_what_its_delay_holds():
    assert harness.leaf_packets(1_000_000) == 100                       # 82 packets a second: the floor
    assert harness.leaf_packets(100_000_000) == 8256
    assert harness.leaf_packets(100_000_000, delay_ms=100.0) == 9081
    assert harness.leaf_packets(0) == harness.leaf_packets(10**10) == 10000
    assert harness.leaf_command("labctl-ifb", 100, None)[-4:] == ["10:", "pfifo", "limit", "100"]
    assert harness.leaf_command("eth0", 500, ["delay", "5ms"])[-6:] == ["10:", "netem", "limit", "500", "delay", "5ms"]


def test_iptables_drops_a_share_and_queues_the_rest_and_jumps_there_last():
    commands = [command[3:] for command in harness.iptables_commands("10.0.0.4", 30.0, 4213)]
    assert commands == [["-N", "LABCTL-IMPAIR"],
                        ["-A", "LABCTL-IMPAIR", "-m", "statistic", "--mode", "random", "--probability", "0.300000",
                         "-j", "DROP"],
                        ["-A", "LABCTL-IMPAIR", "-j", "NFQUEUE", "--queue-num", "4213", "--queue-bypass"],
                        ["-I", "INPUT", "1", "-s", "10.0.0.4/32", "-j", "LABCTL-IMPAIR"]]
    assert all(command[:3] == ["iptables", "-w", "5"] for command in harness.iptables_commands("10.0.0.4", 1.0, None))
    assert len(harness.iptables_commands("10.0.0.4", 0.0, 4213)) == 3


def test_clearing_finds_every_jump_to_the_chain_and_nothing_else():
    rules = ("-P INPUT ACCEPT\n-A INPUT -s 10.0.0.4/32 -j LABCTL-IMPAIR\n-A INPUT -p tcp -j DROP\n"
             "-A INPUT -s 10.0.0.9/32 -j LABCTL-IMPAIR\n")
    assert harness.jumps_to_remove(rules) == [
        ["iptables", "-w", "5", "-D", "INPUT", "-s", "10.0.0.4/32", "-j", "LABCTL-IMPAIR"],
        ["iptables", "-w", "5", "-D", "INPUT", "-s", "10.0.0.9/32", "-j", "LABCTL-IMPAIR"]]
    assert harness.jumps_to_remove("-P INPUT ACCEPT\n") == []


# -- NFQUEUE ----------------------------------------------------------------------------------------------

def _packet_message(packet_id: int) -> bytes:
    """A NFQNL_MSG_PACKET as the kernel sends it: nlmsghdr, nfgenmsg, then NFQA_PACKET_HDR and another attribute."""
    header = struct.pack(">IHB", packet_id, 0x0800, 1) + b"\0"     # packet_hdr (7 bytes) padded
    attributes = struct.pack("=HH", 4 + 7, 1) + header + struct.pack("=HH", 8, 0x8000 | 5) + b"\0" * 4
    body = struct.pack("=BBH", socket.AF_INET, 0, socket.htons(4213)) + attributes
    return struct.pack("=IHHII", 16 + len(body), 0x0300, 0, 0, 0) + body


def test_the_netlink_messages_bind_the_queue_for_metadata_and_fail_open():
    bind, params = nfqueue.bind_messages(4213)
    length, kind, flags, _, _ = struct.unpack_from("=IHHII", bind)
    assert (length, kind, flags) == (len(bind), 0x0302, 1 | 4), "a CONFIG request that asks for an ACK"
    assert struct.unpack_from(">H", bind, 18)[0] == 4213, "the queue number, big endian"
    assert bind[20:28] == struct.pack("=HH", 8, 1) + struct.pack("=BBH", 1, 0, socket.htons(socket.AF_INET))
    assert struct.pack("=HH", 9, 2) + struct.pack(">IB", 0, 1) in params, "copy mode META, no bytes copied"
    assert struct.pack("=HH", 8, 5) + struct.pack(">I", 1 | 4) in params, "flags: FAIL_OPEN and GSO"
    verdict = nfqueue.accept_up_to(4213, 77)
    assert struct.unpack_from("=IHH", verdict)[1] == 0x0303, "a batch verdict"
    assert verdict[-8:] == struct.pack(">II", 1, 77), "NF_ACCEPT every id up to 77"


def test_packets_and_acks_are_read_from_one_buffer():
    ack = struct.pack("=IHHII", 36, 2, 0, 1, 0) + struct.pack("=i", 0) + b"\0" * 16
    refused = struct.pack("=IHHII", 36, 2, 0, 2, 0) + struct.pack("=i", -95) + b"\0" * 16
    ids, errors = nfqueue.parse(_packet_message(7) + ack + _packet_message(8) + refused)
    assert ids == [7, 8] and errors == [0, 95]
    assert nfqueue.parse(_packet_message(9)[:20]) == ([], []), "a cut message is not read past its end"


def test_held_packets_keep_their_order_and_each_waits_at_least_delay_minus_jitter():
    held = nfqueue.Held(delay=0.1, jitter=0.05, seed=3)
    releases = [held.add(packet_id, now=packet_id * 0.001) for packet_id in range(200)]
    assert releases == sorted(releases), "no packet overtakes the one in front of it"
    assert all(0.05 <= release - packet_id * 0.001 <= 0.15 + 1e-9 for packet_id, release in enumerate(releases))
    assert held.due(0.0) is None
    middle = releases[100]
    assert held.due(middle) == max(i for i, release in enumerate(releases) if release <= middle)
    assert held.everything() == 199 and held.next_due() is None and held.count == 200


# -- what a node says, in words ----------------------------------------------------------------------------

def test_each_mechanism_is_said_with_where_it_acts_and_why_it_was_chosen():
    facts = {"set": {"delay_ms": 100.0, "jitter_ms": 10.0, "loss_percent": 1.0, "rate_bit": 1_000_000},
             "mechanisms": {"delay": "nfqueue", "jitter": "nfqueue", "loss": "iptables-statistic", "rate": "htb"},
             "directions": {"delay": "from-server", "jitter": "from-server", "loss": "from-server",
                            "rate": "to-server"},
             "unavailable": {"netem": "Specified qdisc kind is unknown", "ifb": "Unknown device type"}}
    state = impair.ImpairmentState.of("client", facts)
    assert state.summary() == ("client: delay 100ms ±10ms, loss 1%, rate 1mbit (delay: nfqueue, "
                               "loss: iptables-statistic, rate: htb)")
    assert state.lines() == [
        "delay 100ms ±10ms: nfqueue, each packet held in user space by labctl's reader, on the server's packets as "
        "they arrive (netem unavailable: Specified qdisc kind is unknown)",
        "loss 1%: iptables statistic, a random share dropped, on the server's packets as they arrive (netem "
        "unavailable: Specified qdisc kind is unknown)",
        "rate 1mbit: tc htb, shaped, on the packets to the server (ifb unavailable: Unknown device type)"]
    netem = impair.ImpairmentState.of("client", {**facts, "mechanisms": {"delay": "netem", "jitter": "netem"},
                                                 "unavailable": {}})
    assert netem.lines() == ["delay 100ms ±10ms: tc netem, on the server's packets as they arrive"]
    assert impair.ImpairmentState.of("client", {"set": None}).summary() == "client: nothing set"


# -- on the fake engine ----------------------------------------------------------------------------------------

class Nodes:
    """The harness's impair commands on the fake engine: what each node was asked, and what is set there."""

    def __init__(self, fake: FakeBackend, nodes: tuple[str, ...] = ("client", "injector")):
        self.asked: list[tuple[str, str, dict]] = []
        self.set: dict[str, dict | None] = {node: None for node in nodes}
        for node in nodes:
            fake.harness[node]["impair_set"] = self._handler(node, "impair_set")
            fake.harness[node]["impair_clear"] = self._handler(node, "impair_clear")
            fake.harness[node]["impair_show"] = self._handler(node, "impair_show")

    def _handler(self, node: str, command: str):
        def answer(params: dict) -> dict:
            self.asked.append((node, command, params))
            if command == "impair_set":
                self.set[node] = {key: params[key] for key in ("delay_ms", "jitter_ms", "loss_percent", "rate_bit")}
                return {"set": self.set[node], "mechanisms": {"delay": "nfqueue"} if params["delay_ms"] else {},
                        "directions": {}, "unavailable": {}}
            if command == "impair_clear":
                was, self.set[node] = self.set[node], None
                return {"set": None, "was": was, "removed": []}
            return {"set": self.set[node], "mechanisms": {}}
        return answer


def test_lab_yaml_impairs_a_node_once_its_containers_run(fake, tmp_path):
    nodes = Nodes(fake)
    said: list[str] = []

    def edit(data: dict) -> None:
        data["nodes"]["injector"]["impair"] = {"delay": "20ms"}

    lab = Lab.create(write_lab(tmp_path / "project", edit), fake, name="t1")
    lab.up(IMAGES, progress=said.append)
    assert nodes.asked == [("injector", "impair_set", {"host": "server", "delay_ms": 20.0, "jitter_ms": 0.0,
                                                       "loss_percent": 0.0, "rate_bit": 0, "without": []})]
    assert "impaired injector: delay 20ms (delay: nfqueue)" in said
    assert said.index("containers started") < said.index("impaired injector: delay 20ms (delay: nfqueue)")


def test_a_backend_without_a_network_of_the_labs_own_refuses_an_impaired_lab_before_making_anything(tmp_path):
    fake = FakeBackend(features=ALL_FEATURES - {"own_network"})

    def edit(data: dict) -> None:
        data["nodes"]["client"]["impair"] = {"loss": "1%"}

    with pytest.raises(LabctlError, match="impairments need a network of the lab's own: not available on the fake"):
        up_lab(fake, tmp_path / "project", edit)
    assert fake.containers == {} and fake.networks == {} and fake.execs == []


def test_only_a_client_or_the_injector_with_net_admin_is_impaired(fake, tmp_path):
    def edit(data: dict) -> None:
        data["nodes"]["client"]["capabilities"] = ["NET_RAW"]

    lab = up_lab(fake, tmp_path / "project", edit)
    with pytest.raises(LabctlError, match=r"^node server is the lab's server: only a client or the injector"):
        impair.set_impairment(lab, "server", Impairment(delay="1ms"))
    with pytest.raises(LabctlError, match=r"^node observer is the lab's observer"):
        impair.show_impairment(lab, "observer")
    with pytest.raises(LabctlError, match=r"^node client lacks NET_ADMIN, which tc and iptables need: add it to "
                                          r"lab.yaml's nodes.client.capabilities$"):
        impair.clear_impairment(lab, "client")
    with pytest.raises(LabctlError, match="has no node 'nobody'"):
        impair.show_impairment(lab, "nobody")
    assert not any(one.harness_command and one.harness_command.startswith("impair") for one in fake.execs)


def test_a_node_that_cannot_impair_says_why(fake, lab):
    fake.harness["client"]["impair_set"] = lambda params: {"error": "Refused: tc qdisc add ...: Operation not permitted"}
    with pytest.raises(LabctlError, match=r"^impair set on client failed: Refused: tc qdisc add \.\.\.: Operation not"):
        impair.set_impairment(lab, "client", Impairment(rate="1mbit"))


def _grade_with(fake: FakeBackend, tmp_path: Path, checks: list[CheckSpec], edit=None):
    folder = tmp_path / "submission"
    folder.mkdir(exist_ok=True)
    (folder / "server.py").write_text("print('serving')\n")
    project = FakeProject(tmp_path / "project", fake, write_lab(tmp_path / "project", edit))
    exercise = Exercise(title="Impaired", model="blocking", checks=checks, id="impaired", dir=tmp_path)
    report = grade(project, exercise, folder, GradeOptions())
    assert fake.containers == {} and fake.networks == {}
    return report


def script(fake: FakeBackend, answers: dict[str, dict]) -> None:
    """The client's harness answers each probe check's command so (`raise`: the check itself then fails)."""
    for name, answer in answers.items():
        fake.harness["client"][name] = lambda params, answer=answer: answer


@pytest.fixture
def probe_check():
    """A test-only check that runs one harness command in the client (registered for one test)."""
    from labctl.checks import REGISTRY, CheckParams, Outcome, check

    class Params(CheckParams):
        answer: str

    def probe(ctx, params: Params) -> Outcome:
        answer = ctx.harness(ctx.client, params.answer, {})
        if answer.get("raise"):
            raise RuntimeError("the check's own bug")
        return Outcome(bool(answer.get("ok")), "probed")

    check("test_impaired_probe", Params, "test-only: one harness command")(probe)
    yield lambda name, **fields: CheckSpec(name=name, check="test_impaired_probe", params={"answer": name}, **fields)
    REGISTRY.pop("test_impaired_probe", None)


def test_a_checks_impairment_is_set_for_it_and_each_nodes_own_put_back_even_when_it_fails(fake, tmp_path,
                                                                                         probe_check):
    nodes = Nodes(fake)
    script(fake, {"first": {"ok": False}, "second": {"raise": True}, "third": {"ok": True}})

    def edit(data: dict) -> None:
        data["nodes"]["injector"]["impair"] = {"rate": "5mbit"}

    report = _grade_with(fake, tmp_path, [probe_check("first", impair={"delay": "100ms", "loss": "1%"}),
                                          probe_check("second", impair={"rate": "1mbit"}),
                                          probe_check("third")], edit)
    first, second, third = report.results
    assert first.status == "failed" and second.status == "error" and third.passed
    assert first.evidence["impairment"]["client"] == {"set": "delay 100ms, loss 1%", "mechanisms": {"delay": "nfqueue"},
                                                      "directions": {}}
    impaired = [(node, command, params.get("delay_ms"), params.get("rate_bit")) for node, command, params in nodes.asked]
    by_node = {node: [step for step in impaired if step[0] == node] for node in ("client", "injector")}
    assert by_node["client"] == [("client", "impair_set", 100.0, 0), ("client", "impair_clear", None, None),
                                 ("client", "impair_set", 0.0, 1_000_000), ("client", "impair_clear", None, None)]
    # The injector: its own from lab.yaml at up, the check's, its own again after each check.
    assert by_node["injector"] == [("injector", "impair_set", 0.0, 5_000_000), ("injector", "impair_set", 100.0, 0),
                                   ("injector", "impair_set", 0.0, 5_000_000), ("injector", "impair_set", 0.0, 1_000_000),
                                   ("injector", "impair_set", 0.0, 5_000_000)]
    assert nodes.set == {"client": None, "injector": {"delay_ms": 0.0, "jitter_ms": 0.0, "loss_percent": 0.0,
                                                      "rate_bit": 5_000_000}}


def test_a_checks_impairment_on_a_backend_that_cannot_is_not_available_and_sets_nothing(tmp_path, probe_check):
    fake = FakeBackend(features=ALL_FEATURES - {"own_network"})
    fake.harness["client"]["wait_listening"] = lambda params: {"listening": True}
    nodes = Nodes(fake)
    script(fake, {"plain": {"ok": True}, "impaired": {"ok": True}})
    report = _grade_with(fake, tmp_path, [probe_check("plain"), probe_check("impaired", impair={"delay": "5ms"})])
    plain, impaired = report.results
    assert plain.passed and impaired.status == "unavailable" and impaired.evidence["needs"] == ["own_network"]
    assert "a network of the lab's own" in impaired.message and nodes.asked == []
    assert (report.score, report.max_score) == (1, 1)


def test_a_checks_impairment_that_cannot_be_set_stops_the_grading_as_the_machines_failure(fake, tmp_path, probe_check):
    Nodes(fake)
    fake.harness["injector"]["impair_set"] = lambda params: {"error": "Refused: iptables: No chain/target/match"}
    script(fake, {"impaired": {"ok": True}})
    report = _grade_with(fake, tmp_path, [probe_check("impaired", impair={"loss": "5%"})])
    assert not report.gradable and report.failure == "infrastructure" and report.exit_code == 3
    assert "impair set on injector failed: Refused: iptables: No chain/target/match" in (report.error or "")
