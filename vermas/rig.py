"""Rigs: projects in a town, in Gas Town's layout.

    <town>/<rig>/mayor/rig        canonical clone (its .beads/issues.jsonl: vermas.beadsync)
    <town>/<rig>/refinery/rig     the refinery's worktree, where merges are made and tested
    <town>/<rig>/polecats/<name>  one git worktree per polecat
    <town>/<rig>/crew/<name>      long-lived human-directed workspaces

`rig sync` fetches the upstream (`origin`) into the canonical clone and fast-forwards the
rig's default branch to it; every new polecat worktree is cut from the branch just synced,
so a commit pushed upstream after `rig add` reaches the next polecat. A repository that tracks
`.beads/issues.jsonl` (bd's file) never wedges the sync: vermas leaves that file to git and
imports what arrives in it (`rig add` and every sync; vermas.beadsync says how and why).
"""

from __future__ import annotations

import enum
import fcntl
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import BaseModel, ValidationError

from vermas import beadsync, git
from vermas.addresses import RIG_RE, TOWN_ROLES
from vermas.errors import Conflict, InvalidInput, NotFound
from vermas.town import (  # noqa: F401
    MAX_POLECATS_LIMIT, PREFIX_RE, RigConfig, Town, describe_errors, validate_prefix)


# A rig without a test command merges, but never silently: `rig add` warns, `rig list` and
# `status` show this marker, and each such merge is recorded (and announced) as untested.
UNTESTED = "UNTESTED: no test_command"


def untested_warning(name: str) -> str:
    """The loud line `rig add` prints (stderr) for a rig added without --test-command."""
    return (f"WARNING: rig {name} has no test command: the refinery will merge its work UNTESTED "
            f"(each merge marked untested). Set one: test_command = \"...\" under [rigs.{name}] in town.toml")


class RigInfo(BaseModel):
    name: str
    prefix: str
    git_url: str
    path: str
    default_branch: str
    max_polecats: int
    test_command: str
    polecats: int
    untested: bool = False  # no test_command: merges are marked untested
    beads: beadsync.BeadsImport | None = None  # `rig add`: the beads its .beads/issues.jsonl brought

    @property
    def test_label(self) -> str:
        """What a table shows: the command, or the loud untested marker."""
        return self.test_command if not self.untested else UNTESTED


def canonical_clone(town: Town, rig: str) -> Path:
    return town.layout.canonical_clone(rig)


def refinery_worktree(town: Town, rig: str) -> Path:
    return town.layout.refinery_worktree(rig)


def default_prefix(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name)[:12] or "rig"


def add(
    town: Town, name: str, git_url: str, prefix: str | None = None, max_polecats: int = 4,
    test_command: str = "",
) -> RigInfo:
    if not isinstance(name, str) or not RIG_RE.fullmatch(name) or name in TOWN_ROLES:
        raise InvalidInput(
            f"invalid rig name {str(name)[:40]!r}; allowed: a lowercase letter then up to 31 of "
            "[a-z0-9_-], not mayor/deacon/overseer"
        )
    git.check_argument(git_url, "git_url")
    explicit = validate_prefix(prefix) if prefix else None  # None or "": the default (or the file's)
    prefix = explicit or validate_prefix(default_prefix(name))
    try:  # the config model's bounds, checked before anything is cloned or written
        config = RigConfig(name=name, git_url=git_url, prefix=prefix, max_polecats=max_polecats,
                           test_command=test_command)
    except ValidationError as exc:
        raise InvalidInput(f"rig {name}: {describe_errors(exc)}") from None
    town.reload_config()
    if name in town.config.rigs:
        raise Conflict(f"rig {name!r} exists already (rig list shows rigs)")
    if explicit is not None:
        _check_prefix_free(town, explicit, "choose another with --prefix")
    if town.layout.rig_dir(name).exists():
        raise Conflict(f"{town.layout.rig_dir(name)} exists already; remove it or choose another rig name")
    clone = canonical_clone(town, name)
    clone.parent.mkdir(parents=True)
    try:
        git.clone(town.root, git_url, clone)
        branch = git.run(clone, "symbolic-ref", "--short", "HEAD")
        tracked = beadsync.file_at(clone, "HEAD")
        prefix = choose_prefix(name, explicit, beadsync.file_prefix(tracked) if tracked is not None else None)
        _check_prefix_free(town, prefix, "the repository's .beads/issues.jsonl beads use it" if explicit is None
                           and prefix != default_prefix(name) else "choose another with --prefix")
        git.run(clone, "worktree", "add", "--quiet", "--detach", "--", str(refinery_worktree(town, name)),
                branch)
        for folder in town.layout.rig_folders(name):
            folder.mkdir()
    except Exception:
        shutil.rmtree(town.layout.rig_dir(name), ignore_errors=True)
        raise
    town.config.rigs[name] = config.model_copy(update={"default_branch": branch, "prefix": prefix})
    town.save_config()
    with town.db.write() as conn:
        conn.execute(
            "INSERT OR REPLACE INTO routes(prefix, path, rig) VALUES (?, ?, ?)",
            (prefix + "-", town.layout.clone_route(name), name),
        )
        town.db.touch("routes", "issues")
    beadsync.forget(town, name)  # a rig of this name removed earlier left nothing to go by
    imported = beadsync.import_at(town, name, clone, git.run(clone, "rev-parse", "HEAD"), None)
    return info(town, name).model_copy(update={"beads": imported})


