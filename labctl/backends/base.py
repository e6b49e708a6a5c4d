"""What a lab asks of a backend, in plain data: the backend-neutral side of the contract.

lab.py decides WHAT to run (a ContainerPlan per node, labels, order); a backend
decides HOW on its engine: the Docker Engine (docker.py) or this host's own processes
(local.py, where no engine exists: inside Gradescope's and PrairieLearn's graders). The
plans hold no engine's types; a "container" is a node, whatever the backend makes of it.

What a backend cannot do is said, never faked: each one declares the FEATURES it offers,
each check the ones it needs (labctl.checks), and a check whose needs a backend lacks is
reported as not available there, its points left out of the total.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, get_args

#: What a check may need of a backend beyond running nodes and connecting to the server: the one
#: place these words are defined. A backend offers a subset (Backend.offers).
Feature = Literal["raw_packets", "own_network", "server_sysctls", "thread_waits"]
FEATURES: dict[Feature, str] = {
    "raw_packets": "hand-made packets (scapy) and firewall rules in a node of the lab's own",
    "own_network": "a network of the lab's own, which nothing else on the host shares",
    "server_sysctls": "kernel settings (net.* sysctls) of the server's own network namespace",
    "thread_waits": "what each server thread waits in (its syscall and descriptors, /proc/<tid>/syscall)",
}
ALL_FEATURES: frozenset[Feature] = frozenset(FEATURES)


@dataclass(frozen=True)
class ContainerPlan:
    """Everything needed to create one node's container."""

    name: str                       # unique on the engine: labctl-<lab id>-<node>
    node: str                       # node name in lab.yaml, also its DNS alias on the lab network
    image: str                      # image tag
    command: list[str]
    labels: dict[str, str]
    user: str | None = None
    workdir: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    cap_add: tuple[str, ...] = ()   # everything else is dropped
    cpus: float = 1.0
    memory_bytes: int = 256 * 2**20
    pids: int = 256
    nofile: int = 4096
    network: str | None = None      # None: no network at all (the observer)
    pid_of: str | None = None       # share the PID namespace of this container (the observer)
    sysctls: dict[str, str] = field(default_factory=dict)  # of its own network namespace (net.*)
    #: The only places it may write, each a memory-backed folder of at most disk_bytes (counted in
    #: memory_bytes); everything else is read-only, so nothing it writes reaches the host's disk.
    writable: tuple[str, ...] = ("/tmp", "/var/tmp", "/run", "/dev/shm")
    disk_bytes: int = 64 * 2**20
    #: The most output the engine keeps of it (twice this, in two files): a flood stays small.
    log_bytes: int = 2 * 2**20
    #: Files the command finds in place when it starts: a tar whose members are paths below /
    #: ("submission/server.py"), inside the writable folders. None: nothing to put.
    payload: bytes | None = None


@dataclass(frozen=True)
class NetworkInfo:
    name: str
    subnet: str
    labels: dict[str, str]


#: A container's state, in the Docker Engine's words (its API's State.Status); every backend says it in these.
ContainerState = Literal["created", "running", "paused", "restarting", "removing", "exited", "dead", "unknown"]
CONTAINER_STATES: frozenset[str] = frozenset(get_args(ContainerState))
#: The states in which its processes run, or are about to: "alive" means this, everywhere.
ALIVE: frozenset[str] = frozenset({"created", "running", "restarting"})


def container_state(text: str | None) -> ContainerState:
    """An engine's word for a state as a ContainerState ("unknown" for anything else)."""
    return text if text in CONTAINER_STATES else "unknown"  # type: ignore[return-value]


@dataclass(frozen=True)
class ContainerInfo:
    name: str
    node: str
    role: str
    status: ContainerState
    exit_code: int | None
    address: str | None
    labels: dict[str, str]
    oom_killed: bool = False        # the kernel killed it for its memory limit (inspect only)

    @property
    def running(self) -> bool:
        """Its processes run (or are about to): created, running or restarting, not exited or gone."""
        return self.status in ALIVE


