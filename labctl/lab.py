"""The running lab: up, down, exec, copy, logs, status. Backend-neutral.

A lab is one network and one container per node of lab.yaml, all carrying the labels
below. Nothing is stored on the host: `status`, `down` and stale-lab reaping find a lab
by its labels, so a lab orphaned by a killed labctl is still found.
"""

from __future__ import annotations

import base64
import functools
import getpass
import json
import os
import re
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from labctl import archive, impair, syscalls
from labctl.backends.base import Backend, ContainerInfo, ContainerPlan, ExecResult, Usage
from labctl.errors import ContainerGone, LabctlError, LabNotFound, LimitAboveEngine, ServerStartError, SubmissionError
from labctl.interrupts import uninterrupted
from labctl.spec import DEFAULT_PORT, LabSpec, NodeSpec, sysctl_values

if TYPE_CHECKING:
    from labctl.exercise import Exercise

# The labels every object of a lab carries: the one place that names them.
LABEL_LAB = "labctl.lab"
LABEL_ROLE = "labctl.role"
LABEL_NODE = "labctl.node"
LABEL_OWNER = "labctl.owner"
LABEL_CREATED = "labctl.created"
LABEL_HOST = "labctl.host"
LABEL_PID = "labctl.pid"
#: On the server: the port it was given ($PORT), which a backend that shares the host's network picks.
LABEL_PORT = "labctl.port"

#: A lab id names containers and a network: what the engine accepts in both.
LAB_ID = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,39}$")

#: Where things go inside the containers.
HARNESS_DIR = "/opt/labctl"
SUBMISSION_DIR = "/submission"
DOCROOT_DIR = "/srv/www"
HARNESS_SOURCE = Path(__file__).parent / "harness"
#: What every node may write: memory-backed folders of limits.disk each, counted in its memory. The
#: rest of its file system is read-only, so nothing in a lab can fill the host's disk.
SCRATCH = ("/tmp", "/var/tmp", "/run", "/dev/shm")

#: What the server runs when no submission is given: nothing listens, the lab is a
#: playground (`labctl shell server`, start a server by hand).
IDLE_COMMAND = ["sleep", "infinity"]
#: What the observer runs: the sampler that looks at the server's threads all the time, at
#: moments that vary, and writes its looks to its log, so that a server cannot tell when it is
#: being looked at (harness/agent.py). Its log is kept larger: it holds the looks.
OBSERVER_COMMAND = ["python3", "-m", "harness", "proc_agent", "--params",
                    json.dumps({"fd_rules": syscalls.fd_rules()}, separators=(",", ":"))]
OBSERVER_LOG_BYTES = 16 * 2**20
#: The most log the engine keeps of any other node (twice this, in two files): a log flood stays small.
LOG_BYTES = 2 * 2**20
#: The most of a log's end that goes into a message or a report.
LOG_TAIL_CHARS = 16_000
#: What the client and injector run: nothing; checks run in them with exec.
TOOL_COMMAND = ["sleep", "infinity"]

Progress = Callable[[str], None]


def current_owner() -> str:
    """Who owns the labs this process makes: $LABCTL_OWNER (CI jobs, tests) or the user name."""
    return os.environ.get("LABCTL_OWNER") or getpass.getuser()


@dataclass(frozen=True)
class Submission:
    """The server under test: a folder, how to build and run it, what it serves."""

    path: Path
    run: str = "python3 server.py"
    build: str | None = None
    docroot: Path | None = None
    port: int = DEFAULT_PORT
    env: dict[str, str] = field(default_factory=dict)
    #: The server's kernel settings (net.* sysctls of its network namespace), over lab.yaml's.
    sysctls: dict[str, str] = field(default_factory=dict)

    @classmethod
    def for_exercise(cls, exercise: Exercise, path: Path, env: dict[str, str] | None = None) -> Submission:
        """The server in `path` as `exercise` runs it: its build and run commands, port, docroot and
        sysctls; `env`, extra environment for the server (a mutant's settings)."""
        spec = exercise.submission
        return cls(path=path, run=spec.run, build=spec.build, docroot=exercise.docroot, port=spec.port,
                   env=dict(env or {}), sysctls=sysctl_values(spec.sysctls))

    def command(self) -> list[str]:
        """The server container's command: build (if any), then replace the shell by the server."""
        script = f"exec {self.run}" if not self.build else f"{self.build} && exec {self.run}"
        return ["sh", "-c", script]


