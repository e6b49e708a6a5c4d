"""Mutant: a memory hog. Each request makes it grab 64 MB more, and never give it back;
the lab's memory limit gets it killed (OOM), and grading must say so.
"""

import os
import socket
import threading

hoard: list[bytearray] = []


def serve(conn: socket.socket) -> None:
    with conn:
        if conn.recv(4096):
            hoard.append(bytearray(64 * 2**20))  # touched memory: bytearray zero-fills it
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n")


listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("0.0.0.0", int(os.environ.get("PORT", "8080"))))
listener.listen(128)
print("listening; every request costs 64 MB", flush=True)
while True:
    conn, _ = listener.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
