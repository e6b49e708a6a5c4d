"""`labctl doctor`: is this machine ready to run a lab and grade? Asked before a long first run.

Two halves, so that the judgement is tested without an engine:
- `gather(...)` asks the machine and the engine for plain facts (`Facts`);
- `judge(facts)` turns them into findings, each OK, a warning or an error, with the fix in one
  line. A machine can grade when no finding is an error (`labctl doctor` exits 0, else 2).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Literal

from labctl import __version__
from labctl.backends.base import EngineFacts, Feature

Level = Literal["ok", "warning", "error"]

#: Free space the engine needs for labctl's images (about 1 GB with the C image) and a margin.
DISK_NEEDED = 2 * 2**30
#: Free space the offline bootstrap needs in the temporary folder (a root file system and its tar).
BOOTSTRAP_SPACE = 800 * 2**20
#: Open files a client needs beyond the connections it holds (the harness, Python, sockets it makes).
NOFILE_MARGIN = 64
#: The oldest engine API labctl is written against (one-shot statistics, log time windows).
API_NEEDED = (1, 41)


@dataclass(frozen=True)
class Finding:
    name: str
    level: Level
    detail: str
    fix: str = ""


@dataclass
class Facts:
    """What doctor found out; every field that could not be known is None."""

    python: str = sys.version.split()[0]
    labctl: str = __version__
    engine_error: str | None = None          # why the engine could not be reached
    engine: EngineFacts | None = None
    nofile_limit: int | None = None          # the engine's own hard limit on open files per container
    nofile_error: str | None = None
    images_missing: list[str] | None = None  # None: unknown (no engine, no project)
    base_source: str | None = None           # how a missing base would be made ("registry", "debootstrap"...)
    base_detail: str = ""
    engine_free: int | None = None           # bytes free where the engine keeps images (a local engine)
    temp_free: int | None = None             # bytes free in the temporary folder (for the offline bootstrap)
    project: str | None = None               # the project's folder, if doctor runs in one
    project_error: str | None = None         # lab.yaml could not be read
    lab_nofile: dict[str, int] = field(default_factory=dict)          # node -> limits.nofile in lab.yaml
    connections_needed: list[tuple[str, str, int]] = field(default_factory=list)  # (exercise, check, n)
    backend: str = "docker"                  # which backend was asked (labctl.backends)
    limits_by: str = ""                      # how that backend enforces the server's limits
    lacks: list[Feature] = field(default_factory=list)  # the FEATURES it does not offer (checks left out there)


def judge(facts: Facts) -> list[Finding]:
    """The findings, in the order a person reads them."""
    found = [Finding("labctl", "ok", f"{facts.labctl} on Python {facts.python}")]
    if facts.project_error:
        found.append(Finding("lab.yaml", "error", facts.project_error.splitlines()[0],
                             "fix the file (`labctl validate` lists every mistake)"))
    if facts.engine is None:
        found.append(Finding("engine", "error", facts.engine_error or "not reached",
                             "start Docker (`sudo systemctl start docker`), let this user use it (the `docker` "
                             "group), or point DOCKER_HOST at an engine"))
        return found
    engine = facts.engine
    if facts.backend == "local":
        return found + _local(facts)
    found.append(Finding("engine", "ok", f"{engine.kind} {engine.version} on {engine.os}"
                                         + ("" if engine.local else " (a remote engine)")))
    found.append(_api(engine))
    found.append(Finding("cgroups", "ok" if engine.cgroup_version in ("1", "2") else "warning",
                         f"version {engine.cgroup_version or '?'}; the server's CPU is read "
                         + ("from its cgroup on this host" if engine.local else
                            "from the engine's statistics (once a second: less precise)"),
                         "" if engine.cgroup_version in ("1", "2") else "labctl reads cgroup v1 and v2 only"))
    found.append(Finding("storage", "ok", f"{engine.storage_driver}: containers' roots are read-only and their "
                                          "writable folders live in memory, so no disk quota is needed"))
    found.append(_nofile(facts))
    found.append(_images(facts))
    found.append(_disk(facts))
    return [finding for finding in found if finding is not None]


def _local(facts: Facts) -> list[Finding]:
    """The local backend: no engine, no images; what it enforces and which checks it must leave out."""
    from labctl.backends.base import FEATURES

    assert facts.engine is not None
    found = [Finding("backend", "ok", f"local: the lab's nodes are processes on {facts.engine.os}; "
                                      f"limits by {facts.limits_by}")]
    if facts.lacks:
        found.append(Finding("checks", "warning", "not available here, and left out of the total where an exercise "
                                                  "uses them: " + "; ".join(FEATURES[name] for name in facts.lacks),
                             ("run as root with CAP_SYS_PTRACE for what each thread waits in; "
                              if "thread_waits" in facts.lacks else "") + "--backend docker runs every check"))
    return found


def _api(engine: EngineFacts) -> Finding:
    try:
        version = tuple(int(part) for part in engine.api_version.split(".")[:2])
    except ValueError:
        return Finding("engine API", "warning", f"version {engine.api_version!r} not understood")
    needed = ".".join(map(str, API_NEEDED))
    if version < API_NEEDED:
        return Finding("engine API", "error", f"{engine.api_version}; labctl needs {needed} (Docker 20.10 or later)",
                       "upgrade the Docker Engine")
    return Finding("engine API", "ok", f"{engine.api_version} (needs {needed})")


def _nofile(facts: Facts) -> Finding:
    if facts.nofile_limit is None:
        return Finding("open files", "warning", f"the engine's limit is not known yet ({facts.nofile_error})",
                       "run `labctl images build`, then `labctl doctor` again")
    limit = facts.nofile_limit
    short = [(exercise, check, n) for exercise, check, n in facts.connections_needed if n + NOFILE_MARGIN > limit]
    if short:
        exercise, check, n = max(short, key=lambda item: item[2])
        return Finding("open files", "error",
                       f"the engine lets a container open {limit} files; {exercise}'s {check} holds {n} connections "
                       f"(and {len(short) - 1} more checks need more than {limit})" if len(short) > 1 else
                       f"the engine lets a container open {limit} files; {exercise}'s {check} holds {n} connections",
                       "raise the engine's limit: `LimitNOFILE=1048576` in a systemd drop-in for docker.service "
                       "(/etc/systemd/system/docker.service.d/), then `systemctl daemon-reload; systemctl restart "
                       "docker`")
    asked = {node: n for node, n in facts.lab_nofile.items() if n > limit}
    if asked:
        nodes = ", ".join(f"{node} {n}" for node, n in asked.items())
        return Finding("open files", "warning", f"the engine's limit is {limit}; lab.yaml asks more ({nodes}): "
                                                f"labctl uses {limit} there, enough for every exercise's checks",
                       "raise the engine's LimitNOFILE, or lower limits.nofile in lab.yaml")
    return Finding("open files", "ok", f"the engine allows {limit} per container"
                                       + (" (enough for lab.yaml and every exercise)" if facts.project else ""))


def _images(facts: Facts) -> Finding:
    if facts.images_missing is None:
        return Finding("images", "warning", "not known: doctor runs outside a labctl project",
                       "run `labctl doctor` in the course's folder (the one with lab.yaml)")
    if not facts.images_missing:
        return Finding("images", "ok", "built: a grading starts at once")
    missing = ", ".join(facts.images_missing)
    if facts.base_source is None:
        return Finding("images", "error", f"{missing} missing, and none can be built: {facts.base_detail.splitlines()[0]}",
                       facts.base_detail.splitlines()[-1].removeprefix("Fix: ") if "\n" in facts.base_detail
                       else "install debootstrap (sudo apt-get install debootstrap), or let the engine reach a registry")
    return Finding("images", "warning", f"{missing} missing: the first grading builds them first (a minute or two); "
                                        f"the base from: {facts.base_source} ({facts.base_detail})",
                   "run `labctl images build` now, to have them ready")


def _disk(facts: Facts) -> Finding:
    if facts.engine_free is None:
        return Finding("disk", "ok", "not measured (the engine is on another host)")
    free = facts.engine_free
    needed = DISK_NEEDED if facts.images_missing else 0
    text = f"{free / 2**30:.1f} GiB free where the engine keeps images"
    if facts.images_missing and facts.base_source == "debootstrap" and facts.temp_free is not None \
            and facts.temp_free < BOOTSTRAP_SPACE:
        return Finding("disk", "error", f"{facts.temp_free / 2**20:.0f} MiB free in {tempfile.gettempdir()}; the "
                                        f"offline bootstrap needs {BOOTSTRAP_SPACE // 2**20} MiB",
                       "free some space there, or set TMPDIR to a folder with room")
    if free < needed:
        return Finding("disk", "error", f"{text}; building the images needs about {DISK_NEEDED // 2**30} GiB",
                       "free some space (`docker system prune` removes what no container uses)")
    if free < 2 * DISK_NEEDED:
        return Finding("disk", "warning", f"{text}: little room left", "`docker system prune` frees what is unused")
    return Finding("disk", "ok", text)


def ready(findings: list[Finding]) -> bool:
    return all(finding.level != "error" for finding in findings)


# -- asking the machine --------------------------------------------------------------------------

def gather(project=None, backend=None) -> Facts:
    """The facts, from the engine (a `Backend`, or the default one) and the project (or None)."""
    from labctl.errors import LabctlError

    facts = Facts()
    try:
        if backend is None:
            backend = project.backend if project is not None else _default_backend()
        facts.engine = backend.engine_facts()
    except LabctlError as error:
        facts.engine_error = str(error)
        return facts
    facts.backend, facts.limits_by = backend.name, backend.limits_by()
    if backend.name == "local":
        from labctl.backends.base import ALL_FEATURES

        facts.lacks = sorted(ALL_FEATURES - backend.offers())
        return facts
    if facts.engine.local:
        facts.engine_free = _free(facts.engine.data_root)
    facts.temp_free = _free(tempfile.gettempdir())
    try:
        facts.nofile_limit = backend.engine_nofile_limit()
    except LabctlError as error:
        facts.nofile_error = str(error)
    if project is not None:
        facts.project = str(project.root)
        try:
            facts.lab_nofile = {name: node.limits.nofile for name, node in project.spec.nodes.items()}
        except LabctlError as error:
            facts.project_error = str(error)
            return facts
        facts.connections_needed = _connections_needed(project.root)
        builder = project.image_builder()
        facts.images_missing = builder.missing()
        if facts.images_missing:
            facts.base_source, facts.base_detail = builder.base_source()
    return facts


def _default_backend():
    from labctl.backends import open_backend

    return open_backend()


def _free(path: str) -> int | None:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def _connections_needed(root) -> list[tuple[str, str, int]]:
    """(exercise, check name, connections) of every idle_connections check of the project's exercises."""
    from labctl.checks import load_catalog
    from labctl.checks.concurrency import IdleConnectionsParams
    from labctl.errors import LabctlError
    from labctl.exercise import find_exercises, load_exercise

    load_catalog()
    needed = []
    for folder in find_exercises(root):
        try:
            exercise = load_exercise(folder)
        except LabctlError:
            continue  # a broken exercise is `labctl validate`'s to report
        for check in exercise.checks:
            if isinstance(check.params, IdleConnectionsParams):
                needed.append((exercise.id, check.name, check.params.connections))
    return needed
