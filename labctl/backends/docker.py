"""The Docker Engine backend, on the Docker SDK (never the docker CLI).

Nothing here bind-mounts a host path: files go in over the container's stdin when it starts
(see `start`), so a remote DOCKER_HOST and Docker Desktop work the same as the local engine.

Every wait on the engine has a limit on this side: control calls give up after CALL_TIMEOUT,
and an exec is read with its own deadline, ending at once when its container stops (an exec
into a container that dies mid-call can otherwise hang for as long as the connection lives).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import docker
import docker.errors
import requests.exceptions
from docker.types import EndpointConfig, LogConfig, Ulimit

from labctl import cgroups
from labctl.backends.base import (
    ALL_FEATURES,
    ContainerInfo,
    ContainerPlan,
    EngineFacts,
    ExecResult,
    Feature,
    NetworkInfo,
    Usage,
    container_state,
)
from labctl.errors import EngineUnreachable, LabctlError, LimitAboveEngine

#: Seconds any one engine call may take before labctl gives up on the engine.
CALL_TIMEOUT = 60
#: The same for calls that stream for long by nature (image builds, `logs --follow`).
STREAM_TIMEOUT = 900
#: Seconds an exec is waited for past its own timeout: timeout(1) inside the container stops the
#: command at `timeout` and kills it 2 s later; the host stops waiting EXEC_GRACE s after that.
EXEC_GRACE = 3.0
#: While an exec is silent, how often the host checks that its container still runs.
GONE_CHECK_INTERVAL = 1.0
#: The most output an exec keeps per stream; the rest is read and dropped.
EXEC_OUTPUT_MAX = 256 * 2**20
#: Seconds the files of a container (its payload) may take to go in over its stdin.
COPY_TIMEOUT = 60.0

#: How a container with a payload starts: unpack it (stdin, a tar of paths below /) into its writable
#: folders, then replace this shell by the command, with stdin closed. Exit 125 says "not unpacked".
UNPACK = ('tar -x -f - -C / 2>&1 || { echo "labctl: the files could not be put into the container '
          '(see the tar message above)" >&2; exit 125; }; exec "$@" </dev/null')


def connect(timeout: float = CALL_TIMEOUT) -> docker.DockerClient:
    """A client for the engine of DOCKER_HOST (or the default socket), or EngineUnreachable."""
    try:
        client = docker.from_env(timeout=timeout)
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


def _raw(sock):
    """The socket object under what the SDK returns for a hijacked connection."""
    return getattr(sock, "_sock", sock)


class DockerBackend:
    """The Backend protocol (labctl.backends.base) on one Docker Engine."""

    name = "docker"

    def __init__(self, client: docker.DockerClient | None = None):
        self.client = client or connect()
        self._stream_client: docker.DockerClient | None = None
        self._nofile_limit: int | None = None
        self._payloads: dict[str, bytes] = {}               # container -> files to put in at start
        self._cgroups: dict[str, cgroups.CgroupFiles] = {}   # container -> its counters on this host

    @property
    def stream_client(self) -> docker.DockerClient:
        """A client for calls that stream for long (image builds, following a log)."""
        if self._stream_client is None:
            self._stream_client = docker.from_env(timeout=STREAM_TIMEOUT)  # same engine, same TLS settings
        return self._stream_client

    def offers(self) -> frozenset[Feature]:
        """Everything: each node is a container with its own network namespace and capabilities."""
        return ALL_FEATURES

    def limits_by(self) -> str:
        return "the engine (cgroups: tasks, memory, CPU; tmpfs sizes; nofile)"

    def images(self, images_dir, progress=None, extra=None):
        from labctl.images import ImageBuilder

        return ImageBuilder(self.stream_client, images_dir, progress, extra=extra)

    def server_port(self, wanted: int) -> int:
        return wanted  # the lab's network is its own: any port is free there

    def host_of(self, container: str, node: str) -> str:
        return node  # the node's DNS alias on the lab network

    def interactive(self, container: str, command: list[str], user: str | None = None) -> int:
        import sys

        from labctl import tty

        exec_id, sock = self.exec_stream(container, command, user=user, tty=sys.stdin.isatty(), stdin=True)
        tty.pump(sock)
        return self.exec_exit_code(exec_id) or 0

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
            # An internal bridge still gives the host an address on it (the gateway): anything the host
            # serves on 0.0.0.0 would be one connect away from student code. No address, no way in.
            options = {"com.docker.network.bridge.inhibit_ipv4": "true"} if internal else {}
            try:
                self.client.networks.create(name, driver="bridge", internal=internal, ipam=ipam, options=options,
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
        command = plan.command if plan.payload is None else ["sh", "-c", UNPACK, "labctl-unpack", *plan.command]
        kwargs: dict = dict(
            image=plan.image, command=command, name=plan.name, hostname=plan.node, labels=plan.labels,
            user=plan.user or "", working_dir=plan.workdir, environment=plan.env, detach=True,
            init=True, cap_drop=["ALL"], cap_add=list(plan.cap_add), security_opt=["no-new-privileges"],
            nano_cpus=int(plan.cpus * 1e9), mem_limit=plan.memory_bytes, memswap_limit=plan.memory_bytes,
            pids_limit=plan.pids, ulimits=[Ulimit(name="nofile", soft=plan.nofile, hard=plan.nofile)],
            # A server that floods its log must not fill the host's disk: keep the last few MB.
            log_config=LogConfig(type="json-file", config={"max-size": str(plan.log_bytes), "max-file": "2"}),
            # Nor one that writes files: the root is read-only, the writable folders are size-capped
            # tmpfs (memory, counted in mem_limit), whatever the storage driver can or cannot cap.
            read_only=True, tmpfs=_tmpfs(plan), shm_size=plan.disk_bytes,
            stdin_open=plan.payload is not None,
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
        if plan.payload is not None:
            self._payloads[plan.name] = plan.payload

    def start(self, container: str) -> None:
        """Start the container; its payload goes in over its stdin, which UNPACK reads first.

        The attach is made before the start so that no byte is lost, and the payload is sent
        within COPY_TIMEOUT; closing our side ends tar's input.
        """
        payload = self._payloads.pop(container, None)
        sock = None
        try:
            if payload is not None:
                sock = _raw(self.client.api.attach_socket(container, params={"stdin": 1, "stream": 1}))
            self.client.api.start(container)
            if sock is not None and payload is not None:
                sock.settimeout(COPY_TIMEOUT)
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)
        except docker.errors.APIError as error:
            if "rlimit type 7" in str(error):  # runc's words for RLIMIT_NOFILE above the engine's own
                raise LimitAboveEngine(f"cannot start container {container}: its nofile limit is above the "
                                       "engine's own", limit="nofile") from error
            raise LabctlError(f"cannot start container {container}: {error.explanation or error}") from error
        except TimeoutError:
            raise LabctlError(f"copying {len(payload or b'') / 2**20:.1f} MiB of files into {container} took longer "
                              f"than {COPY_TIMEOUT:g} s") from None
        except OSError as error:
            raise LabctlError(f"copying files into {container} failed: {error.strerror or error} (did its "
                              "command exit at once?)") from error
        finally:
            if sock is not None:
                sock.close()

    def engine_nofile_limit(self) -> int:
        """The engine's own hard nofile limit: a container cannot be given more.

        Read from /proc/self/limits of a throwaway container started with no ulimit of
        its own (it inherits the engine's), once per backend.
        """
        if self._nofile_limit is None:
            images = [tag for image in self.client.images.list(filters={"label": "labctl.image"})
                      for tag in image.tags]
            if not images:
                raise LabctlError("cannot read the engine's nofile limit before labctl's images are built")
            output = self.client.containers.run(images[0], ["sh", "-c", "ulimit -Hn"], remove=True,
                                                network_mode="none", labels={"labctl.probe": "nofile"})
            text = output.decode().strip()
            self._nofile_limit = 1 << 20 if text == "unlimited" else int(text)
        return self._nofile_limit

    def engine_facts(self) -> EngineFacts:
        info, version = self.client.info(), self.client.version()
        base_url = self.client.api.base_url
        local = base_url.startswith(("http+docker://localhost", "http+docker://localunixsocket")) and \
            os.path.isdir(info.get("DockerRootDir") or "/nonexistent")
        return EngineFacts(kind="Docker Engine", version=version.get("Version", "?"),
                           api_version=version.get("ApiVersion", ""), os=info.get("OperatingSystem", "?"),
                           cgroup_version=str(info.get("CgroupVersion") or ""),
                           storage_driver=info.get("Driver", "?"), data_root=info.get("DockerRootDir", ""),
                           local=local)

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

    def usage(self, container: str) -> Usage:
        """Its CPU and tasks so far: read from its cgroup on this host when the engine is local
        (nanoseconds, ~0.1 ms a reading), else the engine's statistics (refreshed once a second)."""
        files = self._cgroups.get(container)
        if files is None:
            files = self._find_cgroup(container)
        if files is not None:
            try:
                return Usage(files.cpu_seconds(), files.task_count(), time.time())
            except cgroups.CgroupUnreadable:
                self._cgroups.pop(container, None)
                raise LabctlError(f"container {container} is no longer running") from None
        try:
            stats = self.client.api.stats(container, stream=False, one_shot=True)
        except docker.errors.APIError as error:
            raise LabctlError(f"cannot read the statistics of {container}: {error.explanation or error}") from error
        total = ((stats.get("cpu_stats") or {}).get("cpu_usage") or {}).get("total_usage")
        if total is None:
            raise LabctlError(f"container {container} is no longer running")
        return Usage(total / 1e9, (stats.get("pids_stats") or {}).get("current"), _timestamp(stats.get("read")),
                     precise=False)

    def _find_cgroup(self, container: str) -> cgroups.CgroupFiles | None:
        """The container's cgroup files on this host, if this is the engine's host; cached."""
        try:
            data = self.client.api.inspect_container(container)
        except docker.errors.NotFound as error:
            raise LabctlError(f"no container {container}") from error
        pid = (data.get("State") or {}).get("Pid") or 0
        if pid <= 0:
            raise LabctlError(f"container {container} is not running")
        try:
            files = cgroups.files_of(pid)
        except cgroups.CgroupUnreadable:
            return None
        if data["Id"] not in str(files.cpu):  # not the engine's host (or the PID was reused): ask the engine
            return None
        self._cgroups[container] = files
        return files

    def exec(self, container: str, command: list[str], *, user: str | None = None, timeout: float = 60,
             env: dict[str, str] | None = None) -> ExecResult:
        """Run a command to completion within `timeout` s (killed inside the container then), and
        never wait longer than timeout + 2 + EXEC_GRACE s here, nor past its container's end."""
        wrapped = ["timeout", "-k", "2", f"{timeout:g}", *command]
        started = time.monotonic()
        deadline = started + timeout + 2 + EXEC_GRACE
        try:
            exec_id = self.client.api.exec_create(container, wrapped, user=user or "", environment=env)["Id"]
            sock = _raw(self.client.api.exec_start(exec_id, socket=True))
        except docker.errors.APIError as error:
            if isinstance(error, docker.errors.NotFound) or not self._runs(container):
                return ExecResult(-1, b"", b"", container_gone=True)
            raise LabctlError(f"exec in {container} failed: {error.explanation or error}") from error
        try:
            out, err, ended = self._read_frames(sock, deadline, container)
        finally:
            sock.close()
        if ended != "eof":
            return ExecResult(-1, out, err, timed_out=ended == "deadline", container_gone=ended == "gone")
        try:
            code = self.client.api.exec_inspect(exec_id).get("ExitCode")
        except docker.errors.APIError:
            code = None
        if code is None:  # the stream closed but the process did not end: its container went away
            return ExecResult(-1, out, err, container_gone=not self._runs(container))
        # timeout(1) exits 124 when it had to stop the command, 137 when it had to kill it.
        if code in (124, 137) and time.monotonic() >= started + timeout:
            return ExecResult(code, out, err, timed_out=True)
        if code > 128 and self._stopping(container):  # killed before its time: with its container
            return ExecResult(code, out, err, container_gone=True)
        return ExecResult(code, out, err)

    def _read_frames(self, sock, deadline: float, container: str) -> tuple[bytes, bytes, str]:
        """Read an exec's multiplexed output (8-byte frame headers: stream, size) until the end,
        the deadline, or the container's end. Returns (stdout, stderr, "eof" | "deadline" | "gone")."""
        streams = {1: bytearray(), 2: bytearray()}
        pending = bytearray()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                ended = "deadline"
                break
            sock.settimeout(min(GONE_CHECK_INTERVAL, left))
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                if not self._runs(container):
                    ended = "gone"
                    break
                continue
            except OSError:
                ended = "eof"
                break
            if not chunk:
                ended = "eof"
                break
            pending += chunk
            while len(pending) >= 8:
                kind, size = struct.unpack(">BxxxL", pending[:8])
                if len(pending) < 8 + size:
                    break
                target = streams.get(kind)
                if target is not None and len(target) < EXEC_OUTPUT_MAX:
                    target += pending[8:8 + size][:EXEC_OUTPUT_MAX - len(target)]
                del pending[:8 + size]
        return bytes(streams[1]), bytes(streams[2]), ended

    def _stopping(self, container: str, within: float = 2.0) -> bool:
        """Does the container stop within a moment? (Its state lags a little behind its processes.)"""
        until = time.monotonic() + within
        while self._runs(container):
            if time.monotonic() >= until:
                return False
            time.sleep(0.1)
        return True

    def _runs(self, container: str) -> bool:
        try:
            return self.inspect(container).running
        except LabctlError:
            return False

    def exec_stream(self, container: str, command: list[str], *, user: str | None = None,
                    tty: bool = False, stdin: bool = False, env: dict[str, str] | None = None):
        """Start an exec and return (exec_id, socket) for an interactive session (`labctl shell`)."""
        exec_id = self.client.api.exec_create(container, command, user=user or "", tty=tty, stdin=stdin,
                                              environment=env)["Id"]
        sock = self.client.api.exec_start(exec_id, tty=tty, socket=True)
        return exec_id, sock

    def exec_exit_code(self, exec_id: str) -> int | None:
        return self.client.api.exec_inspect(exec_id).get("ExitCode")

    def logs(self, container: str, tail: int | str = "all", follow: bool = False, since: float | None = None,
             until: float | None = None) -> Iterator[bytes]:
        try:
            if follow:
                yield from self.stream_client.api.logs(container, stream=True, follow=True, tail=tail)
            else:
                yield self.client.api.logs(container, tail=tail, since=since, until=until)
        except docker.errors.NotFound as error:
            raise LabctlError(f"no container {container}") from error

    # -- removal --------------------------------------------------------------------------------

    def remove(self, labels: dict[str, str]) -> int:
        """Remove every container and network carrying these labels; returns how many objects.

        Idempotent: what is already gone is not an error.
        """
        def remove_container(summary: dict) -> int:
            for name in summary.get("Names") or []:
                self._cgroups.pop(name.lstrip("/"), None)
                self._payloads.pop(name.lstrip("/"), None)
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
    status = container_state(state.get("Status"))
    exit_code = state.get("ExitCode") if status in ("exited", "dead") else None
    return ContainerInfo(name=name, node=labels.get("labctl.node", ""), role=labels.get("labctl.role", ""),
                         status=status, exit_code=exit_code, address=address, labels=labels,
                         oom_killed=bool(state.get("OOMKilled")))


def _tmpfs(plan: ContainerPlan) -> dict[str, str]:
    """The plan's writable folders as tmpfs mounts: size-capped, owned by the node's user, programs
    allowed (a C submission runs what it compiles); /dev/shm is the engine's own (shm_size)."""
    owner = ""
    if plan.user:
        uid, _, gid = plan.user.partition(":")
        owner = f",uid={uid},gid={gid or uid}"
    return {path: f"rw,exec,nosuid,nodev,size={plan.disk_bytes},mode=1777{owner}"
            for path in plan.writable if path != "/dev/shm"}


def _timestamp(text: str | None) -> float:
    """The engine's RFC 3339 time with nanoseconds ("2026-12-02T04:26:51.416337003Z") as time.time()."""
    if not text:
        return time.time()
    head, _, fraction = text.rstrip("Z").partition(".")
    try:
        whole = datetime.fromisoformat(head + "+00:00").timestamp()
    except ValueError:
        return time.time()
    return whole + float(f"0.{fraction or 0}")
