"""What a lab asks of a backend, in plain data: the backend-neutral side of the contract.

lab.py decides WHAT to run (a ContainerPlan per node, labels, order); a backend
decides HOW on its engine. Only the Docker backend exists today; the plans hold no
Docker types so that a local or distributed backend can be added beside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Protocol


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


@dataclass(frozen=True)
class NetworkInfo:
    name: str
    subnet: str
    labels: dict[str, str]


@dataclass(frozen=True)
class ContainerInfo:
    name: str
    node: str
    role: str
    status: str                     # created, running, exited, ...
    exit_code: int | None
    address: str | None
    labels: dict[str, str]
    oom_killed: bool = False        # the kernel killed it for its memory limit (inspect only)


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    stdout: bytes
    stderr: bytes
    timed_out: bool = False

    @property
    def text(self) -> str:
        return self.stdout.decode(errors="replace")


class Backend(Protocol):
    """The engine operations a Lab needs; one implementation per engine kind."""

    def create_network(self, name: str, pool: str, prefix: int, labels: dict[str, str],
                       internal: bool) -> NetworkInfo: ...

    def create_container(self, plan: ContainerPlan) -> None: ...

    def put_archive(self, container: str, path: str, tar_bytes: bytes) -> None: ...

    def start(self, container: str) -> None: ...

    def engine_nofile_limit(self) -> int: ...

    def inspect(self, container: str) -> ContainerInfo: ...

    def exec(self, container: str, command: list[str], *, user: str | None = None,
             timeout: float = 60, env: dict[str, str] | None = None) -> ExecResult: ...

    def logs(self, container: str, tail: int | str = "all", follow: bool = False) -> Iterator[bytes]: ...

    def find_containers(self, labels: dict[str, str]) -> list[ContainerInfo]: ...

    def find_networks(self, labels: dict[str, str]) -> list[NetworkInfo]: ...

    def remove(self, labels: dict[str, str]) -> int: ...
