"""A pool of threads made up front (concurrent.futures): they exist before any client comes."""
import os
import socket
import threading
from concurrent.futures import ThreadPoolExecutor


def serve(conn: socket.socket) -> None:
    with conn:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                return
            data += chunk
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n")


pool = ThreadPoolExecutor(max_workers=8)
started = threading.Barrier(9)
for _ in range(8):  # make every worker now: the executor makes them only as work comes, else
    pool.submit(started.wait)
started.wait()
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("0.0.0.0", int(os.environ.get("PORT", "8080"))))
listener.listen(64)
while True:
    conn, _ = listener.accept()
    pool.submit(serve, conn)
