"""Runs but never listens: `labctl up` must give up after its timeout with a clear message."""
import time

print("I will never listen", flush=True)
while True:
    time.sleep(1)
