"""Impairments on the real engine, measured: a round trip grows by the delay set, the share of packets set is
lost, a transfer runs at the rate set; a check's impairment holds for that check alone; lab.yaml's is set at up.

One lab for the module (tests/servers/impair: a thread per connection), its injector impaired by lab.yaml
(so `up` is tested, and what a check's impairment puts back afterwards); each test clears what it set.

How the bounds are chosen, so that a busy machine can never fail them (and a broken impairment always does):
- delay: a packet is released no sooner than its delay after the reader (or netem) took it, and it takes it
  after it arrived, so the smallest impaired connect time is at least the delay: a hard bound. Above, a busy
  machine only adds (the reader waits for a CPU), so the added median is bounded by the delay plus a
  generous DELAY_MARGIN, and with the impairment cleared the round trip is back under 50 ms;
- loss: N ICMP echo requests, each reply lost with probability p independently: by Hoeffding's bound
  P(|lost/N - p| >= t) <= 2 exp(-2 N t^2), 3e-8 for N = 400 and t = 0.15, while no loss, or twice the loss,
  is far outside. Nothing else loses an echo on a lab's bridge, busy or not;
- rate: TCP payload is 1448 of every 1514 bytes the shaper counts (95.6 %). Measured here (htb on an ifb,
  load average 8-11), what arrives in the 4 s after the first second is 0.91-1.09 of the rate: htb's timers
  run late on a busy host (a little slower), and it lets a burst through once its queue fills (a little
  faster). RATE_BOUNDS is wider than both, and an unshaped transfer here runs at gigabits: far outside.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

import pytest
from conftest import OWNER, ROOT, SERVERS

from labctl import grading
from labctl.checks import load_catalog
from labctl.exercise import CheckSpec, Exercise
from labctl.impair import clear_impairment, set_impairment, show_impairment
from labctl.impairment import Impairment
from labctl.lab import Lab, Submission

DELAY = 0.100
DELAY_MARGIN = 0.150
PROBES, LOSS, LOSS_TOLERANCE = 400, 0.30, 0.15
RATE_BIT = 1_000_000
RATE_BOUNDS = (0.7, 1.2)
INJECTOR_OWN = Impairment(delay="30ms")

CONNECTS = """
import json, socket, sys, time
address, port, count, pause = socket.gethostbyname(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
times = []
for _ in range(count):
    started = time.monotonic()
    with socket.create_connection((address, port), timeout=10):
        times.append(time.monotonic() - started)
    time.sleep(pause)
print(json.dumps(times))
"""

PINGS = """
import json, os, select, socket, struct, sys, time
def checksum(data):
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF
address, count = socket.gethostbyname(sys.argv[1]), int(sys.argv[2])
sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
ident, answered = os.getpid() & 0xFFFF, set()
def read(wait):
    while select.select([sock], [], [], wait)[0]:
        data = sock.recv(2048)
        kind, _, _, who, seq = struct.unpack_from("!BBHHH", data, (data[0] & 15) * 4)
        if kind == 0 and who == ident:
            answered.add(seq)
        wait = 0
for seq in range(count):
    payload = b"labctl-impair-probe"
    header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    sock.sendto(struct.pack("!BBHHH", 8, 0, checksum(header + payload + b"\\0"), ident, seq) + payload, (address, 0))
    read(0.002)
deadline = time.monotonic() + 1.5
while time.monotonic() < deadline:
    read(0.1)
print(json.dumps({"sent": count, "answered": len(answered)}))
"""

DOWNLOAD = """
import json, socket, sys, time
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
sock.settimeout(None)  # blocking: MSG_DONTWAIT below then means "only what has arrived"
sock.sendall(b"GET /stream HTTP/1.0\\r\\n\\r\\n")
started, seconds, marks, total = time.monotonic(), float(sys.argv[3]), [], 0
while time.monotonic() - started < seconds:
    total += len(sock.recv(65536))
    while True:  # all that has arrived, then the mark: a mark's total is what came by its time
        try:
            total += len(sock.recv(65536, socket.MSG_DONTWAIT))
        except BlockingIOError:
            break
    marks.append((time.monotonic() - started, total))
sock.close()
begin = next(mark for mark in marks if mark[0] >= 1.0)
print(json.dumps({"bytes": marks[-1][1] - begin[1], "seconds": marks[-1][0] - begin[0]}))
"""

UPLOAD = """
import socket, sys
size = int(sys.argv[3])
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
sock.sendall(b"POST /sink HTTP/1.0\\r\\nContent-Length: %d\\r\\n\\r\\n" % size + b"y" * size)
answer = b""
while True:
    chunk = sock.recv(4096)
    if not chunk:
        break
    answer += chunk
print(answer.partition(b"\\r\\n\\r\\n")[2].decode())
"""


def run(lab: Lab, script: str, *args: object, timeout: float = 60) -> object:
    result = lab.exec("client", ["python3", "-c", script, *map(str, args)], timeout=timeout)
    assert result.exit_code == 0, result.stderr.decode(errors="replace")
    return json.loads(result.text.strip().splitlines()[-1])


def connect_times(lab: Lab, count: int = 15, pause: float = 0.02) -> list[float]:
    """TCP connect times to the server: one round trip each (the SYN-ACK is what the delay holds)."""
    times = run(lab, CONNECTS, "server", 8080, count, pause)
    assert isinstance(times, list)
    return times


def labctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "labctl", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "LABCTL_OWNER": OWNER}, timeout=120)


def left_in(lab: Lab, node: str) -> str:
    """What impair_set makes, as the node's own tools list it: our reader, iptables chain, tc qdiscs, ifb."""
    script = ("ps -eo args | grep -c '[i]mpair_reader'; iptables -S | grep -c LABCTL-IMPAIR; "
              "tc qdisc show | grep -c -E 'htb|clsact|netem'; ip -o link | grep -c labctl-ifb")
    return lab.exec(node, ["sh", "-c", script]).text.split()


NOTHING_LEFT = ["0", "0", "0", "0"]


#: What the module's lab said while it came up.
UP_PROGRESS: list[str] = []


@pytest.fixture(scope="module")
def lab(project, images):
    injector = project.spec.nodes["injector"].model_copy(update={"impair": INJECTOR_OWN})
    spec = project.spec.model_copy(update={"nodes": {**project.spec.nodes, "injector": injector}})
    made = Lab.create(spec, project.backend, name=f"impair-{OWNER}")
    try:
        yield made.up(images, Submission(path=SERVERS / "impair"), progress=UP_PROGRESS.append)
    finally:
        made.down()


def test_labctl_impair_adds_the_delay_it_says_and_clear_takes_it_away(lab):
    before = connect_times(lab)
    assert statistics.median(before) < 0.05, f"the lab's own round trip is short: {before}"

    shown = labctl("impair", "--lab", lab.id, "client", "--delay", "100ms")
    assert shown.returncode == 0, shown.stderr
    line = next(line.strip() for line in shown.stdout.splitlines() if line.strip().startswith("delay 100ms:"))
    mechanism = "netem" if "tc netem" in line else "nfqueue"
    if mechanism == "nfqueue":   # this host: no sch_netem
        assert line.startswith("delay 100ms: nfqueue") and "netem unavailable" in line, line
    assert "on the server's packets as they arrive" in line, line
    impaired = connect_times(lab)
    added = statistics.median(impaired) - statistics.median(before)
    print(f"delay 100ms ({mechanism}): connect median {statistics.median(before) * 1000:.1f} ms -> "
          f"{statistics.median(impaired) * 1000:.1f} ms (added {added * 1000:.1f} ms), min {min(impaired) * 1000:.1f} ms")
    assert min(impaired) >= DELAY, f"no round trip is shorter than the delay: {impaired}"
    assert added <= DELAY + DELAY_MARGIN, f"the delay added is the one set: {added:.3f} s ({impaired})"

    again = labctl("impair", "--lab", lab.id, "client")
    assert again.returncode == 0 and "client: delay 100ms" in again.stdout and line in again.stdout, again.stdout
    assert "warning" not in again.stdout

    cleared = labctl("impair", "--lab", lab.id, "client", "--clear")
    assert cleared.returncode == 0 and cleared.stdout.startswith("client: cleared ("), cleared.stdout
    assert left_in(lab, "client") == NOTHING_LEFT
    after = connect_times(lab)
    assert statistics.median(after) < 0.05, f"cleared, the round trip is short again: {after}"
    assert labctl("impair", "--lab", lab.id, "client").stdout.strip() == "client: nothing set"


def test_a_jitter_varies_each_packets_delay_within_the_jitter(lab):
    set_impairment(lab, "client", Impairment(delay="100ms", jitter="20ms"))
    try:
        # Connects further apart than the longest delay: no packet of the last one is still held, so each
        # SYN-ACK's delay is its own draw (a packet never overtakes the one in front of it).
        times = connect_times(lab, 16, pause=0.15)
    finally:
        clear_impairment(lab, "client")
    print(f"delay 100ms ±20ms: connect min {min(times) * 1000:.1f} ms, median {statistics.median(times) * 1000:.1f} ms, "
          f"max {max(times) * 1000:.1f} ms")
    assert min(times) >= DELAY - 0.020, times
    assert statistics.median(times) <= DELAY + 0.020 + DELAY_MARGIN, times
    # 16 draws of a uniform 40 ms all within 10 ms of each other: probability < 16 * (1/4)**15 ~ 1.5e-8.
    assert max(times) - min(times) >= 0.010, f"the delays vary: {times}"


def test_loss_drops_the_share_of_the_servers_packets_it_says(lab):
    state = set_impairment(lab, "client", Impairment(loss="30%"))
    try:
        netem = "netem" not in state.facts.get("unavailable", {})
        assert state.mechanisms == {"loss": "netem" if netem else "iptables-statistic"}
        probes = run(lab, PINGS, "server", PROBES)
    finally:
        clear_impairment(lab, "client")
    assert isinstance(probes, dict)
    lost = 1 - probes["answered"] / probes["sent"]
    print(f"loss 30% ({state.mechanisms['loss']}): {probes['sent'] - probes['answered']} of {probes['sent']} echoes "
          f"lost ({lost:.1%})")
    assert abs(lost - LOSS) < LOSS_TOLERANCE, probes
    unimpaired = run(lab, PINGS, "server", 100)
    assert unimpaired == {"sent": 100, "answered": 100}, "cleared, nothing is lost"


def test_rate_limits_the_servers_answers_and_without_ifb_what_goes_to_it(lab):
    state = set_impairment(lab, "client", Impairment(rate="1mbit"))
    try:
        assert state.mechanisms == {"rate": "htb"} and state.facts["directions"] == {"rate": "from-server"}
        download = run(lab, DOWNLOAD, "server", 8080, 5.0)
    finally:
        clear_impairment(lab, "client")
    assert isinstance(download, dict)
    measured = download["bytes"] * 8 / download["seconds"]
    print(f"rate 1mbit (htb on an ifb): download {measured / 1e6:.3f} Mbit/s of payload")
    assert RATE_BOUNDS[0] * RATE_BIT <= measured <= RATE_BOUNDS[1] * RATE_BIT, download

    # A kernel without ifb: the rate acts on the packets to the server, measured where they arrive.
    state = set_impairment(lab, "client", Impairment(rate="1mbit"), without=("ifb",))
    try:
        assert state.facts["directions"] == {"rate": "to-server"} and "ifb" in state.facts["unavailable"]
        assert "ifb unavailable" in state.lines()[0]
        upload = run(lab, UPLOAD, "server", 8080, 500_000)
    finally:
        clear_impairment(lab, "client")
    assert isinstance(upload, dict) and upload["bytes"] == 500_000
    measured = upload["window_bytes"] * 8 / upload["seconds"]
    print(f"rate 1mbit (htb on eth0's egress): upload {measured / 1e6:.3f} Mbit/s of payload")
    assert RATE_BOUNDS[0] * RATE_BIT <= measured <= RATE_BOUNDS[1] * RATE_BIT, upload
    assert left_in(lab, "client") == NOTHING_LEFT


def test_lab_yaml_impairs_at_up_and_a_checks_impairment_holds_for_that_check_alone(lab):
    assert any(line.startswith("impaired injector: delay 30ms") for line in UP_PROGRESS), UP_PROGRESS
    assert str(show_impairment(lab, "injector").impairment) == "delay 30ms"
    load_catalog()
    slow = Impairment(delay="400ms")
    exercise = Exercise(title="impaired", model="blocking", id="impaired", dir=ROOT, checks=[
        CheckSpec(name="under-delay", check="http", impair=slow, params={"expect": {"body": "hello\n"}, "timeout": 0.6}),
        CheckSpec(name="after", check="http", params={"expect": {"body": "hello\n"}, "timeout": 0.6})])
    checks = grading.Run(lab, exercise, budget=60, started=time.monotonic(), say=lambda message: None,
                         tell=lambda result: None)
    impaired, after = (checks.next(check) for check in exercise.checks)
    # connect (400 ms) and the answer (400 ms more) do not fit in 0.6 s: the delay was there for this check...
    assert not impaired.passed and impaired.status == "failed", impaired.message
    assert impaired.evidence["impairment"]["client"]["set"] == "delay 400ms"
    assert set(impaired.evidence["impairment"]) == {"client", "injector"}
    # ... and gone after it: the next check passes, the client has nothing set, the injector its own again.
    assert after.passed, after.message
    assert show_impairment(lab, "client").impairment is None
    assert str(show_impairment(lab, "injector").impairment) == "delay 30ms"
