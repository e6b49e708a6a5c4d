"""Starter of the scaffold: it listens, and answers 501 until you write the rest."""

import os
import socket

listener = socket.create_server(("0.0.0.0", int(os.environ.get("PORT", "8080"))))
while True:
    conn, _ = listener.accept()
    with conn:
        conn.sendall(b"HTTP/1.0 501 Not Implemented\r\nContent-Length: 0\r\n\r\n")
