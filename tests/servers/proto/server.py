"""A small HTTP/1.0 server for the protocol checks: correct, or with the one bug $BUG names.

Correct (BUG unset or ""): GET and HEAD of files under $DOCROOT ('/' is index.html); 400 for a bad
request line or header, 404 for a missing file, 501 for other methods. Blocking, one connection at a
time; reads until the blank line that ends the headers, however the bytes arrive; every error stays
in its connection.

Each bug sits in one place marked `# THE BUG (BUG=<name>)`:
  no400             never says 400: takes the second word as the path if it looks like one, else '/',
                    and serves it; garbage gets 200 and the front page.
                    (malformed_request must fail; http must pass.)
  crash_on_garbage  unpacks the request line into three words; the ValueError of any other line is
                    caught by nothing, so the first malformed request line kills the server.
                    (malformed_request must fail: the server stops answering; http must pass.)
  dies_on_reset     catches only socket.timeout around a connection, so the ConnectionResetError that
                    recv() raises when a client resets (RST) its connection kills the server.
                    (client_reset must fail; http must pass.)
  single_recv       reads the request with a single recv(), as if one recv() always returned it whole:
                    a request that arrives in pieces is cut short and answered 400.
                    (trickled_request must fail; http and malformed_request must pass.)
  wrong_body        reads files as text (UTF-8, errors replaced, universal newlines) and labels all
                    text/plain: binary and CRLF files are altered on the way.
                    (http with expect.file on a binary file must fail by digest; on hello.txt it must pass.)
  small_backlog     listen(1), a SYN queue of about one half-open connection. With SYN cookies on in the
                    server's network namespace (the kernel's default) a SYN flood still cannot lock
                    clients out; with them off, a flood of a few SYNs does. (syn_flood: see the
                    integration test.)
Any other value of BUG: the server exits at once, saying so (a typo in a test must not pass silently).
"""
import os
import re
import socket
import sys

BUGS = ("", "no400", "crash_on_garbage", "dies_on_reset", "single_recv", "wrong_body", "small_backlog")
BUG = os.environ.get("BUG", "")
if BUG not in BUGS:
    sys.exit(f"proto server: unknown BUG={BUG!r}; expected one of {', '.join(repr(b) for b in BUGS)}")

PORT = int(os.environ.get("PORT", "8080"))
DOCROOT = os.path.realpath(os.environ.get("DOCROOT", "/srv/www"))
TYPES = {".html": "text/html", ".txt": "text/plain", ".bin": "application/octet-stream"}
REQUEST_LINE = re.compile(rb"^([A-Z]+) (/[^ ]*) HTTP/(\d)\.(\d)$")
MAX_HEAD = 16384


def read_head(conn):
    """The request head up to the blank line, or None when the client left before sending it."""
    if BUG == "single_recv":
        data = conn.recv(4096)   # THE BUG (BUG=single_recv): whatever the first recv() returns is the request
        if not data:
            return None
        return data.split(b"\r\n\r\n", 1)[0]
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
    if BUG == "no400":
        # THE BUG (BUG=no400): no validation of the request line at all.
        words = head.split(b"\r\n")[0].split()
        method = words[0] if words and words[0] == b"HEAD" else b"GET"
        target = words[1].decode("latin-1") if len(words) > 1 and words[1].startswith(b"/") else "/"
    elif BUG == "crash_on_garbage":
        # THE BUG (BUG=crash_on_garbage): a request line that is not three words raises ValueError,
        # and nothing catches it.
        method, target, version = head.split(b"\r\n")[0].decode().split(" ")
        method = method.encode()
    else:
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
    if BUG == "wrong_body":
        with open(full, encoding="utf-8", errors="replace") as file:   # THE BUG (BUG=wrong_body): text mode
            body = file.read().encode("utf-8")
        return respond(conn, "200 OK", body, "text/plain", head_only=method == b"HEAD")
    with open(full, "rb") as file:
        body = file.read()
    respond(conn, "200 OK", body, TYPES.get(os.path.splitext(full)[1], "application/octet-stream"),
            head_only=method == b"HEAD")


listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("0.0.0.0", PORT))
if BUG == "small_backlog":
    listener.listen(1)   # THE BUG (BUG=small_backlog): a backlog of one
else:
    listener.listen(128)
print(f"listening on {PORT}" + (f" (BUG={BUG})" if BUG else ""), flush=True)
while True:
    conn, _ = listener.accept()
    conn.settimeout(10)
    try:
        handle(conn)
    except OSError as error:   # a reset, a timeout, a client gone: that connection only
        if BUG == "dies_on_reset" and not isinstance(error, socket.timeout):
            raise   # THE BUG (BUG=dies_on_reset): only a timeout is caught; a reset kills the server
        print(f"connection error: {error}", flush=True)
    finally:
        conn.close()
