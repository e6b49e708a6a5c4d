"""Reference solution: a blocking HTTP/1.0 server, one client at a time.

accept() puts the process to sleep until a client connects; recv() sleeps until
bytes arrive. While it serves one client, every other client waits in the listen
backlog: that is the lesson of this exercise, and why the next two exist.
"""

import mimetypes
import os
import socket
from pathlib import Path

PORT = int(os.environ.get("PORT", "8080"))
DOCROOT = Path(os.environ.get("DOCROOT", "/srv/www")).resolve()
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
    request = b""
    while b"\r\n\r\n" not in request:       # a request may arrive in many pieces
        chunk = conn.recv(4096)              # sleeps until bytes arrive
        if not chunk:
            return                           # the client went away before finishing
        request += chunk
        if len(request) > MAX_REQUEST:
            conn.sendall(respond(400, b"request too large\n"))
            return
    conn.sendall(answer(request))


def main() -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", PORT))
    listener.listen(128)
    print(f"blocking server on port {PORT}, serving {DOCROOT}", flush=True)
    while True:
        conn, _ = listener.accept()          # sleeps (state S, in accept4) until a client connects
        with conn:
            try:
                serve(conn)
            except OSError:                  # a client that resets must not stop the server
                pass


if __name__ == "__main__":
    main()
