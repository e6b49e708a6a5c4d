"""Reading /proc (labctl/harness/proc.py), the syscall table (labctl/syscalls.py) and the
interpretation of what was read (labctl/observe.py), on text and samples recorded from real labs."""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import pytest

from labctl import classify as classifier
from labctl import models, observe, syscalls
from labctl.harness import agent, proc

# -- recorded on this engine (Linux 6.18, x86_64): tests/servers/hello idle, seen from the observer --

STAT_SERVER = ("7 (python3) S 1 7 1 0 -1 4194304 1108 0 95 0 1 0 0 0 20 0 1 0 80913 14516224 2308 "
               "18446744073709551615 4321280 7154137 140728039184496 0 0 0 0 16781312 2 1 0 0 17 1 0 0 0 0 0 "
               "9727432 11029816 859615232 140728039190254 140728039190272 140728039190272 140728039190503 0\n")
STAT_INIT = ("1 (docker-init) S 0 1 1 0 -1 4194560 965 0 0 0 2 1 0 0 20 0 1 0 80856 1044480 150 "
             "18446744073709551615 4198400 4705985 140726427260784 0 0 0 0 3145728 0 1 0 0 17 1 0 0 0 0 0 "
             "4878296 4904528 417288192 140726427262685 140726427262735 140726427262735 140726427262950 0\n")
STATUS_SERVER = """Name:\tpython3
Umask:\t0022
State:\tS (sleeping)
Tgid:\t7
Ngid:\t0
Pid:\t7
PPid:\t1
TracerPid:\t0
Uid:\t1000\t1000\t1000\t1000
Gid:\t1000\t1000\t1000\t1000
NSpid:\t7
Threads:\t1
voluntary_ctxt_switches:\t551
nonvoluntary_ctxt_switches:\t120
"""
SYSCALL_ACCEPT4 = "288 0x3 0x7ffdccc911e0 0x7ffdccc911bc 0x80000 0x0 0x0 0x7ffdccc910e8 0x7f13f8a3ff63\n"
SYSCALL_OUTSIDE = "-1 0x7ffdccc910e8 0x7f13f8a3ff63\n"

#: proc_snapshot's answer for model_threaded while the client held 4 connections (recorded, trimmed).
RECORDED_THREADED_SNAPSHOT = {
    "machine": "x86_64", "clk_tck": 100, "time": 1029.9,
    "init": {"pid": 1, "comm": "docker-init", "cmdline": "/sbin/docker-init -- sh -c exec python3 server.py"},
    "processes": [{"pid": 7, "ppid": 1, "comm": "python3", "uid": 1000, "state": "S", "cmdline": "python3 server.py",
                   "ticks": 3, "child_ticks": 0, "threads": [
                       {"tid": 7, "comm": "python3", "state": "S", "syscall": 288, "arg0": 3,
                        "wchan": "inet_csk_accept", "ticks": 3, "voluntary": 571, "nonvoluntary": 34, "uid": 1000},
                       *[{"tid": tid, "comm": "python3", "state": "S", "syscall": 45, "arg0": 4 + i,
                          "wchan": "wait_woken", "ticks": 0, "voluntary": 2, "nonvoluntary": 0, "uid": 1000}
                         for i, tid in enumerate((22, 23, 24, 25))]]}],
    "process_count": 1, "thread_count": 5, "ticks_total": 6, "errors": [],
}


# -- parsing /proc text -------------------------------------------------------------------------

def test_parse_stat_of_a_recorded_server():
    stat = proc.parse_stat(STAT_SERVER)
    assert stat["pid"] == 7 and stat["comm"] == "python3" and stat["state"] == "S" and stat["ppid"] == 1
    assert (stat["utime"], stat["stime"], stat["cutime"], stat["cstime"]) == (1, 0, 0, 0)
    assert stat["num_threads"] == 1 and stat["starttime"] == 80913


def test_parse_stat_with_spaces_and_parentheses_in_the_name():
    """A thread may name itself anything (prctl PR_SET_NAME): count fields from the LAST ')'."""
    text = STAT_SERVER.replace("(python3)", "(a) b (c)")
    stat = proc.parse_stat(text)
    assert stat["comm"] == "a) b (c" and stat["state"] == "S" and stat["ppid"] == 1


def test_parse_status():
    assert proc.parse_status(STATUS_SERVER) == {"tgid": 7, "ppid": 1, "uid": 1000, "voluntary": 551, "tracer": 0,
                                                "nonvoluntary": 120}


