"""One in-memory engine for the unit tests: the Backend protocol (labctl/backends/base.py) on plain data.

Why a fake and not mocks: Lab and grading talk to an engine through a dozen calls whose order and
effects matter (a network before its containers, a sidecar after the container it joins, remove by
label). A fake that keeps containers and networks as data and obeys the engine's few rules (unique
names, subnets that do not overlap, the engine's nofile ceiling, a sidecar joining a running PID
namespace) lets a test assert what is LEFT on the engine, not which methods were called.

What a test scripts, each with one explicit call or field:
- a failure: `fake.fail_on("start", container="server")` makes the first start of that container
  raise (a LabctlError like the Docker backend's, or the `error` given, e.g. KeyboardInterrupt());
- what a container does when it starts: `fake.on_start["server"] = lambda c: fake.stop(c.name, 1)`;
- a container's end: `fake.stop(name, exit_code, oom_killed=...)` (its PID namespace's sidecars end too),
  or any other state by setting its fields (`fake.container("server").status = "paused"`);
- harness commands run through `exec`: `fake.harness[node][command] = function(params) -> dict`, whose
  dict comes back as the command's JSON stdout (an ExecResult returned as it is, for a broken answer);
  any other command by its words: `fake.commands[node]["cat /proc/..."] = function(argv) -> ExecResult`;
  every exec is kept in `fake.execs` (where, what, and the timeout the caller gave);
- usage readings: a container's `cpu_seconds` and `tasks` fields, or what it did until the host reads
  them: `fake.on_usage[node] = function(container, at)`; logs: `fake.log(name, text)`;
- the observer's sampler and the server's cgroup over time, for the process checks: `ObservedServer`;
- a lab that is up on the fake, for the checks: `up_lab(fake, folder)`.

A container is named by its full name or by its node's name (`container="server"`): grade() makes
its lab with a random id that a test cannot know in advance.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import math
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from labctl.backends.base import (
    ALL_FEATURES,
    ContainerInfo,
    ContainerPlan,
    EngineFacts,
    ExecResult,
    Feature,
    NetworkInfo,
    Usage,
)
from labctl.errors import LabctlError, LimitAboveEngine
from labctl.lab import LABEL_NODE, LABEL_ROLE, Lab
from labctl.project import Project
from labctl.spec import LabSpec, load_lab

#: What a harness command answers: a JSON object, or an ExecResult for an answer that is not one.
HarnessHandler = Callable[[dict[str, Any]], "dict[str, Any] | ExecResult"]
#: What a command other than the harness answers, given its words.
CommandHandler = Callable[[list[str]], ExecResult]
#: What a container does once it runs (exit at once, write its log...).
StartHook = Callable[["FakeContainer"], None]
#: What a container did until the host reads its usage at `at` (time.time() of the reading).
UsageHook = Callable[["FakeContainer", float], None]

#: The engine's own hard nofile limit when a test says none: high enough that nothing is clamped.
NO_NOFILE_CEILING = 1 << 20
#: How Lab runs a harness command in a node: python3 -m harness COMMAND --params JSON.
HARNESS_COMMAND = ["python3", "-m", "harness"]
#: Every operation `fail_on` knows: the Backend protocol's, and "copy" (the payload going in during start).
OPERATIONS = frozenset({"create_network", "create_container", "start", "copy", "engine_nofile_limit",
                        "engine_facts", "inspect", "usage", "exec", "logs", "find_containers", "find_networks",
                        "remove"})


@dataclass
class FakeContainer:
    """One container: the plan it was created from, and its state as inspect would tell it."""

    plan: ContainerPlan
    status: str = "created"
    exit_code: int | None = None
    oom_killed: bool = False
    address: str | None = None
    #: What usage() reads, as a test sets it: CPU so far and tasks now.
    cpu_seconds: float = 0.0
    tasks: int | None = 1
    #: Its log: (time.time() of the line, the line's bytes).
    log_lines: list[tuple[float, bytes]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.plan.name

    @property
    def node(self) -> str:
        return self.plan.node

    @property
    def running(self) -> bool:
        return self.info().running

    def exited(self, exit_code: int, oom_killed: bool = False) -> None:
        """Its first process ended: the engine says exited, with the code, and takes its address back."""
        self.status, self.exit_code, self.oom_killed, self.address = "exited", exit_code, oom_killed, None

    def info(self) -> ContainerInfo:
        labels = self.plan.labels
        return ContainerInfo(name=self.name, node=labels.get(LABEL_NODE, ""), role=labels.get(LABEL_ROLE, ""),
                             status=self.status, exit_code=self.exit_code if self.status == "exited" else None,
                             address=self.address, labels=dict(labels), oom_killed=self.oom_killed)


@dataclass(frozen=True)
class FakeExec:
    """One exec as the engine was asked for it: into which container (and its node), what, as whom, and
    the timeout the caller gave (what a test asserts about budgets: the handler never sees it)."""

    container: str
    node: str | None
    command: list[str]
    timeout: float
    user: str | None = None

    @property
    def harness_command(self) -> str | None:
        """The harness command's name ("http_sequence"), None for any other command."""
        return self.command[3] if is_harness(self.command) else None

    @property
    def params(self) -> dict[str, Any] | None:
        """The harness command's parameters as it got them, None for any other command."""
        return json.loads(self.command[5]) if is_harness(self.command) else None


