"""Model server: blocking, one client at a time (idle: asleep in accept4; with a client: in recvfrom)."""
import os
import socket

BODY = b"hello from the blocking model\n"
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("0.0.0.0", int(os.environ.get("PORT", "8080"))))
listener.listen(64)
while True:
    conn, _ = listener.accept()
    with conn:
        try:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
            if b"\r\n\r\n" in data:
                conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY))
        except OSError:
            pass  # the client went away: serve the next one
