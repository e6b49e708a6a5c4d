"""The Docker Engine backend, on the Docker SDK (never the docker CLI).

Nothing here bind-mounts a host path: files go in with put_archive, so a remote
DOCKER_HOST and Docker Desktop work the same as the local engine.
"""

from __future__ import annotations

import ipaddress
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import docker
import docker.errors
import requests.exceptions
from docker.types import EndpointConfig, LogConfig, Ulimit

from labctl.backends.base import ContainerInfo, ContainerPlan, ExecResult, NetworkInfo
from labctl.errors import EngineUnreachable, LabctlError

#: Engine calls that stream (an exec running a check, a build) may take long; the exec
#: itself is bounded by `timeout` inside the container, this only guards a dead engine.
API_TIMEOUT = 900

#: The most log a container keeps (twice this, in two files): a log flood stays small.
LOG_MAX_SIZE = "2m"


def connect() -> docker.DockerClient:
    """A client for the engine of DOCKER_HOST (or the default socket), or EngineUnreachable."""
    try:
        client = docker.from_env(timeout=API_TIMEOUT)
        client.ping()
        return client
    except (docker.errors.DockerException, requests.exceptions.RequestException) as error:
        where = os.environ.get("DOCKER_HOST", "the default socket (/var/run/docker.sock)")
        raise EngineUnreachable(
            f"cannot reach the Docker Engine at {where}: {_first_line(error)}. "
            "Is Docker running, and may this user use it?") from error


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _label_filters(labels: dict[str, str]) -> list[str]:
    return [f"{key}={value}" if value else key for key, value in labels.items()]


