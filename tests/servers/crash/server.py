"""Exits before it listens: `labctl up` must report the exit code and the log tail."""
import sys

print("starting, then failing on purpose", flush=True)
sys.exit(3)
