"""Model server: a process per connection (fork); the parent reaps its children on SIGCHLD."""
import os
import signal
import socket

BODY = b"hello from the forking model\n"


def reap(signum, frame):
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass


def serve(conn):
    try:
        handle(conn)
    except OSError:
        pass  # the client went away
    finally:
        conn.close()


def handle(conn):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            return
        data += chunk
    conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY))


signal.signal(signal.SIGCHLD, reap)
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("0.0.0.0", int(os.environ.get("PORT", "8080"))))
listener.listen(128)
while True:
    conn, _ = listener.accept()  # retried after SIGCHLD interrupts it (PEP 475)
    if os.fork() == 0:
        listener.close()
        try:
            serve(conn)
        finally:
            os._exit(0)
    conn.close()
