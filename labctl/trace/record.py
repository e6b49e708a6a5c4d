"""Recording a trace on a running lab: strace in the observer while the client plays a scenario.

The order, each step bounded in time on this side:
1. the observer starts `trace_threads` (harness/tracer.py) and writes its READY file once strace
   holds every server thread; the host looks for that file;
2. the client plays the scenario and captures its packets (`play_scenario`, harness/scenarios.py);
3. the host writes the STOP file: strace detaches, and its output comes back.
A failure or Ctrl-C anywhere still writes STOP (and the observer's trace ends by itself at its
`seconds` in any case): nothing is left tracing the server.

The backend must offer both halves: `thread_waits` (a node that may ptrace the server) and
`raw_packets` (a network of the lab's own to capture on). Without them the trace is refused, with
the backend named, before anything runs: half a trace would show a wrong picture.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import cast

from labctl.backends.base import FEATURES, Feature
from labctl.errors import LabctlError
from labctl.harness import scenarios, tracer
from labctl.harness.wire import ScenarioRun, StraceRun
from labctl.interrupts import uninterrupted

#: What a trace needs of a backend, and why (FEATURES words them).
NEEDS: tuple[Feature, ...] = ("thread_waits", "raw_packets")
#: The longest a trace may last in the observer, whatever happens here (seconds).
TRACE_LIMIT = 60.0
#: Seconds to wait for strace to hold the server (the observer's own limit, and the engine's exec start).
READY_WAIT = tracer.ATTACH_TIMEOUT + 10.0
SCENARIOS = scenarios.SCENARIOS
#: Seconds each request of a scenario may take.
SCENARIO_TIMEOUT = 5.0

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Recording:
    """What the observer's strace wrote and what the client's scenario saw, on one clock."""

    strace: StraceRun
    scenario: ScenarioRun


def refuse_without_features(backend) -> None:
    """A LabctlError naming the backend and what it lacks, when it cannot trace."""
    missing = [need for need in NEEDS if need not in backend.offers()]
    if missing:
        raise LabctlError(f"labctl trace cannot run on the {backend.name} backend, which does not offer "
                          + "; nor ".join(FEATURES[need] for need in missing)
                          + ": strace in the observer needs the one, the packet capture in the client the other "
                            "(use --backend docker)")


def record(lab, scenario: str = "one", *, clients: int = 4, pieces: int = 4, pause: float = 0.25,
           path: str = "/", progress: Progress | None = None) -> Recording:
    """Trace the server of a running lab while the client plays `scenario`."""
    say = progress or (lambda message: None)
    if scenario not in SCENARIOS:
        raise LabctlError(f"no scenario {scenario!r}; expected one of {', '.join(SCENARIOS)}")
    refuse_without_features(lab.backend)
    observer = _node_of(lab, "observer")
    client = _node_of(lab, "client")
    token = secrets.token_hex(8)
    ready, stop = tracer.control_paths(token)
    pool = ThreadPoolExecutor(max_workers=1)
    say("strace attaching to the server's threads (in the observer)")
    tracing = pool.submit(lab.harness, observer, "trace_threads", {"token": token, "seconds": TRACE_LIMIT},
                          timeout=TRACE_LIMIT + READY_WAIT + 10)
    try:
        _wait_ready(lab, observer, ready, tracing)
        say(f"the client plays the scenario {scenario!r} and captures its packets")
        answer = lab.harness(client, "play_scenario",
                             {"host": lab.server_host, "port": lab.server_port, "scenario": scenario, "path": path,
                              "clients": clients, "pieces": pieces, "pause": pause, "timeout": SCENARIO_TIMEOUT},
                             timeout=SCENARIO_TIMEOUT * 2 + pieces * pause + 30)
    except BaseException:
        with uninterrupted():
            _stop(lab, observer, stop, tracing, quietly=True)
            pool.shutdown(wait=False)
        raise
    with uninterrupted():
        traced = _stop(lab, observer, stop, tracing)
        pool.shutdown(wait=False)
    if "error" in answer:
        raise LabctlError(f"the client could not play the scenario: {answer['error']}")
    if "error" in traced:
        raise LabctlError(f"the observer could not trace the server: {traced['error']}")
    played = cast(ScenarioRun, answer)
    say(f"strace wrote {traced.get('bytes', 0)} bytes; the client saw {len(played.get('packets') or [])} packets")
    return Recording(strace=traced, scenario=played)


def _node_of(lab, role: str) -> str:
    nodes = lab.spec.nodes_by_role(role)
    if not nodes:
        raise LabctlError(f"lab.yaml has no {role} node: labctl trace needs an observer (strace) and a client "
                          "(the scenario and the packet capture)")
    return nodes[0].name


def _wait_ready(lab, observer: str, ready: str, tracing) -> None:
    """Until the observer's READY file exists; the trace's own answer when it ended first (an error)."""
    give_up = time.monotonic() + READY_WAIT
    while True:
        if tracing.done():
            answer = tracing.result()
            raise LabctlError(f"the observer could not trace the server: {answer.get('error', 'it stopped at once')}")
        if lab.exec(observer, ["test", "-e", ready], timeout=5).exit_code == 0:
            return
        if time.monotonic() >= give_up:
            raise LabctlError(f"strace did not hold the server's threads within {READY_WAIT:g} s")
        time.sleep(0.05)


def _stop(lab, observer: str, stop: str, tracing, quietly: bool = False) -> StraceRun:
    """Tell the trace to end (STOP) and take its answer. `quietly`: on the way out of a failure, whose
    error is the one to tell (the trace's own ends it within its limit in any case)."""
    if not tracing.done():
        try:
            lab.exec(observer, ["touch", stop], timeout=10)
        except LabctlError:
            pass  # the observer is gone (the server exited): the trace ended with it
    try:
        return cast(StraceRun, tracing.result(timeout=TRACE_LIMIT + READY_WAIT + 20))
    except Exception:
        if quietly:
            return {}
        raise
