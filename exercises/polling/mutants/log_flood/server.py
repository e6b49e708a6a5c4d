"""Mutant: a log flood. It listens, then writes to stdout as fast as it can, forever,
and never answers. The lab keeps only a few MB of any container's log, so the host's
disk is safe; grading ends with failed checks and the tail of the flood as evidence.
"""

import os
import socket
import sys

listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("0.0.0.0", int(os.environ.get("PORT", "8080"))))
listener.listen(1024)
line = "log flood " * 20 + "\n"
while True:
    sys.stdout.write(line)