def _check_prefix_free(town: Town, prefix: str, hint: str) -> None:
    taken = {r.prefix for r in town.config.rigs.values()} | {town.config.prefix}
    if prefix in taken:
        raise Conflict(f"prefix {prefix!r} is used already; {hint}")


def choose_prefix(name: str, explicit: str | None, in_file: str | None) -> str:
    """The rig's prefix (pure). A repository whose tracked `.beads/issues.jsonl` holds beads
    already names its prefix: bd routes ids by prefix, so the rig takes it (or --prefix must
    be it); a prefix vermas cannot use (e.g. upper case, or too long) leaves the choice as it was, and
    those beads are then refused at import, each with its reason."""
    usable = in_file if in_file is not None and PREFIX_RE.fullmatch(in_file) else None
    if explicit is not None and usable is not None and usable != explicit:
        raise InvalidInput(
            f"rig {name}: the repository's .beads/issues.jsonl holds beads with prefix {usable!r}, and a rig's "
            f"beads are routed by their prefix; allowed: --prefix {usable} (or leave --prefix out)")
    return explicit or usable or default_prefix(name)


def info(town: Town, name: str) -> RigInfo:
    rig = town.config.rigs[name]
    with town.db.read() as conn:
        count = conn.execute("SELECT COUNT(*) FROM polecats WHERE rig = ?", (name,)).fetchone()[0]
    return RigInfo(
        name=name, prefix=rig.prefix, git_url=rig.git_url, path=str(canonical_clone(town, name)),
        default_branch=rig.default_branch, max_polecats=rig.max_polecats,
        test_command=rig.test_command, polecats=count, untested=not rig.test_command.strip(),
    )


def list_rigs(town: Town) -> list[RigInfo]:
    town.reload_config()
    return [info(town, name) for name in sorted(town.config.rigs)]


# --- Sync: the upstream's latest into the canonical clone ---------------------------------

class SyncState(enum.StrEnum):
    """Where the rig's default branch stands after a sync (the branch only ever moves forward)."""

    UP_TO_DATE = "up_to_date"  # the branch is the upstream's
    FAST_FORWARDED = "fast_forwarded"  # moved forward to the upstream's
    LOCAL_AHEAD = "local_ahead"  # holds the upstream's commits plus local ones not pushed yet
    DIVERGED = "diverged"  # the upstream has commits the branch lacks, and the branch has its own


class SyncResult(BaseModel):
    rig: str
    remote: str
    branch: str
    state: SyncState
    before: str
    after: str
    upstream: str
    new_commits: int  # commits the branch gained
    local_commits: int  # commits on the branch that the upstream does not have
    # The rig's tracked .beads/issues.jsonl: a leftover local rewrite landed in the store before the
    # fast-forward, then what the branch brought since the last import (vermas.beadsync).
    beads: list[beadsync.BeadsImport] = []


def decide_sync(local: str, upstream: str, upstream_in_local: bool, local_in_upstream: bool) -> SyncState:
    """What to do with the default branch at `local`, given the upstream's `upstream` (pure)."""
    if local == upstream or (upstream_in_local and local_in_upstream):
        return SyncState.UP_TO_DATE
    if local_in_upstream:
        return SyncState.FAST_FORWARDED
    if upstream_in_local:
        return SyncState.LOCAL_AHEAD
    return SyncState.DIVERGED


