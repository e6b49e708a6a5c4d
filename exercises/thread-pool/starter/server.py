"""Starter: it listens and answers every request with 501 Not Implemented.

Your task (see README.md): start WORKERS worker threads once, at the beginning; the main
thread accept()s and puts each connection on a queue.Queue; each worker takes a
connection from the queue, reads the request, answers, closes, and takes the next one.

Serve GET of files under $DOCROOT (default /srv/www) on port $PORT (default 8080):
200 with the file, 404 when there is none, 400 for a request that is not a valid GET.
Run it locally with:  labctl test thread-pool --submission <this folder>
"""

import os
import socket

PORT = int(os.environ.get("PORT", "8080"))
DOCROOT = os.environ.get("DOCROOT", "/srv/www")
WORKERS = int(os.environ.get("WORKERS", "8"))


def main() -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", PORT))
    listener.listen(128)
    # TODO: make a queue.Queue and start WORKERS threads (daemon=True) that each loop forever:
    #       take a connection from the queue, serve it, close it.
    print(f"starter server on port {PORT}", flush=True)
    while True:
        conn, _ = listener.accept()
        # TODO: put the connection on the queue instead of answering it here.
        with conn:
            # TODO (in the worker): read the request up to its blank line, find the file under
            #       DOCROOT, answer 200 / 404 / 400.
            conn.sendall(b"HTTP/1.0 501 Not Implemented\r\nContent-Length: 0\r\n\r\n")


if __name__ == "__main__":
    main()
