"""Impairments of a node's path to the server: delay, jitter, loss and rate. Runs in the client or injector
(NET_ADMIN there; never on the server, which gets no capability at all).

This module alone decides HOW each impairment is made on the kernel it runs on, and says so:
- every impairment acts on the packets the node RECEIVES from the server (its SYN-ACKs, ACKs and answers),
  so a round trip grows by the delay once, a lost packet is one the server sent, and a rate limits the
  server's answers (downloads). Only packets to or from the lab's server are touched;
- tc netem where the kernel has it (users' machines): delay, jitter and loss in one qdisc;
- where it has not (this host's kernel: "Specified qdisc kind is unknown"), per impairment:
  delay and jitter: NFQUEUE, each packet held in user space by labctl's reader (harness/nfqueue.py);
  loss: iptables' statistic match, a random share dropped as it arrives (a DROP on OUTPUT would make the
  sender's own call fail with EPERM: an error, not a loss);
  rate: tc htb;
- the tc qdiscs sit on an ifb device fed with the server's packets as they arrive (a mirred redirect on
  the interface's ingress); a kernel without ifb gets them on the interface's egress instead, acting on
  the packets TO the server, and the answer says so.

Nothing is left that could cut the node off: the NFQUEUE rule has --queue-bypass (no reader: packets
pass), the reader fails open when its queue is full, and clearing removes the iptables rules before it
stops the reader, which releases what it holds. State is kept in STATE (/run, memory): `impair_show`
reads it back and checks that what it says is still true (the reader alive, the rule in place).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time

from . import nfqueue
from .client import resolve
from .wire import Impaired, ImpairSet, Reader

STATE_DIR = "/run/labctl-impair"
STATE = f"{STATE_DIR}/state.json"
KERNEL = f"{STATE_DIR}/kernel.json"
READER_LOG = f"{STATE_DIR}/reader.log"
CHAIN = "LABCTL-IMPAIR"
IFB = "labctl-ifb"
#: Our NFQUEUE queue number; queues are per network namespace, so one number serves every node.
QUEUE = 4213
#: htb needs a rate on its class: this one when only netem's delay or loss is asked for.
UNLIMITED_BIT = 10_000_000_000
#: How long a rate's queue may make a packet wait before it drops (as a router's buffer would): 10000
#: packets at 1 Mbit/s would hold two minutes of traffic, and every round trip with it; a shallow one
#: (20 packets, 240 ms there) made TCP's slow start overflow it and stall in timeouts (seen: 0.05 Mbit/s).
QUEUE_SECONDS = 1.0
#: Packets a leaf queue holds at least (a GSO packet counts as one, whatever its size) and at most.
LEAF_PACKETS = (100, 10000)
FRAME_BYTES = 1514
READY_SECONDS = 5.0
STOP_SECONDS = 3.0
#: Kernel facilities a caller may ask to treat as missing (tests of the fallbacks on a kernel that has them).
OPTIONAL = ("netem", "ifb")


# -- commands, as lists (built here, run below; unit-tested as data) ------------------------------------

def netem_args(delay_ms: float, jitter_ms: float, loss_percent: float) -> list[str]:
    """netem's words for a delay (with its jitter) and a loss."""
    args: list[str] = []
    if delay_ms:
        args += ["delay", f"{delay_ms:g}ms"] + ([f"{jitter_ms:g}ms"] if jitter_ms else [])
    if loss_percent:
        args += ["loss", f"{loss_percent:g}%"]
    return args