@pytest.mark.parametrize("text, expected", [
    (SYSCALL_ACCEPT4, {"syscall": 288, "arg0": 3, "args": [3, 0x7ffdccc911e0, 0x7ffdccc911bc, 0x80000, 0, 0]}),
    ("running\n", {"syscall": "running", "arg0": None, "args": []}),
    (SYSCALL_OUTSIDE, {"syscall": -1, "arg0": None, "args": []}),
    ("", {"syscall": None, "arg0": None, "args": []}),
])
def test_parse_syscall(text, expected):
    assert proc.parse_syscall(text) == expected


def test_server_pids_recorded_namespace():
    """As `ps` showed it in the observer: docker-init(1) -> python3(7); the observer's sleep (8),
    the harness's timeout (15) and its children have their parent outside the namespace (0)."""
    parents = {1: 0, 7: 1, 8: 0, 15: 0, 21: 15, 22: 21}
    comms = {1: "docker-init", 7: "python3", 8: "sleep", 15: "timeout", 21: "sh", 22: "ps"}
    assert proc.server_pids(parents, comms) == (1, [7])


def test_server_pids_children_orphans_and_exec_shells():
    parents = {1: 0, 6: 1, 30: 6, 31: 6, 40: 1, 50: 0, 51: 50}
    comms = {1: "docker-init", 6: "python3", 30: "python3", 31: "python3", 40: "python3", 50: "sh", 51: "cat"}
    # 30, 31: forked children; 40: an orphan re-parented to PID 1; 50/51: `docker exec` into the server
    # (same uid as the server, but started from outside the namespace: not the server)
    assert proc.server_pids(parents, comms) == (1, [6, 30, 31, 40])


def test_server_pids_without_an_init_shim_the_server_is_pid_1():
    assert proc.server_pids({1: 0, 9: 1, 12: 0}, {1: "python3", 9: "python3", 12: "sleep"}) == (None, [1, 9])
    assert proc.server_pids({5: 0}, {5: "sleep"}) == (None, [])


# -- proc_snapshot / proc_sample on a /proc tree made of recorded files --------------------------

def _write_task(root: Path, pid: int, tid: int, stat: str, status: str, syscall: str | None, wchan: str) -> None:
    task = root / str(pid) / "task" / str(tid)
    task.mkdir(parents=True)
    (task / "stat").write_text(stat)
    (task / "status").write_text(status)
    if syscall is None:
        (task / "syscall").mkdir()  # unreadable: reading it raises (IsADirectoryError) like EPERM would
    else:
        (task / "syscall").write_text(syscall)
    (task / "wchan").write_text(wchan)


def _fake_proc(root: Path, syscall_of_server: str | None = SYSCALL_ACCEPT4) -> Path:
    for pid, stat, status, syscall, wchan, cmdline in (
        (1, STAT_INIT, STATUS_SERVER.replace("Tgid:\t7", "Tgid:\t1"), "128 0x0\n", "do_sigtimedwait",
         "/sbin/docker-init\0--\0sh\0-c\0exec python3 server.py\0"),
        (7, STAT_SERVER, STATUS_SERVER, syscall_of_server, "inet_csk_accept", "python3\0server.py\0"),
        (8, STAT_SERVER.replace("7 (python3) S 1", "8 (sleep) S 0"), STATUS_SERVER, "34 0x0\n", "do_sys_pause",
         "sleep\0infinity\0"),
    ):
        (root / str(pid)).mkdir(parents=True, exist_ok=True)
        (root / str(pid) / "stat").write_text(stat)
        (root / str(pid) / "status").write_text(status)
        (root / str(pid) / "cmdline").write_text(cmdline)
        _write_task(root, pid, pid, stat, status, syscall, wchan)
    # a second thread of the server, running
    _write_task(root, 7, 9, STAT_SERVER.replace("7 (python3) S", "9 (worker) R"), STATUS_SERVER, "running\n", "0")
    (root / "self").mkdir()
    return root


def test_proc_snapshot_reads_only_the_servers_tasks(tmp_path):
    snap = proc.proc_snapshot(str(_fake_proc(tmp_path)))
    assert snap["machine"] == os.uname().machine and snap["clk_tck"] > 0
    assert snap["init"]["comm"] == "docker-init" and "exec python3 server.py" in snap["init"]["cmdline"]
    assert [p["pid"] for p in snap["processes"]] == [7]
    assert snap["process_count"] == 1 and snap["thread_count"] == 2
    main, worker = snap["processes"][0]["threads"]
    assert main == {"tid": 7, "comm": "python3", "state": "S", "syscall": 288, "arg0": 3,
                    "args": [3, 0x7ffdccc911e0, 0x7ffdccc911bc, 0x80000, 0, 0], "wchan": "inet_csk_accept",
                    "ticks": 1, "voluntary": 551, "nonvoluntary": 120, "uid": 1000}
    assert worker["state"] == "R" and worker["syscall"] == "running" and worker["wchan"] == ""
    assert snap["processes"][0]["cmdline"] == "python3 server.py"
    assert snap["errors"] == []
    json.dumps(snap)  # JSON-able, as the harness prints it


