"""Half-made polecats: what a spawn that died part way left behind, and what to do about it.

A spawn is a row of steps (polecat.spawn): the slot row `spawning` and the hooked bead (one
transaction), the branch, the worktree registered (`git worktree add --no-checkout`), its
checkout, the session, then the state `started`. A SIGKILL between any two, or inside git,
leaves a mix of those facts, and a polecat whose folder someone emptied or replaced leaves
others. `observe_sandbox` reads the git and folder facts; `decide` (pure) maps everything
observed to the steps that finish the spawn, roll it back, or rebuild the sandbox;
`decide_nuke` (pure) does the same for `polecat nuke`. polecat.py runs the steps.

Rules every plan keeps (tests/test_spawn_repair.py checks them over every observed state):
- a spawn still in progress (its process holds the spawn lock) is left alone;
- a branch with commits not merged into the rig's default branch is never deleted;
- a folder git did not make, or one holding changes, is moved aside, never deleted;
- afterwards the polecat is either gone (slot free, its bead back to open) or has a finished
  git worktree, and a second look finds nothing more to do.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from vermas import git
from vermas.errors import Conflict
from vermas.protocol import PolecatState


class TreeState(StrEnum):
    MISSING = "missing"  # nothing at the polecat's path
    EMPTY = "empty"  # an empty folder (what a launch's mkdir makes)
    PLAIN = "plain"  # a folder git does not know as this clone's worktree (whatever is in it)
    UNFINISHED = "unfinished"  # a registered worktree whose add or checkout never finished
    GOOD = "good"  # a finished worktree of the rig's canonical clone


class BranchState(StrEnum):
    NONE = "none"  # no such branch
    MERGED = "merged"  # exists, and every commit of it is in the rig's default branch
    UNMERGED = "unmerged"  # holds commits the default branch lacks: never deleted


@dataclass(frozen=True)
class SandboxSeen:
    tree: TreeState
    branch: BranchState
    stale_entry: bool = False  # git lists a worktree at this path that is not the folder there
    dirty: bool = False  # a GOOD tree with changed or untracked files


@dataclass(frozen=True)
class SpawnSeen:
    state: PolecatState
    spawner_alive: bool  # someone holds the polecat's spawn lock (a spawn, repair or nuke in progress)
    bead_hooked: bool  # the slot's bead is still hooked to this polecat
    session_alive: bool
    sandbox: SandboxSeen


class Step(StrEnum):
    KILL_SESSION = "kill-session"
    REMOVE_TREE = "remove-tree"  # a worktree git made for this spawn, with nothing of value in it
    SET_ASIDE = "set-aside"  # move the folder to <rig>/polecats/.leftovers/ (files kept)
    REMOVE_EMPTY_DIR = "remove-empty-dir"
    PRUNE = "prune"  # drop git's entry for a worktree that is no longer there
    DELETE_BRANCH = "delete-branch"  # only a MERGED branch
    MAKE_TREE = "make-tree"  # a fresh worktree on the polecat's branch (made from the base if missing)
    MARK_STARTED = "mark-started"  # the session is (or is about to be) up and needs its GUPP nudge
    RELEASE_SLOT = "release-slot"  # delete the slot; a bead still hooked to it goes back to open


@dataclass(frozen=True)
class Plan:
    steps: tuple[Step, ...]
    why: str


NOTHING = Plan((), "nothing to repair")
MADE = (PolecatState.STARTED, PolecatState.WORKING, PolecatState.DONE, PolecatState.ESCALATED,
        PolecatState.DEFERRED, PolecatState.NUKED)


def _clear_folder(box: SandboxSeen, keep_unfinished: bool) -> list[Step]:
    """Steps that leave nothing at the polecat's path and no git entry for it."""
    tree = box.tree
    if tree is TreeState.EMPTY:
        steps = [Step.REMOVE_EMPTY_DIR]
    elif tree is TreeState.PLAIN or (tree is TreeState.GOOD and box.dirty):
        steps = [Step.SET_ASIDE]
    elif tree is TreeState.UNFINISHED:
        steps = [Step.SET_ASIDE if keep_unfinished else Step.REMOVE_TREE]
    elif tree is TreeState.GOOD:
        steps = [Step.REMOVE_TREE]
    else:
        steps = []
    if steps or box.stale_entry:
        steps.append(Step.PRUNE)
    return steps


def clear_steps(box: SandboxSeen) -> tuple[Step, ...]:
    """Clear the polecat's path for a new worktree: a finished one is removed only when clean,
    anything else git did not finish or did not make is moved aside."""
    return tuple(_clear_folder(box, keep_unfinished=True))


def _rollback(seen: SpawnSeen) -> list[Step]:
    steps = [Step.KILL_SESSION] if seen.session_alive else []
    steps += _clear_folder(seen.sandbox, keep_unfinished=False)
    if seen.sandbox.branch is BranchState.MERGED:
        steps.append(Step.DELETE_BRANCH)
    return [*steps, Step.RELEASE_SLOT]


