"""Impairments on a running lab: set, show and clear them on a client or the injector, and hold a check's
for that check alone.

Impairments are made in the node's own network namespace (NET_ADMIN there), never on the server, which
gets no capability at all; how each is made on the kernel at hand (tc netem, or NFQUEUE, iptables and
htb where netem is missing) is decided inside the node by harness/impair.py, and said back: every
answer names the mechanism of each impairment (`ImpairmentState.lines`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from labctl.errors import LabctlError
from labctl.harness.wire import DIRECTION_WORDS, MECHANISM_WORDS, Impaired
from labctl.impairment import CAPABILITY, IMPAIRED_ROLES, Impairment

if TYPE_CHECKING:
    from labctl.lab import Lab
    from labctl.spec import NodeSpec

__all__ = ["ImpairmentState", "clear_impairment", "during_check", "impairable", "restore_impairment",
           "set_impairment", "show_impairment"]


# -- what is set, as the node says ------------------------------------------------------------------------

#: The impairments by the key the harness uses, in the order they are shown; a jitter is its delay's
#: (one mechanism makes both), shown with it.
_SHOWN = ("delay", "loss", "rate")


@dataclass
class ImpairmentState:
    """What is set on one node and how each impairment is made there (from harness/impair.py)."""

    node: str
    impairment: Impairment | None
    facts: Impaired = field(default_factory=dict)  # type: ignore[assignment]  # total=False: {} is one

    @classmethod
    def of(cls, node: str, facts: Impaired) -> ImpairmentState:
        numbers = facts.get("set")
        return cls(node, Impairment.of(numbers) if numbers else None, facts)

    @property
    def mechanisms(self) -> dict[str, str]:
        return dict(self.facts.get("mechanisms") or {})

    @property
    def problems(self) -> list[str]:
        return list(self.facts.get("problems") or [])

    def summary(self) -> str:
        """One line: `client: delay 100ms ±10ms, loss 1% (delay: nfqueue, loss: iptables-statistic)`."""
        if self.impairment is None:
            return f"{self.node}: nothing set"
        how = ", ".join(f"{name}: {self.mechanisms[name]}" for name in _SHOWN if name in self.mechanisms)
        return f"{self.node}: {self.impairment} ({how})"

    def lines(self) -> list[str]:
        """Each impairment with its mechanism, where it acts and why that mechanism (what was missing)."""
        if self.impairment is None:
            return []
        delay = f"{self.impairment.delay}" + (f" ±{self.impairment.jitter}" if self.impairment.jitter else "")
        values = {"delay": delay, "loss": self.impairment.loss, "rate": self.impairment.rate}
        unavailable = self.facts.get("unavailable") or {}
        directions = self.facts.get("directions") or {}
        lines = []
        for name in _SHOWN:
            mechanism = self.mechanisms.get(name)
            if mechanism is None:
                continue
            why = [f"{what} unavailable: {words}" for what, words in unavailable.items()
                   if what == "netem" and mechanism != "netem" and name != "rate"
                   or what == "ifb" and directions.get(name) == "to-server"]
            lines.append(f"{name} {values[name]}: {MECHANISM_WORDS.get(mechanism, mechanism)}, "
                         f"{DIRECTION_WORDS.get(directions.get(name, ''), '')}" + (f" ({'; '.join(why)})" if why else ""))
        return lines

    def evidence(self) -> dict[str, Any]:
        """What a check's evidence says of the impairment it ran under."""
        return {"set": str(self.impairment) if self.impairment else None, "mechanisms": self.mechanisms,
                "directions": dict(self.facts.get("directions") or {})}


# -- on a lab -----------------------------------------------------------------------------------------------

def impairable(lab: Lab, node: str) -> NodeSpec:
    """The node's spec, if an impairment can be set on it here; else a LabctlError saying why not."""
    spec = lab._node(node)
    if "own_network" not in lab.backend.offers():
        raise LabctlError(f"impairments need a network of the lab's own: not available on the {lab.backend.name} "
                          "backend, which shares the host's (use --backend docker)")
    if spec.role not in IMPAIRED_ROLES:
        raise LabctlError(f"node {node} is the lab's {spec.role}: only a client or the injector can be impaired "
                          "(the server never gets NET_ADMIN; impairing the client's side delays, drops and limits "
                          "the server's packets as they arrive there)")
    if CAPABILITY not in spec.capabilities:
        raise LabctlError(f"node {node} lacks {CAPABILITY}, which tc and iptables need: add it to lab.yaml's "
                          f"nodes.{node}.capabilities")
    return spec


def set_impairment(lab: Lab, node: str, impairment: Impairment, without: tuple[str, ...] = ()) -> ImpairmentState:
    """Set exactly `impairment` on `node` (what was set before is cleared). `without`: kernel facilities to
    treat as missing ("netem", "ifb"), for tests of the fallbacks."""
    impairable(lab, node)
    facts = _ask(lab, node, "impair_set", {"host": lab.server_host, **impairment.params(), "without": list(without)})
    return ImpairmentState.of(node, facts)


def clear_impairment(lab: Lab, node: str) -> ImpairmentState:
    """Remove every impairment of `node`; safe to repeat."""
    impairable(lab, node)
    return ImpairmentState(node, None, _ask(lab, node, "impair_clear", {}))


def show_impairment(lab: Lab, node: str) -> ImpairmentState:
    """What is set on `node`, how, and what no longer holds."""
    impairable(lab, node)
    return ImpairmentState.of(node, _ask(lab, node, "impair_show", {}))


def restore_impairment(lab: Lab, node: str) -> ImpairmentState:
    """Put back the node's own impairment from lab.yaml, or none."""
    own = lab._node(node).impair
    return set_impairment(lab, node, own) if own is not None else clear_impairment(lab, node)


def _ask(lab: Lab, node: str, command: str, params: dict[str, Any]) -> Impaired:
    answer = lab.harness(node, command, params, timeout=30)
    if "error" in answer:
        hint = (f" (the {node} container has no NET_ADMIN: a lab made before lab.yaml gave it one; `labctl down`, "
                "then `labctl up` again)" if "Operation not permitted" in str(answer["error"]) else "")
        raise LabctlError(f"{command.replace('_', ' ')} on {node} failed: {answer['error']}{hint}")
    return answer  # type: ignore[return-value]  # the harness's JSON: wire.Impaired


@contextlib.contextmanager
def during_check(lab: Lab, impairment: Impairment | None) -> Iterator[dict[str, ImpairmentState]]:
    """A check's impairment on every node a check runs from (the client and the injector), for the `with`
    block; afterwards each node's own impairment from lab.yaml is put back (or none), also when the block
    failed. Without an impairment: nothing is touched."""
    if impairment is None:
        yield {}
        return
    nodes = [node.name for node in lab.spec.nodes.values() if node.role in IMPAIRED_ROLES]
    with ThreadPoolExecutor(max_workers=max(1, len(nodes))) as pool:
        try:
            states = dict(zip(nodes, pool.map(lambda name: set_impairment(lab, name, impairment), nodes), strict=True))
            yield states
        finally:
            list(pool.map(lambda name: restore_impairment(lab, name), nodes))
