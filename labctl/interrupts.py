"""Ctrl-C and SIGTERM: the first stops what runs, later ones are ignored while labctl cleans up.

"Ignored" is a Python handler that does nothing, never SIG_IGN: a signal that arrived while its
handler was being changed is still pending, and CPython, finding SIG_IGN as the handler of a
pending signal, prints "OSError: Signal 2 ignored due to race condition" with a traceback. Two
quick Ctrl-C in a row did exactly that. Stdlib only: `labctl/__main__.py` uses it before anything
heavy is imported.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

STOPPING_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _ignore(signum: int, frame: object) -> None:
    """A signal that comes while labctl is already stopping: nothing to do."""


def raise_interrupt(signum: int, frame: object) -> None:
    """The first Ctrl-C (or SIGTERM) stops what runs; the ones after it are ignored, so that the
    cleanup it starts (removing a lab) cannot itself be cut short by an impatient second one."""
    ignore_interrupts()
    raise KeyboardInterrupt


def ignore_interrupts() -> None:
    for number in STOPPING_SIGNALS:
        signal.signal(number, _ignore)


def stop_on_interrupts() -> None:
    for number in STOPPING_SIGNALS:
        signal.signal(number, raise_interrupt)


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM back for the block; if one came, raise KeyboardInterrupt after it
    (unless labctl is already stopping: then it was one more to ignore).

    Signals reach only the main thread, so elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {number: signal.signal(number, lambda signum, frame: received.append(signum))
                for number in STOPPING_SIGNALS}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        if received and previous[signal.SIGINT] is not _ignore:  # not while already stopping
            raise KeyboardInterrupt


#: Set by a batch or a farm worker for the `labctl grade` it starts: the pid of that parent.
PARENT_VARIABLE = "LABCTL_EXIT_WITH_PARENT"
#: How often a child looks whether its parent is still there (seconds).
PARENT_POLL = 0.5


def exit_with_parent() -> None:
    """When $LABCTL_EXIT_WITH_PARENT names this process's parent, stop (as on SIGTERM: the lab is removed)
    once that parent is gone. A worker killed -9 cannot stop its gradings; they see it is gone (they were
    handed to another parent) and stop themselves. A thread that polls getppid(): prctl's PDEATHSIG would
    fire when the *thread* that started the child ends, which a pool's thread does."""
    import os

    expected = os.environ.get(PARENT_VARIABLE, "")
    if not expected.isdigit() or int(expected) != os.getppid():
        return

    def watch() -> None:
        import time

        while os.getppid() == int(expected):
            time.sleep(PARENT_POLL)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
