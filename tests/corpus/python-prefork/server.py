"""A pre-forked pool: the listening socket is made, then 4 processes are forked that each accept on
it, one client at a time; the parent only waits for its children."""
import os
import socket

listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("0.0.0.0", int(os.environ.get("PORT", "8080"))))
listener.listen(64)
for _ in range(4):
    if os.fork() == 0:
        while True:
            conn, _ = listener.accept()
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                else:
                    conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
while True:
    os.wait()
