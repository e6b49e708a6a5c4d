"""A process's control group, read on this host: the CPU and the tasks of everything in it.

Why the cgroup: a container's cgroup counts the CPU of every task that ever ran in it, threads,
children, children that were reaped without a trace (SIGCHLD ignored: their time reaches no
parent's cutime), and nothing a process in it does can hide from it or see it being read.
Reading it from the host, not from inside the lab, means a server cannot tell when it is measured.

Both layouts are read: cgroup v1 (a `cpuacct` hierarchy: cpuacct.usage in ns, pids.current) and
v2 (one unified hierarchy: cpu.stat's usage_usec, pids.current). Where the files are is found
from /proc/self/mountinfo, not assumed, and the process's own group from /proc/<pid>/cgroup.
This works when labctl runs on the engine's own host (the Docker backend checks that the
container's PID is the one it expects; otherwise it asks the engine).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class CgroupUnreadable(Exception):
    """The process's cgroup files cannot be read here (gone, another host, no permission)."""


@dataclass(frozen=True)
class CgroupFiles:
    """Where one control group's counters are, once found (they stay put for its life)."""

    cpu: Path                  # cpuacct.usage (v1, ns) or cpu.stat (v2, usage_usec)
    tasks: Path | None         # pids.current, when the pids controller is there
    version: int               # 1 or 2

    def cpu_seconds(self) -> float:
        try:
            text = self.cpu.read_text()
        except OSError as error:
            raise CgroupUnreadable(f"{self.cpu}: {error.strerror or error}") from None
        if self.version == 1:
            return int(text.strip()) / 1e9
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec":
                return int(value) / 1e6
        raise CgroupUnreadable(f"{self.cpu} has no usage_usec")

    def task_count(self) -> int | None:
        if self.tasks is None:
            return None
        try:
            return int(self.tasks.read_text().strip())
        except (OSError, ValueError):
            return None


def _mounts(mountinfo: str) -> tuple[dict[str, Path], Path | None]:
    """(v1 controller -> mount point, the v2 mount point or None) from /proc/self/mountinfo's text."""
    v1: dict[str, Path] = {}
    v2: Path | None = None
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        fstype, options = tail[0], tail[2]
        if fstype == "cgroup2":
            v2 = Path(fields[4])
        elif fstype == "cgroup":
            for option in options.split(","):
                v1.setdefault(option.removeprefix("name="), Path(fields[4]))
    return v1, v2


def files_of(pid: int, proc: Path = Path("/proc")) -> CgroupFiles:
    """The counters of the cgroup process `pid` is in, on this host."""
    try:
        membership = (proc / str(pid) / "cgroup").read_text()
        mountinfo = (proc / "self" / "mountinfo").read_text()
    except OSError as error:
        raise CgroupUnreadable(f"process {pid}: {error.strerror or error}") from None
    v1, v2 = _mounts(mountinfo)
    groups: dict[str, str] = {}
    unified = None
    for line in membership.splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            unified = path
        for controller in controllers.split(","):
            groups[controller] = path
    if "cpuacct" in groups and "cpuacct" in v1:
        cpu = v1["cpuacct"] / groups["cpuacct"].lstrip("/") / "cpuacct.usage"
        tasks = v1["pids"] / groups["pids"].lstrip("/") / "pids.current" if "pids" in groups and "pids" in v1 \
            else None
        found = CgroupFiles(cpu, tasks, 1)
    elif unified is not None and v2 is not None:
        base = v2 / unified.lstrip("/")
        found = CgroupFiles(base / "cpu.stat", base / "pids.current", 2)
    else:
        raise CgroupUnreadable(f"process {pid}: no cpuacct (v1) or unified (v2) cgroup mounted here")
    found.cpu_seconds()  # readable now, or say why
    return found