class Lab:
    """One lab on one backend: made by `Lab.create(...).up()`, found again by `find_lab(...)`."""

    def __init__(self, spec: LabSpec, backend: Backend, lab_id: str, owner: str | None = None):
        self.spec = spec
        self.backend = backend
        self.id = lab_id
        self.owner = owner or current_owner()
        self.submission: Submission | None = None
        self._port: int | None = None
        self._say: Progress = lambda message: None

    # -- naming -----------------------------------------------------------------------------------

    @classmethod
    def create(cls, spec: LabSpec, backend: Backend, name: str | None = None) -> Lab:
        """A new lab with a unique id: the lab's name and a random suffix, or the name given."""
        lab_id = name or f"{spec.name}-{secrets.token_hex(3)}"
        if not LAB_ID.fullmatch(lab_id):
            raise LabctlError(f"lab name {lab_id!r}: expected lowercase letters, digits, '.', '_' or '-' "
                              "(up to 40), starting with a letter or digit")
        return cls(spec, backend, lab_id)

    def container_name(self, node: str) -> str:
        return f"labctl-{self.id}-{node}"

    @property
    def network_name(self) -> str:
        return f"labctl-{self.id}"

    def labels(self, node: NodeSpec | None = None) -> dict[str, str]:
        labels = {LABEL_LAB: self.id, LABEL_OWNER: self.owner,
                  LABEL_CREATED: datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  LABEL_HOST: socket.gethostname(), LABEL_PID: str(os.getpid())}
        if node is not None:
            labels.update({LABEL_ROLE: node.role, LABEL_NODE: node.name})
        return labels

    # -- up ---------------------------------------------------------------------------------------

    def up(self, images: dict[str, str], submission: Submission | None = None,
           progress: Progress | None = None, wait: bool = True) -> Lab:
        """Create the network and the containers, copy the code in, start, wait for the server.

        On any failure, and on Ctrl-C, everything made so far is removed before the error
        goes up: an `up` either gives a whole lab or leaves nothing.
        """
        say = progress or (lambda message: None)
        self._say = say
        self.submission = submission
        try:
            self._up(images, submission, say, wait)
        except BaseException:
            say("removing what was made")
            try:
                self.down()
            except Exception as cleanup:  # the first error is the one to tell; this one is said beside it
                say(f"removing what was made failed too: {cleanup} (`labctl down --all` removes it later)")
            raise
        return self

    def _up(self, images: dict[str, str], submission: Submission | None, say: Progress, wait: bool) -> None:
        impaired = [node.name for node in self.spec.nodes.values() if node.impair is not None]
        for node in impaired:  # refused before anything is made: a backend that cannot impair must not run unimpaired
            impair.impairable(self, node)
        net = self.spec.network
        say(f"network {self.network_name}")
        network = self.backend.create_network(self.network_name, str(net.pool), net.prefix,
                                              self.labels(), internal=net.internal)
        say(f"network {self.network_name}: {network.subnet}")
        self._port = self.backend.server_port(submission.port if submission else self.spec.server_port)
        plans = [self._plan(node, images, submission) for node in self.spec.nodes.values()]
        first = [plan for plan in plans if plan.pid_of is None]
        sidecars = [plan for plan in plans if plan.pid_of is not None]
        with ThreadPoolExecutor(max_workers=len(plans)) as pool:
            list(pool.map(self.backend.create_container, first))
            # A sidecar can be created once the container whose PID namespace it joins
            # exists (while that one starts), but started only once it runs.
            made = [pool.submit(self.backend.create_container, plan) for plan in sidecars]
            list(pool.map(self._start, first))
            for future in made:
                future.result()
        say("containers created and started: " + ", ".join(plan.node for plan in first))
        # A sidecar joins the PID namespace of a container that must still be running: a
        # server that exited at once is reported as such, not as a sidecar failure.
        for plan in sidecars:
            try:
                self._start(plan)
            except LabctlError:
                self._raise_if_server_exited(self.server_port)
                raise
        say("containers started")
        for node in impaired:
            own = self.spec.nodes[node].impair
            assert own is not None
            say(f"impaired {impair.set_impairment(self, node, own).summary()}")
        if submission is not None and wait:
            self.wait_listening(self.server_port, self.spec.timeouts.up, say)

    def _plan(self, node: NodeSpec, images: dict[str, str], submission: Submission | None) -> ContainerPlan:
        labels = self.labels(node)
        if node.role == "server":
            workdir = SUBMISSION_DIR
            port = self._port if self._port is not None else submission.port if submission else self.spec.server_port
            labels[LABEL_PORT] = str(port)
            env = {"PORT": str(port), "DOCROOT": DOCROOT_DIR, "PYTHONUNBUFFERED": "1", "HOME": "/tmp", "LANG": "C.UTF-8"}
            if submission:
                env.update(submission.env)
            command = submission.command() if submission else IDLE_COMMAND
            writable: tuple[str, ...] = (*SCRATCH, SUBMISSION_DIR, DOCROOT_DIR)
            payload = self._server_files(node, submission)
        else:
            workdir = None
            env = {"PYTHONPATH": HARNESS_DIR, "PYTHONDONTWRITEBYTECODE": "1", "HOME": "/tmp", "LANG": "C.UTF-8"}
            command = OBSERVER_COMMAND if node.role == "observer" else TOOL_COMMAND
            writable = (*SCRATCH, HARNESS_DIR)
            payload = _harness_archive()
        return ContainerPlan(
            name=self.container_name(node.name), node=node.name, image=images[node.image], command=command,
            labels=labels, user=node.user, workdir=workdir, env=env, cap_add=tuple(node.capabilities),
            cpus=node.limits.cpus, memory_bytes=node.limits.memory_bytes, pids=node.limits.pids,
            nofile=node.limits.nofile, sysctls=_sysctls(node, submission),
            network=None if node.role == "observer" else self.network_name,
            pid_of=self.container_name(node.watches) if node.role == "observer" and node.watches else None,
            writable=writable, disk_bytes=node.limits.disk_bytes, payload=payload,
            log_bytes=OBSERVER_LOG_BYTES if node.role == "observer" else LOG_BYTES,
        )

    def _server_files(self, node: NodeSpec, submission: Submission | None) -> bytes | None:
        """The submission (and the docroot) as one archive, refused here when it would not fit."""
        if submission is None:
            return None
        folders = {SUBMISSION_DIR.lstrip("/"): submission.path}
        if submission.docroot is not None:
            folders[DOCROOT_DIR.lstrip("/")] = submission.docroot
        packed = archive.tar_folders(folders, *_ids(node.user))
        for target, needed in packed.footprint.items():
            if needed > node.limits.disk_bytes:
                raise SubmissionError(
                    f"{folders[target]} takes about {needed / 2**20:.1f} MiB once copied, and the server's /{target} "
                    f"holds {node.limits.disk} (lab.yaml: nodes.{node.name}.limits.disk)")
        return packed.data

    @property
    def server_port(self) -> int:
        """The port the server listens on ($PORT): the one asked for, unless the backend had to pick one
        (the local backend shares the host's ports); for a lab found again, read from its server's label."""
        if self._port is not None:
            return self._port
        if self.submission is not None:  # planned, not made yet
            return self.submission.port
        label = self.server_info().labels.get(LABEL_PORT)
        self._port = int(label) if label and label.isdigit() else self.spec.server_port
        return self._port

    @functools.cached_property
    def server_host(self) -> str:
        """Where the other nodes reach the server: its name on the lab's network, or the host's loopback."""
        server = self.spec.server.name
        return self.backend.host_of(self.container_name(server), server)

    def sysctls(self, node: str) -> dict[str, str]:
        """The sysctls a node's container is given: lab.yaml's, and for the server the submission's over them.

        They are settings of the container's own network namespace: the observer, which shares only
        the server's PID namespace, does not see the server's.
        """
        return _sysctls(self._node(node), self.submission)

    def _start(self, plan: ContainerPlan) -> None:
        try:
            self.backend.start(plan.name)
        except LimitAboveEngine as error:
            if error.limit != "nofile":
                raise
            # The engine's own hard nofile limit is below what lab.yaml asks: clamp and say so.
            limit = error.engine_limit or self.backend.engine_nofile_limit()
            self.backend.remove({LABEL_LAB: self.id, LABEL_NODE: plan.node})
            clamped = ContainerPlan(**{**plan.__dict__, "nofile": min(plan.nofile, limit)})
            self._say(f"node {plan.node}: nofile {plan.nofile} is above the engine's own limit {limit}; "
                      f"using {clamped.nofile}")
            self.backend.create_container(clamped)
            self.backend.start(clamped.name)

    def wait_listening(self, port: int, timeout: float, say: Progress | None = None) -> float:
        """Wait until the server accepts a TCP connection on `port`, seen from the client.

        Returns the seconds waited. Raises ServerStartError with the exit code and the
        log tail when the server exits, or when it does not listen within `timeout`.
        """
        say = say or (lambda message: None)
        server = self.spec.server
        prober = next((n for n in self.spec.nodes.values() if n.role in ("client", "injector")), None)
        if prober is None:
            raise LabctlError("lab.yaml has no client or injector node to check that the server listens")
        say(f"waiting for the server to listen on port {port}")
        started = time.monotonic()
        while True:
            self._raise_if_server_exited(port)
            left = timeout - (time.monotonic() - started)
            if left <= 0:
                raise ServerStartError(
                    f"the server did not listen on port {port} within {timeout:g} s "
                    f"(it is still running: is it listening on another port, or on 127.0.0.1 only?).\n"
                    f"Its log ends with:\n{self.log_tail(server.name)}")
            result = self.harness(prober.name, "wait_listening",
                                  {"host": self.server_host, "port": port, "timeout": min(1.0, left)}, timeout=5)
            if result.get("listening"):
                waited = time.monotonic() - started
                say(f"the server listens on port {port} ({waited:.2f} s)")
                return waited

    def _raise_if_server_exited(self, port: int) -> None:
        server = self.spec.server.name
        info = self.server_info()
        if not info.running:
            # Exit 0 before listening is nearly always a server that put itself in the background
            # (a daemon that forks and exits): the container lives only as long as its first process.
            foreground = (" A server must stay in the foreground: its first process is the container's life, "
                          "so one that forks into the background and exits ends the lab."
                          if info.exit_code == 0 else "")
            raise ServerStartError(
                f"the server exited with code {info.exit_code} before it listened on port {port}.{foreground}\n"
                f"Its log ends with:\n{self.log_tail(server)}")

    # -- using a running lab ----------------------------------------------------------------------

    def exec(self, node: str, command: list[str], timeout: float | None = None,
             user: str | None = None) -> ExecResult:
        self._node(node)
        return self.backend.exec(self.container_name(node), command, user=user,
                                 timeout=timeout or self.spec.timeouts.exec)

    def harness(self, node: str, check: str, params: dict, timeout: float = 60) -> dict:
        """Run one harness command in a client/injector/observer container: JSON in, JSON out."""
        result = self.exec(node, ["python3", "-m", "harness", check, "--params", json.dumps(params)],
                           timeout=timeout)
        if result.container_gone:
            why = (" (the observer lives in the server's PID namespace: it ends when the server does)"
                   if self._node(node).role == "observer" else "")
            raise ContainerGone(f"harness {check} on {node}: the {node} container stopped{why}")
        if result.timed_out:
            raise LabctlError(f"harness {check} on {node} did not finish within {timeout:g} s")
        try:
            return json.loads(result.stdout.decode().strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError) as error:
            raise LabctlError(f"harness {check} on {node} failed (exit {result.exit_code}): "
                              f"{(result.stderr or result.stdout).decode(errors='replace')[-800:]}") from error

    def capture(self, node: str, seconds: float, packet_filter: str = "") -> tuple[bytes, int]:
        """Capture packets on a node's network interface for `seconds`: (pcap bytes, packets).

        The harness sniffs in the node (client or injector: NET_RAW) and sends the pcap
        back in its JSON answer: no file, no host path involved.
        """
        if "raw_packets" not in self.backend.offers():
            raise LabctlError(f"capturing needs a network of the lab's own: the {self.backend.name} backend shares the "
                              "host's (use --backend docker, or tcpdump on the host's loopback)")
        answer = self.harness(node, "capture", {"seconds": seconds, "packet_filter": packet_filter},
                              timeout=seconds + 20)
        if "error" in answer:
            raise LabctlError(f"capturing in {node} failed: {answer['error']}")
        return base64.b64decode(answer["pcap_base64"]), int(answer["packets"])

    def server_info(self, settle: float = 0.0) -> ContainerInfo:
        """The server container's state. With `settle`, a server that still looks alive is looked at
        again for up to that many seconds: a process that just died shows as stopped a moment later,
        so a caller that has reason to think it died (a refused connection) gets the truth."""
        name = self.container_name(self.spec.server.name)
        info = self.backend.inspect(name)
        until = time.monotonic() + settle
        while info.running and time.monotonic() < until:
            time.sleep(0.1)
            info = self.backend.inspect(name)
        return info

    def usage(self, node: str) -> Usage:
        """What a node's processes have used so far (CPU, tasks), read by the host from its cgroup."""
        self._node(node)
        return self.backend.usage(self.container_name(node))

    def logs(self, node: str, tail: int | str = "all", follow: bool = False, since: float | None = None,
             until: float | None = None) -> Iterator[bytes]:
        self._node(node)
        return self.backend.logs(self.container_name(node), tail=tail, follow=follow, since=since, until=until)

    def log_tail(self, node: str, lines: int = 20, most: int = LOG_TAIL_CHARS) -> str:
        """The last `lines` lines of a node's log, and of those at most the last `most` characters
        (a server may print megabytes without a newline)."""
        text = b"".join(self.logs(node, tail=lines)).decode(errors="replace").rstrip()
        if len(text) > most:
            text = f"[... {len(text) - most} earlier characters left out ...]" + text[-most:]
        return text or "(the log is empty)"

    def containers(self) -> list[ContainerInfo]:
        return self.backend.find_containers({LABEL_LAB: self.id})

    def address(self, node: str) -> str | None:
        return self.backend.inspect(self.container_name(node)).address

    def down(self) -> int:
        """Remove everything of this lab. Idempotent: a lab already gone is not an error.

        Ctrl-C (and SIGTERM) wait until the removal is done, then take effect: an impatient
        second Ctrl-C must not leave half a lab behind.
        """
        with uninterrupted():
            return self.backend.remove({LABEL_LAB: self.id})

    def _node(self, node: str) -> NodeSpec:
        if node not in self.spec.nodes:
            raise LabctlError(f"lab {self.id} has no node {node!r}; its nodes: {', '.join(self.spec.nodes)}")
        return self.spec.nodes[node]


