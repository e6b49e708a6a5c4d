"""The `labctl` command's entry: the console script and `python -m labctl`.

Nothing heavy is imported before the Ctrl-C guard is in place, so an interrupt at any moment,
even while click, rich, pydantic and the Docker SDK load, ends with one line and exit 130,
never a traceback. When stdout or stderr is not a terminal (a CI log), they are put behind
labctl.untrusted.CommandGuard before anything is printed.
"""

from __future__ import annotations

import sys

from labctl.interrupts import ignore_interrupts


def _interrupted(error: BaseException) -> bool:
    """It is a Ctrl-C, or one that Python wrapped: a KeyboardInterrupt inside a class being made
    (a descriptor's __set_name__) comes out as a RuntimeError whose cause is the interrupt."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, KeyboardInterrupt):
            return True
        seen = seen.__cause__
    return False


def _goodbye() -> None:
    ignore_interrupts()  # a second Ctrl-C must not interrupt the goodbye
    sys.stderr.write("interrupted\n")
    sys.exit(130)


def run() -> None:
    try:
        from labctl.untrusted import guard_standard_streams

        guard_standard_streams()
        from labctl.cli import main
    except BaseException as error:  # while labctl loads: only an interrupt is turned into a goodbye
        if _interrupted(error):
            _goodbye()
        raise
    try:
        main()
    except KeyboardInterrupt:
        _goodbye()


if __name__ == "__main__":
    run()
