"""Python's socketserver.ForkingMixIn with http.server: a new process per connection."""
import functools
import os
import socketserver
from http.server import HTTPServer, SimpleHTTPRequestHandler


class ForkingHTTPServer(socketserver.ForkingMixIn, HTTPServer):
    pass


handler = functools.partial(SimpleHTTPRequestHandler, directory=os.environ.get("DOCROOT", "/srv/www"))
ForkingHTTPServer(("0.0.0.0", int(os.environ.get("PORT", "8080"))), handler).serve_forever()