def test_proc_snapshot_reports_an_unreadable_syscall_file(tmp_path):
    snap = proc.proc_snapshot(str(_fake_proc(tmp_path, syscall_of_server=None)))
    assert snap["processes"][0]["threads"][0]["syscall"] is None
    assert snap["errors"] and "7/task/7/syscall" in snap["errors"][0]


def test_the_sampler_looks_at_moments_that_vary_and_a_window_picks_its_looks(tmp_path):
    out = io.StringIO()
    started = time.time()
    agent.proc_agent(period=0.01, jitter=0.6, looks=6, proc_root=str(_fake_proc(tmp_path)), out=out)
    lines = out.getvalue().splitlines()
    assert len(lines) == 6 and all(line.startswith('{"at":') for line in lines)
    looks = agent.looks_between(out.getvalue(), started, time.time())
    times = [look["at"] for look in looks]
    assert len(times) == 6 and times == sorted(times)
    pauses = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
    assert len({round(pause, 4) for pause in pauses}) > 1, "the pauses between looks vary"
    assert looks[0]["processes"][0]["cmdline"] == "python3 server.py"
    assert agent.looks_between(out.getvalue(), times[1], times[3]) == looks[1:4]
    cut = out.getvalue()[10:] + lines[0][:30]  # a log read from the middle of a line, and cut at the end
    assert [look["at"] for look in agent.looks_between(cut, 0, time.time())] == times[1:]


def test_harness_command_table_has_the_proc_commands():
    assert set(proc.COMMANDS) == {"proc_snapshot", "hold_connections", "probe"}
    assert set(agent.COMMANDS) == {"proc_agent"}


# -- the syscall table -----------------------------------------------------------------------------

@pytest.mark.parametrize("name, x86_64, aarch64", [
    ("read", 0, 63), ("write", 1, 64), ("poll", 7, None), ("select", 23, None), ("nanosleep", 35, 101),
    ("connect", 42, 203), ("accept", 43, 202), ("sendto", 44, 206), ("recvfrom", 45, 207), ("recvmsg", 47, 212),
    ("wait4", 61, 260), ("futex", 202, 98), ("clock_nanosleep", 230, 115), ("epoll_wait", 232, None),
    ("pselect6", 270, 72), ("ppoll", 271, 73), ("epoll_pwait", 281, 22), ("accept4", 288, 242),
    ("epoll_pwait2", 441, 441), ("futex_wait", 455, 455), ("io_uring_enter", 426, 426),
])
def test_syscall_numbers_per_architecture(name, x86_64, aarch64):
    assert syscalls.number(name, "x86_64") == x86_64
    assert syscalls.number(name, "aarch64") == aarch64
    if x86_64 is not None:
        assert syscalls.name(x86_64, "amd64") == name
    if aarch64 is not None:
        assert syscalls.name(aarch64, "arm64") == name


def test_syscall_tables_are_whole_and_one_to_one():
    for table in syscalls.TABLES.values():
        assert len(set(table.values())) == len(table)
        assert all(isinstance(n, int) and n >= 0 for n in table)
    assert len(syscalls.TABLES["x86_64"]) > 380 and max(syscalls.TABLES["x86_64"]) == 470
    assert set(range(0, 335)) <= set(syscalls.TABLES["x86_64"])
    assert len(syscalls.TABLES["aarch64"]) > 320
    assert syscalls.label(288, "x86_64") == "accept4 (288)" and syscalls.label(9999, "x86_64") == "syscall 9999"
    assert syscalls.numbers(["poll", "ppoll", "accept4"], "aarch64") == {"ppoll": 73, "accept4": 242}


def test_unknown_architecture_is_an_error():
    with pytest.raises(syscalls.UnknownArchitecture, match="riscv64"):
        syscalls.number("read", "riscv64")


# -- observe: typed views ---------------------------------------------------------------------------

def test_snapshot_from_recorded_json():
    snap = observe.Snapshot.from_json(RECORDED_THREADED_SNAPSHOT)
    assert snap.machine == "x86_64" and snap.process_count == 1 and snap.thread_count == 5 and snap.max_threads == 5
    main = snap.threads[0]
    assert main.syscall_name == "accept4" and main.asleep and main.waiting == "asleep in accept4 (288)"
    assert main.label == "thread 7 (python3, main)"
    assert {t.waiting for t in snap.threads[1:]} == {"asleep in recvfrom (45)"}
    table = observe.render(snap)
    assert "accept4 (288)" in table and "inet_csk_accept" in table and "1 process(es), 5 thread(s)" in table


