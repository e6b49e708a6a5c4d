"""A real server on 127.0.0.1 for the harness's unit tests (not a fake: the harness talks to it over TCP)."""

from __future__ import annotations

import socket
import threading


class LocalServer:
    """A one-at-a-time server on 127.0.0.1 that answers `body` to every whole request."""

    def __init__(self, body: bytes = b"hello"):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.body = body
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                data = b""
                conn.settimeout(10)
                try:
                    while b"\r\n\r\n" not in data:
                        chunk = conn.recv(1024)
                        if not chunk:
                            break
                        data += chunk
                    if data:
                        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(self.body), self.body))
                except OSError:
                    pass

    def close(self):
        self.listener.close()
