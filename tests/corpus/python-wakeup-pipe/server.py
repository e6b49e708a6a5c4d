"""A threaded server in a child process; the parent waits on a pipe for the child to end (a small
supervisor): the parent holds no client, and reading a pipe is not serving one."""
import os
import socket
import threading

reader, writer = os.pipe()
if os.fork():
    os.close(writer)
    os.read(reader, 1)  # returns when the child ends: it holds the pipe's only writer
    os._exit(0)
os.close(reader)


def serve(conn: socket.socket) -> None:
    with conn:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                return
            data += chunk
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n")


listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("0.0.0.0", int(os.environ.get("PORT", "8080"))))
listener.listen(64)
while True:
    conn, _ = listener.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
