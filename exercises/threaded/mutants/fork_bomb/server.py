"""Mutant: a fork bomb. It listens, and on the first request every process forks
forever. The lab's pids limit must contain it: the host and other labs stay unharmed,
grading ends with failed checks, and `down` removes every process.
"""

import os
import socket

listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("0.0.0.0", int(os.environ.get("PORT", "8080"))))
listener.listen(16)
print("listening; a request starts the fork bomb", flush=True)
while True:
    conn, _ = listener.accept()
    if conn.recv(4096):
        break
    conn.close()
while True:
    try:
        os.fork()
    except OSError:
        pass  # the pids limit said no: keep trying, as a real fork bomb does