@dataclass(frozen=True)
class Usage:
    """What a container's processes have used so far, from its cgroup, read by the host."""

    cpu_seconds: float              # CPU time of every task that ever ran in it, reaped children too
    tasks: int | None               # processes and threads now (None: not known)
    at: float                       # when it was read: time.time() of the reading
    precise: bool = True            # False: the engine's 1 s statistics (a remote engine)


@dataclass(frozen=True)
class EngineFacts:
    """What an engine says about itself: what `labctl doctor` shows and judges."""

    kind: str                       # "Docker Engine"
    version: str
    api_version: str                # "1.41"; "" when the engine has no such thing
    os: str
    cgroup_version: str             # "1", "2", "" unknown
    storage_driver: str
    data_root: str                  # where it keeps images (a path on its own host)
    local: bool                     # on this very host: its cgroups and data root are readable here


@dataclass(frozen=True)
class ExecResult:
    exit_code: int                  # -1 when it is not known (timed out on the host, container gone)
    stdout: bytes
    stderr: bytes
    timed_out: bool = False
    container_gone: bool = False    # the container stopped while the command ran

    @property
    def text(self) -> str:
        return self.stdout.decode(errors="replace")


class Images(Protocol):
    """Where a backend's node images come from: `ensure` gives {name: tag}, making what is missing."""

    def ensure(self, names: list[str] | None = None, force: bool = False) -> dict[str, str]: ...


class Backend(Protocol):
    """The engine operations a Lab needs; one implementation per engine kind."""

    #: Its name in the registry (labctl.backends.BACKENDS) and in reports: "docker", "local".
    name: str

    def offers(self) -> frozenset[Feature]:
        """The FEATURES checks can count on here."""

    def limits_by(self) -> str:
        """How the server's limits (tasks, memory, files) are enforced, in a few words for reports."""

    def images(self, images_dir: Path, progress=None, extra: dict[str, Path] | None = None) -> Images:
        """The node images of images/ (and an exercise's own, `extra`) for this backend."""

    def server_port(self, wanted: int) -> int:
        """The port the server is given (in $PORT): `wanted` where the lab has a network of its own,
        a free one where the lab shares the host's."""

    def host_of(self, container: str, node: str) -> str:
        """The address other nodes reach `container` (lab.yaml's `node`) at."""

    def interactive(self, container: str, command: list[str], user: str | None = None) -> int:
        """Run `command` in the node attached to this terminal (`labctl shell`); its exit code."""

    def create_network(self, name: str, pool: str, prefix: int, labels: dict[str, str],
                       internal: bool) -> NetworkInfo: ...

    def create_container(self, plan: ContainerPlan) -> None: ...

    def start(self, container: str) -> None:
        """Start it; its plan's payload is in place before its command runs."""

    def engine_nofile_limit(self) -> int: ...

    def engine_facts(self) -> EngineFacts: ...

    def inspect(self, container: str) -> ContainerInfo: ...

    def usage(self, container: str) -> Usage:
        """Its CPU and tasks so far, from its cgroup; LabctlError when it no longer runs."""

    def exec(self, container: str, command: list[str], *, user: str | None = None,
             timeout: float = 60, env: dict[str, str] | None = None) -> ExecResult:
        """Run a command to completion. Returns within `timeout` plus a few seconds, whatever the
        command or the container does; a container that stops meanwhile ends the wait at once."""

    def logs(self, container: str, tail: int | str = "all", follow: bool = False, since: float | None = None,
             until: float | None = None) -> Iterator[bytes]:
        """Its output (stdout and stderr), the last `tail` lines, or the lines logged between `since`
        and `until` (time.time() on the engine's clock)."""

    def find_containers(self, labels: dict[str, str]) -> list[ContainerInfo]: ...

    def find_networks(self, labels: dict[str, str]) -> list[NetworkInfo]: ...

    def remove(self, labels: dict[str, str]) -> int: ...
