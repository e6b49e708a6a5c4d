"""An event loop (selectors: epoll) with non-blocking sockets: correct, or with the one bug $BUG names.

Correct (BUG unset or ""): keeps what send() did not take and sends it when the socket is writable
again (passes every concurrency check, 2000 idle connections included).
Each bug sits in one place marked `# THE BUG (BUG=<name>)`:
  blocking_send  makes the socket blocking and calls sendall(): one slow reader stops the loop
                 (slow_reader must fail "stuck in send"; slow_client and idle_connections pass);
  partial        calls send() once and closes, ignoring what send() did not take: a slow reader
                 gets a short file (slow_reader must fail "received only").
Any other value of BUG: the server exits at once, saying so (a typo in a test must not pass silently).
"""
import os
import selectors
import socket
import sys

BUGS = ("", "blocking_send", "partial")
BUG = os.environ.get("BUG", "")
if BUG not in BUGS:
    sys.exit(f"conc_epoll server: unknown BUG={BUG!r}; expected one of {', '.join(repr(b) for b in BUGS)}")
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


class Client:
    def __init__(self, conn: socket.socket):
        self.conn = conn
        self.inbox = b""
        self.outbox = memoryview(b"")


selector = selectors.DefaultSelector()


def close(client: Client) -> None:
    selector.unregister(client.conn)
    client.conn.close()


def on_readable(client: Client) -> None:
    try:
        chunk = client.conn.recv(4096)
    except (BlockingIOError, InterruptedError):
        return
    except OSError:
        chunk = b""
    if not chunk:
        close(client)
        return
    client.inbox += chunk
    if b"\r\n\r\n" not in client.inbox:
        return
    response = response_for(client.inbox)
    if BUG == "blocking_send":
        # THE BUG (BUG=blocking_send): a blocking sendall() in the event loop; a slow reader stops it.
        try:
            client.conn.setblocking(True)
            client.conn.sendall(response)
        except OSError as error:
            print(f"client error: {error}", flush=True)
        close(client)
    elif BUG == "partial":
        # THE BUG (BUG=partial): one send(), and what it did not take is dropped; the client gets a short file.
        try:
            client.conn.send(response)
        except OSError as error:
            print(f"client error: {error}", flush=True)
        close(client)
    else:
        client.outbox = memoryview(response)
        selector.modify(client.conn, selectors.EVENT_WRITE, client)
        on_writable(client)


def on_writable(client: Client) -> None:
    try:
        sent = client.conn.send(client.outbox[:262144])
    except (BlockingIOError, InterruptedError):
        return
    except OSError as error:
        print(f"client error: {error}", flush=True)
        close(client)
        return
    client.outbox = client.outbox[sent:]
    if not client.outbox:
        close(client)


listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("0.0.0.0", PORT))
listener.listen(1024)
listener.setblocking(False)
selector.register(listener, selectors.EVENT_READ, None)
print(f"event-loop server ({type(selector).__name__}, BUG={BUG or 'none'}) listening on {PORT}", flush=True)
while True:
    for key, events in selector.select():
        if key.data is None:
            while True:
                try:
                    conn, _ = listener.accept()
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as error:  # out of descriptors: say so, keep serving the others
                    print(f"accept: {error}", flush=True)
                    break
                conn.setblocking(False)
                selector.register(conn, selectors.EVENT_READ, Client(conn))
        elif events & selectors.EVENT_READ:
            on_readable(key.data)
        elif events & selectors.EVENT_WRITE:
            on_writable(key.data)