# -- finding labs by label ------------------------------------------------------------------------

@dataclass(frozen=True)
class LabSummary:
    id: str
    owner: str
    created: str
    subnet: str | None
    containers: list[ContainerInfo]


def list_labs(backend: Backend, owner: str | None = None) -> list[LabSummary]:
    """Every lab on the engine (of one owner, when given), found by label."""
    labels = {LABEL_LAB: ""}
    if owner:
        labels[LABEL_OWNER] = owner
    by_lab: dict[str, list[ContainerInfo]] = {}
    for info in backend.find_containers(labels):
        by_lab.setdefault(info.labels[LABEL_LAB], []).append(info)
    networks = {net.labels.get(LABEL_LAB): net for net in backend.find_networks(labels)}
    summaries = []
    for lab_id in sorted(set(by_lab) | {key for key in networks if key}):
        containers = by_lab.get(lab_id, [])
        labels_seen = containers[0].labels if containers else networks[lab_id].labels
        network = networks.get(lab_id)
        summaries.append(LabSummary(lab_id, labels_seen.get(LABEL_OWNER, "?"), labels_seen.get(LABEL_CREATED, "?"),
                                    network.subnet if network else None, containers))
    return summaries


def find_lab(spec: LabSpec, backend: Backend, lab_id: str | None = None) -> Lab:
    """The lab named, or this owner's only lab; a clear error when that is ambiguous."""
    owner = current_owner()
    if lab_id:
        if not any(summary.id == lab_id for summary in list_labs(backend)):
            raise LabNotFound(f"no lab {lab_id!r} on this engine (see `labctl status`)")
        return Lab(spec, backend, lab_id)
    mine = list_labs(backend, owner)
    if not mine:
        raise LabNotFound("no lab is running: start one with `labctl up`")
    if len(mine) > 1:
        raise LabNotFound(f"{len(mine)} labs are running ({', '.join(s.id for s in mine)}): "
                          "name one with --lab")
    return Lab(spec, backend, mine[0].id)