def quantum(rate_bit: int) -> int:
    """htb's quantum for a class of this rate: its default (rate / 10 bytes) kept within what htb accepts
    without a warning (at least a full frame, at most 200000)."""
    return max(1514, min(200_000, rate_bit // 8 // 10))


def ingress_commands(interface: str, address: str) -> list[list[str]]:
    """An ifb device fed with the packets arriving on `interface` from `address`."""
    return [["ip", "link", "add", IFB, "type", "ifb"], ["ip", "link", "set", IFB, "up"],
            ["tc", "qdisc", "add", "dev", interface, "clsact"],
            ["tc", "filter", "add", "dev", interface, "ingress", "protocol", "ip", "prio", "1", "u32", "match", "ip",
             "src", f"{address}/32", "action", "mirred", "egress", "redirect", "dev", IFB]]


def htb_commands(device: str, rate_bit: int, to_address: str | None) -> list[list[str]]:
    """An htb root with one class of `rate_bit`: everything on `device` (an ifb holding only the server's
    packets), or with `to_address`, only packets to it (the rest goes past, unshaped: htb's default 0)."""
    root = ["tc", "qdisc", "add", "dev", device, "root", "handle", "1:", "htb"] + ([] if to_address else ["default", "1"])
    commands = [root, ["tc", "class", "add", "dev", device, "parent", "1:", "classid", "1:1", "htb", "rate",
                       f"{rate_bit}bit", "ceil", f"{rate_bit}bit", "quantum", str(quantum(rate_bit))]]
    if to_address:
        commands.append(["tc", "filter", "add", "dev", device, "parent", "1:", "protocol", "ip", "prio", "1", "u32",
                         "match", "ip", "dst", f"{to_address}/32", "flowid", "1:1"])
    return commands


def leaf_packets(rate_bit: int, delay_ms: float = 0.0) -> int:
    """How many packets the class's queue holds: what the rate carries in QUEUE_SECONDS (plus, under netem,
    what it carries during the delay, which netem holds too), within LEAF_PACKETS."""
    if not rate_bit:
        return LEAF_PACKETS[1]
    packets = rate_bit / 8 * (QUEUE_SECONDS + delay_ms / 1000) / FRAME_BYTES
    return max(LEAF_PACKETS[0], min(LEAF_PACKETS[1], int(packets)))


def leaf_command(device: str, limit: int, netem: list[str] | None) -> list[str]:
    """The class's queue: netem with its words, or a plain fifo; `limit` packets at most."""
    kind = ["netem", "limit", str(limit), *netem] if netem else ["pfifo", "limit", str(limit)]
    return ["tc", "qdisc", "add", "dev", device, "parent", "1:1", "handle", "10:", *kind]


def iptables_commands(address: str, loss_percent: float, queue: int | None) -> list[list[str]]:
    """Our chain for the server's packets as they arrive: drop a random share, then queue the rest to the
    reader (--queue-bypass: with no reader, they pass). The jump from INPUT comes last, when all is ready."""
    commands = [["-N", CHAIN]]
    if loss_percent:
        commands.append(["-A", CHAIN, "-m", "statistic", "--mode", "random", "--probability",
                         f"{loss_percent / 100:.6f}", "-j", "DROP"])
    if queue is not None:
        commands.append(["-A", CHAIN, "-j", "NFQUEUE", "--queue-num", str(queue), "--queue-bypass"])
    commands.append(["-I", "INPUT", "1", "-s", f"{address}/32", "-j", CHAIN])
    return [["iptables", "-w", "5", *command] for command in commands]


def jumps_to_remove(rules: str) -> list[list[str]]:
    """The `iptables -D` commands that remove every jump to our chain listed by `iptables -S INPUT`."""
    return [["iptables", "-w", "5", "-D", *line.split()[1:]] for line in rules.splitlines()
            if line.startswith("-A ") and line.split()[-2:] == ["-j", CHAIN]]


# -- running them -----------------------------------------------------------------------------------------

class Refused(RuntimeError):
    """The kernel or a tool refused a command: the command, and its words (`words`)."""

    def __init__(self, command: list[str] | None, words: str):
        super().__init__(f"{' '.join(command)}: {words}" if command else words)
        self.words = words


def _run(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10)
    except FileNotFoundError:
        raise Refused(None, f"{command[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise Refused(command, "did not finish within 10 s") from None
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        words = lines[-1].strip().removeprefix("Error: ").rstrip(".") if lines else f"exit {done.returncode}"
        raise Refused(command, words)
    return done.stdout


def _quiet(command: list[str]) -> bool:
    """Run a command whose failure means "nothing to remove"."""
    try:
        _run(command)
        return True
    except Refused:
        return False


def interface_to(address: str) -> str:
    """The interface this node reaches `address` through (`ip route get`)."""
    words = _run(["ip", "-o", "route", "get", address]).split()
    if "dev" not in words:
        raise Refused(None, f"no route to the server at {address}")
    return words[words.index("dev") + 1]


# -- the commands ----------------------------------------------------------------------------------------

def impair_set(host: str, delay_ms: float = 0.0, jitter_ms: float = 0.0, loss_percent: float = 0.0,
               rate_bit: int = 0, without: list[str] | None = None, seed: int | None = None) -> Impaired:
    """Set exactly these impairments on this node's path from `host` (what was set before is cleared).

    `without`: kernel facilities to treat as missing (names of OPTIONAL), so the fallbacks can be tested
    on a kernel that has them. `seed`: the reader's jitter draws (tests).
    """
    skip = set(without or ()) & set(OPTIONAL)
    _clear()
    address, problem = resolve(host, 5.0)
    if address is None:
        raise Refused(None, f"cannot resolve the server {host!r}: {problem}")
    wanted: ImpairSet = {"delay_ms": float(delay_ms), "jitter_ms": float(jitter_ms), "loss_percent": float(loss_percent),
              "rate_bit": int(rate_bit)}
    facts: Impaired = {"set": wanted, "server": address, "mechanisms": {}, "directions": {}, "unavailable": {}}
    try:
        facts["interface"] = interface_to(address)
        netem = _tc(facts, address, wanted, skip)
        _netfilter(facts, address, wanted, netem, seed)
    except BaseException:
        _clear(facts)
        raise
    os.makedirs(STATE_DIR, exist_ok=True)
    with open(STATE, "w") as file:
        json.dump(facts, file)
    return facts


def _tc(facts: Impaired, address: str, wanted: ImpairSet, skip: set[str]) -> bool:
    """The tc part: htb for a rate, netem for delay, jitter and loss where the kernel has it. True: netem."""
    interface = facts["interface"]
    needs_netem = bool(wanted["delay_ms"] or wanted["loss_percent"])
    netem = needs_netem and _kernel_has("netem", skip, facts)
    if not wanted["rate_bit"] and not netem:
        return False
    device, direction, to_address = IFB, "from-server", None
    try:
        if not _kernel_has("ifb", skip, facts):
            raise Refused(None, facts["unavailable"]["ifb"])
        for command in ingress_commands(interface, address):
            _run(command)
    except Refused as why:
        facts["unavailable"]["ifb"] = why.words
        _remove_tc(interface)
        device, direction, to_address = interface, "to-server", address
    facts["tc_device"] = device
    for command in htb_commands(device, wanted["rate_bit"] or UNLIMITED_BIT, to_address):
        _run(command)
    if netem:
        _run(leaf_command(device, leaf_packets(wanted["rate_bit"], wanted["delay_ms"]),
                          netem_args(wanted["delay_ms"], wanted["jitter_ms"], wanted["loss_percent"])))
        for name in ("delay_ms", "jitter_ms", "loss_percent"):
            if wanted[name]:
                _say(facts, name, "netem", direction)
    else:
        _run(leaf_command(device, leaf_packets(wanted["rate_bit"]), None))
    if wanted["rate_bit"]:
        _say(facts, "rate_bit", "htb", direction)
    return netem


def _kernel_has(facility: str, skip: set[str], facts: Impaired) -> bool:
    """Does this kernel have netem, or ifb? Tried once per container (the answer is kept in KERNEL: a
    kernel's modules do not come and go); what it lacks goes into facts["unavailable"] with its words."""
    if facility in skip:
        facts["unavailable"][facility] = "left out (asked)"
        return False
    try:
        with open(KERNEL) as file:
            known = json.load(file)
    except (OSError, ValueError):
        known = {}
    if facility not in known:
        known[facility] = _probe(facility)
        os.makedirs(STATE_DIR, exist_ok=True)
        with open(KERNEL, "w") as file:
            json.dump(known, file)
    missing = known[facility]
    if missing:
        facts["unavailable"][facility] = missing
    return not missing


def _probe(facility: str) -> str | None:
    """Try it for a moment: None when the kernel has it, else its words ("Specified qdisc kind is unknown")."""
    try:
        if facility == "netem":   # on loopback, for an instant: a netem of no delay changes nothing
            _run(["tc", "qdisc", "add", "dev", "lo", "root", "handle", "1:", "netem", "delay", "0ms"])
            _quiet(["tc", "qdisc", "del", "dev", "lo", "root"])
        else:
            _run(["ip", "link", "add", f"{IFB}-p", "type", "ifb"])
            _quiet(["ip", "link", "del", f"{IFB}-p"])
    except Refused as why:
        return why.words
    return None


def _netfilter(facts: Impaired, address: str, wanted: ImpairSet, netem: bool, seed: int | None) -> None:
    """Loss and delay without netem: iptables statistic and the NFQUEUE reader, on packets from the server."""
    loss = 0.0 if netem else wanted["loss_percent"]
    delay = not netem and bool(wanted["delay_ms"])
    if not loss and not delay:
        return
    if delay:
        facts["reader"] = {"pid": _start_reader(wanted["delay_ms"], wanted["jitter_ms"], seed)}
    for command in iptables_commands(address, loss, QUEUE if delay else None):
        _run(command)
    if loss:
        _say(facts, "loss_percent", "iptables-statistic", "from-server")
    if delay:
        for name in ("delay_ms", "jitter_ms"):
            if wanted[name]:
                _say(facts, name, "nfqueue", "from-server")


def _say(facts: Impaired, name: str, mechanism: str, direction: str) -> None:
    key = name.split("_")[0]
    facts["mechanisms"][key] = mechanism
    facts["directions"][key] = direction


def _start_reader(delay_ms: float, jitter_ms: float, seed: int | None) -> int:
    """Start the NFQUEUE reader in a session of its own (it outlives this command; it ends with the container
    or with `impair_clear`), and wait until it has bound the queue."""
    os.makedirs(STATE_DIR, exist_ok=True)
    read_end, write_end = os.pipe()
    params = {"queue": QUEUE, "delay_ms": delay_ms, "jitter_ms": jitter_ms, "ready_fd": write_end, "seed": seed}
    with open(READER_LOG, "ab") as log:
        # stdout and stderr go to the log, never to this command's: an exec ends only once every holder of
        # its output has closed it.
        reader = subprocess.Popen([sys.executable, "-m", "harness", "impair_reader", "--params", json.dumps(params)],
                                  stdin=subprocess.DEVNULL, stdout=log, stderr=log, pass_fds=(write_end,),
                                  start_new_session=True, close_fds=True)
    os.close(write_end)
    try:
        answer = b""
        deadline = time.monotonic() + READY_SECONDS
        while b"\n" not in answer and time.monotonic() < deadline:
            if select.select([read_end], [], [], max(0.0, deadline - time.monotonic()))[0]:
                chunk = os.read(read_end, 512)
                if not chunk:
                    break
                answer += chunk
    finally:
        os.close(read_end)
    if answer.strip() != b"ok":
        reader.kill()
        reader.wait(timeout=STOP_SECONDS)
        why = answer.decode(errors="replace").strip() or "it did not say it was ready within 5 s"
        raise Refused(None, f"the NFQUEUE reader could not start: {why}")
    return reader.pid


def impair_reader(queue: int = QUEUE, delay_ms: float = 0.0, jitter_ms: float = 0.0, ready_fd: int | None = None,
                  seed: int | None = None) -> dict:
    """The NFQUEUE reader itself (started by impair_set; runs until SIGTERM)."""
    return nfqueue.hold(queue, delay_ms / 1000, jitter_ms / 1000, ready_fd, seed)


def impair_clear() -> Impaired:
    """Remove every impairment of this node (safe to repeat): what was set, and what was removed."""
    facts = _state()
    removed = _clear(facts)
    return {"set": None, "was": facts.get("set"), "removed": removed}


def impair_show() -> Impaired:
    """What is set, and whether it still holds: the reader alive, the jump to our chain in place."""
    facts = _state()
    if not facts.get("set"):
        return {"set": None}
    problems: list[str] = []
    reader = facts.get("reader")
    if reader is not None:
        reader["running"] = _is_reader(reader["pid"])
        reader.update(_queue_counts(QUEUE))
        if not reader["running"]:
            problems.append("the NFQUEUE reader is not running: the server's packets pass without delay")
    if "iptables-statistic" in facts["mechanisms"].values() or "nfqueue" in facts["mechanisms"].values():
        try:
            rules = _run(["iptables", "-w", "5", "-S", "INPUT"])
        except Refused as why:
            problems.append(f"cannot list the iptables rules: {why}")
        else:
            if not jumps_to_remove(rules):
                problems.append(f"the iptables rule sending the server's packets to {CHAIN} is gone")
    facts["problems"] = problems
    return facts


# -- clearing ---------------------------------------------------------------------------------------------

def _state() -> Impaired:
    try:
        with open(STATE) as file:
            facts: Impaired = json.load(file)
            return facts
    except (OSError, ValueError):
        return {}


def _clear(facts: Impaired | None = None) -> list[str]:
    """Remove what an earlier impair_set made (by our names: also what a killed one left half made), in the
    order that never holds a packet with no reader: the iptables rules first, the reader next, tc last."""
    facts = facts if facts is not None else _state()
    removed: list[str] = []
    try:
        rules = _run(["iptables", "-w", "5", "-S", "INPUT"])
    except Refused:
        rules = ""
    for command in jumps_to_remove(rules):
        if _quiet(command):
            removed.append("iptables rule")
    if _quiet(["iptables", "-w", "5", "-F", CHAIN]) and _quiet(["iptables", "-w", "5", "-X", CHAIN]):
        removed.append(f"iptables chain {CHAIN}")
    for pid in _readers():
        if _stop_reader(pid):
            removed.append("NFQUEUE reader")
    interface = facts.get("interface")
    for device in [interface] if interface else _interfaces():
        removed += _remove_tc(device)
    try:
        os.unlink(STATE)
    except OSError:
        pass
    return removed


def _remove_tc(interface: str) -> list[str]:
    removed = []
    try:
        shown = _run(["tc", "qdisc", "show", "dev", interface])
    except Refused:
        shown = ""
    if "htb 1: root" in shown and _quiet(["tc", "qdisc", "del", "dev", interface, "root"]):
        removed.append(f"tc htb on {interface}")
    if "clsact" in shown and _quiet(["tc", "qdisc", "del", "dev", interface, "clsact"]):
        removed.append(f"tc ingress redirect on {interface}")
    if os.path.exists(f"/sys/class/net/{IFB}") and _quiet(["ip", "link", "del", IFB]):
        removed.append(f"ifb device {IFB}")
    return removed


def _interfaces() -> list[str]:
    try:
        return [name for name in sorted(os.listdir("/sys/class/net")) if name not in ("lo", IFB)]
    except OSError:
        return []


def _is_reader(pid: int) -> bool:
    """Is `pid` our NFQUEUE reader (`python3 -m harness impair_reader ...`)?"""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            return b"\0harness\0impair_reader\0" in file.read()
    except OSError:
        return False


def _readers() -> list[int]:
    """Every reader running in this container: the one the state names, and one a killed impair_set left."""
    return [int(name) for name in os.listdir("/proc") if name.isdigit() and _is_reader(int(name))]


def _stop_reader(pid: int) -> bool:
    """SIGTERM (it releases what it holds), then SIGKILL after STOP_SECONDS. False: it was not running."""
    if not _is_reader(pid):
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_SECONDS
    while time.monotonic() < deadline:
        if not _is_reader(pid) or _zombie(pid):
            return True
        time.sleep(0.02)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return True


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as file:
            return file.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def _queue_counts(queue: int) -> Reader:
    """The kernel's counts for our queue (/proc/net/netfilter/nfnetlink_queue): held now, dropped, passed."""
    try:
        with open("/proc/net/netfilter/nfnetlink_queue") as file:
            for line in file:
                fields = line.split()
                if len(fields) >= 8 and fields[0] == str(queue):
                    return {"holding": int(fields[2]), "queue_dropped": int(fields[5]),
                            "user_dropped": int(fields[6]), "packets": int(fields[7])}
    except (OSError, ValueError):
        pass
    return {}


COMMANDS = {"impair_set": impair_set, "impair_clear": impair_clear, "impair_show": impair_show,
            "impair_reader": impair_reader}
