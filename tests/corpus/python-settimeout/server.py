"""A student's blocking server whose sockets have timeouts: Python's settimeout() makes every accept
and recv a poll() on ONE socket first. Still one client at a time."""
import os
import socket

listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("0.0.0.0", int(os.environ.get("PORT", "8080"))))
listener.listen(64)
listener.settimeout(30)
while True:
    try:
        conn, _ = listener.accept()
    except socket.timeout:
        continue
    with conn:
        conn.settimeout(30)
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
        except OSError:
            pass
