"""Reference solution: a fixed pool of worker threads fed by a queue.

The main thread sleeps in accept() and puts each new connection on a queue.Queue.
WORKERS threads (8 by default, from $WORKERS) are started once, at the beginning;
each one sleeps in queue.get() (a futex in the kernel) until a connection is put
there, serves it from start to end with blocking recv()/sendall(), and goes back to
the queue. The server has WORKERS + 1 threads however many clients connect: 2000
clients cannot use up the lab's limit on tasks. The price: at most WORKERS clients are
served at once; a slow client holds a worker, and when every worker is held, the next
client waits in the queue.
"""

import mimetypes
import os
import queue
import socket
import threading
from pathlib import Path

PORT = int(os.environ.get("PORT", "8080"))
DOCROOT = Path(os.environ.get("DOCROOT", "/srv/www")).resolve()
WORKERS = int(os.environ.get("WORKERS", "8"))
MAX_REQUEST = 8192
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found"}


def respond(status: int, body: bytes, content_type: str = "text/plain") -> bytes:
    head = (f"HTTP/1.0 {status} {REASONS[status]}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode() + body


def answer(request: bytes) -> bytes:
    """The whole response to one request (its bytes up to the blank line)."""
    try:
        method, target, version = request.split(b"\r\n", 1)[0].decode("ascii").split(" ")
    except (UnicodeDecodeError, ValueError):
        return respond(400, b"bad request\n")
    if method != "GET" or not target.startswith("/") or not version.startswith("HTTP/1."):
        return respond(400, b"bad request\n")
    path = (DOCROOT / target.lstrip("/")).resolve()
    if path.is_dir():
        path = path / "index.html"
    if DOCROOT not in path.parents or not path.is_file():
        return respond(404, b"not found\n")
    return respond(200, path.read_bytes(), mimetypes.guess_type(path.name)[0] or "application/octet-stream")


def serve(conn: socket.socket) -> None:
    """One client, start to end: the same blocking code as the blocking server."""
    with conn:
        try:
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                request += chunk
                if len(request) > MAX_REQUEST:
                    conn.sendall(respond(400, b"request too large\n"))
                    return
            conn.sendall(answer(request))
        except OSError:
            pass                                # a reset or a broken pipe ends this client only


def worker(jobs: "queue.Queue[socket.socket]") -> None:
    """A pool thread: take a connection, serve it, take the next one; never ends."""
    while True:
        conn = jobs.get()                       # asleep (futex) until the main thread puts one
        try:
            serve(conn)
        except Exception as error:              # a bug in one request must not lose a worker
            print(f"worker: {error!r}", flush=True)


def main() -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", PORT))
    listener.listen(128)
    # Unbounded: a waiting connection costs a descriptor and a few bytes, not a thread.
    jobs: queue.Queue[socket.socket] = queue.Queue()
    for number in range(WORKERS):               # every thread the server will ever have, started once
        threading.Thread(target=worker, args=(jobs,), name=f"worker-{number}", daemon=True).start()
    print(f"thread-pool server on port {PORT} with {WORKERS} workers, serving {DOCROOT}", flush=True)
    while True:
        conn, _ = listener.accept()             # asleep in accept4 until a client connects
        jobs.put(conn)                          # wakes one sleeping worker; straight back to accept


if __name__ == "__main__":
    main()
