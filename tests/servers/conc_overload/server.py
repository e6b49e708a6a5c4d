"""Four workers; a connection that arrives while all four are busy is closed without an answer.

Correct for one client at a time, wrong under load: what concurrent_clients exists to catch.
Each request takes 20 ms of "work", so twenty clients at once keep the workers busy.
"""
import os
import socket
import threading
import time

PORT = int(os.environ.get("PORT", "8080"))
DOCROOT = os.environ.get("DOCROOT", "/srv/www")
WORKERS = 4
busy = threading.BoundedSemaphore(WORKERS)


def response_for(request: bytes) -> bytes:
    parts = request.split(b"\r\n", 1)[0].split()
    path = parts[1].decode(errors="replace") if len(parts) >= 2 else "/"
    file = os.path.realpath(os.path.join(DOCROOT, path.lstrip("/") or "index.html"))
    if not file.startswith(os.path.realpath(DOCROOT)) or not os.path.isfile(file):
        return b"HTTP/1.0 404 Not Found\r\nContent-Length: 10\r\n\r\nnot found\n"
    with open(file, "rb") as handle:
        body = handle.read()
    return b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body


def serve(conn: socket.socket) -> None:
    try:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
        time.sleep(0.02)
        if data:
            conn.sendall(response_for(data))
    except OSError as error:
        print(f"client error: {error}", flush=True)
    finally:
        conn.close()
        busy.release()


listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("0.0.0.0", PORT))
listener.listen(128)
print(f"overloaded server listening on {PORT}", flush=True)
while True:
    conn, _ = listener.accept()
    if not busy.acquire(blocking=False):
        conn.close()  # all workers busy: the client gets nothing
        continue
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