@pytest.mark.parametrize("state, syscall, waiting", [
    ("R", "running", "running"),
    ("S", -1, "in state S outside a syscall"),
    ("D", 0, "in state D in read (0)"),
    ("S", None, "in state S (its syscall file was unreadable)"),
    ("S", 999, "asleep in syscall 999"),
])
def test_thread_waiting_in_words(state, syscall, waiting):
    thread = observe.Thread(pid=7, tid=8, comm="python3", state=state, syscall=syscall, machine="x86_64")
    assert thread.waiting == waiting


# -- building samples for the classifier ------------------------------------------------------------

def snap_json(processes: list, machine: str = "x86_64") -> dict:
    """processes: [(pid, [(tid, state, syscall[, kinds of what it waits on]), ...][, clients held]), ...]"""
    def thread(tid, state, nr, kinds=None):
        made = {"tid": tid, "comm": "python3", "state": state, "syscall": nr, "arg0": 3, "wchan": "", "ticks": 0,
                "voluntary": 1, "nonvoluntary": 0, "uid": 1000}
        if kinds is not None:
            via = {EPOLL_WAIT: "epoll", POLL: "poll", PSELECT6: "select"}.get(nr, "fd")
            made["waits_on"] = {"fds": [], "count": sum(kinds.values()), "kinds": kinds, "via": via}
        return made

    def process(pid, threads, clients=None):
        made = {"pid": pid, "ppid": 1, "comm": "python3", "uid": 1000, "cmdline": "python3 server.py", "ticks": 0,
                "child_ticks": 0, "threads": [thread(*t) for t in threads]}
        if clients is not None:
            made["holds"] = {"client": clients, "listen": 1}
        return made

    return {"machine": machine, "clk_tck": 100, "time": 0.0, "init": None, "errors": [],
            "processes": [process(*p) for p in processes]}


def sample_of(*snaps: list, cpu_ticks: int = 0, elapsed: float = 1.0, machine: str = "x86_64") -> observe.Sample:
    return observe.Sample.from_json({"elapsed": elapsed, "cpu_seconds": cpu_ticks / 100,
                                     "snapshots": [snap_json(s, machine=machine) for s in snaps]})


def same(processes, looks: int = 4, **kwargs) -> observe.Sample:
    return sample_of(*[processes] * looks, **kwargs)


ACCEPT4, RECVFROM, READ, PSELECT6, POLL, EPOLL_WAIT, FUTEX = 288, 45, 0, 270, 7, 232, 202
WAIT4, RT_SIGSUSPEND, NANOSLEEP = 61, 130, 35
ANSWERED = {"connected": 4, "probe": {"answered": True, "seconds": 0.002}}
NOT_ANSWERED = {"connected": 4, "probe": {"answered": False, "seconds": 1.0, "error": "TimeoutError: timed out"}}
LISTEN, CLIENT, PIPE = {"listen": 1}, {"client": 1}, {"pipe": 1}
LOOP_IDLE, LOOP_BUSY = {"listen": 1, "eventfd": 1}, {"listen": 1, "client": 4}


def classify(idle, loaded, hold=None, connections=4):
    return classifier.classify(classifier.Facts(idle=idle, loaded=loaded, connections=connections, hold=hold))


def test_io_model_blocking():
    found = classify(same([(7, [(7, "S", ACCEPT4)])]), same([(7, [(7, "S", RECVFROM)])]), NOT_ANSWERED)
    assert found.model == "blocking"
    assert "recvfrom (45)" in found.reason and "no answer" in found.reason
    assert found.facts["loaded_threads"] == 1 and found.facts["probe"]["answered"] is False
    assert found.facts["rules"][-1] == "one-client-at-a-time: blocking"


def test_io_model_blocking_with_socket_timeouts_is_blocking_not_event_driven():
    """Python's settimeout(): poll() on ONE socket before every accept and recv."""
    found = classify(same([(7, [(7, "S", POLL, LISTEN)])]), same([(7, [(7, "S", POLL, CLIENT)])]), NOT_ANSWERED)
    assert found.model == "blocking"


def test_io_model_thread_per_connection():
    loaded = same([(7, [(7, "S", ACCEPT4)] + [(t, "S", RECVFROM) for t in (20, 21, 22, 23)])])
    found = classify(same([(7, [(7, "S", ACCEPT4)])]), loaded, ANSWERED)
    assert found.model == "thread-per-connection" and "more than the 1 it had in all when idle" in found.reason


