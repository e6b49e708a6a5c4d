"""The impairment tests' server: a thread per connection, so a long transfer never holds up a short request.

GET /        a short answer (round trips are timed on it)
GET /stream  bytes without end, until the client closes (the client times what arrives: a download's rate)
POST /sink   reads the body (Content-Length) and answers how many bytes came, and how many in how many
             seconds from one second in to the last: an upload's rate, measured where the packets arrive
"""
import json
import os
import socket
import threading
import time

CHUNK = b"x" * 65536


def serve(conn: socket.socket) -> None:
    with conn:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                return
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        line = head.split(b"\r\n", 1)[0]
        try:
            if line.startswith(b"GET /stream"):
                conn.sendall(b"HTTP/1.0 200 OK\r\n\r\n")
                while True:
                    conn.sendall(CHUNK)
            elif line.startswith(b"POST /sink"):
                length = next(int(value) for name, _, value in (row.partition(b":") for row in head.split(b"\r\n")[1:])
                              if name.strip().lower() == b"content-length")
                first = time.monotonic()
                got, marks = len(body), [(0.0, len(body))]
                while got < length:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    got += len(chunk)
                    marks.append((time.monotonic() - first, got))
                # From a second in: what came before (and with the head) may have waited for this thread.
                begin = next((mark for mark in marks if mark[0] >= 1.0), marks[0])
                answer = json.dumps({"bytes": got, "window_bytes": got - begin[1],
                                     "seconds": marks[-1][0] - begin[0]}).encode()
                conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer))
            else:
                conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 6\r\n\r\nhello\n")
        except OSError:
            pass  # the client went away mid-transfer: that is how /stream ends


listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("0.0.0.0", int(os.environ.get("PORT", "8080"))))
listener.listen(64)
print("listening", flush=True)
while True:
    client, _ = listener.accept()
    threading.Thread(target=serve, args=(client,), daemon=True).start()
