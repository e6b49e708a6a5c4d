"""A student's busy-polling server: non-blocking sockets asked again and again, never asleep."""
import os
import socket

listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("0.0.0.0", int(os.environ.get("PORT", "8080"))))
listener.listen(64)
listener.setblocking(False)
clients = {}
while True:
    try:
        conn, _ = listener.accept()
        conn.setblocking(False)
        clients[conn] = b""
    except BlockingIOError:
        pass
    for conn in list(clients):
        try:
            chunk = conn.recv(4096)
        except BlockingIOError:
            continue
        clients[conn] += chunk
        if not chunk or b"\r\n\r\n" in clients[conn]:
            if chunk:
                conn.setblocking(True)
                conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
            conn.close()
            del clients[conn]
