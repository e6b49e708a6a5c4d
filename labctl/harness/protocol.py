"""Harness commands: protocol (being written)."""

from __future__ import annotations

from typing import Callable

COMMANDS: dict[str, Callable[..., dict]] = {}