@contextmanager
def _sync_lock(town: Town, name: str) -> Iterator[None]:
    """One sync per rig at a time (two slings at once would race on git's ref and index locks)."""
    path = town.layout.rig_sync_lock(name)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def import_tracked_beads(town: Town, name: str) -> beadsync.BeadsImport | None:
    """Import what reached the rig's branch in a tracked `.beads/issues.jsonl` without a sync
    (the refinery fetches and merges on its own): the patrol calls this when the branch moved
    since the last import, so a person's bead or a merged bd edit reaches the store without
    waiting for the next sling. Skipped (None) while a sync holds the rig's lock: that sync
    imports it itself."""
    config = town.config.rigs.get(name)
    if config is None or not canonical_clone(town, name).is_dir():
        return None
    path = town.layout.rig_sync_lock(name)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with path.open("a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None
        try:
            return beadsync.catch_up(town, name, canonical_clone(town, name), config.default_branch)
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _fast_forward(clone: Path, branch: str, target: str) -> None:
    """Move `branch` to `target` (a descendant). Where the canonical clone has it checked out,
    a --ff-only merge keeps its work tree in step; elsewhere `branch -f`, which git refuses for
    a branch checked out in any other worktree."""
    if git.current_branch(clone) == branch:
        git.run(clone, "merge", "--ff-only", "--quiet", target)
    else:
        git.run(clone, "branch", "--force", "--", branch, target)


def sync(town: Town, name: str) -> SyncResult:
    """Fetch the rig's upstream into its canonical clone and fast-forward the default branch.
    A failed fetch, a branch missing upstream, or a diverged branch raises, never passes
    silently: a polecat cut from a stale branch would redo or conflict with upstream work."""
    town.reload_config()
    config = town.config.rigs.get(name) if isinstance(name, str) else None
    if config is None:
        known = ", ".join(sorted(town.config.rigs)) or "none yet (vermas-runner rig add)"
        raise NotFound(f"unknown rig {str(name)[:40]!r}; rigs in this town: {known}")
    clone, branch = canonical_clone(town, name), config.default_branch
    with _sync_lock(town, name):
        remote = git.remote_url(clone) or config.git_url
        before = git.resolve(clone, f"refs/heads/{branch}")
        if before is None:
            raise Conflict(f"rig {name}: the canonical clone {clone} has no branch {branch}")
        try:
            git.fetch(clone)
        except git.GitError as exc:
            raise git.GitError(
                f"rig {name}: fetching the upstream {remote} failed, so {branch} stays at {before[:12]}: "
                f"{exc}"
            ) from None
        upstream = git.resolve(clone, f"refs/remotes/origin/{branch}")
        if upstream is None:
            raise Conflict(f"rig {name}: the upstream {remote} has no branch {branch} (the rig's "
                           "default_branch in town.toml)")
        state = decide_sync(before, upstream, git.is_ancestor(clone, upstream, before),
                            git.is_ancestor(clone, before, upstream))
        local_commits = git.count(clone, upstream, before)
        if state is SyncState.DIVERGED:
            raise Conflict(
                f"rig {name}: {branch} and the upstream's {branch} have diverged ({local_commits} local "
                f"commit(s) not upstream, {git.count(clone, before, upstream)} upstream not local); "
                f"{branch} stays at {before[:12]}: push or rebase the local commits in {clone}"
            )
        imports: list[beadsync.BeadsImport | None] = []
        if git.current_branch(clone) == branch:  # the tracked bd file: see vermas.beadsync
            imports.append(beadsync.clear_the_way(town, name, clone, upstream))
        if state is SyncState.FAST_FORWARDED:
            try:
                _fast_forward(clone, branch, upstream)
            except git.GitError as exc:
                raise git.GitError(f"rig {name}: fetched, but could not fast-forward {branch} to "
                                   f"{upstream[:12]}: {exc}") from None
        after = git.resolve(clone, f"refs/heads/{branch}") or before
        imports.append(beadsync.catch_up(town, name, clone, branch))
    return SyncResult(rig=name, remote=remote, branch=branch, state=state, before=before, after=after,
                      upstream=upstream, new_commits=git.count(clone, before, after),
                      local_commits=local_commits, beads=[i for i in imports if i is not None])
