"""Thin git effects. Arguments go as argv lists, never through a shell."""

from __future__ import annotations

import subprocess
from pathlib import Path

from vermas.errors import VermasError


class GitError(VermasError):
    """A git command failed; the message carries git's own stderr."""


def run(cwd: Path, *args: str, check: bool = True, timeout: float = 60) -> str:
    proc = subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env=None, stdin=subprocess.DEVNULL,
    )
    if check and proc.returncode != 0:
        raise GitError(f"git {' '.join(args)} failed in {cwd}: {proc.stderr.strip()[:500]}")
    return proc.stdout.strip()


def is_worktree(path: Path) -> bool:
    if not path.is_dir():
        return False
    try:
        return run(path, "rev-parse", "--is-inside-work-tree", check=True) == "true"
    except (GitError, OSError):
        return False


def head(path: Path) -> tuple[str, str]:
    """(branch, commit) of a work tree."""
    return run(path, "rev-parse", "--abbrev-ref", "HEAD"), run(path, "rev-parse", "HEAD")


def commits_ahead(path: Path, base: str) -> int:
    return int(run(path, "rev-list", "--count", f"{base}..HEAD"))


def has_ref(path: Path, ref: str) -> bool:
    return run(path, "rev-parse", "--verify", "--quiet", ref + "^{commit}", check=False) != ""


def dirty_files(path: Path) -> list[str]:
    """Tracked files with uncommitted changes (untracked files do not count)."""
    out = run(path, "status", "--porcelain", "--untracked-files=no")
    return [line[3:] for line in out.splitlines() if line.strip()]
