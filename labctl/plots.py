"""How labctl draws with matplotlib: one context for every picture (class page, evidence, traces, load curves).

matplotlib's settings are process-wide and read from the user's matplotlibrc: a `text.usetex: True` there
would hand a student's thread name or id to LaTeX, and `$...$` in one would be parsed as math. Every
drawing runs inside `drawing()`: matplotlib's defaults, no LaTeX, no math parsing of any text, one picture
at a time (a batch's threads share the settings), the Agg canvas only (never a display).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any, cast

_LOCK = threading.Lock()

#: What every picture is drawn with, whatever the user's matplotlibrc says.
SAFE_SETTINGS: dict[str, Any] = {
    "text.usetex": False,        # never LaTeX: texts come from submissions
    "text.parse_math": False,    # "$x$" in a thread name is text, not math
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.unicode_minus": False,
}


@contextlib.contextmanager
def drawing(**settings: Any) -> Iterator[None]:
    """matplotlib's defaults plus SAFE_SETTINGS plus `settings` (e.g. {"svg.fonttype": "path"}), for the
    block, one drawing at a time."""
    import matplotlib

    with _LOCK, matplotlib.rc_context():
        matplotlib.rcdefaults()
        matplotlib.rcParams.update(cast(Any, {**SAFE_SETTINGS, **settings}))  # its stubs know keys as literals
        yield
