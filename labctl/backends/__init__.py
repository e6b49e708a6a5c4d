"""The backends, by name: the only doors to an engine. `open_backend("local")` gives one.

    docker   the Docker Engine of DOCKER_HOST (or the default socket): each node a container
    local    this host's own processes, no engine (a grader that runs inside Gradescope's or
             PrairieLearn's own container); see local.py for what it can and cannot do

Chosen with `labctl --backend NAME` or $LABCTL_BACKEND; docker when neither says.
"""

from __future__ import annotations

import importlib
import os

from labctl.backends.base import Backend
from labctl.errors import LabctlError

#: name -> "module:class", imported only when chosen (the local backend needs no Docker SDK).
BACKENDS: dict[str, str] = {
    "docker": "labctl.backends.docker:DockerBackend",
    "local": "labctl.backends.local:LocalBackend",
}
DEFAULT = "docker"
ENV = "LABCTL_BACKEND"


def chosen(name: str | None = None) -> str:
    """The backend's name: the one given, else $LABCTL_BACKEND, else docker; a clear error for another."""
    picked = name or os.environ.get(ENV) or DEFAULT
    if picked not in BACKENDS:
        source = "--backend" if name else f"${ENV}"
        raise LabctlError(f"{source}: expected one of {', '.join(BACKENDS)}, found {picked!r}")
    return picked


def open_backend(name: str | None = None) -> Backend:
    """A backend, connected (EngineUnreachable when its engine does not answer)."""
    module, _, attribute = BACKENDS[chosen(name)].partition(":")
    return getattr(importlib.import_module(module), attribute)()