def test_io_model_a_thread_per_client_on_threads_kept_for_reuse():
    """Ruby keeps finished threads a while for the next one (WEBrick after a burst): the 7 threads idle
    serve 7 of the 9 clients held, and two new ones the rest: more than it had, so a thread per client."""
    kept = [(t, "S", FUTEX) for t in range(20, 26)]
    idle = same([(7, [(7, "S", PSELECT6, LISTEN)] + kept)])
    serving = [(t, "S", POLL, CLIENT) for t in list(range(20, 26)) + [30, 31, 32]]
    found = classify(idle, same([(7, [(7, "S", PSELECT6, LISTEN)] + serving, 9)]), {**ANSWERED, "connected": 9},
                     connections=9)
    assert found.model == "thread-per-connection" and "more than the 7 it had in all when idle" in found.reason


def test_io_model_thread_pool_made_up_front():
    pool = [(7, [(7, "S", ACCEPT4)] + [(t, "S", FUTEX) for t in (20, 21, 22, 23)])]
    busy_pool = [(7, [(7, "S", ACCEPT4)] + [(t, "S", RECVFROM) for t in (20, 21, 22, 23)])]
    found = classify(same(pool), same(busy_pool), ANSWERED)
    assert found.model == "thread-pool" and "4 of them were there before any client came" in found.reason


def test_io_model_a_pool_of_one_is_blocking():
    pool = [(7, [(7, "S", ACCEPT4), (20, "S", FUTEX)])]
    found = classify(same(pool), same([(7, [(7, "S", ACCEPT4), (20, "S", RECVFROM)])]), NOT_ANSWERED)
    assert found.model == "blocking"


def test_io_model_fork_per_connection_with_zombies_left_out():
    loaded = same([(7, [(7, "S", ACCEPT4)])] + [(p, [(p, "S", RECVFROM)]) for p in (30, 31, 32, 33)]
                  + [(40, [(40, "Z", None)]), (41, [(41, "Z", None)])])
    found = classify(same([(7, [(7, "S", ACCEPT4)]), (40, [(40, "Z", None)])]), loaded, ANSWERED)
    assert found.model == "fork-per-connection" and "4 processes" in found.reason


def test_io_model_prefork_with_its_master_set_aside():
    master = (6, [(6, "S", PSELECT6, {})], 0)  # a parent that sleeps in select() with no descriptor
    pool = [master] + [(p, [(p, "S", ACCEPT4, LISTEN)]) for p in (7, 8, 9, 10)]
    serving = [master, (7, [(7, "S", RECVFROM, CLIENT)], 1), (8, [(8, "S", RECVFROM, CLIENT)], 1),
               (9, [(9, "S", ACCEPT4, LISTEN)], 0), (10, [(10, "S", ACCEPT4, LISTEN)], 0)]
    found = classify(same(pool), same(serving), ANSWERED)
    assert found.model == "prefork" and "pool of processes" in found.reason
    assert found.facts["set_aside_masters"] == ["process 6 (python3): timed sleep x1"]


def test_io_model_a_wakeup_pipe_is_not_a_client():
    """A threaded server with a small parent reading a pipe: not forking."""
    parent = (6, [(6, "S", READ, PIPE)], 0)
    idle = same([parent, (7, [(7, "S", ACCEPT4, LISTEN)], 0)])
    loaded = same([parent, (7, [(7, "S", ACCEPT4, LISTEN)] + [(t, "S", RECVFROM, CLIENT) for t in (20, 21, 22)], 3)])
    found = classify(idle, loaded, ANSWERED)
    assert found.model == "thread-per-connection"
    assert found.facts["set_aside_masters"] == ["process 6 (python3): waits on a pipe or an event x1"]


@pytest.mark.parametrize("nr, name", [(PSELECT6, "pselect6"), (POLL, "poll"), (EPOLL_WAIT, "epoll_wait")])
def test_io_model_event_loop(nr, name):
    found = classify(same([(7, [(7, "S", nr)])]), same([(7, [(7, "S", nr)])]), ANSWERED)
    assert found.model == "event-loop" and f"{name} ({nr})" in found.reason and "answered in 2 ms" in found.reason


def test_io_model_an_event_loop_with_helper_threads_whenever_they_started():
    """A runtime's helpers (an I/O pool, a GC) wait on locks; they start at the first file read, so they
    may be there idle or not: the verdict is the same either way."""
    loop = (7, EPOLL_WAIT)
    helpers = [(t, "S", FUTEX) for t in (8, 9, 10, 11)]
    for idle in (same([(7, [(7, "S", EPOLL_WAIT, LOOP_IDLE)])]), same([(7, [(7, "S", EPOLL_WAIT, LOOP_IDLE)] + helpers)])):
        found = classify(idle, same([(7, [(7, "S", EPOLL_WAIT, LOOP_BUSY)] + helpers, 4)]), ANSWERED)
        assert found.model == "event-loop", (loop, found)
        assert len(found.facts["set_aside_helpers"]) == 4


