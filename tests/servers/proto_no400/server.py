"""proto_good with one bug: it never says 400. Whatever the request line holds, it takes the
second word as the path if it looks like one, else '/', and serves it: garbage gets 200 and the front page.
(malformed_request must fail; http must pass.)
"""
import os
import re
import socket

PORT = int(os.environ.get("PORT", "8080"))
DOCROOT = os.path.realpath(os.environ.get("DOCROOT", "/srv/www"))
TYPES = {".html": "text/html", ".txt": "text/plain", ".bin": "application/octet-stream"}
REQUEST_LINE = re.compile(rb"^([A-Z]+) (/[^ ]*) HTTP/(\d)\.(\d)$")
MAX_HEAD = 16384


def read_head(conn):
    """The request head up to the blank line, or None when the client left before sending it."""
    data = b""
    while b"\r\n\r\n" not in data:
        if len(data) > MAX_HEAD:
            return b"too large"
        chunk = conn.recv(4096)
        if not chunk:
            return None
        data += chunk
    return data.split(b"\r\n\r\n", 1)[0]


def respond(conn, status, body, content_type="text/plain", head_only=False):
    head = (f"HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n\r\n").encode()
    conn.sendall(head if head_only else head + body)


def handle(conn):
    head = read_head(conn)
    if head is None:
        return
    # THE BUG: no validation of the request line at all.
    words = head.split(b"\r\n")[0].split()
    method = words[0] if words and words[0] == b"HEAD" else b"GET"
    target = words[1].decode("latin-1") if len(words) > 1 and words[1].startswith(b"/") else "/"
    if method not in (b"GET", b"HEAD"):
        return respond(conn, "501 Not Implemented", b"not implemented\n")
    path = target.split("?", 1)[0]
    if path.endswith("/"):
        path += "index.html"
    full = os.path.realpath(os.path.join(DOCROOT, path.lstrip("/")))
    if not full.startswith(DOCROOT + os.sep) or not os.path.isfile(full):
        return respond(conn, "404 Not Found", b"not found\n")
    with open(full, "rb") as file:
        body = file.read()
    respond(conn, "200 OK", body, TYPES.get(os.path.splitext(full)[1], "application/octet-stream"),
            head_only=method == b"HEAD")


listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("0.0.0.0", PORT))
listener.listen(128)
print(f"listening on {PORT}", flush=True)
while True:
    conn, _ = listener.accept()
    conn.settimeout(10)
    try:
        handle(conn)
    except OSError as error:   # a reset, a timeout, a client gone: that connection only
        print(f"connection error: {error}", flush=True)
    finally:
        conn.close()