def decide_rollback(seen: SpawnSeen) -> tuple[Step, ...]:
    """Undo a spawn from whatever it had made (the spawn's own failure path; pure)."""
    return tuple(_rollback(seen))


def in_progress(address: str) -> Conflict:
    return Conflict(f"{address} is being spawned, repaired or nuked by another process right now; "
                    "try again in a moment")


def decide(seen: SpawnSeen) -> Plan:
    """What repairs this polecat (pure). Run by `up` for every polecat and by the runner's
    patrol for abandoned spawns."""
    if seen.spawner_alive:
        return Plan((), "a spawn, repair or nuke of it is in progress; leave it")
    box = seen.sandbox
    if seen.state is PolecatState.SPAWNING:
        if seen.session_alive and box.tree is TreeState.GOOD and seen.bead_hooked:
            return Plan((Step.MARK_STARTED,), "the spawn died after starting the session: finish it")
        return Plan(tuple(_rollback(seen)), "the spawn died part way: roll it back (slot freed, bead reopened)")
    needs_gupp = seen.state is PolecatState.WORKING
    if box.tree is TreeState.GOOD:
        if needs_gupp and not seen.session_alive:
            return Plan((Step.MARK_STARTED,), "its session is gone: the next one needs its GUPP nudge")
        return NOTHING
    steps = [Step.KILL_SESSION] if seen.session_alive else []  # it runs in no git worktree
    steps += _clear_folder(box, keep_unfinished=True)
    steps.append(Step.MAKE_TREE)
    if needs_gupp:
        steps.append(Step.MARK_STARTED)
    return Plan(tuple(steps), f"its folder is {box.tree.value}, not its git worktree: rebuild it on its branch")


def decide_nuke(seen: SpawnSeen, force: bool, address: str = "the polecat") -> Plan:
    """What `polecat nuke` does from any state (pure); Conflict when it must not."""
    box = seen.sandbox
    if seen.spawner_alive:
        raise in_progress(address)
    if box.branch is BranchState.UNMERGED and not force:
        raise Conflict(f"{address}'s branch has commits not merged into the rig's default branch; merge them "
                       "first, or nuke with --force (the branch is kept, the rest removed)")
    steps = [Step.KILL_SESSION] if seen.session_alive else []
    steps += _clear_folder(box, keep_unfinished=False)
    if box.branch is BranchState.MERGED:
        steps.append(Step.DELETE_BRANCH)
    return Plan((*steps, Step.RELEASE_SLOT), "nuke")


# --- Observation (git and folder facts) ---------------------------------------------------


def worktree_entries(clone: Path) -> dict[str, dict[str, str]]:
    """`git worktree list --porcelain` by real path: {path: {"HEAD": .., "branch": .., "locked": ..}}."""
    out: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in git.run(clone, "worktree", "list", "--porcelain").splitlines():
        key, _, value = line.partition(" ")
        if key == "worktree":
            current = out.setdefault(os.path.realpath(value), {})
        elif current is not None and key:
            current[key] = value
    return out


def _admin_index(path: Path) -> Path:
    """The index file of the worktree at path (its `.git` file names the admin folder)."""
    dot_git = path / ".git"
    if dot_git.is_file():
        text = dot_git.read_text(errors="replace").strip()
        if text.startswith("gitdir: "):
            admin = Path(text[len("gitdir: "):])
            return (admin if admin.is_absolute() else path / admin) / "index"
    return dot_git / "index"


def tree_state(path: Path, entry: dict[str, str] | None) -> tuple[TreeState, bool]:
    """(the folder's state, whether git's entry for the path is stale)."""
    if not path.exists() and not path.is_symlink():
        return TreeState.MISSING, entry is not None
    if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
        return TreeState.EMPTY, entry is not None
    if entry is None or "prunable" in entry or not path.is_dir() or path.is_symlink():
        return TreeState.PLAIN, entry is not None
    if entry.get("locked") == "initializing" or not _admin_index(path).is_file():
        return TreeState.UNFINISHED, False
    return TreeState.GOOD, False


def branch_state(clone: Path, branch: str | None, base: str) -> BranchState:
    if not branch or not git.has_ref(clone, f"refs/heads/{branch}"):
        return BranchState.NONE
    try:
        ahead = int(git.run(clone, "rev-list", "--count", f"{base}..refs/heads/{branch}"))
    except (git.GitError, ValueError):
        return BranchState.UNMERGED  # cannot tell: keep it
    return BranchState.UNMERGED if ahead else BranchState.MERGED


def observe_sandbox(clone: Path, path: Path, branch: str | None, base: str) -> SandboxSeen:
    tree, stale = tree_state(path, worktree_entries(clone).get(os.path.realpath(path)))
    dirty = tree is TreeState.GOOD and bool(git.run(path, "status", "--porcelain", check=False))
    return SandboxSeen(tree=tree, branch=branch_state(clone, branch, base), stale_entry=stale, dirty=dirty)