def is_harness(command: list[str]) -> bool:
    """How Lab.harness runs a command: python3 -m harness COMMAND --params JSON."""
    return command[:3] == HARNESS_COMMAND and len(command) == 6 and command[4] == "--params"


@dataclass
class FakeNetwork:
    info: NetworkInfo
    internal: bool
    given: int = 1                     # host addresses handed out so far (.1 is the gateway's)

    def next_address(self) -> str:
        self.given += 1
        return str(ipaddress.ip_network(self.info.subnet)[self.given])


@dataclass
class _Failure:
    """A scripted failure: the `nth` call of `operation` on `target` (None: any) raises `error`, once."""

    operation: str
    target: str | None
    error: BaseException | None
    nth: int
    seen: int = 0


def matches(labels: dict[str, str], wanted: dict[str, str]) -> bool:
    """Docker's label filter: every key wanted is there, with the value wanted ("" means any value)."""
    return all(key in labels and (not value or labels[key] == value) for key, value in wanted.items())


class FakeBackend:
    """The Backend protocol in memory. Safe to call from several threads at once (Lab.up does)."""

    name = "fake"

    def __init__(self, nofile_limit: int = NO_NOFILE_CEILING, facts: EngineFacts | None = None,
                 features: frozenset[Feature] = ALL_FEATURES, port: int | None = None):
        self.nofile_limit = nofile_limit
        #: What it offers checks (a test takes some away to play a backend without them).
        self.features = features
        #: The port it gives the server whatever is asked (None: the one asked), as the local backend does.
        self.port = port
        self.facts = facts or EngineFacts(kind="Fake engine", version="0", api_version="", os="memory",
                                          cgroup_version="2", storage_driver="memory", data_root="", local=True)
        self.containers: dict[str, FakeContainer] = {}
        self.networks: dict[str, FakeNetwork] = {}
        #: node -> harness command -> handler; a command with no handler fails like a harness that crashed.
        self.harness: defaultdict[str, dict[str, HarnessHandler]] = defaultdict(dict)
        #: node -> command line (words joined by spaces) -> handler, for the commands that are not the harness.
        self.commands: defaultdict[str, dict[str, CommandHandler]] = defaultdict(dict)
        #: node -> what its container does once it runs (called after start, outside the lock).
        self.on_start: dict[str, StartHook] = {}
        #: node -> what its container did until its usage is read (called before the reading, outside the lock).
        self.on_usage: dict[str, UsageHook] = {}
        #: Every exec asked for, in order, the refused ones too.
        self.execs: list[FakeExec] = []
        #: Every call made, in order: (operation, the container or network it was about).
        self.calls: list[tuple[str, str]] = []
        self._failures: list[_Failure] = []
        self._lock = threading.RLock()

    # -- scripting (tests only) -------------------------------------------------------------------

    def fail_on(self, operation: str, *, container: str | None = None, network: str | None = None,
                error: BaseException | None = None, nth: int = 1) -> None:
        """Make the `nth` call of `operation` on that container (name or node) or network fail, once.

        With no `error`, it raises a LabctlError such as the Docker backend raises for an engine's refusal.
        """
        if operation not in OPERATIONS:
            raise ValueError(f"fail_on: unknown operation {operation!r} (one of {', '.join(sorted(OPERATIONS))})")
        with self._lock:
            self._failures.append(_Failure(operation, container or network, error, nth))

    def container(self, ref: str) -> FakeContainer:
        """The container named `ref`, or the only one of node `ref`; KeyError when there is none."""
        with self._lock:
            if ref in self.containers:
                return self.containers[ref]
            found = [c for c in self.containers.values() if c.node == ref]
        if len(found) != 1:
            raise KeyError(f"fake engine: {len(found)} containers of node {ref!r}")
        return found[0]

    def stop(self, ref: str, exit_code: int, oom_killed: bool = False) -> None:
        """The container's first process ended. Sidecars in its PID namespace end with it (the kernel
        kills every process of a namespace whose init died), as the observer does with the server."""
        with self._lock:
            stopped = self.container(ref)
            stopped.exited(exit_code, oom_killed)
            for other in self.containers.values():
                if other.plan.pid_of == stopped.name and other.running:
                    other.exited(137)  # SIGKILL

    def log(self, ref: str, text: str, at: float | None = None) -> None:
        """Append lines to a container's log (what its processes printed), stamped `at` (default: now),
        when the engine got them: what `logs(since=..., until=...)` selects by."""
        stamp = time.time() if at is None else at
        with self._lock:
            lines = self.container(ref).log_lines
            lines.extend((stamp, line.encode()) for line in text.splitlines(keepends=True))

    # -- networks ---------------------------------------------------------------------------------

    def create_network(self, name: str, pool: str, prefix: int, labels: dict[str, str],
                       internal: bool) -> NetworkInfo:
        """The first /prefix of the pool that overlaps no network; names are unique, like the engine's."""
        with self._lock:
            self._called("create_network", name)
            if name in self.networks:
                raise LabctlError(f"cannot create network {name}: network with name {name} already exists")
            used = [ipaddress.ip_network(net.info.subnet) for net in self.networks.values()]
            for subnet in ipaddress.ip_network(pool).subnets(new_prefix=prefix):
                if not any(subnet.overlaps(other) for other in used):
                    info = NetworkInfo(name=name, subnet=str(subnet), labels=dict(labels))
                    self.networks[name] = FakeNetwork(info, internal)
                    return info
        raise LabctlError(f"no free /{prefix} subnet left in the address pool {pool}: "
                          "remove stale labs (`labctl down --all`) or widen network.pool in lab.yaml")

    def find_networks(self, labels: dict[str, str]) -> list[NetworkInfo]:
        with self._lock:
            self._called("find_networks", ",".join(labels))
            return [net.info for net in self.networks.values() if matches(net.info.labels, labels)]

    # -- containers -------------------------------------------------------------------------------

    def create_container(self, plan: ContainerPlan) -> None:
        """Keep the plan; the engine refuses a name in use and a network that does not exist. (A sidecar's
        PID namespace is looked up when it starts, not here.)"""
        with self._lock:
            self._called("create_container", plan.name, plan.node)
            if plan.name in self.containers:
                raise LabctlError(f'cannot create container {plan.name}: Conflict. The container name "/{plan.name}" '
                                  "is already in use")
            if plan.network is not None and plan.network not in self.networks:
                raise LabctlError(f"cannot create container {plan.name}: network {plan.network} not found")
            self.containers[plan.name] = FakeContainer(plan)

    def start(self, container: str) -> None:
        """Run it, as the engine would: refuse a nofile above the engine's own limit (LimitAboveEngine) and
        a sidecar whose PID namespace's container does not run; then its payload goes in ("copy")."""
        with self._lock:
            fake = self.containers.get(container)
            self._called("start", container, fake.node if fake else None)
            if fake is None:
                raise LabctlError(f"cannot start container {container}: No such container: {container}")
            if fake.plan.nofile > self.nofile_limit:
                raise LimitAboveEngine(f"cannot start container {container}: its nofile limit is above the "
                                       "engine's own", limit="nofile")
            joined = self.containers.get(fake.plan.pid_of) if fake.plan.pid_of else None
            if fake.plan.pid_of and (joined is None or joined.status != "running"):
                raise LabctlError(f"cannot start container {container}: cannot join PID of a non running "
                                  f"container: {fake.plan.pid_of}")
            network = self.networks.get(fake.plan.network) if fake.plan.network else None
            fake.status, fake.exit_code = "running", None
            fake.address = network.next_address() if network else None
            if fake.plan.payload is not None:
                # The Docker backend sends the payload once the container runs: a failure here leaves it running.
                self._called("copy", container, fake.node)
        hook = self.on_start.get(fake.node)
        if hook is not None:
            hook(fake)

    def offers(self) -> frozenset[Feature]:
        return self.features

    def limits_by(self) -> str:
        return "the fake engine"

    def images(self, images_dir: Path, progress=None, extra: dict[str, Path] | None = None):
        raise LabctlError("the fake engine builds no images (FakeProject gives their tags)")

    def server_port(self, wanted: int) -> int:
        return self.port if self.port is not None else wanted

    def host_of(self, container: str, node: str) -> str:
        return node

    def interactive(self, container: str, command: list[str], user: str | None = None) -> int:
        raise LabctlError("the fake engine has no terminal")

    def engine_nofile_limit(self) -> int:
        with self._lock:
            self._called("engine_nofile_limit", "")
            return self.nofile_limit

    def engine_facts(self) -> EngineFacts:
        with self._lock:
            self._called("engine_facts", "")
            return self.facts

    def inspect(self, container: str) -> ContainerInfo:
        with self._lock:
            self._called("inspect", container, self._node_of(container))
            return self._get(container).info()

    def find_containers(self, labels: dict[str, str]) -> list[ContainerInfo]:
        with self._lock:
            self._called("find_containers", ",".join(labels))
            return sorted((c.info() for c in self.containers.values() if matches(c.plan.labels, labels)),
                          key=lambda info: info.name)

    def usage(self, container: str) -> Usage:
        """The container's `cpu_seconds` and `tasks` as the test set them, read now (after its node's
        `on_usage` hook, told the reading's time); an error once it stopped."""
        with self._lock:
            self._called("usage", container, self._node_of(container))
            fake = self._get(container)
            if fake.status != "running":
                raise LabctlError(f"container {container} is no longer running")
            at = time.time()
            hook = self.on_usage.get(fake.node)
        if hook is not None:
            hook(fake, at)
        with self._lock:
            return Usage(fake.cpu_seconds, fake.tasks, at)

    # -- running things inside --------------------------------------------------------------------

    def exec(self, container: str, command: list[str], *, user: str | None = None, timeout: float = 60,
             env: dict[str, str] | None = None) -> ExecResult:
        """A harness command's handler (or another command's), bounded by `timeout` like the real exec: its
        dict becomes the JSON on stdout; a handler still busy at `timeout` is a timed-out exec; one whose
        container stopped meanwhile is `container_gone`. What a handler raises (KeyboardInterrupt) reaches
        the caller. A command nobody scripted fails: 1 for a harness command, 127 for another."""
        with self._lock:
            self.execs.append(FakeExec(container, self._node_of(container), list(command), timeout, user))
            self._called("exec", container, self._node_of(container))
            fake = self.containers.get(container)
            if fake is None or fake.status != "running":  # the engine execs only into a running container
                return ExecResult(-1, b"", b"", container_gone=True)
        if is_harness(command):
            handler = self.harness.get(fake.node, {}).get(command[3])
            if handler is None:
                return ExecResult(1, b"", f"fake engine: no harness handler for {command[3]!r} on node "
                                          f"{fake.node!r}".encode())
            name, call = command[3], lambda: handler(json.loads(command[5]))
        else:
            other = self.commands.get(fake.node, {}).get(" ".join(command))
            if other is None:
                return ExecResult(127, b"", f"fake engine: no handler for {command} on node {fake.node!r}".encode())
            name, call = command[0], lambda: other(list(command))
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["answer"] = call()
            except BaseException as error:  # handed to the caller below
                box["error"] = error

        worker = threading.Thread(target=run, name=f"fake-exec-{name}", daemon=True)
        worker.start()
        worker.join(timeout)
        if worker.is_alive():
            return ExecResult(-1, b"", b"", timed_out=True)
        if "error" in box:
            raise box["error"]
        with self._lock:
            if self.containers.get(container) is not fake or fake.status != "running":  # it stopped, or was removed
                return ExecResult(-1, b"", b"", container_gone=True)
        answer = box["answer"]
        if isinstance(answer, ExecResult):
            return answer
        return ExecResult(0, (json.dumps(answer) + "\n").encode(), b"")

    def logs(self, container: str, tail: int | str = "all", follow: bool = False, since: float | None = None,
             until: float | None = None) -> Iterator[bytes]:
        """Its log lines between `since` and `until`, the last `tail` of them, as one chunk (never follows)."""
        with self._lock:
            self._called("logs", container, self._node_of(container))
            lines = [line for at, line in self._get(container).log_lines
                     if (since is None or at >= since) and (until is None or at <= until)]
        if tail != "all":
            lines = lines[-int(tail):] if int(tail) > 0 else []
        yield b"".join(lines)

    # -- removal ----------------------------------------------------------------------------------

    def remove(self, labels: dict[str, str]) -> int:
        """Every container, then every network, with these labels; a network something else still uses
        is refused, as the engine does ("active endpoints"). Idempotent."""
        with self._lock:
            self._called("remove", ",".join(f"{key}={value}" for key, value in labels.items()))
            gone = [name for name, c in self.containers.items() if matches(c.plan.labels, labels)]
            for name in gone:
                del self.containers[name]
            nets = [name for name, net in self.networks.items() if matches(net.info.labels, labels)]
            for name in nets:
                users = [c.name for c in self.containers.values() if c.plan.network == name]
                if users:
                    raise LabctlError(f"error while removing network {name}: network has active endpoints "
                                      f"({', '.join(users)})")
                del self.networks[name]
            return len(gone) + len(nets)

    # -- inside -----------------------------------------------------------------------------------

    def _called(self, operation: str, target: str, node: str | None = None) -> None:
        """Record the call, then raise the failure scripted for it, if its turn has come."""
        self.calls.append((operation, target))
        for failure in self._failures:
            if failure.operation == operation and failure.target in (None, target, node):
                failure.seen += 1
                if failure.seen == failure.nth:
                    raise failure.error or LabctlError(
                        f"fake engine: {operation} {target} failed, as the test asked")

    def _node_of(self, container: str) -> str | None:
        fake = self.containers.get(container)
        return fake.node if fake else None

    def _get(self, container: str) -> FakeContainer:
        if container not in self.containers:
            raise LabctlError(f"no container {container}")
        return self.containers[container]


