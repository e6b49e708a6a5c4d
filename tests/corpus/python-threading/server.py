"""Python's http.server.ThreadingHTTPServer: a new thread per connection."""
import functools
import os
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

handler = functools.partial(SimpleHTTPRequestHandler, directory=os.environ.get("DOCROOT", "/srv/www"))
ThreadingHTTPServer(("0.0.0.0", int(os.environ.get("PORT", "8080"))), handler).serve_forever()
