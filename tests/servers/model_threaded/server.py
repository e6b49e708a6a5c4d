"""Model server: a thread per connection (main thread asleep in accept4, each client's thread in recvfrom)."""
import os
import socket
import threading

BODY = b"hello from the threaded model\n"


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


listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("0.0.0.0", int(os.environ.get("PORT", "8080"))))
listener.listen(128)
while True:
    conn, _ = listener.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
