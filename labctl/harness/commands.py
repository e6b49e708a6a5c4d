"""The harness's command table: name -> function(**params) -> dict (JSON-able).

Each harness module exports its own COMMANDS; they are merged here, and a name used
twice is a mistake caught at import.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from harness import agent, concurrency, impair, load, net, packets, proc, protocol, scenarios, tracer

COMMANDS: dict[str, Callable[..., Any]] = {}
for _module in (net, protocol, concurrency, load, proc, agent, packets, impair, tracer, scenarios):
    for _name, _function in _module.COMMANDS.items():
        if _name in COMMANDS:
            raise RuntimeError(f"harness command {_name!r} defined twice")
        COMMANDS[_name] = _function
