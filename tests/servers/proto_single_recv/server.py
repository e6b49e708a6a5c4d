"""proto_good with one bug: it reads the request with a single recv(), as if one recv()
always returned the whole request. A request that arrives in pieces is cut short and answered 400.
(trickled_request must fail; http and malformed_request must pass.)
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
    data = conn.recv(4096)   # THE BUG: whatever the first recv() returns is taken as the request
    if not data:
        return None
    return data.split(b"\r\n\r\n", 1)[0]


def respond(conn, status, body, content_type="text/plain", head_only=False):
    head = (f"HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n\r\n").encode()
    conn.sendall(head if head_only else head + body)


def handle(conn):
    head = read_head(conn)
    if head is None:
        return
    lines = head.split(b"\r\n")
    match = REQUEST_LINE.match(lines[0])
    if not match or any(b":" not in line for line in lines[1:]):
        return respond(conn, "400 Bad Request", b"bad request\n")
    method, target = match.group(1), match.group(2).decode("latin-1")
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
