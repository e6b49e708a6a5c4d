"""A hostile submission: a blocking HTTP server that also plays one trick, chosen by $TRICK.

Written as a student who wants marks without the work (or a server that is merely unlucky)
would: each trick is something labctl must see through, survive or contain.

  hide               spin on a non-blocking accept, except while a process that is not its own
                     and is less than 3 s old exists in its PID namespace (a grader's reader), and
                     for 2 s after one was seen
  lazy_spin          serve from a blocking accept, but after $AFTER s without a client spin on a
                     non-blocking accept until one comes (every check's traffic resets the clock)
  reaped_children    serve from a blocking accept; meanwhile a thread forks a child every 25 ms
                     that spins 20 ms and exits, SIGCHLD ignored (reaped children leave no ticks)
  exit_after         exit with code 3 $AFTER seconds after starting
  oom                $AFTER seconds after starting, allocate memory until the kernel kills it
  tasks              $AFTER seconds after starting, start threads until no more can be started
  fill_disk          at start, write to every folder until each is full; log what it managed
  shout              log terminal escapes, NUL, bad UTF-8 and CI workflow commands, name its
                     thread with them, and answer with them in a header
  shout_and_exit     the same, then exit with code 1 before listening
  one_long_line      print 3 MiB with no newline, then exit with code 1 before listening
"""
import ctypes
import os
import signal
import socket
import sys
import threading
import time

# $TRICK, or trick.txt beside this file (a folder graded by the CLI cannot set the environment)
TRICK = os.environ.get("TRICK") or (open("trick.txt").read().strip() if os.path.exists("trick.txt") else "")
AFTER = float(os.environ.get("AFTER", "2"))
MINE = os.getpid()
SHOUT = b"\x1b]0;owned\x07\x1b[2J\x1b[31mred\x00\xff\xfe::error title=from the server::owned\n" \
        b"  ::stop-commands::TOKEN\n##[group]fold\r::add-mask::x\n"


def answer(conn: socket.socket) -> None:
    try:
        conn.settimeout(5)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                return
            data += chunk
        body = b"hello\n"
        extra = b"X-Shout: \x1b[2J::error::from a header\r\n" if TRICK == "shout" else b""
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n" + extra +
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    except OSError:
        pass
    finally:
        conn.close()


def listener(blocking: bool = True) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", int(os.environ.get("PORT", "8080"))))
    sock.listen(64)
    sock.setblocking(blocking)
    return sock


def serve_blocking(sock: socket.socket) -> None:
    while True:
        conn, _ = sock.accept()
        answer(conn)


def foreign_young_process() -> bool:
    """A process outside this server's tree, started less than 3 s ago: someone looking."""
    ticks = os.sysconf("SC_CLK_TCK")
    uptime = float(open("/proc/uptime").read().split()[0])
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = open(f"/proc/{name}/stat").read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        ppid, started = int(fields[1]), int(fields[19]) / ticks
        if ppid == 0 and int(name) != 1 and uptime - started < 3:
            return True
    return False


def hide() -> None:
    sock = listener(blocking=False)
    hidden_until = 0.0
    while True:
        if foreign_young_process():
            hidden_until = time.monotonic() + 2
        if time.monotonic() < hidden_until:
            sock.setblocking(True)
            sock.settimeout(0.05)  # look again soon
            try:
                conn, _ = sock.accept()
                answer(conn)
            except TimeoutError:
                pass
            continue
        sock.setblocking(False)
        for _ in range(2000):  # spin, looking now and then
            try:
                conn, _ = sock.accept()
                conn.setblocking(True)
                answer(conn)
            except BlockingIOError:
                pass


def lazy_spin() -> None:
    sock = listener()
    while True:
        sock.setblocking(True)
        sock.settimeout(AFTER)  # asleep (in poll) while clients keep coming
        try:
            conn, _ = sock.accept()
            conn.setblocking(True)
            answer(conn)
            continue
        except TimeoutError:
            pass
        sock.setblocking(False)  # a quiet spell: spin until the next client
        while True:
            try:
                conn, _ = sock.accept()
                conn.setblocking(True)
                answer(conn)
                break
            except BlockingIOError:
                pass


def reaped_children() -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children vanish when they exit: nobody's cutime

    def spawn() -> None:
        while True:
            if os.fork() == 0:
                end = time.monotonic() + 0.02
                while time.monotonic() < end:
                    pass
                os._exit(0)
            time.sleep(0.025)

    threading.Thread(target=spawn, daemon=True).start()
    serve_blocking(listener())


def later(action) -> None:
    threading.Thread(target=lambda: (time.sleep(AFTER), action()), daemon=True).start()


def oom() -> None:
    hog = []
    while True:
        hog.append(bytearray(16 * 2**20))


def tasks() -> None:
    while True:
        try:
            threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()
        except RuntimeError:
            time.sleep(0.01)


def fill_disk() -> None:
    for folder in ("/tmp", "/var/tmp", "/dev/shm", "/run", "/submission", "/srv/www", "/", "/etc", "/home"):
        written = 0
        try:
            with open(os.path.join(folder, "fill"), "wb") as handle:
                block = b"x" * 2**20
                while written < 4 * 2**30:
                    handle.write(block)
                    handle.flush()
                    written += len(block)
            outcome = "no limit"
        except OSError as error:
            outcome = error.strerror
        print(f"fill {folder}: {written // 2**20} MiB, then {outcome}", flush=True)
        try:
            os.unlink(os.path.join(folder, "fill"))  # leave room for the next folder (they share memory)
        except OSError:
            pass


def shout() -> None:
    sys.stdout.buffer.write(SHOUT)
    sys.stdout.buffer.flush()
    libc = ctypes.CDLL(None)
    libc.prctl(15, b"\x1b[2J::error::", 0, 0, 0)  # PR_SET_NAME: the main thread's comm


if __name__ == "__main__":
    if TRICK == "hide":
        hide()
    elif TRICK == "reaped_children":
        reaped_children()
    elif TRICK == "lazy_spin":
        lazy_spin()
    else:
        setup = {"exit_after": lambda: later(lambda: os._exit(3)), "oom": lambda: later(oom),
                 "tasks": lambda: later(tasks),
                 "fill_disk": fill_disk, "shout": shout,
                 "shout_and_exit": lambda: (shout(), sys.exit(1)),
                 "one_long_line": lambda: (sys.stdout.write("A" * 3 * 2**20), sys.stdout.flush(), sys.exit(1))
                 }.get(TRICK)
        if setup is None and TRICK:
            sys.exit(f"unknown TRICK={TRICK}")
        if setup:
            setup()
        print(f"listening ({TRICK or 'no trick'})", flush=True)
        serve_blocking(listener())
