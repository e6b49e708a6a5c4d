"""What a thread waits on, read from a /proc tree made here: descriptors, their kinds, epoll sets,
poll and select arrays in the process's memory, and the word each wait gets on the host."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from labctl import observe, syscalls
from labctl.harness import proc, waits

RULES = syscalls.fd_rules()
# /proc/net/tcp rows: "sl local rem st tx:rx tr:when retrnsmt uid timeout inode"
TCP = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
       "   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 1001 1\n"
       "   1: 0500D50A:1F90 0400D50A:A1B2 01 00000000:00000000 00:00000000 00000000  1000        0 1002 1\n"
       "   2: 0500D50A:1F90 0400D50A:A1B3 01 00000000:00000000 00:00000000 00000000  1000        0 1003 1\n")
MEMORY_POLL, MEMORY_SELECT = 0x1000, 0x2000


def fake_process(root: Path, pid: int = 7, threads: dict[int, str] | None = None) -> Path:
    """pid 7: fd 3 listening socket, fds 4 and 5 clients, 6 a pipe, 7 an eventfd, 8 an epoll watching
    3 and 4, 9 a file; its memory holds a pollfd array of fd 4 at 0x1000 and a select set of {3, 5}."""
    base = root / str(pid)
    (base / "fd").mkdir(parents=True)
    (base / "fdinfo").mkdir()
    (base / "net").mkdir()
    for fd, target in {3: "socket:[1001]", 4: "socket:[1002]", 5: "socket:[1003]", 6: "pipe:[77]",
                       7: "anon_inode:[eventfd]", 8: "anon_inode:[eventpoll]", 9: "/srv/www/index.html"}.items():
        os.symlink(target, base / "fd" / str(fd))
    (base / "fdinfo" / "8").write_text("pos:\t0\nflags:\t02\nmnt_id:\t15\ntfd:        3 events:       19 data: 3"
                                       "  pos:0 ino:3e9 sdev:8\ntfd:        4 events:       19 data: 4\n")
    (base / "net" / "tcp").write_text(TCP)
    (base / "net" / "tcp6").write_text(TCP.splitlines()[0] + "\n")
    with open(base / "mem", "wb") as memory:
        memory.seek(MEMORY_POLL)
        memory.write(struct.pack("=ihh", 4, 1, 0) + struct.pack("=ihh", -1, 0, 0))
        memory.seek(MEMORY_SELECT)
        memory.write(bytes([0b00101000]))  # fds 3 and 5
    return root


def watched(root: Path, syscall: str, *args: int) -> dict | None:
    fds = waits.fd_kinds(str(root), 7, waits.socket_kinds(str(root), 7))
    rule = RULES["x86_64"].get(str(syscalls.number(syscall, "x86_64")))
    return waits.watched(str(root), 7, rule, list(args) + [0] * (6 - len(args)), fds)


def test_descriptors_are_told_apart(tmp_path):
    root = fake_process(tmp_path)
    fds = waits.fd_kinds(str(root), 7, waits.socket_kinds(str(root), 7))
    assert fds == {3: "listen", 4: "client", 5: "client", 6: "pipe", 7: "eventfd", 8: "epoll", 9: "file"}
    assert waits.held(fds)["client"] == 2


def test_each_kind_of_wait_names_its_descriptors(tmp_path):
    root = fake_process(tmp_path)
    assert watched(root, "accept4", 3)["kinds"] == {"listen": 1}
    assert watched(root, "recvfrom", 4)["fds"] == [[4, "client"]]
    assert watched(root, "read", 6)["kinds"] == {"pipe": 1}
    assert watched(root, "epoll_wait", 8)["fds"] == [[3, "listen"], [4, "client"]]
    assert watched(root, "poll", MEMORY_POLL, 2)["fds"] == [[4, "client"]]  # the -1 entry is ignored, as poll does
    assert watched(root, "pselect6", 6, MEMORY_SELECT, 0)["fds"] == [[3, "listen"], [5, "client"]]
    assert watched(root, "select", 0, 0, 0) == {"fds": [], "count": 0, "kinds": {}, "via": "select"}  # a sleep
    assert watched(root, "futex", 0) is None and watched(root, "nanosleep", 0) is None


def test_memory_that_cannot_be_read_leaves_the_count(tmp_path):
    root = fake_process(tmp_path)
    assert watched(root, "poll", 0xdead000, 3) == {"fds": [], "count": 3, "kinds": {}, "via": "poll", "unread": True}


def thread(syscall: str | int, state: str = "S", **waits_on) -> observe.Thread:
    number = syscalls.number(syscall, "x86_64") if isinstance(syscall, str) else syscall
    return observe.Thread(pid=7, tid=7, comm="srv", state=state, syscall=number, machine="x86_64",
                          waits_on=waits_on or None)


@pytest.mark.parametrize("made, word", [
    (thread("accept4", count=1, kinds={"listen": 1}), "new-connection"),
    (thread("poll", count=1, kinds={"listen": 1}), "new-connection"),           # settimeout() before accept
    (thread("poll", count=1, kinds={"client": 1}), "one-client"),               # settimeout() before recv
    (thread("recvfrom", count=1, kinds={"client": 1}), "one-client"),
    (thread("epoll_wait", count=5, kinds={"listen": 1, "client": 4}), "many-sockets"),
    (thread("epoll_wait", count=2, kinds={"listen": 1, "eventfd": 1}), "new-connection"),  # an idle event loop
    (thread("read", count=1, kinds={"pipe": 1}), "pipe"),                       # a wake-up pipe is not a client
    (thread("epoll_wait", count=2, kinds={"client": 1, "pipe": 1}, via="epoll"), "many-sockets"),  # a loop, 1 client
    (thread("poll", count=2, kinds={"client": 1, "pipe": 1}, via="poll"), "one-client"),  # a thread, a client, a pipe
    (thread("pselect6", count=0, kinds={}), "timed-sleep"),                     # select() as a sleep
    (thread("futex"), "lock"),
    (thread("wait4"), "child"),
    (thread("rt_sigsuspend"), "child"),
    (thread("clock_nanosleep"), "timed-sleep"),
    (thread("accept4"), "new-connection"),                                      # no descriptors known: by name
    (thread("poll", count=3, kinds={}, unread=True), "many-sockets"),
    (thread("running", state="R"), "runs"),
    (thread(61, state="Z"), "zombie"),
    (thread(62, state="T"), "stopped"),
])
def test_every_wait_has_its_word(made, word):
    assert made.wait == word and word in observe.WAIT_WORDS


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the recorded syscall number is x86_64's epoll_wait")
def test_a_snapshot_with_fd_rules_says_what_each_thread_waits_on(tmp_path):
    root = tmp_path / "proc"
    fake_process(root)
    (root / "7" / "stat").write_text("7 (srv) S 1 7 7 0 -1 4194560 0 0 0 0 1 0 0 0 20 0 1 0 80913 0 0\n")
    (root / "7" / "status").write_text("Uid:\t1000\t1000\t1000\t1000\n")
    task = root / "7" / "task" / "7"
    task.mkdir(parents=True)
    (task / "stat").write_text((root / "7" / "stat").read_text())
    (task / "status").write_text("Uid:\t1000\n")
    (task / "syscall").write_text("232 0x8 0x7ffd 0x400 0xffffffff 0x0 0x0 0x7ffd 0x7f13\n")
    (task / "wchan").write_text("ep_poll")
    (root / "1").mkdir()
    (root / "1" / "stat").write_text("1 (docker-init) S 0 1 1 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 1 0 0\n")
    look = proc.proc_snapshot(str(root), RULES)
    process = look["processes"][0]
    assert process["holds"]["client"] == 2 and process["holds"]["listen"] == 1
    assert process["threads"][0]["waits_on"]["kinds"] == {"listen": 1, "client": 1}
    seen = observe.Snapshot.from_json({**look, "machine": "x86_64"})
    assert seen.threads[0].wait == "many-sockets" and seen.processes[0].clients == 2


def test_the_model_vocabulary_is_one():
    from typing import get_args

    from labctl import models

    assert set(get_args(models.Expected)) == set(models.EXPECTABLE)
    assert all(member in models.MODELS for names in models.FAMILIES.values() for member in names)
    assert models.matches("thread-pool", "threaded") and not models.matches("thread-pool", ["blocking", "forking"])


def test_observe_shows_what_each_thread_waits_on():
    look = observe.Snapshot.from_json({"machine": "x86_64", "clk_tck": 100, "processes": [
        {"pid": 7, "ppid": 1, "comm": "srv", "holds": {"client": 3, "listen": 1}, "threads": [
            {"tid": 7, "comm": "srv", "state": "S", "syscall": 7,
             "waits_on": {"fds": [[4, "client"]], "count": 1, "kinds": {"client": 1}}}]}]})
    text = observe.render(look)
    assert "waits on one client" in text and "asleep in poll (7)" in text
    assert "client connections held by process 7: 3" in text
