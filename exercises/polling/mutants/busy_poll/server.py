"""Mutant: non-blocking sockets and no select/poll/epoll: it spins, asking every socket
again and again. It answers correctly, and burns a whole CPU doing nothing (state R).
"""

import mimetypes
import os
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
print("busy-polling server: never sleeps", flush=True)
clients: dict[socket.socket, list] = {}  # sock -> [request bytes, response memoryview or None]
while True:                              # no sleep anywhere: 100% of a CPU
    while True:                          # take every waiting client, then ask each one again
        try:
            sock, _ = listener.accept()
        except BlockingIOError:
            break
        sock.setblocking(False)
        clients[sock] = [b"", None]
    for sock, state in list(clients.items()):
        try:
            if state[1] is None:
                chunk = sock.recv(4096)
                if not chunk:
                    raise ConnectionError
                state[0] += chunk
                if b"\r\n\r\n" in state[0]:
                    state[1] = memoryview(answer(state[0]))
            else:
                state[1] = state[1][sock.send(state[1]):]
                if not state[1]:
                    raise ConnectionError
        except BlockingIOError:
            pass
        except OSError:
            del clients[sock]
            sock.close()