class FakeProject(Project):
    """A Project on a FakeBackend whose images are already there: grade() asks ensure_images for tags and
    gets them, nothing is built (building needs an engine's image API, which the fake does not have)."""

    def __init__(self, root: Path, backend: FakeBackend, spec: LabSpec):
        super().__init__(root, backend)
        self.spec = spec  # Project.spec is a cached property: a value set on the instance wins
        self.images_asked: list[list[str]] = []

    def ensure_images(self, progress: Callable[[str], None] | None = None, names: list[str] | None = None,
                      extra: dict[str, Path] | None = None) -> dict[str, str]:
        names = names or sorted({node.image for node in self.spec.nodes.values()})
        self.images_asked.append(list(names))
        return {name: f"labctl-{name}:fake" for name in names}


#: The repository's own lab.yaml: what the fake labs are made of unless a test edits a copy.
LAB_YAML = Path(__file__).resolve().parents[2] / "lab.yaml"


def write_lab(folder: Path, edit: Callable[[dict[str, Any]], None] | None = None) -> LabSpec:
    """The repository's lab.yaml, changed by `edit` (on its parsed data), written to folder/lab.yaml and
    loaded from there: a test's lab is validated like a user's."""
    data = yaml.safe_load(LAB_YAML.read_text())
    if edit is not None:
        edit(data)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "lab.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_lab(path)


