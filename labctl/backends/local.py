"""The local backend: a lab's nodes are processes on this host, with no container engine at all.

Where it is for: graders that already run inside a container of their own, with no Docker Engine
there (Gradescope's autograder, a PrairieLearn external grader with the network off). Its nodes:
- each node is a supervisor process (local_node.py) with a folder of its own under the state folder
  (STATE_ENV, else /var/lib/labctl/local as root, else ~/.local/state/labctl/local): plan.json,
  state.json, its capped log, and `files/`, where the paths a node writes to in a container
  (/submission, /srv/www, /opt/labctl, /tmp...) are: every such path in its environment, working
  folder and command is turned into the same path below `files/`;
- the server runs from its private copy of the submission, on a free port of this host ($PORT), in
  its own session, as a uid of the lab's own when labctl runs as root (no account needed; it owns
  only its folder, its task limit is its own, and every process of that uid dies with the lab),
  else as labctl's own user (said in `limits_by`); limits are rlimits plus the supervisor's watch of
  memory and disk (this host's cgroups are not writable here: cgroup v1);
- the client, injector and observer run the harness with labctl's own Python on loopback; the
  observer reads the server's /proc directly, seeing only the server's process tree.

What it does not offer (Backend.offers), and why: no network of the lab's own, so no raw packets
(a SYN flood would hit this host's own stack) and no sysctls of the server's own; what each thread
waits in (/proc/<tid>/syscall of another uid) only with CAP_SYS_PTRACE.

Nodes are found again by their plan.json's labels, as containers are by theirs.
"""

from __future__ import annotations

import io
import json
import os
import platform
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

from labctl.backends import local_node
from labctl.backends.base import (
    ContainerInfo,
    ContainerPlan,
    EngineFacts,
    ExecResult,
    Feature,
    NetworkInfo,
    Usage,
    container_state,
)
from labctl.errors import LabctlError
from labctl.harness.proc import TREE_ROOT_ENV
from labctl.pids import alive

STATE_ENV = "LABCTL_STATE_DIR"
#: The uids a server may be given (systemd's range for dynamic users: no account has one of these).
OWN_UIDS = range(61184, 65520)
#: Ports a server may be given: below the kernel's ephemeral range, so no outgoing connection holds one.
PORTS = range(20000, 30000)
#: The most output an exec keeps per stream, as on the Docker backend.
EXEC_OUTPUT_MAX = 256 * 2**20
#: Seconds a node's supervisor is given to end its tree on SIGTERM before it is killed itself.
STOP_GRACE = 3.0
#: An address space limit is only a backstop for one runaway allocation (the supervisor watches the tree's
#: resident memory): this many times the memory limit, so that thread stacks (reserved, not used) fit.
ADDRESS_SPACE_FACTOR = 8
CAP_SYS_PTRACE = 19
LOOPBACK = "127.0.0.1"


def state_root() -> Path:
    named = os.environ.get(STATE_ENV)
    if named:
        return Path(named)
    if os.geteuid() == 0:
        return Path("/var/lib/labctl/local")
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "labctl" / "local"


def _has_capability(bit: int) -> bool:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> bit & 1)
    return False


def _matches(labels: dict[str, str], wanted: dict[str, str]) -> bool:
    return all(key in labels and (not value or labels[key] == value) for key, value in wanted.items())


