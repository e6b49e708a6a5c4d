"""Mutant: an event loop on select(). Correct, until a descriptor number passes 1023
(FD_SETSIZE): then select() raises "filedescriptor out of range in select()" and the
server dies. epoll and poll have no such limit.
"""

import mimetypes
import os
import select
import socket
from pathlib import Path

PORT = int(os.environ.get("PORT", "8080"))
DOCROOT = Path(os.environ.get("DOCROOT", "/srv/www")).resolve()


def answer(request: bytes) -> bytes:
    try:
        method, target, version = request.split(b"\r\n", 1)[0].decode("ascii").split(" ")
        assert method == "GET" and target.startswith("/") and version.startswith("HTTP/1.")
    except (UnicodeDecodeError, ValueError, AssertionError):
        return b"HTTP/1.0 400 Bad Request\r\nContent-Length: 0\r\n\r\n"
    path = (DOCROOT / target.lstrip("/")).resolve()
    if path.is_dir():
        path = path / "index.html"
    if DOCROOT not in path.parents or not path.is_file():
        return b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n"
    body = path.read_bytes()
    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"HTTP/1.0 200 OK\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("0.0.0.0", PORT))
listener.listen(1024)
listener.setblocking(False)
print("select() server", flush=True)
requests: dict[socket.socket, bytes] = {}
responses: dict[socket.socket, memoryview] = {}
while True:
    readable, writable, _ = select.select([listener, *requests], list(responses), [])
    for sock in readable:
        if sock is listener:
            try:
                conn, _ = listener.accept()
            except BlockingIOError:
                continue
            conn.setblocking(False)
            requests[conn] = b""
            continue
        try:
            chunk = sock.recv(4096)
        except OSError:
            chunk = b""
        if not chunk:
            del requests[sock]
            sock.close()
            continue
        requests[sock] += chunk
        if b"\r\n\r\n" in requests[sock]:
            responses[sock] = memoryview(answer(requests.pop(sock)))
    for sock in writable:
        try:
            responses[sock] = responses[sock][sock.send(responses[sock]):]
        except BlockingIOError:
            continue
        except OSError:
            responses[sock] = memoryview(b"")
        if not responses[sock]:
            del responses[sock]
            sock.close()
