"""The one vocabulary of I/O models: how a server serves many clients while it waits.

exercise.yaml's `model`, the io_model check's `expect`, the classifier's answer (labctl/classify.py)
and `labctl observe` all use these words. A model is what the classifier finds; a family names
several models, for an exercise that accepts any of them ("threaded": a thread per connection or a
pool). "busy-polling", "stopped" and "unknown" can be found but never expected.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

#: model -> what it means, in words for a student.
MODELS: dict[str, str] = {
    "blocking": "one client at a time: it waits on one client while the others wait in the listen queue",
    "thread-per-connection": "a new thread for each client",
    "thread-pool": "a pool of threads, made before any client came, shares the clients",
    "fork-per-connection": "a new process for each client",
    "prefork": "a pool of processes, made before any client came, shares the clients",
    "event-loop": "one thread waits on many sockets at once",
    "event-loop-workers": "several processes, each an event loop waiting on many sockets",
    "event-loop-threads": "an event loop, with other threads that serve clients too",
    "busy-polling": "it never sleeps: it spins, asking sockets again and again",
}
#: What the classifier may also answer: not models a server can be asked to have.
NOT_MODELS: dict[str, str] = {
    "stopped": "it is stopped (SIGSTOP, or a debugger): it serves nobody",
    "unknown": "its threads did not show how it serves clients",
}
#: family -> the models it names.
FAMILIES: dict[str, tuple[str, ...]] = {
    "threaded": ("thread-per-connection", "thread-pool"),
    "forking": ("fork-per-connection", "prefork"),
    "event-driven": ("event-loop", "event-loop-workers", "event-loop-threads"),
}
#: What an exercise may ask for: a model a correct server can have, or a family of them.
Expected = Literal["blocking", "thread-per-connection", "thread-pool", "fork-per-connection", "prefork",
                   "event-loop", "event-loop-workers", "event-loop-threads", "threaded", "forking", "event-driven"]
EXPECTABLE: tuple[str, ...] = tuple(name for name in MODELS if name != "busy-polling") + tuple(FAMILIES)


def members(name: str) -> tuple[str, ...]:
    """The models a name stands for: a family's models, or the model itself."""
    return FAMILIES.get(name, (name,))


def matches(found: str, expected: str | Sequence[str]) -> bool:
    """Is the model found one of those expected (models or families)?"""
    wanted = [expected] if isinstance(expected, str) else expected
    return any(found in members(name) for name in wanted)


def family_of(model: str) -> str | None:
    return next((family for family, names in FAMILIES.items() if model in names), None)


def words(name: str) -> str:
    """A model's meaning, a family's members, or a non-model's meaning."""
    if name in FAMILIES:
        return " or ".join(FAMILIES[name])
    return MODELS.get(name) or NOT_MODELS.get(name, name)
