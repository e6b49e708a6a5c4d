"""Python's http.server.HTTPServer: one request at a time, in the main thread."""
import functools
import os
from http.server import HTTPServer, SimpleHTTPRequestHandler

handler = functools.partial(SimpleHTTPRequestHandler, directory=os.environ.get("DOCROOT", "/srv/www"))
HTTPServer(("0.0.0.0", int(os.environ.get("PORT", "8080"))), handler).serve_forever()
