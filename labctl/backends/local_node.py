"""One node of a local lab: the supervisor process that is to a node what the engine is to a container.

    python3 -m labctl.backends.local_node NODE_DIR

It outlives the labctl that started it (its own session), so `labctl up --backend local` leaves a
lab running as `labctl up` on Docker does. It reads NODE_DIR/plan.json (written by LocalBackend),
and then:
- becomes a child subreaper, so that every descendant of the node, even one that double-forks
  into the background, stays in its tree (orphans come back to it, not to the host's init);
- starts the node's command as the node's uid (a uid of the lab's own for the server, when labctl
  runs as root), with rlimits set before the exec: tasks (RLIMIT_NPROC, per uid), open files,
  file size, address space (a backstop), no core files;
- keeps the node's output in NODE_DIR/log, at most log_bytes in each of two files (a flood stays
  small), and the node's state in NODE_DIR/state.json (running, exited, its exit code);
- watches what rlimits cannot bound for a whole tree: the resident memory of all its processes
  (over the limit: all killed, `oom_killed`, as the kernel's OOM killer would in a cgroup) and the
  bytes the node's uid keeps in its folder and the host's shared temporary folders (over the limit:
  all killed, said in the log);
- when the command's first process ends, or on SIGTERM, kills the whole tree (as a container's
  end does), then exits.

It imports nothing of labctl beyond this file: it is started with the same Python as labctl.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36
#: How often memory is looked at, and disk (a walk of folders) every DISK_EVERY looks.
WATCH_INTERVAL = 0.1
DISK_EVERY = 5
#: The host's folders anyone may write to: a node's uid's files there count as its disk, and go with it.
SHARED_TEMP = ("/tmp", "/var/tmp", "/dev/shm")


# -- a node's processes, from /proc ----------------------------------------------------------------

def parents() -> dict[int, int]:
    """Every pid of the host and its parent's."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    found[int(entry)] = int(stat.read().rpartition(")")[2].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    return found


