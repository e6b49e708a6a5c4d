"""A real server on 127.0.0.1 for the harness's unit tests (not a fake: the harness talks to it over TCP)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable


def read_request(conn: socket.socket) -> bytes | None:
    """A request's head, read to its blank line; None when the client closed before it ended."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(1024)
        if not chunk:
            return None
        data += chunk
    return data


def answer_with(body: bytes) -> Callable[[socket.socket], None]:
    """A handler that reads a whole request and answers 200 with `body`."""
    def handle(conn: socket.socket) -> None:
        if read_request(conn) is None:
            return
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    return handle


class LocalServer:
    """A one-at-a-time server in a thread: `handle(conn)` per connection (by default: answer 200 with
    `body`); the socket errors its handler met are recorded in `errors`."""

    def __init__(self, handle: Callable[[socket.socket], None] | None = None, body: bytes = b"hello"):
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=16)
        self.listener.settimeout(5)
        self.port = self.listener.getsockname()[1]
        self.handle = handle or answer_with(body)
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(3)
                try:
                    self.handle(conn)
                except OSError as error:
                    self.errors.append(type(error).__name__)

    def close(self) -> None:
        self.listener.close()
