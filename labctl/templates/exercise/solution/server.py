"""Reference solution of the scaffold: answer every request with the docroot's index.html."""

import os
import socket
from pathlib import Path

page = (Path(os.environ.get("DOCROOT", "/srv/www")) / "index.html").read_bytes()
listener = socket.create_server(("0.0.0.0", int(os.environ.get("PORT", "8080"))))
while True:
    conn, _ = listener.accept()
    with conn:
        try:
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                request += chunk
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/html\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(page), page))
        except OSError:
            pass