#: The image tags a lab on the fake is made of: what FakeProject hands out.
IMAGES = {"server": "labctl-server:fake", "tools": "labctl-tools:fake"}


def up_lab(fake: FakeBackend, folder: Path, edit: Callable[[dict[str, Any]], None] | None = None,
           name: str = "t1") -> Lab:
    """A lab up on the fake engine, made by Lab.up from the repository's lab.yaml (changed by `edit`),
    with no submission: its server runs the idle command and nothing waits for it to listen. A check
    given this lab goes through the real Lab.harness, server_info, log_tail and usage, and finds what
    the test scripts on `fake`."""
    return Lab.create(write_lab(folder, edit), fake, name=name).up(IMAGES)


# -- the server as the observer and its cgroup see it -------------------------------------------------

@dataclass
class Doing:
    """What the server does for a while, as observe.Window's two sources see it: the observer's looks at
    its threads, and the share of one CPU its cgroup counts meanwhile (1.0: a busy loop).

    A look is proc_snapshot's answer, the same at every look, or made for the moment of the look (a
    function of `at`, the engine's clock): a busy thread's CPU ticks grow with time.
    """

    look: dict[str, Any] | Callable[[float], dict[str, Any]]
    cpu: float = 0.0

    def look_at(self, at: float) -> dict[str, Any]:
        return self.look(at) if callable(self.look) else self.look


