"""An interactive terminal into a container over the exec socket (`labctl shell`).

The Docker SDK gives a raw socket for an exec started with tty=True; this pumps bytes
between it and the user's terminal (put in raw mode) until the shell exits.
"""

from __future__ import annotations

import os
import select
import sys
import termios
import tty


def pump(sock) -> None:
    """Copy stdin -> socket and socket -> stdout until the socket closes."""
    raw = getattr(sock, "_sock", sock)  # the SDK wraps the socket in a SocketIO on some versions
    stdin = sys.stdin.fileno()
    interactive = os.isatty(stdin)
    saved = termios.tcgetattr(stdin) if interactive else None
    try:
        if interactive:
            tty.setraw(stdin)
        sources = [raw, stdin]
        while True:
            readable, _, _ = select.select(sources, [], [])
            if raw in readable:
                data = raw.recv(65536)
                if not data:
                    return
                os.write(sys.stdout.fileno(), data)
            if stdin in readable:
                data = os.read(stdin, 65536)
                if not data:
                    sources.remove(stdin)
                    raw.shutdown(1)  # end of input: the shell sees EOF
                    continue
                raw.sendall(data)
    finally:
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