def test_io_model_event_loop_workers_with_their_master():
    master = (6, [(6, "S", RT_SIGSUSPEND)], 0)
    workers_idle = [(p, [(p, "S", EPOLL_WAIT, LOOP_IDLE)], 0) for p in (7, 8)]
    # all four clients went to one worker: the other still waits on the listening socket in its loop
    loaded = [master, (7, [(7, "S", EPOLL_WAIT, LOOP_BUSY)], 4), (8, [(8, "S", EPOLL_WAIT, LOOP_IDLE)], 0)]
    found = classify(same([master] + workers_idle), same(loaded), ANSWERED)
    assert found.model == "event-loop-workers" and "2 processes" in found.reason
    assert found.facts["set_aside_masters"] == ["process 6 (python3): waits for a child or a signal x1"]


def test_io_model_event_loop_with_threads():
    """A dispatcher loop and worker threads, each an event loop over its own clients (memcached)."""
    idle = same([(7, [(7, "S", EPOLL_WAIT, LOOP_IDLE)] + [(t, "S", EPOLL_WAIT, PIPE) for t in (8, 9)])])
    loaded = same([(7, [(7, "S", EPOLL_WAIT, LOOP_IDLE), (8, "S", EPOLL_WAIT, {"client": 1, "pipe": 1}),
                        (9, "S", EPOLL_WAIT, {"client": 1, "pipe": 1})], 2)])
    found = classify(idle, loaded, ANSWERED)
    assert found.model == "event-loop-threads"


def test_io_model_poll_yet_no_answer_is_blocking():
    found = classify(same([(7, [(7, "S", POLL)])]), same([(7, [(7, "S", POLL)])]), NOT_ANSWERED)
    assert found.model == "blocking" and "no answer" in found.reason


def test_io_model_busy_by_cpu():
    found = classify(same([(7, [(7, "R", "running")])], cpu_ticks=98), same([(7, [(7, "R", "running")])]), ANSWERED)
    assert found.model == "busy-polling" and "98% of a CPU" in found.reason


def test_io_model_busy_on_a_crowded_host_by_running_state():
    """Other labs share the CPUs: the spinner got 8% of a CPU, but it was never asleep."""
    idle = sample_of([(7, [(7, "R", "running")])], [(7, [(7, "R", "running")])], [(7, [(7, "S", ACCEPT4)])],
                     [(7, [(7, "R", "running")])], cpu_ticks=8)
    found = classify(idle, same([(7, [(7, "R", "running")])]), ANSWERED)
    assert found.model == "busy-polling" and "running in 3 of 4 looks" in found.reason


def test_io_model_one_spinning_thread_next_to_a_sleeping_main():
    idle = same([(7, [(7, "S", ACCEPT4), (8, "R", "running")])], cpu_ticks=100)
    assert classify(idle, idle).model == "busy-polling"


def test_io_model_a_rare_wakeup_is_not_busy():
    idle = sample_of([(7, [(7, "S", POLL)])], [(7, [(7, "R", "running")])], [(7, [(7, "S", POLL)])],
                     [(7, [(7, "S", POLL)])], cpu_ticks=1)
    assert classify(idle, same([(7, [(7, "S", POLL)])]), ANSWERED).model == "event-loop"


def test_io_model_a_server_that_answers_before_reading_is_blocking():
    """The blocking starter answers 501 at once: no thread ever waits on a client, yet every held
    client got its answer and the one thread sleeps in accept()."""
    accepting = same([(7, [(7, "S", ACCEPT4, LISTEN)])])
    at_once = {"connected": 4, "still_open": 0, "answered": 3, "closed_by_server": 1, **ANSWERED}
    found = classify(accepting, accepting, at_once)
    assert found.model == "blocking" and found.facts["rules"][-1] == "answers-at-once: blocking"
    assert "without waiting for the rest of its request" in found.reason
    # The same threads while a held client is still open: nothing says how it serves them.
    assert classify(accepting, accepting, {**at_once, "still_open": 1}).model == "unknown"
    # A loop that answers at once sleeps in a multiplexer, not accept(): not called blocking.
    polling = same([(7, [(7, "S", POLL, LISTEN)])])
    assert classify(polling, polling, at_once).model == "unknown"


def test_io_model_looks_that_cannot_tell_do_not_vote():
    """Node's loop, caught mostly in page faults (blocked outside a syscall: -1) while its first requests
    page its HTTP code in from a slow disk: the one look that saw epoll_wait decides."""
    loop = (7, "S", EPOLL_WAIT, LOOP_BUSY)
    faulting = [[(7, [(7, "S", -1)], 4)]] * 3
    found = classify(same([(7, [(7, "S", EPOLL_WAIT, LOOP_IDLE)])]), sample_of(*faulting, [(7, [loop], 4)]),
                     ANSWERED)
    assert found.model == "event-loop", found


