"""Starter: it listens and answers every request with 501 Not Implemented.

Your task (see README.md): accept() in the main thread; give each connection its own thread that
reads the request, answers and closes.

Serve GET of files under $DOCROOT (default /srv/www) on port $PORT (default 8080):
200 with the file, 404 when there is none, 400 for a request that is not a valid GET.
Run it locally with:  labctl test threaded --submission <this folder>
"""

import os
import socket

PORT = int(os.environ.get("PORT", "8080"))
DOCROOT = os.environ.get("DOCROOT", "/srv/www")


def main() -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", PORT))
    listener.listen(128)
    print(f"starter server on port {PORT}", flush=True)
    while True:
        conn, _ = listener.accept()
        with conn:
            # TODO: read the request, find the file under DOCROOT, answer 200 / 404 / 400.
            conn.sendall(b"HTTP/1.0 501 Not Implemented\r\nContent-Length: 0\r\n\r\n")


if __name__ == "__main__":
    main()
