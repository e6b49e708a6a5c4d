"""Network-side measurements made from the client/injector container."""

from __future__ import annotations

import socket
import time


def wait_listening(host: str, port: int, timeout: float = 1.0, interval: float = 0.02) -> dict:
    """Try to connect until one succeeds or `timeout` passes.

    Used by `labctl up` to know when the server is ready: a refused connection is
    retried every `interval` s, so readiness is seen within tens of milliseconds.
    """
    deadline = time.monotonic() + timeout
    attempts = 0
    last_error = ""
    while True:
        attempts += 1
        try:
            with socket.create_connection((host, port), timeout=max(0.05, deadline - time.monotonic())):
                return {"listening": True, "attempts": attempts}
        except OSError as error:
            last_error = f"{type(error).__name__}: {error}"
        if time.monotonic() + interval >= deadline:
            return {"listening": False, "attempts": attempts, "last_error": last_error}
        time.sleep(interval)


COMMANDS = {"wait_listening": wait_listening}
