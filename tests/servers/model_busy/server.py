"""Model server, WRONG on purpose: busy-polls non-blocking sockets, never sleeps (100% of a CPU)."""
import os
import socket

BODY = b"hello from the busy model\n"
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("0.0.0.0", int(os.environ.get("PORT", "8080"))))
listener.listen(128)
listener.setblocking(False)
pending = {}  # socket -> bytes received so far
while True:  # spin: try everything, wait for nothing
    try:
        conn, _ = listener.accept()
        conn.setblocking(False)
        pending[conn] = b""
    except BlockingIOError:
        pass
    for sock in list(pending):
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
