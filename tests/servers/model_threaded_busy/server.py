"""Model server, WRONG on purpose: a thread per connection (right), plus a "housekeeping"
thread that polls a flag without ever sleeping (wrong: one thread spins at 100% of a CPU
while the main thread sleeps correctly in accept4)."""
import os
import socket
import threading

BODY = b"hello from the threaded-busy model\n"
stop = False


def housekeeping():
    while not stop:  # spins: no sleep, no wait
        pass


def serve(conn):
    try:
        handle(conn)
    except OSError:
        pass  # the client went away
    finally:
        conn.close()


def handle(conn):
    with conn:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                return
            data += chunk
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY))


threading.Thread(target=housekeeping, daemon=True).start()
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("0.0.0.0", int(os.environ.get("PORT", "8080"))))
listener.listen(128)
while True:
    conn, _ = listener.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
