"""An event loop on select() with non-blocking sockets and correct partial writes.

Serves slow clients and slow readers well, but select() cannot watch a descriptor above
1023 (FD_SETSIZE): past ~1020 connections Python raises "filedescriptor out of range in
select()" and the server dies. That is what idle_connections exists to catch.
"""
import os
import select
import socket

PORT = int(os.environ.get("PORT", "8080"))
DOCROOT = os.environ.get("DOCROOT", "/srv/www")


def response_for(request: bytes) -> bytes:
    parts = request.split(b"\r\n", 1)[0].split()
    path = parts[1].decode(errors="replace") if len(parts) >= 2 else "/"
    file = os.path.realpath(os.path.join(DOCROOT, path.lstrip("/") or "index.html"))
    if not file.startswith(os.path.realpath(DOCROOT)) or not os.path.isfile(file):
        return b"HTTP/1.0 404 Not Found\r\nContent-Length: 10\r\n\r\nnot found\n"
    with open(file, "rb") as handle:
        body = handle.read()
    return b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body


listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("0.0.0.0", PORT))
listener.listen(1024)
listener.setblocking(False)
inbox: dict[socket.socket, bytes] = {}
outbox: dict[socket.socket, memoryview] = {}
print(f"select() server listening on {PORT}", flush=True)


def close(conn: socket.socket) -> None:
    inbox.pop(conn, None)
    outbox.pop(conn, None)
    conn.close()


while True:
    readable, writable, _ = select.select([listener, *inbox], list(outbox), [])
    for conn in readable:
        if conn is listener:
            while True:
                try:
                    client, _ = listener.accept()
                except (BlockingIOError, InterruptedError):
                    break
                client.setblocking(False)
                inbox[client] = b""
            continue
        try:
            chunk = conn.recv(4096)
        except (BlockingIOError, InterruptedError):
            continue
        except OSError:
            chunk = b""
        if not chunk:
            close(conn)
            continue
        inbox[conn] += chunk
        if b"\r\n\r\n" in inbox[conn]:
            outbox[conn] = memoryview(response_for(inbox.pop(conn)))
    for conn in writable:
        try:
            sent = conn.send(outbox[conn][:262144])
        except (BlockingIOError, InterruptedError):
            continue
        except OSError:
            close(conn)
            continue
        outbox[conn] = outbox[conn][sent:]
        if not outbox[conn]:
            close(conn)