def test_io_model_nobody_serving_is_unknown():
    found = classify(same([(7, [(7, "S", NANOSLEEP)])]), same([(7, [(7, "S", NANOSLEEP)])]), NOT_ANSWERED)
    assert found.model == "unknown" and "no thread waited on a client" in found.reason


def test_io_model_without_a_server():
    found = classify(sample_of([], []), sample_of([], []))
    assert found.model == "unknown" and "no server process" in found.reason


def test_io_model_a_stopped_server_is_stopped_not_blocking():
    """SIGSTOP after the first request: state T in kill, one thread, no answer to the probe."""
    frozen = same([(7, [(7, "T", 62)])])
    found = classify(frozen, frozen, NOT_ANSWERED)
    assert found.model == "stopped" and "state T" in found.reason and "serves nobody" in found.reason
    assert "stopped" not in models.EXPECTABLE


# -- blocked_in, per thread -------------------------------------------------------------------------

def test_blocked_in_majority_of_looks():
    seen = sample_of([(7, [(7, "S", ACCEPT4)])], [(7, [(7, "R", "running")])], [(7, [(7, "S", ACCEPT4)])])
    [verdict] = observe.blocked_in(seen, ["accept4"])
    assert verdict.ok and verdict.why == "thread 7 (python3, main) is asleep in accept4 (288)"


def test_blocked_in_running_and_wrong_syscall():
    seen = same([(7, [(7, "S", 0), (8, "R", "running")])])  # 0: read
    main, spinner = observe.blocked_in(seen, ["accept4", "epoll_wait"])
    assert not main.ok and main.why == "thread 7 (python3, main) is asleep in read (0), expected one of accept4, epoll_wait"
    assert not spinner.ok and spinner.why == "thread 8 (python3) is running, not asleep (4 of 4 looks): a busy loop?"


def test_blocked_in_names_resolve_per_architecture():
    """On aarch64 there is no epoll_wait: its event loops sleep in epoll_pwait (22)."""
    seen = same([(7, [(7, "S", 22)])], machine="aarch64")
    [verdict] = observe.blocked_in(seen, ["epoll_wait", "epoll_pwait"])
    assert verdict.ok and "epoll_pwait (22)" in verdict.why


def test_blocked_in_ignores_a_thread_that_came_and_went():
    seen = sample_of([(7, [(7, "S", ACCEPT4)])], [(7, [(7, "S", ACCEPT4), (9, "S", RECVFROM)])],
                     [(7, [(7, "S", ACCEPT4)])])
    assert [v.thread.tid for v in observe.blocked_in(seen, ["accept4"])] == [7]


# -- hold_connections (the client's side), against a local one-at-a-time server ----------------------

def test_hold_connections_and_probe_against_a_blocking_server():
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    stop = threading.Event()

    def serve_one_at_a_time():  # reads the first client until it closes: the others wait
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(2)
                try:
                    while conn.recv(4096):
                        pass
                except OSError:
                    pass

    server = threading.Thread(target=serve_one_at_a_time, daemon=True)
    server.start()
    try:
        asked = time.time()
        answer = proc.hold_connections("127.0.0.1", port, connections=3, hold=0.6, probe=True,
                                       probe_after=0.1, probe_timeout=0.3)
    finally:
        stop.set()
        server.join(3)
        listener.close()
    assert answer["connected"] == 3 and answer["connect_errors"] == []
    assert answer["still_open"] == 3 and answer["answered"] == 0
    assert answer["probe"]["answered"] is False and "no answer within 0.3 s" in answer["probe"]["error"]
    assert 0.55 < answer["held_for"] < 2
    assert asked <= answer["started_at"] <= asked + 0.5   # the wall clock the sampler stamps its looks with


def test_hold_connections_reports_refused_connections():
    import socket

    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # nothing listens there once closed
    answer = proc.hold_connections("127.0.0.1", port, connections=2, hold=0.2)
    assert answer["connected"] == 0 and "ConnectionRefusedError" in answer["connect_errors"][0]


def test_snapshot_of_a_lab_and_its_errors():
    from labctl.errors import LabctlError

    class Lab:
        def __init__(self, answer):
            self.answer, self.calls = answer, []

        def harness(self, node, command, params, timeout=60):
            self.calls.append((node, command))
            return self.answer

    lab = Lab(RECORDED_THREADED_SNAPSHOT)
    assert observe.snapshot(lab).thread_count == 5 and lab.calls == [("observer", "proc_snapshot")]
    with pytest.raises(LabctlError, match="PermissionError"):
        observe.snapshot(Lab({"error": "PermissionError: /proc/1"}))
    with pytest.raises(LabctlError, match="riscv64"):
        observe.snapshot(Lab(dict(RECORDED_THREADED_SNAPSHOT, machine="riscv64")))



