"""Starter: it listens and answers every request with 501 Not Implemented.

Your task (see README.md): make the listening socket, then fork WORKERS worker processes
once, at the beginning; each worker accept()s on that same socket, reads the request,
answers, closes, and accepts the next one; the parent only wait()s for its children.

Serve GET of files under $DOCROOT (default /srv/www) on port $PORT (default 8080):
200 with the file, 404 when there is none, 400 for a request that is not a valid GET.
Run it locally with:  labctl test prefork --submission <this folder>
"""

import os
import socket

PORT = int(os.environ.get("PORT", "8080"))
DOCROOT = os.environ.get("DOCROOT", "/srv/www")
WORKERS = int(os.environ.get("WORKERS", "4"))


def main() -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", PORT))
    listener.listen(128)
    # TODO: fork WORKERS processes here; in each (os.fork() returned 0), loop forever: accept on
    #       `listener`, serve the connection, close it. The parent then loops on os.wait(),
    #       forking a new worker when one dies.
    print(f"starter server on port {PORT}", flush=True)
    while True:
        conn, _ = listener.accept()
        with conn:
            # TODO (in a worker): read the request up to its blank line, find the file under
            #       DOCROOT, answer 200 / 404 / 400.
            conn.sendall(b"HTTP/1.0 501 Not Implemented\r\nContent-Length: 0\r\n\r\n")


if __name__ == "__main__":
    main()
