"""Mutant: binds but forgets listen(), so no client can connect. Expected: not gradable."""

import os
import socket
import time

sock = socket.socket()
sock.bind(("0.0.0.0", int(os.environ.get("PORT", "8080"))))
print("bound, but never listening", flush=True)
while True:
    time.sleep(60)
