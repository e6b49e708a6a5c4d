"""Mutant: listens, then crashes on the first request (an unhandled exception).

Connections that send nothing (such as labctl's readiness probe) are ignored; the
first one that sends a request line kills the server.
"""

import os
import socket

listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("0.0.0.0", int(os.environ.get("PORT", "8080"))))
listener.listen(16)
print("listening; the first request will crash me", flush=True)
while True:
    conn, _ = listener.accept()
    request = conn.recv(4096)
    if request:
        path = request.split()[1].decode()
        raise RuntimeError(f"cannot handle {path}: this server crashes on its first request")
    conn.close()
