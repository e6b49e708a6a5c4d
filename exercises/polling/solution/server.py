"""Reference solution: one thread, an event loop on epoll (via selectors), non-blocking sockets.

The only place this server sleeps is epoll_wait(): the kernel wakes it when any socket
is ready, and it does just the work that will not block: accept what is waiting, read
what has arrived, write what the peer's window takes. Thousands of idle clients cost a
few bytes each, and no thread.
"""

import mimetypes
import os
import selectors
import socket
from pathlib import Path

PORT = int(os.environ.get("PORT", "8080"))
DOCROOT = Path(os.environ.get("DOCROOT", "/srv/www")).resolve()
MAX_REQUEST = 8192
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found"}


def respond(status: int, body: bytes, content_type: str = "text/plain") -> bytes:
    head = (f"HTTP/1.0 {status} {REASONS[status]}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode() + body


def answer(request: bytes) -> bytes:
    try:
        method, target, version = request.split(b"\r\n", 1)[0].decode("ascii").split(" ")
    except (UnicodeDecodeError, ValueError):
        return respond(400, b"bad request\n")
    if method != "GET" or not target.startswith("/") or not version.startswith("HTTP/1."):
        return respond(400, b"bad request\n")
    path = (DOCROOT / target.lstrip("/")).resolve()
    if path.is_dir():
        path = path / "index.html"
    if DOCROOT not in path.parents or not path.is_file():
        return respond(404, b"not found\n")
    return respond(200, path.read_bytes(), mimetypes.guess_type(path.name)[0] or "application/octet-stream")


class Connection:
    """One client's state between wake-ups: what it sent so far, what is left to send."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.request = b""
        self.response = memoryview(b"")


def main() -> None:
    selector = selectors.DefaultSelector()   # epoll on Linux: no FD_SETSIZE limit, unlike select()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", PORT))
    listener.listen(1024)
    listener.setblocking(False)
    selector.register(listener, selectors.EVENT_READ, None)
    print(f"polling server ({type(selector).__name__}) on port {PORT}, serving {DOCROOT}", flush=True)

    def close(conn: Connection) -> None:
        selector.unregister(conn.sock)
        conn.sock.close()

    while True:
        for key, events in selector.select():          # the one place this server sleeps
            if key.data is None:                       # the listener: clients are waiting
                while True:
                    try:
                        sock, _ = listener.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:                    # e.g. out of descriptors: try again later
                        break
                    sock.setblocking(False)
                    selector.register(sock, selectors.EVENT_READ, Connection(sock))
                continue
            conn: Connection = key.data
            try:
                if events & selectors.EVENT_READ:
                    chunk = conn.sock.recv(4096)
                    if not chunk:
                        close(conn)
                        continue
                    conn.request += chunk
                    if b"\r\n\r\n" in conn.request or len(conn.request) > MAX_REQUEST:
                        whole = b"\r\n\r\n" in conn.request
                        conn.response = memoryview(answer(conn.request) if whole
                                                   else respond(400, b"request too large\n"))
                        selector.modify(conn.sock, selectors.EVENT_WRITE, conn)
                elif events & selectors.EVENT_WRITE:
                    sent = conn.sock.send(conn.response)   # may send only part: keep the rest
                    conn.response = conn.response[sent:]
                    if not conn.response:
                        close(conn)
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:                            # reset by the client: forget it, serve the others
                close(conn)


if __name__ == "__main__":
    main()
