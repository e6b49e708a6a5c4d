"""The `labctl` command's entry: the console script and `python -m labctl`.

Nothing heavy is imported before the Ctrl-C guard is in place, so an interrupt at any moment,
even while click, rich, pydantic and the Docker SDK load, ends with one line and exit 130,
never a traceback. When stdout or stderr is not a terminal (a CI log), they are put behind
labctl.untrusted.CommandGuard before anything is printed.
"""

from __future__ import annotations

import sys

from labctl.interrupts import ignore_interrupts


def run() -> None:
    try:
        from labctl.untrusted import guard_standard_streams

        guard_standard_streams()
        from labctl.cli import main

        main()
    except KeyboardInterrupt:
        ignore_interrupts()  # a second Ctrl-C must not interrupt the goodbye
        sys.stderr.write("interrupted\n")
        sys.exit(130)


if __name__ == "__main__":
    run()