class DockerBackend:
    """The Backend protocol (labctl.backends.base) on one Docker Engine."""

    def __init__(self, client: docker.DockerClient | None = None):
        self.client = client or connect()
        self._nofile_limit: int | None = None

    # -- networks -------------------------------------------------------------------------------

    def create_network(self, name: str, pool: str, prefix: int, labels: dict[str, str],
                       internal: bool) -> NetworkInfo:
        """Create a bridge network on the first subnet of `pool` that no network uses yet.

        Two labctl processes may pick the same free subnet at once; the engine refuses the
        second ("overlaps"), which then takes the next one.
        """
        for subnet in ipaddress.ip_network(pool).subnets(new_prefix=prefix):
            if any(subnet.overlaps(used) for used in self._used_subnets()):
                continue
            ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=str(subnet))])
            try:
                self.client.networks.create(name, driver="bridge", internal=internal, ipam=ipam,
                                            labels=labels, check_duplicate=True)
                return NetworkInfo(name=name, subnet=str(subnet), labels=labels)
            except docker.errors.APIError as error:
                if "overlap" in str(error).lower():
                    continue
                raise LabctlError(f"cannot create network {name}: {error.explanation or error}") from error
        raise LabctlError(f"no free /{prefix} subnet left in the address pool {pool}: "
                          "remove stale labs (`labctl down --all`) or widen network.pool in lab.yaml")

    def _used_subnets(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        used = []
        for network in self.client.api.networks():
            for config in (network.get("IPAM") or {}).get("Config") or []:
                if config.get("Subnet"):
                    used.append(ipaddress.ip_network(config["Subnet"], strict=False))
        return used

    def find_networks(self, labels: dict[str, str]) -> list[NetworkInfo]:
        found = []
        for network in self.client.api.networks(filters={"label": _label_filters(labels)}):
            configs = (network.get("IPAM") or {}).get("Config") or [{}]
            found.append(NetworkInfo(network["Name"], configs[0].get("Subnet", ""), network.get("Labels") or {}))
        return found

    # -- containers -----------------------------------------------------------------------------

    def create_container(self, plan: ContainerPlan) -> None:
        kwargs: dict = dict(
            image=plan.image, command=plan.command, name=plan.name, hostname=plan.node, labels=plan.labels,
            user=plan.user or "", working_dir=plan.workdir, environment=plan.env, detach=True,
            init=True, cap_drop=["ALL"], cap_add=list(plan.cap_add), security_opt=["no-new-privileges"],
            nano_cpus=int(plan.cpus * 1e9), mem_limit=plan.memory_bytes, memswap_limit=plan.memory_bytes,
            pids_limit=plan.pids, ulimits=[Ulimit(name="nofile", soft=plan.nofile, hard=plan.nofile)],
            # A server that floods its log must not fill the host's disk: keep the last few MB.
            log_config=LogConfig(type="json-file", config={"max-size": LOG_MAX_SIZE, "max-file": "2"}),
        )
        if plan.pid_of:
            kwargs["pid_mode"] = f"container:{plan.pid_of}"
        if plan.sysctls:
            kwargs["sysctls"] = dict(plan.sysctls)  # the engine sets them as root, /proc/sys stays read-only
        if plan.network:
            kwargs["network"] = plan.network
            kwargs["networking_config"] = {plan.network: EndpointConfig(version=self.client.api._version,
                                                                        aliases=[plan.node])}
        else:
            kwargs["network_mode"] = "none"
        try:
            self.client.containers.create(**kwargs)
        except docker.errors.ImageNotFound as error:
            raise LabctlError(f"image {plan.image} is missing: run `labctl images build`") from error
        except docker.errors.APIError as error:
            raise LabctlError(f"cannot create container {plan.name}: {error.explanation or error}") from error

    def put_archive(self, container: str, path: str, tar_bytes: bytes) -> None:
        if not self.client.api.put_archive(container, path, tar_bytes):
            raise LabctlError(f"copying files to {container}:{path} failed")

    def start(self, container: str) -> None:
        try:
            self.client.api.start(container)
        except docker.errors.APIError as error:
            raise LabctlError(f"cannot start container {container}: {error.explanation or error}") from error

    def engine_nofile_limit(self) -> int:
        """The engine's own hard nofile limit: a container cannot be given more.

        Read from /proc/self/limits of a throwaway container started with no ulimit of
        its own (it inherits the engine's), once per backend.
        """
        if self._nofile_limit is None:
            images = [tag for image in self.client.images.list(filters={"label": "labctl.image=tools"})
                      for tag in image.tags]
            if not images:
                raise LabctlError("cannot read the engine's nofile limit: no labctl-tools image")
            output = self.client.containers.run(images[0], ["sh", "-c", "ulimit -Hn"], remove=True,
                                                network_mode="none", labels={"labctl.probe": "nofile"})
            text = output.decode().strip()
            self._nofile_limit = 1 << 20 if text == "unlimited" else int(text)
        return self._nofile_limit

    def inspect(self, container: str) -> ContainerInfo:
        try:
            data = self.client.api.inspect_container(container)
        except docker.errors.NotFound as error:
            raise LabctlError(f"no container {container}") from error
        return _info(data["Name"].lstrip("/"), data["Config"].get("Labels") or {}, data["State"],
                     data["NetworkSettings"].get("Networks") or {})

    def find_containers(self, labels: dict[str, str]) -> list[ContainerInfo]:
        found = []
        for summary in self.client.api.containers(all=True, filters={"label": _label_filters(labels)}):
            state = {"Status": summary.get("State"), "ExitCode": _exit_code(summary.get("Status", ""))}
            found.append(_info(summary["Names"][0].lstrip("/"), summary.get("Labels") or {}, state,
                               (summary.get("NetworkSettings") or {}).get("Networks") or {}))
        return sorted(found, key=lambda info: info.name)

    # -- running things inside ------------------------------------------------------------------

    def exec(self, container: str, command: list[str], *, user: str | None = None, timeout: float = 60,
             env: dict[str, str] | None = None) -> ExecResult:
        """Run a command to completion; it is killed inside the container after `timeout` s."""
        wrapped = ["timeout", "-k", "2", f"{timeout:g}", *command]
        try:
            exec_id = self.client.api.exec_create(container, wrapped, user=user or "", environment=env)["Id"]
            out, err = self.client.api.exec_start(exec_id, demux=True)
            code = self.client.api.exec_inspect(exec_id)["ExitCode"]
        except docker.errors.APIError as error:
            raise LabctlError(f"exec in {container} failed: {error.explanation or error}") from error
        # timeout(1) exits 124 when it had to stop the command, 137 when it had to kill it.
        return ExecResult(code if code is not None else -1, out or b"", err or b"", timed_out=code in (124, 137))

    def exec_stream(self, container: str, command: list[str], *, user: str | None = None,
                    tty: bool = False, stdin: bool = False, env: dict[str, str] | None = None):
        """Start an exec and return (exec_id, socket) for an interactive session (`labctl shell`)."""
        exec_id = self.client.api.exec_create(container, command, user=user or "", tty=tty, stdin=stdin,
                                              environment=env)["Id"]
        sock = self.client.api.exec_start(exec_id, tty=tty, socket=True)
        return exec_id, sock

    def exec_exit_code(self, exec_id: str) -> int | None:
        return self.client.api.exec_inspect(exec_id).get("ExitCode")

    def logs(self, container: str, tail: int | str = "all", follow: bool = False) -> Iterator[bytes]:
        if follow:
            yield from self.client.api.logs(container, stream=True, follow=True, tail=tail)
        else:
            yield self.client.api.logs(container, tail=tail)

    # -- removal --------------------------------------------------------------------------------

    def remove(self, labels: dict[str, str]) -> int:
        """Remove every container and network carrying these labels; returns how many objects.

        Idempotent: what is already gone is not an error.
        """
        def remove_container(summary: dict) -> int:
            try:
                self.client.api.remove_container(summary["Id"], force=True, v=True)
                return 1
            except docker.errors.NotFound:
                return 0
            except docker.errors.APIError as error:
                if "already in progress" in str(error):
                    return 0
                raise

        containers = self.client.api.containers(all=True, filters={"label": _label_filters(labels)})
        with ThreadPoolExecutor(max_workers=max(1, min(8, len(containers)))) as pool:
            removed = sum(pool.map(remove_container, containers))
        for network in self.client.api.networks(filters={"label": _label_filters(labels)}):
            for attempt in range(20):
                try:
                    self.client.api.remove_network(network["Id"])
                    removed += 1
                    break
                except docker.errors.NotFound:
                    break
                except docker.errors.APIError as error:
                    if "active endpoints" not in str(error) or attempt == 19:
                        raise
                    time.sleep(0.1)  # an endpoint of a just-removed container is still leaving
        return removed


def _exit_code(status: str) -> int | None:
    # The container list gives "Exited (137) 3 seconds ago"; inspect gives the number.
    if status.startswith("Exited (") and ")" in status:
        return int(status[len("Exited ("):status.index(")")])
    return None


def _info(name: str, labels: dict[str, str], state: dict, networks: dict) -> ContainerInfo:
    address = next((net.get("IPAddress") for net in networks.values() if net.get("IPAddress")), None)
    status = state.get("Status") or "unknown"
    exit_code = state.get("ExitCode") if status in ("exited", "dead") else None
    return ContainerInfo(name=name, node=labels.get("labctl.node", ""), role=labels.get("labctl.role", ""),
                         status=status, exit_code=exit_code, address=address, labels=labels,
                         oom_killed=bool(state.get("OOMKilled")))
