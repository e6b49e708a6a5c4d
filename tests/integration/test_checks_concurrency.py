"""Proof that each concurrency check passes a correct server and fails the server it exists to catch.

Real Docker Engine, real containers. One lab per purpose-built server (tests/servers/conc_*;
conc_epoll runs three times: correct, BUG=blocking_send and BUG=partial), all started at once
when the module begins and removed when it ends; each row of MATRIX runs one check on one of them.
The docroot is index.html from tests/servers/conc_docroot
plus an 8 MiB large.bin generated here (not committed).

Rows run in the order listed: idle_connections rows come last, because a select() server
(and a thread-per-connection server) dies under 2000 idle connections, as it should.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from labctl.checks import (
    REGISTRY,
    CheckContext,
    Outcome,
    concurrency,  # noqa: F401  (registers the checks)
)

SERVERS = Path(__file__).resolve().parent.parent / "servers"
LARGE_SIZE = 8 << 20
# The name MATRIX uses -> (folder in tests/servers, the server's environment: $BUG picks conc_epoll's bug).
SERVERS_UNDER_TEST: dict[str, tuple[str, dict[str, str]]] = {
    "conc_epoll": ("conc_epoll", {}),
    "conc_threaded": ("conc_threaded", {}),
    "conc_select": ("conc_select", {}),
    "conc_blocking": ("conc_blocking", {}),
    "conc_epoll_blocking_send": ("conc_epoll", {"BUG": "blocking_send"}),
    "conc_epoll_partial": ("conc_epoll", {"BUG": "partial"}),
    "conc_overload": ("conc_overload", {}),
    "conc_backlog5": ("conc_backlog5", {}),
}

# (server, check, params, passes, words the message must contain)
MATRIX = [
    # slow_client: a half-sent request must not block everybody else.
    ("conc_epoll", "slow_client", {}, True, "answered in"),
    ("conc_threaded", "slow_client", {}, True, "answered in"),
    ("conc_select", "slow_client", {"slow_clients": 5}, True, "5 slow clients"),
    ("conc_epoll_blocking_send", "slow_client", {}, True, "answered in"),
    ("conc_blocking", "slow_client", {}, False, "one client at a time"),
    # slow_reader: a client that reads slowly must not block everybody else, and gets the whole file.
    ("conc_epoll", "slow_reader", {}, True, "whole file"),
    ("conc_threaded", "slow_reader", {}, True, "whole file"),
    ("conc_select", "slow_reader", {}, True, "whole file"),
    ("conc_blocking", "slow_reader", {}, False, "stuck in send"),
    ("conc_epoll_blocking_send", "slow_reader", {}, False, "stuck in send"),
    ("conc_epoll_partial", "slow_reader", {}, False, "received only"),
    # concurrent_clients: many at once, no errors.
    ("conc_epoll", "concurrent_clients", {}, True, "all 200 answered"),
    ("conc_threaded", "concurrent_clients", {"clients": 50, "requests": 10}, True, "all 500 answered"),
    ("conc_blocking", "concurrent_clients", {}, True, "all 200 answered"),   # fast requests: no errors
    ("conc_overload", "concurrent_clients", {}, False, "requests failed"),
    ("conc_overload", "concurrent_clients", {"clients": 1}, True, "all 10 answered"),
    ("conc_backlog5", "concurrent_clients", {"clients": 100, "requests": 3}, True, "all 300 answered"),
    ("conc_epoll", "concurrent_clients", {"p99_limit": 0.000001}, False, "99th percentile"),
    # idle_connections: 2000 idle connections (above FD_SETSIZE 1024), then a request.
    ("conc_epoll", "idle_connections", {}, True, "held 2000 idle connections"),
    ("conc_epoll_blocking_send", "idle_connections", {}, True, "held 2000 idle connections"),
    ("conc_overload", "idle_connections", {"connections": 50}, False, "closed"),
    ("conc_select", "idle_connections", {"connections": 800}, True, "held 800 idle connections"),
    ("conc_select", "idle_connections", {}, False, "The server's log says select() failed"),
    ("conc_blocking", "idle_connections", {}, False, "stopped taking new connections"),
    ("conc_threaded", "idle_connections", {}, False, "idle connection"),
]

DURATIONS: list[tuple[str, float, str]] = []


@pytest.fixture(scope="module")
def docroot(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("conc_docroot")
    shutil.copy(SERVERS / "conc_docroot" / "index.html", root / "index.html")
    (root / "large.bin").write_bytes(random.Random(1).randbytes(LARGE_SIZE))
    return root


@pytest.fixture(scope="module")
def labs(project, images, docroot):
    """Every server's lab, started in parallel once for the module; all removed at its end."""
    from labctl.lab import Lab, Submission

    made: dict[str, Lab] = {}
    started = time.monotonic()

    def start(name: str) -> None:
        lab = Lab.create(project.spec, project.backend)
        made[name] = lab  # before up(): if up() fails half-way, the finally below still removes it
        folder, env = SERVERS_UNDER_TEST[name]
        lab.up(images, Submission(path=SERVERS / folder, docroot=docroot, env=env))

    try:
        with ThreadPoolExecutor(max_workers=len(SERVERS_UNDER_TEST)) as pool:
            list(pool.map(start, SERVERS_UNDER_TEST))
        print(f"\n[conc] {len(made)} labs up in {time.monotonic() - started:.1f} s")
        yield made
    finally:
        for lab in made.values():
            lab.down()
        if DURATIONS:
            print("\n[conc] check durations:")
            for row, seconds, message in DURATIONS:
                print(f"  {seconds:6.2f} s  {row}: {message[:140]}")


def run_check(lab, name: str, params: dict, docroot: Path) -> tuple[Outcome, float]:
    definition = REGISTRY[name]
    ctx = CheckContext(lab=lab, port=8080, deadline=time.monotonic() + definition.default_timeout, docroot=docroot)
    started = time.monotonic()
    outcome = definition.run(ctx, definition.params(**params))
    return outcome, time.monotonic() - started


@pytest.mark.parametrize("server, name, params, passes, words", MATRIX,
                         ids=[f"{row[1]}-{row[0]}-{'pass' if row[3] else 'fail'}"
                              + (f"-{'-'.join(f'{k}={v}' for k, v in row[2].items())}" if row[2] else "")
                              for row in MATRIX])
def test_check_verdict(labs, docroot, server, name, params, passes, words):
    outcome, seconds = run_check(labs[server], name, params, docroot)
    DURATIONS.append((f"{name} on {server} {params or ''}", seconds, outcome.message))
    print(f"\n{name} on {server}: passed={outcome.passed} in {seconds:.2f} s\n  {outcome.message}\n  {outcome.evidence}")
    assert outcome.passed is passes, outcome.message
    assert words in outcome.message
    assert seconds < REGISTRY[name].default_timeout



def test_a_small_listen_backlog_is_slow_not_wrong_also_on_a_busy_machine(labs, docroot):
    """The verdict on a marginal server must not depend on what else the machine does: with every
    core of the host kept busy, 100 clients at once against a backlog of 5 still all get answers
    (the clients start over half a second: a burst of SYNs would overflow the queue and the
    kernel's retransmissions, all in step, could outlast any timeout on a busy machine)."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    try:
        outcome, seconds = run_check(labs["conc_backlog5"], "concurrent_clients", {"clients": 100, "requests": 3},
                                     docroot)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    print(f"\nbusy machine: {outcome.message} ({seconds:.1f} s)\n  {outcome.evidence}")
    assert outcome.passed and "all 300 answered" in outcome.message, outcome.message
