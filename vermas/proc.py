"""Process facts the runner, exports and status share: is a pid alive, is a lock held."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, just not ours
    return True


def flock_held(path: Path) -> bool:
    """Is an flock on path held by someone? (The kernel drops a dead holder's lock.)"""
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
        return False
