"""Process facts the runner, exports and status share: is a pid alive, is a lock held."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO


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


class Flock:
    """An exclusive flock on a file, held until release() or until this process dies (the
    kernel drops it then, which is what makes it a liveness signal for other processes).

    The descriptor is not inherited by children (Python opens files close-on-exec), so a
    git or tmux child never keeps a dead holder's lock alive."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: IO[str] | None = None

    def acquire(self, wait: bool = True) -> bool:
        """Take the lock (waiting for it, or not); False if another holder has it."""
        if self._fh is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = self.path.open("a")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            fh.close()
            return False
        self._fh = fh
        return True

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None

    @property
    def held(self) -> bool:
        return self._fh is not None
