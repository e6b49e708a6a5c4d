"""Mutant, WRONG on purpose: a new process for each connection (fork per connection), not a pool.

The parent makes the listening socket, then forks WORKERS processes (4 by default, from
$WORKERS) before any client comes. Each worker sleeps in accept() on that same socket: the
kernel gives each new connection to one of the sleepers, which serves it from start to end
with blocking recv()/sendall(), then goes back to accept(). The parent serves nobody: it
sleeps in wait() and starts a new worker when one dies. The server has WORKERS + 1 processes
however many clients connect; at most WORKERS clients are served at once, and a slow client
holds a whole process.
"""

import mimetypes
import os
import signal
import socket
from pathlib import Path

PORT = int(os.environ.get("PORT", "8080"))
DOCROOT = Path(os.environ.get("DOCROOT", "/srv/www")).resolve()
WORKERS = int(os.environ.get("WORKERS", "4"))
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


def main() -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", PORT))
    listener.listen(128)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    print(f"forking server on port {PORT}, serving {DOCROOT}", flush=True)
    while True:
        conn, _ = listener.accept()
        if os.fork() == 0:  # a process per client: the processes grow with the clients
            listener.close()
            serve(conn)
            os._exit(0)
        conn.close()


if __name__ == "__main__":
    main()
