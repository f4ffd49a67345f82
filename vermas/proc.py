"""Process facts the runner, exports and status share: is a pid alive, is a lock held."""

from __future__ import annotations

import fcntl
import os
import signal
import time
from collections.abc import Iterable
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


def start_time(pid: int) -> int | None:
    """When process `pid` started, in clock ticks since boot (field 22 of /proc/PID/stat), or
    None when there is no such process (or it is a zombie, which holds nothing any more).

    Why: a pid alone does not name a process for long; a dead process's pid is reused. The
    pair (pid, start time) does, on this host, until a reboot."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    fields = stat.rpartition(")")[2].split()  # after the command name, which may hold spaces
    if len(fields) < 20 or fields[0] == "Z" or not fields[19].isdigit():
        return None
    return int(fields[19])


def group_members(stats: Iterable[str], groups: set[int]) -> set[int]:
    """The process groups among `groups` that still have a running (non-zombie) member, from
    /proc/PID/stat texts (pure: a zombie holds nothing open and writes nothing)."""
    live: set[int] = set()
    for stat in stats:
        fields = stat.rpartition(")")[2].split()
        if len(fields) > 2 and fields[0] != "Z" and fields[2].lstrip("-").isdigit():
            pgrp = int(fields[2])
            if pgrp in groups:
                live.add(pgrp)
    return live


def _proc_stats() -> list[str]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                out.append((entry / "stat").read_text())
            except OSError:
                continue  # exited while we looked
    return out


def reap_groups(groups: set[int], grace: float) -> set[int]:
    """Wait up to `grace` seconds for every process of these groups to exit, then SIGKILL
    the groups still running; returns the groups that had to be killed.

    Why: a killed tmux session only sends SIGHUP, and Claude Code (with its MCP servers, in
    the pane's process group) may go on writing its home folder for a while after that; a
    `down` that returns must leave nothing of the town running. Callers pass only groups
    they created (the panes of their own tmux server)."""
    if not groups:
        return set()
    deadline = time.monotonic() + grace
    live = group_members(_proc_stats(), groups)
    while live and time.monotonic() < deadline:
        time.sleep(0.05)
        live = group_members(_proc_stats(), live)
    for pgrp in live:
        try:
            os.killpg(pgrp, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + 2.0
    while group_members(_proc_stats(), live) and time.monotonic() < deadline:
        time.sleep(0.02)
    return live


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