@dataclass
class _Hold:
    """A stretch in which the client held connections: what the server did from `start` to `end`."""

    start: float
    doing: Doing
    end: float = math.inf            # until it ends


class ObservedServer:
    """The observer's sampler and the server's cgroup, scripted, so that the process checks' real
    `sample()` runs on the fake engine: observe.Window reads the server's usage at both ends (the fake's
    `usage`) and the looks in between from the observer's log (the fake's `logs`).

    Why looks are written at the readings and not by a thread that looks every 0.1 s like the real
    sampler (harness/agent.py): then how many looks a window got, and the CPU it saw, would depend on
    how long this machine took to sleep. Here each stretch between two readings of the server's usage
    gets `looks` looks, evenly spread from its start to its end (0.1 ms inside: a look belongs to one
    stretch only), written into the observer's log as the sampler writes them (one JSON line, "at"
    first, on the engine's clock) and stamped with their own time; the server's `cpu_seconds` grow by
    its `cpu` share of the stretch. A window's looks and CPU percent are the test's, exactly.

    What the server does: `idle`, except `with observed.holding(doing):` (what the client's hold of
    connections makes it do, for as long as a hold_connections handler holds them). `readings` keeps
    each reading's time: a window is two readings in a row, so a test sees how long each window was.
    """

    def __init__(self, fake: FakeBackend, idle: Doing, looks: int = 5, server: str = "server",
                 observer: str = "observer"):
        self.fake, self.idle, self.looks, self.observer = fake, idle, looks, observer
        self.holds: list[_Hold] = []
        self.readings: list[float] = []
        fake.on_usage[server] = self._read

    @contextlib.contextmanager
    def holding(self, doing: Doing) -> Iterator[None]:
        """While inside, the server does `doing`: a hold_connections handler holds its clients in it."""
        hold = _Hold(time.time(), doing)
        self.holds.append(hold)
        try:
            yield
        finally:
            hold.end = time.time()

    def doing(self, at: float) -> Doing:
        """What the server does at `at`: the latest hold that covers it, else idle."""
        for hold in reversed(self.holds):
            if hold.start <= at <= hold.end:
                return hold.doing
        return self.idle

    def _read(self, container: FakeContainer, at: float) -> None:
        if self.readings:
            since = self.readings[-1]
            if self.looks == 1:
                moments = [(since + at) / 2]
            else:
                edge = min(0.0001, (at - since) / 10)
                step = (at - since - 2 * edge) / max(1, self.looks - 1)
                moments = [since + edge + i * step for i in range(self.looks)]
            for moment in moments:
                line = json.dumps({"at": moment, **self.doing(moment).look_at(moment)}, separators=(",", ":"))
                self.fake.log(self.observer, line + "\n", at=moment)
            container.cpu_seconds += self.doing((since + at) / 2).cpu * (at - since)
        self.readings.append(at)