def labs_to_remove(backend: Backend, lab_id: str | None = None, every: bool = False,
                   any_owner: bool = False) -> list[str]:
    """The ids of the labs `down` means: with `every`, all of this owner's labs (with `any_owner`, all
    labs on the engine); else the lab named, whether it exists or not (removing is safe to repeat);
    else this owner's only lab, or none. Several of this owner's labs and none named is an error."""
    if every:
        return [summary.id for summary in list_labs(backend, None if any_owner else current_owner())]
    if lab_id:
        return [lab_id]
    mine = list_labs(backend, current_owner())
    if len(mine) > 1:
        raise LabctlError(f"{len(mine)} labs are running ({', '.join(s.id for s in mine)}): "
                          "name one, or use --all")
    return [summary.id for summary in mine]


@functools.lru_cache(maxsize=1)
def _harness_archive() -> bytes:
    """The harness folder as a tar, made once per process (it goes into three containers)."""
    return archive.tar_folders({f"{HARNESS_DIR.lstrip('/')}/harness": HARNESS_SOURCE}).data


def _sysctls(node: NodeSpec, submission: Submission | None) -> dict[str, str]:
    values = sysctl_values(node.sysctls)
    if node.role == "server" and submission is not None:
        values.update(sysctl_values(submission.sysctls))
    return values


def _ids(user: str | None) -> tuple[int, int]:
    """uid, gid of a "uid:gid" user string (numeric, as lab.yaml gives it)."""
    if not user:
        return 0, 0
    uid, _, gid = user.partition(":")
    try:
        return int(uid), int(gid or uid)
    except ValueError:
        return 0, 0
