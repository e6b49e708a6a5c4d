"""The harness's command table: name -> function(**params) -> dict (JSON-able)."""

from __future__ import annotations

from typing import Callable

from harness import net

COMMANDS: dict[str, Callable[..., dict]] = {
    "wait_listening": net.wait_listening,
}
