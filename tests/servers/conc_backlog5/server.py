"""A marginal but correct server: Python's own ThreadingHTTPServer, whose listen backlog is 5.

A burst of clients overflows that queue on a busy machine; the kernel then drops SYNs and
the clients send them again a second later. Slow, not wrong: concurrent_clients must pass it
on a quiet machine and on a busy one alike.
"""
import functools
import os
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer


class Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):  # one line per request would flood the log under load
        pass


handler = functools.partial(Quiet, directory=os.environ.get("DOCROOT", "/srv/www"))
server = ThreadingHTTPServer(("0.0.0.0", int(os.environ.get("PORT", "8080"))), handler)
assert server.request_queue_size == 5
print("listening with a backlog of", server.request_queue_size, flush=True)
server.serve_forever()
