"""Process liveness, shared by the ledger's lock (is the holder's process gone?) and the sandbox."""

from __future__ import annotations

import os
from pathlib import Path


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    # The state letter follows the parenthesised command name, which may itself contain spaces.
    return stat[stat.rfind(")") + 2: stat.rfind(")") + 3] in ("Z", "X")


def pid_alive(pid: int | None) -> bool:
    """True when pid runs (a zombie, left by a child we spawned and did not reap, counts as dead)."""
    if not pid or pid <= 0:
        return False
    _reap(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return not _is_zombie(pid)


def _reap(pid: int) -> None:
    # Our own children linger as zombies until waited for; other processes' are not ours to wait.
    try:
        os.waitpid(pid, os.WNOHANG)
    except (ChildProcessError, OSError):
        pass