class LocalBackend:
    """The Backend protocol (labctl.backends.base) on this host's own processes."""

    name = "local"

    def __init__(self, root: Path | None = None):
        if not sys.platform.startswith("linux"):
            raise LabctlError("the local backend runs on Linux only (it reads /proc): use --backend docker")
        self.root = root or state_root()
        for folder in (self.root / "nodes", self.root / "networks", self.root / "uids"):
            folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o711)  # a server's uid may pass through to its own folder, and see nothing else
        os.chmod(self.root / "nodes", 0o711)
        self.as_root = os.geteuid() == 0
        if self.as_root:
            closed = next((folder for folder in self.root.resolve().parents if not os.stat(folder).st_mode & 0o001),
                          None)
            if closed is not None:
                raise LabctlError(f"the local backend's state folder {self.root} is below {closed}, which other users "
                                  f"may not pass through (no o+x): the server's own uid could not reach its files. "
                                  f"Set ${STATE_ENV} to a folder elsewhere (default /var/lib/labctl/local)")

    # -- what it offers ------------------------------------------------------------------------------

    def offers(self) -> frozenset[Feature]:
        if not self.as_root or _has_capability(CAP_SYS_PTRACE):
            return frozenset({"thread_waits"})
        return frozenset()

    def limits_by(self) -> str:
        who = "a uid of the lab's own" if self.as_root else "labctl's own user (not root: no uid of its own)"
        return (f"rlimits (open files, file size, address space{', tasks' if self.as_root else ''}) and labctl's "
                f"watch of the tree's memory and files; runs as {who}; CPU not limited")

    def images(self, images_dir: Path, progress=None, extra: dict[str, Path] | None = None) -> HostPrograms:
        return HostPrograms()

    def server_port(self, wanted: int) -> int:
        """A port of this host nobody listens on, outside the ephemeral range (the lab shares the host's)."""
        chance = random.SystemRandom()
        for _ in range(200):
            port = chance.choice(PORTS)
            with socket.socket() as probe:
                try:
                    probe.bind(("0.0.0.0", port))
                    return port
                except OSError:
                    continue
        raise LabctlError(f"no free port between {PORTS.start} and {PORTS.stop - 1} on this host")

    def host_of(self, container: str, node: str) -> str:
        return LOOPBACK

    def engine_nofile_limit(self) -> int:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        return hard if hard > 0 else 1 << 20

    def engine_facts(self) -> EngineFacts:
        cgroup = "2" if Path("/sys/fs/cgroup/cgroup.controllers").exists() else "1"
        return EngineFacts(kind="this host (no engine)", version=platform.release(), api_version="",
                           os=platform.platform(), cgroup_version=cgroup, storage_driver="files",
                           data_root=str(self.root), local=True)

    def interactive(self, container: str, command: list[str], user: str | None = None) -> int:
        node = self._node(container)
        return subprocess.call(self._argv(node, command), cwd=node["cwd"], env=node["env"],
                               **self._identity(node, user))

    # -- networks: a name and labels only; every node shares the host's ------------------------------

    def create_network(self, name: str, pool: str, prefix: int, labels: dict[str, str],
                       internal: bool) -> NetworkInfo:
        (self.root / "networks" / f"{name}.json").write_text(json.dumps({"name": name, "labels": labels}))
        return NetworkInfo(name=name, subnet="127.0.0.0/8 (this host's)", labels=labels)

    def find_networks(self, labels: dict[str, str]) -> list[NetworkInfo]:
        found = []
        for path in sorted((self.root / "networks").glob("*.json")):
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if _matches(data["labels"], labels):
                found.append(NetworkInfo(data["name"], "127.0.0.0/8 (this host's)", data["labels"]))
        return found

    # -- nodes -------------------------------------------------------------------------------------

    def create_container(self, plan: ContainerPlan) -> None:
        folder = self.root / "nodes" / plan.name
        try:
            folder.mkdir()
        except FileExistsError:
            raise LabctlError(f"cannot create node {plan.name}: the name is already in use") from None
        files = folder / "files"
        own_uid = self._own_uid(plan) if plan.labels.get("labctl.role") == "server" and self.as_root else None
        user = (own_uid, own_uid) if own_uid is not None else _numeric_user(plan.user) if self.as_root else None
        files.mkdir(mode=0o700)
        for path in plan.writable:
            (files / path.lstrip("/")).mkdir(parents=True, exist_ok=True)
        if plan.payload is not None:
            _unpack(plan.payload, files)
        if user is not None:
            _chown_tree(files, *user)
        env = {key: _remap(value, plan.writable, files) for key, value in plan.env.items()}
        env.setdefault("PATH", os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"))
        env["TMPDIR"] = str(files / "tmp")
        cwd = _remap(plan.workdir or "/tmp", plan.writable, files)
        initial = local_node.folder_bytes(str(files))
        node = {
            "name": plan.name, "labels": plan.labels, "node": plan.node, "pid_of": plan.pid_of,
            "command": _command(plan.command, plan.labels.get("labctl.role", ""), plan.writable, files),
            "env": env, "cwd": cwd, "user": list(user) if user else None, "own_uid": own_uid,
            "files_root": str(files), "log_bytes": plan.log_bytes, "writable": list(plan.writable),
            # Memory and files are watched where the submission runs; the harness nodes are labctl's own code.
            "watch": plan.labels.get("labctl.role") == "server",
            "limits": {"nofile": plan.nofile, "file_bytes": plan.disk_bytes, "tasks": plan.pids,
                       "memory_bytes": plan.memory_bytes, "address_bytes": plan.memory_bytes * ADDRESS_SPACE_FACTOR,
                       "disk_total_bytes": initial + plan.disk_bytes},
        }
        _write_private(folder / "plan.json", json.dumps(node))
        _write_private(folder / "state.json", json.dumps({"status": "created"}))
        os.chmod(folder, 0o711)

    def start(self, container: str) -> None:
        """Start the node's supervisor, in a session of its own so that it outlives this labctl; return once
        its command runs (or has already ended)."""
        folder = self.root / "nodes" / container
        node = self._node(container)
        if node.get("pid_of"):  # the observer: it sees the process tree of the node it watches
            watched = self._state(node["pid_of"])
            if watched.get("status") != "running" or not alive(watched.get("supervisor")):
                raise LabctlError(f"cannot start node {container}: the node it watches ({node['pid_of']}) is not running")
            node["env"][TREE_ROOT_ENV] = str(watched["supervisor"])
            _write_private(folder / "plan.json", json.dumps(node))
        subprocess.Popen([sys.executable, "-m", "labctl.backends.local_node", str(folder)],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True, close_fds=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._state(container).get("status") in ("running", "exited"):
                return
            time.sleep(0.02)
        raise LabctlError(f"node {container} did not start within 30 s")

    def inspect(self, container: str) -> ContainerInfo:
        node = self._node(container)
        return self._info(node, self._state(container))

    def find_containers(self, labels: dict[str, str]) -> list[ContainerInfo]:
        found = []
        for folder in sorted((self.root / "nodes").iterdir()):
            try:
                node = json.loads((folder / "plan.json").read_text())
            except (OSError, ValueError):
                continue
            if _matches(node["labels"], labels):
                found.append(self._info(node, self._state(folder.name)))
        return found

    def usage(self, container: str) -> Usage:
        """CPU of the node's processes so far (their own and their reaped children's, and the orphans its
        supervisor reaped) and their threads now, from /proc."""
        state = self._state(container)
        supervisor = int(state.get("supervisor") or 0)
        if state.get("status") != "running" or not alive(supervisor):
            raise LabctlError(f"node {container} is no longer running")
        ticks, tasks = _ticks(supervisor, children_only=True)
        for pid in local_node.tree(supervisor):
            own, threads = _ticks(pid)
            ticks, tasks = ticks + own, tasks + threads
        return Usage(ticks / os.sysconf("SC_CLK_TCK"), tasks, time.time())

    def exec(self, container: str, command: list[str], *, user: str | None = None, timeout: float = 60,
             env: dict[str, str] | None = None) -> ExecResult:
        node = self._node(container)
        if self._state(container).get("status") != "running":
            return ExecResult(-1, b"", b"", container_gone=True)
        try:
            process = subprocess.Popen(self._argv(node, command), cwd=node["cwd"], env={**node["env"], **(env or {})},
                                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       start_new_session=True, **self._identity(node, user))
        except OSError as error:
            return ExecResult(127, b"", f"labctl: cannot run {command[0]}: {error.strerror or error}\n".encode())
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(process.pid)
            out, err = process.communicate()
            return ExecResult(-1, out[:EXEC_OUTPUT_MAX], err[:EXEC_OUTPUT_MAX], timed_out=True)
        code = process.returncode
        if code < 0 and self._state(container).get("status") != "running":
            return ExecResult(-1, out, err, container_gone=True)
        return ExecResult(128 - code if code < 0 else code, out[:EXEC_OUTPUT_MAX], err[:EXEC_OUTPUT_MAX])

    def logs(self, container: str, tail: int | str = "all", follow: bool = False, since: float | None = None,
             until: float | None = None) -> Iterator[bytes]:
        """The node's output. `since`/`until` are not applied (the log keeps no times): callers that ask for a
        window read times from the lines themselves (the observer's looks carry theirs)."""
        folder = self.root / "nodes" / container
        self._node(container)
        text = b"".join(path.read_bytes() for path in (folder / "log.1", folder / "log") if path.exists())
        if tail != "all":
            lines = text.splitlines(keepends=True)
            text = b"".join(lines[-int(tail):]) if int(tail) > 0 else b""
        yield text
        if follow:
            position = (folder / "log").stat().st_size if (folder / "log").exists() else 0
            while self._state(container).get("status") == "running":
                time.sleep(0.2)
                path = folder / "log"
                size = path.stat().st_size if path.exists() else 0
                if size < position:
                    position = 0
                if size > position:
                    with open(path, "rb") as handle:
                        handle.seek(position)
                        yield handle.read()
                    position = size

    # -- removal ------------------------------------------------------------------------------------

    def remove(self, labels: dict[str, str]) -> int:
        """Stop and delete every node and network carrying these labels: every process of a node's tree (and
        of its own uid) killed, its files (and what its uid left in the host's temporary folders) deleted."""
        removed = 0
        for info in self.find_containers(labels):
            removed += self._remove_node(info.name)
        for path in (self.root / "networks").glob("*.json"):
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if _matches(data["labels"], labels):
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    def _remove_node(self, container: str) -> int:
        folder = self.root / "nodes" / container
        try:
            node = json.loads((folder / "plan.json").read_text())
        except (OSError, ValueError):
            node = {}
        supervisor = int(self._state(container).get("supervisor") or 0)
        if alive(supervisor):
            os.kill(supervisor, signal.SIGTERM)
            deadline = time.monotonic() + STOP_GRACE
            while alive(supervisor) and time.monotonic() < deadline:
                time.sleep(0.02)
        if supervisor:  # the supervisor gone or not, nothing of its tree may stay
            local_node.kill_all(supervisor, node.get("own_uid"))
            if alive(supervisor):
                os.kill(supervisor, signal.SIGKILL)
        if node.get("own_uid") is not None:
            local_node.kill_all(-1, node["own_uid"])
            local_node.remove_files_of(node["own_uid"])
            (self.root / "uids" / str(node["own_uid"])).unlink(missing_ok=True)
        shutil.rmtree(folder, ignore_errors=True)
        return 0 if folder.exists() else 1

    # -- helpers -----------------------------------------------------------------------------------

    def _node(self, container: str) -> dict:
        try:
            return json.loads((self.root / "nodes" / container / "plan.json").read_text())
        except (OSError, ValueError):
            raise LabctlError(f"no container {container}") from None

    def _state(self, container: str) -> dict:
        try:
            state = json.loads((self.root / "nodes" / container / "state.json").read_text())
        except (OSError, ValueError):
            return {"status": "unknown"}
        if state.get("status") == "running" and not alive(state.get("supervisor")):
            state["status"] = "dead"  # killed from outside (kill -9): its tree may be loose; remove() ends it
        return state

    def _info(self, node: dict, state: dict) -> ContainerInfo:
        status = container_state(state.get("status"))
        return ContainerInfo(name=node["name"], node=node["labels"].get("labctl.node", ""),
                             role=node["labels"].get("labctl.role", ""), status=status,
                             exit_code=state.get("exit_code") if status in ("exited", "dead") else None,
                             address=LOOPBACK, labels=node["labels"], oom_killed=bool(state.get("oom_killed")))

    def _own_uid(self, plan: ContainerPlan) -> int:
        """A uid no account and no process has, held for this node (a file made exclusively) until removal."""
        chance = random.SystemRandom()
        known = {line.split(":")[2] for line in Path("/etc/passwd").read_text().splitlines() if line.count(":") >= 2}
        for _ in range(500):
            uid = chance.choice(OWN_UIDS)
            if str(uid) in known or local_node.pids_of_uid(uid):
                continue
            try:
                (self.root / "uids" / str(uid)).open("x").write(plan.name)
                return uid
            except FileExistsError:
                continue
        raise LabctlError(f"no free uid in {OWN_UIDS.start}-{OWN_UIDS.stop - 1} for the server")

    def _argv(self, node: dict, command: list[str]) -> list[str]:
        return _command(command, node["labels"].get("labctl.role", ""), node["writable"], Path(node["files_root"]))

    def _identity(self, node: dict, user: str | None) -> dict:
        """Who an exec runs as: the node's user (the server's own uid), or the one asked for."""
        if not self.as_root:
            return {}
        ids = _numeric_user(user) if user else (tuple(node["user"]) if node.get("user") else None)
        return {"user": ids[0], "group": ids[1], "extra_groups": []} if ids else {}


class HostPrograms:
    """The local backend's "images": this host's own programs. Nothing is built."""

    def ensure(self, names: list[str] | None = None, force: bool = False) -> dict[str, str]:
        return {name: "host" for name in names or []}


def _command(words: list[str], role: str, writable: tuple[str, ...] | list[str], files: Path) -> list[str]:
    """A node's command as it runs here: container paths as the node's own, then the harness nodes' `python3` as
    labctl's own Python (it has scapy; the server's is the host's). In that order: labctl's Python may itself
    live below a container path (a clone in /tmp)."""
    mapped = [_remap(word, writable, files) for word in words]
    if role != "server" and mapped and mapped[0] == "python3":
        mapped[0] = sys.executable
    return mapped


def _remap(text: str, writable: tuple[str, ...] | list[str], files: Path) -> str:
    """A container path (/submission/x, /tmp) as the same path below the node's files folder."""
    for path in sorted(writable, key=len, reverse=True):
        if text == path or text.startswith(path + "/"):
            return str(files) + text
        for separator in ("=", ":"):
            if separator + path in text:
                text = text.replace(separator + path, separator + str(files) + path)
    return text


def _unpack(payload: bytes, files: Path) -> None:
    """The plan's tar (paths below /) into the node's files folder; nothing may land outside it."""
    with tarfile.open(fileobj=io.BytesIO(payload)) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(files, filter="data")
        else:  # Python before 3.10.12 / 3.11.4 (Debian bookworm's 3.11.2) has no filters: the same rules by hand
            tar.extractall(files, members=_data_members(tar, files))


def _data_members(tar: tarfile.TarFile, files: Path) -> list[tarfile.TarInfo]:
    """The members the "data" filter would let through, refused whole otherwise: plain files, folders and links
    that stay inside `files`, no devices, no set-uid bits."""
    root = files.resolve()
    members = []
    for member in tar.getmembers():
        target = (root / member.name.lstrip("/")).resolve()
        linked = (target.parent / member.linkname).resolve() if member.issym() else (
            (root / member.linkname.lstrip("/")).resolve() if member.islnk() else target)
        for path in (target, linked):
            if path != root and root not in path.parents:
                raise LabctlError(f"a node's files: {member.name!r} would land outside its folder")
        if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
            raise LabctlError(f"a node's files: {member.name!r} is a device or a pipe")
        member.mode &= 0o777
        members.append(member)
    return members


def _chown_tree(folder: Path, uid: int, gid: int) -> None:
    for top, _dirs, names in os.walk(folder):
        os.chown(top, uid, gid)
        for name in names:
            os.chown(os.path.join(top, name), uid, gid, follow_symlinks=False)


def _numeric_user(user: str | None) -> tuple[int, int] | None:
    if not user:
        return None
    uid, _, gid = user.partition(":")
    try:
        return int(uid), int(gid or uid)
    except ValueError:
        return None


def _write_private(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".new")
    temporary.write_text(text)
    os.chmod(temporary, 0o600)
    os.replace(temporary, path)


def _ticks(pid: int, children_only: bool = False) -> tuple[int, int]:
    """(CPU ticks, threads) of one process: utime+stime+cutime+cstime (only the children's with
    children_only), and its thread count (0 with children_only: a supervisor is not the node's)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0, 0
    utime, stime, cutime, cstime = (int(value) for value in fields[11:15])
    if children_only:
        return cutime + cstime, 0
    return utime + stime + cutime + cstime, int(fields[17])


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass
