"""Thin git effects. Arguments go as argv lists, never through a shell.

Every user-supplied argument (a rig's URL, a path) goes after `--`, so git never reads it as
an option, and `check_argument` refuses one that starts with `-` before anything is written
(a URL like `--upload-pack=...` is an attack, not a typo). No git call here ever prompts:
a fetch that needs a password fails with git's own message instead of hanging a runner.

No git command of vermas runs a repository's hooks, and none gets the runner's secrets:
- every command here (and the refinery's, vermas/refinery/gitops.py, and the witness's rescue)
  runs as `git -c core.hooksPath=/dev/null -c core.fsmonitor=false ...` (NO_HOOKS): a polecat's
  worktree shares the canonical clone's .git, so a polecat can write `.git/hooks/*` (and
  `.git/config`) that the runner's own git commands would otherwise run (post-checkout on
  `worktree add`, reference-transaction on every ref move, pre-push on the push, post-merge,
  post-rewrite). /dev/null is not a folder, so git 2.39 finds no hook in it for any command
  and nobody can put one there; `-c` outranks whatever .git/config says. The `-c` reaches
  git's own child processes (a rebase's) through GIT_CONFIG_PARAMETERS, which git clears
  for a local push's receive-pack: the receiving repository runs on its own config.
- the environment (`_environment`) leaves out the runner's secrets (SECRET_ENV: ANTHROPIC_*,
  CLAUDE*, and every name that looks like a key, token, secret, password or credential), so
  whatever git still starts (a credential helper, ssh, a filter .git/config names, and the
  hooks of a local upstream, the user's own repository: see gitops.push) never sees them.
  Kept: git's own GIT_* variables and what a push to a forge authenticates with (SSH_AUTH_SOCK,
  the askpass helpers, GH_TOKEN/GITHUB_TOKEN for `gh auth git-credential`): TRANSPORT_ENV."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from vermas.errors import InvalidInput, VermasError

MAX_ARGUMENT_CHARS = 4096
NO_HOOKS = ("-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false")
SECRET_ENV = re.compile(r"^(ANTHROPIC_|CLAUDE)|KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH", re.I)
TRANSPORT_ENV = frozenset({"SSH_AUTH_SOCK", "SSH_ASKPASS", "GH_TOKEN", "GITHUB_TOKEN", "GH_ENTERPRISE_TOKEN",
                           "GITHUB_ENTERPRISE_TOKEN"})


class GitError(VermasError):
    """A git command failed; the message carries git's own stderr."""


def _environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of every git command vermas starts: the runner's, without its secrets
    (see the module's docstring), and never prompting."""
    source = os.environ if base is None else base
    env = {k: v for k, v in source.items()
           if k in TRANSPORT_ENV or k.startswith("GIT_") or not SECRET_ENV.search(k)}
    env["GIT_TERMINAL_PROMPT"] = "0"  # never wait on a tty for credentials (runner, MCP server)
    return env


def argv(*args: str) -> list[str]:
    """`git` with hooks off (NO_HOOKS), then `args`."""
    return ["git", *NO_HOOKS, *args]


def run(cwd: Path, *args: str, check: bool = True, timeout: float = 60) -> str:
    try:
        proc = subprocess.run(
            argv(*args), cwd=cwd, capture_output=True, text=True, timeout=timeout,
            env=_environment(), stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise GitError(f"git {' '.join(args)} timed out after {timeout:g} s in {cwd}") from None
    if check and proc.returncode != 0:
        message = " ".join(proc.stderr.split())  # one line: a domain error is shown as one
        raise GitError(f"git {' '.join(args)} failed in {cwd}: {message[:500]}")
    return proc.stdout.strip()


def check_argument(value: object, what: str) -> str:
    """A user-supplied argument for git (a URL or a path): one line of text, not an option."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"{what} must be a non-empty URL or path")
    if value.startswith("-"):
        raise InvalidInput(
            f"{what} {value[:60]!r} starts with '-', which git would read as an option; "
            "allowed: a URL (https://..., ssh://..., git@host:path) or a path (a folder named -x: its full path)"
        )
    if len(value) > MAX_ARGUMENT_CHARS or any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise InvalidInput(f"{what} must be one line of at most {MAX_ARGUMENT_CHARS} characters, "
                           "with no control characters")
    return value


def clone(cwd: Path, url: str, dest: Path, timeout: float = 600) -> None:
    check_argument(url, "git url")
    run(cwd, "clone", "--quiet", "--", url, str(dest), timeout=timeout)


def fetch(repo: Path, remote: str = "origin", timeout: float = 120) -> None:
    """Update `repo`'s remote-tracking branches from `remote` (pruning deleted ones)."""
    run(repo, "fetch", "--quiet", "--prune", "--", remote, timeout=timeout)


def remote_url(repo: Path, remote: str = "origin") -> str:
    return run(repo, "remote", "get-url", "--", remote, check=False)


def resolve(path: Path, ref: str) -> str | None:
    """The commit `ref` names in `path`, or None if it names none."""
    return run(path, "rev-parse", "--verify", "--quiet", ref + "^{commit}", check=False) or None


def is_ancestor(path: Path, older: str, newer: str) -> bool:
    """Is commit `older` reachable from commit `newer` (the same commit included)?"""
    return subprocess.run(
        argv("merge-base", "--is-ancestor", older, newer), cwd=path, capture_output=True,
        env=_environment(), stdin=subprocess.DEVNULL, timeout=60,
    ).returncode == 0


def count(path: Path, older: str, newer: str) -> int:
    """Commits reachable from `newer` but not from `older`."""
    return int(run(path, "rev-list", "--count", f"{older}..{newer}", "--"))


def current_branch(path: Path) -> str | None:
    """The branch checked out in the work tree at `path` (None when HEAD is detached)."""
    return run(path, "symbolic-ref", "--quiet", "--short", "HEAD", check=False) or None


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
