"""Atomic file writes, shared by the config, the JSONL exports and the agents' launch files,
and the one rule for recognising a full disk, shared with the store."""

from __future__ import annotations

import errno
import os
import stat
import sqlite3
from pathlib import Path

from vermas.errors import StorageFull

_SQLITE_FULL = 13  # primary result code: "database or disk is full"
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(exc: BaseException) -> bool:
    """Whether a failed write failed for want of space (ENOSPC, a quota, SQLITE_FULL)."""
    if isinstance(exc, sqlite3.Error):
        return (getattr(exc, "sqlite_errorcode", 0) & 0xFF) == _SQLITE_FULL
    return isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS


def free_bytes(folder: Path) -> int | None:
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def storage_full(path: Path, what: str, outcome: str) -> StorageFull:
    """The error for a write refused by a full filesystem: which file, how much is free, what
    became of the write, and what to do."""
    free = free_bytes(path.parent)
    room = f"{free} bytes free" if free is not None else "free space unknown"
    return StorageFull(f"disk full: could not write {what} {path} (filesystem of {path.parent}: {room}); "
                       f"{outcome}. Free space on that filesystem and retry")


def write_atomic(path: Path, text: str) -> None:
    """Write via temp file, fsync and rename so readers never see a partial file.

    A file that exists keeps its mode (an owner-only export stays owner-only). On any failure
    the temp file is removed and the old file is left as it was; a full disk raises
    StorageFull naming the file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            try:
                os.fchmod(fh.fileno(), stat.S_IMODE(os.stat(path).st_mode))
            except FileNotFoundError:
                pass  # a new file: the umask decides
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)  # a failed write leaves no temp file behind
        if is_disk_full(exc):
            raise storage_full(path, "the file", f"{path.name} was left as it was") from exc
        raise