def tree(root: int) -> list[int]:
    """The descendants of `root` (not `root` itself)."""
    children: dict[int, list[int]] = {}
    for pid, ppid in parents().items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def pids_of_uid(uid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    found.append(int(entry))
            except OSError:
                continue
    return found


def kill_all(root: int, uid: int | None, reap: bool = False) -> None:
    """SIGKILL every descendant of `root`, and with a uid of the lab's own every process of that uid, until
    none is left (a fork bomb forks while it is being killed). `reap`: only in the supervisor, the parent of
    what it kills (labctl itself must not reap children that are not its to wait for)."""
    for _ in range(200):
        victims = set(tree(root)) | (set(pids_of_uid(uid)) if uid is not None else set())
        victims.discard(os.getpid())
        if not victims:
            return
        if uid is not None:
            _kill_uid(uid)
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if reap:
            _reap()
        time.sleep(0.01)


def _kill_uid(uid: int) -> None:
    """kill(-1, SIGKILL) as `uid`: every process of that uid at once, wherever it is (root only)."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            os.kill(-1, signal.SIGKILL)
        finally:
            os._exit(0)
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def _reap() -> dict[int, int]:
    """Reap every child that ended (orphans included: this is their subreaper); pid -> wait status."""
    ended: dict[int, int] = {}
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return ended
        if pid == 0:
            return ended
        ended[pid] = status


def resident_bytes(pids: list[int]) -> int:
    """The memory the processes use together, each shared page counted once in all (their proportional set
    sizes, as a cgroup counts them): a fork bomb's copies of one interpreter weigh one interpreter."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as rollup:
                for line in rollup:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
        except PermissionError:  # no CAP_SYS_PTRACE for another uid's maps: its resident size (shared pages
            total += _resident(pid)  # counted in each process: stricter, never blind)
        except (OSError, ValueError, IndexError):
            continue
    return total


def _resident(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def folder_bytes(folder: str, uid: int | None = None) -> int:
    """Bytes of the files below `folder`, links not followed. With `uid`, only that uid's files in a shared
    folder, looking only where it can have put them: folders it owns or that anyone may write to (a walk
    of a busy /tmp stays cheap)."""
    total = 0
    for top, dirs, files in os.walk(folder, onerror=lambda error: None):
        if uid is not None:
            dirs[:] = [name for name in dirs if _may_hold(os.path.join(top, name), uid)]
        for name in files:
            try:
                info = os.lstat(os.path.join(top, name))
            except OSError:
                continue
            if uid is None or info.st_uid == uid:
                total += info.st_blocks * 512
    return total


def _may_hold(path: str, uid: int) -> bool:
    """Can `uid` have made files in this folder? (its own, or one that anyone may write to)"""
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return info.st_uid == uid or bool(info.st_mode & 0o002)


def remove_files_of(uid: int, folders: tuple[str, ...] = SHARED_TEMP) -> None:
    """Delete what `uid` left in the host's shared temporary folders (a node's files go with it): its files,
    and its folders whole."""
    for folder in folders:
        for top, dirs, files in os.walk(folder, onerror=lambda error: None):
            keep = []
            for name in dirs:
                path = os.path.join(top, name)
                try:
                    owned = os.lstat(path).st_uid == uid
                except OSError:
                    continue
                if owned:
                    shutil.rmtree(path, ignore_errors=True)
                elif _may_hold(path, uid):
                    keep.append(name)
            dirs[:] = keep
            for name in files:
                path = os.path.join(top, name)
                try:
                    if os.lstat(path).st_uid == uid:
                        os.unlink(path)
                except OSError:
                    continue


# -- the supervisor ------------------------------------------------------------------------------------

class Log:
    """A node's output in two files of at most `limit` bytes each: `log` (newest) and `log.1`."""

    def __init__(self, path: Path, limit: int):
        self.path, self.limit = path, limit
        self.file = open(path, "ab", buffering=0)  # noqa: SIM115  (held for the node's life)

    def write(self, data: bytes) -> None:
        if self.file.tell() + len(data) > self.limit:
            self.file.close()
            os.replace(self.path, self.path.with_name(self.path.name + ".1"))
            self.file = open(self.path, "ab", buffering=0)  # noqa: SIM115
            data = data[-self.limit:]
        self.file.write(data)


class Supervisor:
    def __init__(self, folder: Path):
        self.folder = folder
        self.plan = json.loads((folder / "plan.json").read_text())
        self.uid: int | None = self.plan.get("own_uid")
        self.state: dict = {"status": "created", "supervisor": os.getpid()}
        self.stopping = False

    def write_state(self, **changes) -> None:
        self.state.update(changes)
        temporary = self.folder / "state.json.new"
        temporary.write_text(json.dumps(self.state))
        os.replace(temporary, self.folder / "state.json")

    def limits(self) -> None:
        """In the child, before exec: what rlimits can bound, per process or per uid."""
        limits = self.plan["limits"]
        os.umask(0o022)
        for which, value in ((resource.RLIMIT_NOFILE, limits["nofile"]), (resource.RLIMIT_FSIZE, limits["file_bytes"]),
                             (resource.RLIMIT_AS, limits["address_bytes"]), (resource.RLIMIT_CORE, 0)):
            _, hard = resource.getrlimit(which)
            value = value if hard == resource.RLIM_INFINITY else min(value, hard)
            resource.setrlimit(which, (value, value))
        if self.uid is not None:  # a uid of the lab's own: the task limit is this node's alone
            resource.setrlimit(resource.RLIMIT_NPROC, (limits["tasks"], limits["tasks"]))

    def run(self) -> int:
        os.umask(0o077)  # its log and state are nobody else's to read (the server's uid least of all)
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        log = Log(self.folder / "log", self.plan["log_bytes"])
        reader, writer = os.pipe()
        user = self.plan.get("user")
        try:
            child = subprocess.Popen(
                self.plan["command"], cwd=self.plan["cwd"], env=self.plan["env"], stdin=subprocess.DEVNULL,
                stdout=writer, stderr=writer, preexec_fn=self.limits, close_fds=True, start_new_session=True,
                user=user[0] if user else None, group=user[1] if user else None,
                extra_groups=[] if user else None)
        except OSError as error:
            os.close(writer)
            log.write(f"labctl: cannot run {self.plan['command'][0]}: {error.strerror or error}\n".encode())
            self.write_state(status="exited", exit_code=127, finished=time.time())
            return 0
        os.close(writer)
        self.write_state(status="running", pid=child.pid, started=time.time())
        code = self._watch(child, reader, log)
        kill_all(os.getpid(), self.uid, reap=True)
        _drain(reader, log)
        if self.uid is not None:
            remove_files_of(self.uid)
        self.write_state(status="exited", exit_code=code, finished=time.time())
        return 0

    def _watch(self, child: subprocess.Popen, reader: int, log: Log) -> int:
        """Until the first process ends (or SIGTERM): copy the output, reap orphans, watch memory and disk.
        Returns the exit code as an engine says it (128 + signal for a killed process)."""
        limits, looks = self.plan["limits"], 0
        open_reader = True
        while not self.stopping:
            if open_reader:
                ready, _, _ = select.select([reader], [], [], WATCH_INTERVAL)
                if ready:
                    open_reader = _copy_available(reader, log)
            else:
                time.sleep(WATCH_INTERVAL)
            status = _reap().get(child.pid)
            if status is not None:
                return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
            if not self.plan.get("watch", True):
                continue
            looks += 1
            members = tree(os.getpid())
            if resident_bytes(members) > limits["memory_bytes"]:
                self.write_state(oom_killed=True)
                log.write(f"labctl: the node used more than {limits['memory_bytes'] // 2**20} MiB of memory: "
                          "killed (as an out-of-memory kill)\n".encode())
                return 137
            if looks % DISK_EVERY == 0 and self._disk_bytes() > limits["disk_total_bytes"]:
                self.write_state(disk_full=True)
                log.write(f"labctl: the node's files took more than {limits['disk_total_bytes'] // 2**20} MiB: "
                          "killed\n".encode())
                return 137
        return 137  # stopped from outside: killed, as `docker rm -f` kills

    def _disk_bytes(self) -> int:
        total = folder_bytes(self.plan["files_root"])
        if self.uid is not None:
            total += sum(folder_bytes(folder, self.uid) for folder in SHARED_TEMP)
        return total

    def _stop(self, signum, frame) -> None:
        self.stopping = True


def _copy_available(reader: int, log: Log) -> bool:
    """Copy everything the node has written so far (not one chunk: a writer must never wait on this
    supervisor, or what it writes reaches the log late). False once the node closed its output."""
    os.set_blocking(reader, False)
    try:
        while True:
            try:
                data = os.read(reader, 1 << 20)
            except BlockingIOError:
                return True
            if not data:
                return False
            log.write(data)
    finally:
        os.set_blocking(reader, True)


def _drain(reader: int, log: Log) -> None:
    """What the node wrote before its end, up to the log's size (its writers are gone by now)."""
    os.set_blocking(reader, False)
    while True:
        try:
            data = os.read(reader, 65536)
        except BlockingIOError:
            break
        if not data:
            break
        log.write(data)
    os.close(reader)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python3 -m labctl.backends.local_node NODE_DIR", file=sys.stderr)
        return 2
    return Supervisor(Path(argv[1])).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
