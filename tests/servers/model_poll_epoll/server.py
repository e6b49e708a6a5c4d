"""Model server: one thread, an event loop on poll() (SELECTOR=poll) or on epoll (SELECTOR=epoll,
the default; it sleeps in epoll_wait). Any other SELECTOR: the server exits at once, saying so."""
import os
import select
import socket
import sys

SELECTOR = os.environ.get("SELECTOR", "epoll")
if SELECTOR not in ("poll", "epoll"):
    sys.exit(f"model_poll_epoll server: unknown SELECTOR={SELECTOR!r}; expected 'poll' or 'epoll'")

BODY = f"hello from the {SELECTOR} model\n".encode()
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("0.0.0.0", int(os.environ.get("PORT", "8080"))))
listener.listen(128)
listener.setblocking(False)
if SELECTOR == "poll":
    poller, POLLIN = select.poll(), select.POLLIN
else:
    poller, POLLIN = select.epoll(), select.EPOLLIN
poller.register(listener, POLLIN)
conns = {}    # fd -> socket
pending = {}  # fd -> bytes received so far


def drop(fd):
    poller.unregister(fd)
    pending.pop(fd, None)
    conns.pop(fd).close()


while True:
    for fd, _events in poller.poll():
        if fd == listener.fileno():
            try:
                conn, _ = listener.accept()
            except BlockingIOError:
                continue
            conn.setblocking(False)
            conns[conn.fileno()], pending[conn.fileno()] = conn, b""
            poller.register(conn, POLLIN)
            continue
        try:
            chunk = conns[fd].recv(4096)
        except BlockingIOError:
            continue
        except ConnectionError:
            chunk = b""
        if not chunk:
            drop(fd)
            continue
        pending[fd] += chunk
        if b"\r\n\r\n" in pending[fd]:
            try:
                conns[fd].setblocking(True)
                conns[fd].sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY))
            except OSError:
                pass  # the client went away
            drop(fd)
