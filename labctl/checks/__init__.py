"""The check catalog: name -> (typed parameters, function(ctx, params) -> Outcome).

A check orchestrates harness commands (in the client/injector) and observer reads (in
the sidecar) and decides, on the host, whether the server passed, with a message a
student understands and the numbers behind it. Exercise YAML names checks by their
catalog name and gives parameters, validated by each check's pydantic model.

Instructors add a check next to an exercise with the same decorator (see
`load_exercise_checks`); it lands in the same registry and returns the same type.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict

from labctl.backends.base import Feature
from labctl.lab import Lab
from labctl.spec import Role


class CheckParams(BaseModel):
    """Base of every check's parameters: unknown keys are errors (typos must not pass silently)."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class Outcome:
    """What a check function returns; grading adds name, points, visibility and duration."""

    passed: bool
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)


#: What proves a failed check, kept with `labctl grade --evidence` (labctl/evidence): the packets of its
#: traffic (tcpdump in the client for the check's duration), or the server's threads at every look the check
#: judged (what it gives `CheckContext.saw`).
Proof = Literal["packets", "threads"]
PACKETS: frozenset[Proof] = frozenset({"packets"})
THREADS: frozenset[Proof] = frozenset({"threads"})
PROOF_WORDS: dict[Proof, str] = {
    "packets": "the packets of its traffic (a pcap, captured in the client) and a timing table of its connections",
    "threads": "a picture of the server's threads at every look it judged, and those looks as JSON",
}


class Witness(Protocol):
    """Who keeps what a check saw, when the grading keeps evidence (labctl/evidence's CheckEvidence)."""

    def saw(self, what: str, sample: Any) -> None: ...


@dataclass
class CheckContext:
    """What a check may use: the running lab and facts about the server under test."""

    lab: Lab
    port: int
    deadline: float                       # time.monotonic() by which the check must be done
    exercise_dir: Path | None = None      # files the exercise ships (docroot, expected bodies)
    docroot: Path | None = None           # the docroot on the host (for digests of expected files)
    client: str = "client"                # node names in the lab
    injector: str = "injector"
    observer: str = "observer"
    server: str = "server"
    host: str = "server"                  # where the client and injector reach the server (Lab.server_host)
    witness: Witness | None = None        # keeps what the check saw, with --evidence (None: nobody does)

    @classmethod
    def of(cls, lab: Lab, port: int, deadline: float, **more: Any) -> CheckContext:
        """A context whose nodes are the lab's, found by ROLE (lab.yaml may name them as it likes)."""
        def named(role: Role, default: str) -> str:
            found = lab.spec.nodes_by_role(role)
            return found[0].name if found else default

        return cls(lab=lab, port=port, deadline=deadline, client=named("client", "client"),
                   injector=named("injector", "injector"), observer=named("observer", "observer"),
                   server=lab.spec.server.name, host=lab.server_host, **more)

    @property
    def remaining(self) -> float:
        """Seconds left of this check's budget (never below a small floor for cleanup calls)."""
        return max(0.5, self.deadline - time.monotonic())

    def saw(self, what: str, sample: Any) -> None:
        """Hand a window of observer looks the check judges (observe.Sample) to the evidence, if it is kept."""
        if self.witness is not None:
            self.witness.saw(what, sample)

    def harness(self, node: str, command: str, params: dict[str, Any], timeout: float | None = None) -> dict:
        """Run a harness command, bounded by the check's remaining budget."""
        return self.lab.harness(node, command, params, timeout=min(timeout or self.remaining, self.remaining))


P = TypeVar("P", bound=CheckParams)


@dataclass(frozen=True)
class CheckDef(Generic[P]):
    name: str
    params: type[P]
    run: Callable[[CheckContext, P], Outcome]
    summary: str                          # one line: what it looks for and why
    default_timeout: float = 30.0
    #: What it needs of a backend beyond nodes and a connection to the server (base.FEATURES): where one
    #: is missing the check is not run and its points are left out ("not available on this backend").
    needs: frozenset[Feature] = frozenset()
    #: What proves it failed, kept with --evidence (Proof): its packets, the server's threads, or nothing.
    proof: frozenset[Proof] = frozenset()


REGISTRY: dict[str, CheckDef] = {}


def check(name: str, params: type[P], summary: str, default_timeout: float = 30.0,
          needs: frozenset[Feature] = frozenset(), proof: frozenset[Proof] = frozenset()):
    """Register a check function under `name` (decorator); `needs`: what it needs of a backend; `proof`: what
    --evidence keeps when it fails."""

    def register(function: Callable[[CheckContext, P], Outcome]) -> Callable[[CheckContext, P], Outcome]:
        if name in REGISTRY and REGISTRY[name].run is not function:
            raise ValueError(f"check {name!r} is registered twice")
        REGISTRY[name] = CheckDef(name, params, function, summary, default_timeout, frozenset(needs),
                                  frozenset(proof))
        return function

    return register


#: The built-in check modules, in the catalog's order: the network side, then the process side.
CATALOG_MODULES = ("protocol", "concurrency", "load", "process")


def load_catalog() -> dict[str, CheckDef]:
    """Import the built-in check modules (they register themselves) and return the registry,
    ordered as the catalog is documented: built-in modules in CATALOG_MODULES order, each in
    the order it defines its checks, then instructors' checks."""
    from labctl.checks import concurrency, load, process, protocol  # noqa: F401  (they register on import)

    def rank(item: tuple[int, CheckDef]) -> tuple[int, int]:
        position, definition = item
        module = definition.run.__module__.rsplit(".", 1)[-1]
        order = CATALOG_MODULES.index(module) if definition.run.__module__.startswith("labctl.checks.") \
            and module in CATALOG_MODULES else len(CATALOG_MODULES)
        return order, position

    ordered = [definition for _, definition in sorted(enumerate(REGISTRY.values()), key=rank)]
    REGISTRY.clear()
    REGISTRY.update((definition.name, definition) for definition in ordered)
    return REGISTRY


def load_exercise_checks(path: Path) -> None:
    """Import an instructor's checks.py next to an exercise; its @check functions register."""
    spec = importlib.util.spec_from_file_location(f"labctl_exercise_checks_{abs(hash(path))}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
