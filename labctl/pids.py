"""Whether a process still lives: one answer for every place that finds what a dead process left behind
(a lab whose `labctl.pid` is gone, a local node whose supervisor is gone)."""

from __future__ import annotations

import os
from pathlib import Path


def alive(pid: int | None, labctl_only: bool = False) -> bool:
    """The process exists and is not a zombie (a supervisor whose starter has not reaped it yet is gone).
    With `labctl_only`, it must also be a labctl: a pid the kernel gave again to another program is not the
    grading that made a lab, so that lab is an orphan. Where /proc cannot tell, it counts as alive: nothing of
    a live grading is ever removed on a guess."""
    if not pid or pid < 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's: it exists
    try:
        if Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z":
            return False
        return not labctl_only or b"labctl" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, IndexError):
        return True
