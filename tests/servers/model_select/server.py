"""Model server: one thread, an event loop on select() (glibc makes it pselect6)."""
import os
import select
import socket

BODY = b"hello from the select model\n"
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("0.0.0.0", int(os.environ.get("PORT", "8080"))))
listener.listen(128)
listener.setblocking(False)
pending = {}  # socket -> bytes received so far
while True:
    readable, _, _ = select.select([listener, *pending], [], [])
    for sock in readable:
        if sock is listener:
            try:
                conn, _ = listener.accept()
            except BlockingIOError:
                continue
            conn.setblocking(False)
            pending[conn] = b""
            continue
        try:
            chunk = sock.recv(4096)
        except BlockingIOError:
            continue
        except ConnectionError:
            chunk = b""
        if not chunk:
            del pending[sock]
            sock.close()
            continue
        pending[sock] += chunk
        if b"\r\n\r\n" in pending[sock]:
            del pending[sock]
            try:
                sock.setblocking(True)
                sock.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY))
            except OSError:
                pass  # the client went away
            sock.close()
