"""labctl trace and labctl observe on the real engine, on the exercises' reference solutions.

What the issue says must be seen: the blocking server's one thread; the threaded server's new
thread per connection; the event loop's epoll_wait returns linked to the packets that woke them;
wake-up latencies above zero, measured (the clock check holds them to the pairs that cannot be in
the wrong order). And `labctl observe --json`: a busy-polling server's one thread near the CPU its
cgroup counted, an idle blocking server's near 0.

One lab per reference solution, made once and reused by the tests that need it (only one at a time:
the busy-polling mutant eats a CPU), removed as the tests move on, in a finally.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest
from conftest import OWNER, ROOT

from labctl.trace import record, timeline

EXERCISES = ROOT / "exercises"
SCHEMA = json.loads((ROOT / "labctl" / "schemas" / "trace.schema.json").read_text())


def labctl(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "labctl", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "LABCTL_OWNER": OWNER}, timeout=timeout)


@pytest.fixture(scope="module")
def lab_of(project) -> Iterator[Callable[..., object]]:
    """lab_of("polling") / lab_of("polling", "mutants/busy_poll"): that server's lab as its exercise runs it,
    started once; the previous one is removed first."""
    from labctl.grading import with_server_image
    from labctl.lab import Lab, Submission

    current: dict[tuple[str, str], Lab] = {}

    def get(exercise: str, folder: str = "solution") -> Lab:
        if (exercise, folder) in current:
            return current[(exercise, folder)]
        for lab in current.values():
            lab.down()
        current.clear()
        loaded = project.exercise(exercise)
        image, extra = loaded.server_image()
        spec = with_server_image(project.spec, image)
        tags = project.ensure_images(names=sorted({node.image for node in spec.nodes.values()}), extra=extra)
        lab = Lab.create(spec, project.backend)
        current[(exercise, folder)] = lab
        return lab.up(tags, Submission.for_exercise(loaded, EXERCISES / exercise / folder))

    try:
        yield get
    finally:
        for lab in current.values():
            lab.down()


def traced(lab, scenario: str, **options) -> timeline.Timeline:
    recording = record.record(lab, scenario, **options)
    assert recording.scenario["stamped"], "the capture's timestamps were never the kernel's"
    built = timeline.build(recording.strace, recording.scenario)
    print(f"{scenario}: {len(built.lanes)} threads, {len(built.calls)} calls, {len(built.packets)} packets; "
          + "; ".join(f"{link.tid} {built.calls[link.call].name} {link.latency * 1e6:.0f} µs"
                      f"{' woke' if link.woke else ''}{' bounded' if link.bounded else ''}" for link in built.links)
          + f"; clocks: {built.clock.words}; notes: {built.notes}")
    assert built.clock.wrong == 0 and built.clock.wrong_sends == 0, built.clock.words
    assert all(link.latency > 0 for link in built.links)
    return built


def test_the_blocking_reference_serves_every_connection_in_its_one_thread(lab_of):
    built = traced(lab_of("blocking"), "concurrent", clients=3)
    only, = built.lanes
    assert only.existed and only.tid == only.pid and only.ended is None
    accepted = {built.packets[link.packet].client_port for link in built.links if link.how == "accepted"}
    assert len(accepted) == 3 and {link.tid for link in built.links} == {only.tid}
    assert built.wake_ups, "the one thread was asleep in accept4 when the first client came"


def test_observe_json_shows_an_idle_blocking_server_near_no_cpu(lab_of):
    lab = lab_of("blocking")
    looked = labctl("observe", "--lab", lab.id, "--json")
    assert looked.returncode == 0, looked.stderr
    look, = [json.loads(line) for line in looked.stdout.splitlines()]
    threads = [thread for process in look["processes"] for thread in process["threads"]]
    assert len(threads) == 1 and threads[0]["syscall_name"] == "accept4" and threads[0]["wait"] == "new-connection"
    assert 0.0 <= threads[0]["cpu_percent"] <= 5.0 and look["interval"] > 0


def test_the_threaded_reference_starts_a_thread_per_connection(lab_of):
    built = traced(lab_of("threaded"), "concurrent", clients=3)
    main = next(lane for lane in built.lanes if lane.existed and lane.tid == lane.pid)
    born = [lane for lane in built.lanes if not lane.existed and lane.born is not None]
    assert len(born) >= 3 and all(lane.parent == main.tid and lane.pid == main.pid for lane in born)
    accepts = [link for link in built.links if link.how == "accepted"]
    receives = {built.packets[link.packet].client_port: link.tid for link in built.links if link.how == "received"}
    assert len(accepts) == 3 and {link.tid for link in accepts} == {main.tid}
    assert len(receives) == 3 and len(set(receives.values())) == 3 and main.tid not in receives.values()


def test_labctl_trace_links_the_polling_reference_s_epoll_wait_returns_to_packets(lab_of, tmp_path):
    lab = lab_of("polling")
    page, data = tmp_path / "trace.html", tmp_path / "trace.json"
    run = labctl("trace", "--lab", lab.id, "--scenario", "slow-client", "-o", str(page), "--json", str(data),
                 "--load-curve")
    assert run.returncode == 0, run.stderr
    assert "What woke the server" in run.stdout and "epoll_wait" in run.stdout
    document = json.loads(data.read_text())
    __import__("jsonschema").validate(document, SCHEMA)
    woken = [link for link in document["links"] if link["syscall"] == "epoll_wait" and link["woke"]]
    print(json.dumps(document["links"], indent=1), document["wake_up_latency_us"], document["clock_check"])
    assert len(woken) >= 3 and all(link["latency_us"] > 0 for link in woken)  # three pauses: three wake-ups at least
    assert document["clock_check"]["wrong_order"] == 0 and document["clock_check"]["pairs"] >= 5
    html = page.read_text()
    assert html.count("<svg") >= 3 and "What woke the server" in html and "<script" not in html
    # --load-curve: the event loop's curve after the trace, on the page and in the JSON (the check would pass)
    curve = document["load_curve"]
    assert [step["clients"] for step in curve["steps"]] == [1, 8, 64, 256] and curve["passed"], curve["verdict"]
    assert "Under load" in html and "would pass load_curve" in run.stdout


def test_observe_json_shows_a_busy_poller_s_thread_using_the_cpu_its_cgroup_counts(lab_of):
    lab = lab_of("polling", "mutants/busy_poll")
    before = lab.usage("server")
    looked = labctl("observe", "--lab", lab.id, "--json", "--watch", "1", "--count", "2")
    after = lab.usage("server")
    assert looked.returncode == 0, looked.stderr
    looks = [json.loads(line) for line in looked.stdout.splitlines()]
    counted = 100.0 * (after.cpu_seconds - before.cpu_seconds) / (after.at - before.at)
    shares = [[thread["cpu_percent"] for process in look["processes"] for thread in process["threads"]]
              for look in looks]
    print(f"per look, each thread's CPU %: {shares}; the cgroup counted {counted:.0f} % over the whole call")
    assert len(looks) == 2 and all(len(threads) == 1 for threads in shares)  # one thread does it all
    # As much as the cgroup counted: the looks cover most of the cgroup's window (the rest is labctl starting,
    # while the same loop spins), within what a shared, loaded machine does to windows that are not the same.
    spent = sum(threads[0] * look["interval"] for threads, look in zip(shares, looks, strict=True))
    average = spent / sum(look["interval"] for look in looks)
    assert average > 5.0 and 0.5 * counted <= average <= 1.5 * counted + 5.0


def test_a_busy_poller_s_flood_of_syscalls_makes_a_bounded_trace(lab_of, tmp_path):
    """A server that never sleeps makes tens of thousands of syscalls a second under strace: the trace is
    cut at its limit (and says so), and the page and the JSON stay bounded and whole."""
    from labctl.harness import tracer
    from labctl.trace import page

    recording = record.record(lab_of("polling", "mutants/busy_poll"), "one")
    kept = len(recording.strace["text"].encode())
    print(f"strace wrote {recording.strace['bytes']} bytes, kept {kept}, stopped by {recording.strace['stopped_by']}")
    assert kept <= tracer.MAX_BYTES
    built = timeline.build(recording.strace, recording.scenario)
    assert (recording.strace["stopped_by"] == "size") == bool(recording.strace["truncated"])
    if recording.strace["truncated"]:
        assert any("it ends early" in note for note in built.notes)
    __import__("jsonschema").validate(built.to_json(), SCHEMA)
    written = page.write(built, tmp_path / "busy.html")
    assert written.stat().st_size < 16 * 2**20, written.stat().st_size
    running = [lane for lane in built.lanes if lane.calls]
    assert len(running) == 1
    # never asleep: it asks every socket again and again, and nearly every accept finds no one (EAGAIN); how
    # many times it asks depends on how much CPU a loaded machine leaves it, not what it does with it
    accepts = [built.calls[index] for index in running[0].calls if built.calls[index].name == "accept4"]
    assert len(accepts) > 20 and sum(call.errno == "EAGAIN" for call in accepts) >= 0.9 * len(accepts)