def test_blocked_in_sets_aside_a_master_and_helpers_but_not_a_lone_sleeper():
    master_and_worker = same([(6, [(6, "S", WAIT4)]), (7, [(7, "S", ACCEPT4), (8, "S", FUTEX)])])
    [verdict] = observe.blocked_in(master_and_worker, ["accept4"])
    assert verdict.ok and verdict.thread.tid == 7
    judged, aside = observe.judged_threads(master_and_worker)
    assert [e.tid for e in aside] == [6, 8]
    assert not all(v.ok for v in observe.blocked_in(master_and_worker, ["accept4"], set_aside=False))
    sleeper = same([(7, [(7, "S", NANOSLEEP)])])  # a loop that sleeps between non-blocking tries
    [verdict] = observe.blocked_in(sleeper, ["epoll_wait"])
    assert not verdict.ok and "nanosleep" in verdict.why


# -- labctl observe: CPU % between looks, --json ----------------------------------------------------------

def _look(at: float, busy_ticks: int, idle_ticks: int = 3, extra: bool = False) -> dict:
    """proc_snapshot's answer: a busy thread 8 and an idle main thread 7 (and a thread 9 that is new)."""
    threads = [{"tid": 7, "comm": "python3", "state": "S", "syscall": 232, "ticks": idle_ticks},
               {"tid": 8, "comm": "\x1b[2Jspin", "state": "R", "syscall": "running", "ticks": busy_ticks}]
    if extra:
        threads.append({"tid": 9, "comm": "python3", "state": "S", "syscall": 202, "ticks": 40})
    return {"machine": "x86_64", "clk_tck": 100, "time": at,
            "processes": [{"pid": 7, "ppid": 1, "comm": "python3", "uid": 1000, "cmdline": "python3 server.py",
                           "ticks": 0, "child_ticks": 0, "threads": threads}]}


def test_cpu_percent_is_each_thread_s_ticks_over_the_time_between_two_looks():
    before = observe.Snapshot.from_json(_look(1000.0, busy_ticks=500))
    after = observe.Snapshot.from_json(_look(1002.0, busy_ticks=696, extra=True))
    shares = observe.cpu_percent(before, after)
    assert shares[(7, 8)] == 98.0 and shares[(7, 7)] == 0.0 and shares[(7, 9)] is None  # 9 is new
    assert observe.cpu_percent(None, after) == {(7, 7): None, (7, 8): None, (7, 9): None}
    table = observe.render(after, before)
    assert "CPU%" in table.splitlines()[0] and "  98.0" in table and "   new" in table and "over the last 2.0 s" in table
    assert "\x1b" not in table


def test_observe_json_is_one_object_a_look_with_each_thread_s_state_wait_and_cpu():
    before = observe.Snapshot.from_json(_look(1000.0, busy_ticks=500))
    after = observe.Snapshot.from_json(_look(1001.0, busy_ticks=599))
    line = json.dumps(observe.refresh_json(before, after, at=1796300000.5))
    assert "\n" not in line and "\x1b" not in line
    document = json.loads(line)
    assert document["interval"] == 1.0 and document["at"] == 1796300000.5 and document["thread_count"] == 2
    idle, busy = document["processes"][0]["threads"]
    assert idle == {**idle, "tid": 7, "state": "S", "syscall": 232, "syscall_name": "epoll_wait", "running": False,
                    "waiting": "asleep in epoll_wait (232)", "cpu_percent": 0.0}
    assert busy["running"] and busy["wait"] == "runs" and busy["cpu_percent"] == 99.0
    assert busy["comm"] == "\\x1b[2Jspin"


def test_observe_refreshes_measure_the_first_look_against_one_before_it(tmp_path):
    from tests.unit.fakes import FakeBackend, up_lab

    fake = FakeBackend()
    lab = up_lab(fake, tmp_path)
    ticks = iter([100, 150, 250, 350, 450])
    clock = iter([10.0, 11.0, 12.0, 13.0, 14.0])
    fake.harness["observer"]["proc_snapshot"] = lambda params: _look(next(clock), busy_ticks=next(ticks))
    pauses: list[float] = []
    looks = list(observe.refreshes(lab, "observer", interval=None, count=None, sleep=pauses.append))
    assert len(looks) == 1 and len(pauses) == 1 and 0 < pauses[0] <= observe.BASELINE  # one look, after a baseline
    previous, current, _ = looks[0]
    assert observe.cpu_percent(previous, current)[(7, 8)] == 50.0
    more = list(observe.refreshes(lab, "observer", interval=0.5, count=2, sleep=pauses.append))
    assert [observe.cpu_percent(one, two)[(7, 8)] for one, two, _ in more] == [100.0, 100.0]
