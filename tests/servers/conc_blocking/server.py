"""One client at a time (blocking accept, recv, sendall): the server the concurrency checks must fail.

A slow client (unfinished request) holds it in recv(); a slow reader holds it in sendall().
"""
import os
import socket

PORT = int(os.environ.get("PORT", "8080"))
DOCROOT = os.environ.get("DOCROOT", "/srv/www")


def response_for(request: bytes) -> bytes:
    parts = request.split(b"\r\n", 1)[0].split()
    path = parts[1].decode(errors="replace") if len(parts) >= 2 else "/"
    file = os.path.realpath(os.path.join(DOCROOT, path.lstrip("/") or "index.html"))
    if not file.startswith(os.path.realpath(DOCROOT)) or not os.path.isfile(file):
        return b"HTTP/1.0 404 Not Found\r\nContent-Length: 10\r\n\r\nnot found\n"
    with open(file, "rb") as handle:
        body = handle.read()
    return b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body


listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("0.0.0.0", PORT))
listener.listen(128)
print(f"blocking server listening on {PORT}", flush=True)
while True:
    conn, _ = listener.accept()
    try:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
        if data:
            conn.sendall(response_for(data))
    except OSError as error:
        print(f"client error: {error}", flush=True)
    finally:
        conn.close()
