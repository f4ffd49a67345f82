"""Polecats: ephemeral workers, slot + sandbox + session. This module holds their whole
life: allocation of a named slot and the hook (one transaction), the git worktree, the
session start and its GUPP nudge, `polecat_done` at the end of the work, repair of a spawn
that died part way (decisions in vermas.spawnrepair), and nuking.

States (protocol.PolecatState) say what happened: spawning -> started (session up) ->
working (GUPP nudge delivered) -> done / escalated / deferred (polecat_done)."""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel

from vermas import beads, git, mail, permissions, protocol, spawnrepair, timeutil, validate
from vermas.addresses import Address, Role
from vermas.dispatch import admit
from vermas.errors import Conflict, InvalidInput, NotFound, VermasError
from vermas.faults import KILL_AT_ENV as KILL_AT_ENV  # re-exported: the spawn tests set it
from vermas.faults import checkpoint as _checkpoint
from vermas.hooks import hooked_id
from vermas.molecules import molecule
from vermas.permissions import Action
from vermas.proc import Flock, flock_held
from vermas.protocol import DONE_STATE, PolecatState
from vermas.refinery import ledger
from vermas.rig import canonical_clone
from vermas.rig import sync as sync_rig
from vermas.sessions import launch
from vermas.spawnrepair import SpawnSeen, Step
from vermas.town import Town
from vermas.twins import twin

if TYPE_CHECKING:  # tmux is imported only where a session is touched
    from vermas.sessions import TownSessions

DONE_STATUSES = ("COMPLETED", "ESCALATED", "DEFERRED")
# Where the bead goes when it leaves the hook: completed work waits for the merge queue.
NEXT_STATUS = {"COMPLETED": "in_progress", "ESCALATED": "blocked", "DEFERRED": "deferred"}
MAX_SUMMARY_CHARS = 20_000


class MergeRequest(BaseModel):
    id: str | None
    bead_id: str
    polecat: str
    rig: str
    status: str
    branch: str | None = None
    commit: str | None = None
    base: str | None = None
    commits_ahead: int = 0
    state: str
    summary: str = ""
    witness_message_id: str


class WorkTree(BaseModel):
    path: str
    branch: str
    commit: str
    base: str | None
    commits_ahead: int
    dirty: list[str]


def worktree_path(town: Town, actor: Address) -> Path:
    return town.layout.polecat_worktree(str(actor.rig), str(actor.name))


def inspect_worktree(town: Town, actor: Address) -> WorkTree | None:
    path = worktree_path(town, actor)
    if not git.is_worktree(path):
        return None
    branch, commit = git.head(path)
    rig = town.config.rigs.get(str(actor.rig))
    candidates = [rig.default_branch] if rig else []
    candidates += ["main", "master", "origin/HEAD"]
    base = next((ref for ref in candidates if git.has_ref(path, ref)), None)
    ahead = git.commits_ahead(path, base) if base else 0
    return WorkTree(path=str(path), branch=branch, commit=commit, base=base,
                    commits_ahead=ahead, dirty=git.dirty_files(path))


def done(town: Town, actor: Address, status: str = "COMPLETED", summary: str = "") -> MergeRequest:
    permissions.require(actor, Action.POLECAT_DONE)
    if status not in DONE_STATUSES:
        raise InvalidInput(f"invalid status {str(status)[:30]!r}; allowed: {', '.join(DONE_STATUSES)}")
    if not isinstance(summary, str) or len(summary) > MAX_SUMMARY_CHARS:
        raise InvalidInput(f"summary must be text of at most {MAX_SUMMARY_CHARS} characters")
    with town.db.read() as conn:
        if hooked_id(conn, str(actor)) is None:
            raise Conflict(f"{actor} has no hooked work; nothing to finish")
    tree = inspect_worktree(town, actor)
    if status == "COMPLETED":
        if tree is None:
            raise Conflict(
                f"COMPLETED needs commits, and {actor} has no git worktree at "
                f"{worktree_path(town, actor)}; use ESCALATED or DEFERRED"
            )
        if tree.dirty:
            raise Conflict(
                "uncommitted changes in your worktree: " + ", ".join(tree.dirty[:10])
                + f"; commit them (or discard them) before {twin('polecat_done')}"
            )
        if tree.commits_ahead == 0:
            raise Conflict(
                f"COMPLETED with no commits: {tree.branch} has nothing beyond {tree.base}; "
                "commit your work first, or use ESCALATED or DEFERRED"
            )
    rig = str(actor.rig)
    with town.db.write() as conn:
        bead_id = hooked_id(conn, str(actor))
        if bead_id is None:  # unslung while we inspected the worktree
            raise Conflict(f"{actor} has no hooked work; nothing to finish")
        source = beads.fetch_row(conn, bead_id)
        if status == "COMPLETED" and source["issue_type"] == molecule.MOLECULE_TYPE:
            left = molecule.open_steps(conn, bead_id)
            if left:
                raise Conflict(f"{bead_id} is a molecule with {len(left)} step(s) not done ({', '.join(left)}); "
                               "finish each with mol_step_done first, or use ESCALATED or DEFERRED")
        stamp, ts = timeutil.now()
        mr_id, mr_state = None, "none"
        if status == "COMPLETED":
            assert tree is not None
            # The queue of record (vermas.refinery.ledger): the same commit re-sent is one request;
            # a new commit after rework replaces the bead's older open requests; a commit the
            # refinery already sent back (or that was rejected) is refused, saying why.
            enqueued = ledger.enqueue_in_txn(
                conn, town.db, mr_prefix=town.prefix_for_rig(rig), rig=rig, bead=bead_id, polecat=str(actor),
                branch=tree.branch, commit=tree.commit, base=tree.base, summary=summary, actor=str(actor),
                title=source["title"], priority=source["priority"])
            mr_id, mr_state = enqueued.id, enqueued.state.value
        next_status = NEXT_STATUS[status]
        conn.execute(
            "UPDATE issues SET status = ?, assignee = ?, updated_at = ?, updated_ts = ? WHERE id = ?",
            (next_status, None if status == "DEFERRED" else str(actor), stamp, ts, bead_id),
        )
        if summary:
            beads.add_comment(conn, bead_id, str(actor), f"polecat_done {status}: {summary}", stamp)
        # The slot says so in the same transaction: `done` (waiting for the refinery), not `working`.
        conn.execute("UPDATE polecats SET state = ? WHERE rig = ? AND name = ?",
                     (DONE_STATE[status].value, rig, str(actor.name)))
        town.db.touch("issues")
        subject, body = protocol.format(protocol.PolecatDone(
            bead=bead_id, status=status, polecat=str(actor), branch=tree.branch if tree else None,
            commit=tree.commit if tree else None, merge_request=mr_id, text=summary))
        message = mail.send_in_txn(
            conn, town.db, str(actor), f"{rig}/witness", subject, body,
            # Per hooking (the bead's updated_at when it was slung), so a retried call sends one
            # mail but a bead re-slung to the same polecat reports again.
            idempotency_key=f"polecat_done:{bead_id}:{source['updated_at']}:{status}",
        )
    return MergeRequest(
        id=mr_id, bead_id=bead_id, polecat=str(actor), rig=rig, status=status,
        branch=tree.branch if tree else None, commit=tree.commit if tree else None,
        base=tree.base if tree else None, commits_ahead=tree.commits_ahead if tree else 0,
        state=mr_state, summary=summary, witness_message_id=message.id,
    )


# --- Spawning and nuking (slot + sandbox + session) ---------------------------------------

NAME_POOL = (
    "nux", "slit", "furiosa", "capable", "toast", "dag", "cheedo", "angharad", "ace", "rictus",
    "morsov", "keeper", "valkyrie", "max", "immortan", "corpus", "organic", "splendid",
)
# Fault injection for tests/test_spawn_repair.py: with faults.KILL_AT_ENV set to one of these,
# the spawning process is SIGKILLed right after that step (vermas/faults.py).
SPAWN_STEPS = ("allocated", "branch", "registered", "checked-out", "session")


class PolecatInfo(BaseModel):
    prior_status: str | None = None  # the bead's status before allocate hooked it (not stored)
    address: str
    rig: str
    name: str
    bead_id: str | None
    branch: str | None
    worktree: str | None
    state: PolecatState
    created_at: str
    notes: list[str] = []  # what nuke or repair kept or moved (a branch, a folder); not stored


class RepairReport(BaseModel):
    address: str
    state: PolecatState  # before the repair
    steps: list[Step]
    why: str
    notes: list[str] = []
    error: str | None = None


def free_names(pool: tuple[str, ...], taken: set[str], max_polecats: int) -> list[str]:
    """The free names among the rig's first `max_polecats` slots, in order (pure)."""
    names = [pool[i] if i < len(pool) else f"polecat{i + 1}" for i in range(max_polecats)]
    return [n for n in names if n not in taken]


def choose_name(pool: tuple[str, ...], taken: set[str], max_polecats: int) -> str | None:
    """First free name among the rig's first `max_polecats` slots (pure)."""
    return next(iter(free_names(pool, taken, max_polecats)), None)


def branch_name(name: str, bead_id: str) -> str:
    return f"polecat/{name}/{bead_id}"


def _address(rig: str, name: str) -> Address:
    return Address(role=Role.POLECAT, rig=rig, name=name)


def spawn_lock(town: Town, rig: str, name: str) -> Flock:
    return Flock(town.layout.spawn_lock(_address(rig, name).session_name))


def gupp_lock(town: Town, rig: str, name: str) -> Flock:
    return Flock(town.layout.gupp_lock(_address(rig, name).session_name))


def lock_held(lock: Flock) -> bool:
    return lock.path.is_file() and flock_held(lock.path)


def rework_refusal(status: str, assignee: str | None) -> Conflict | None:
    """Pure: why work the refinery sent back cannot go to a new polecat now (None: it can).
    Unlike a sling, its open merge request (rework/conflict) is the reason to do it."""
    if status == "hooked":
        return Conflict(f"bead is already hooked by {assignee}; it has its polecat")
    if status == "closed":
        return Conflict("bead is closed (merged or closed by hand); nothing to rework")
    return None


InTxn = Callable[[sqlite3.Connection, Address], None]
Pour = Callable[[sqlite3.Connection], str]  # writes a bead in the hooking's transaction; its id


def _allocate(town: Town, actor: Address, bead_id: str | None, rig: str, force: bool, branch: str | None = None,
              prefer: str | None = None, in_txn: InTxn | None = None,
              pour: Pour | None = None) -> tuple[PolecatInfo, Flock]:
    """`branch`: continue on this existing branch (rework, orphan) instead of a new one; `prefer`:
    the name to take when free (an orphan's polecat, whose kept worktree is then reused); `in_txn`
    runs in the same transaction as the hooking (the rework's mail to the new polecat); `pour`
    writes the bead in that transaction too and returns its id (a formula slung to a rig: the
    molecule is poured and hooked at once, or not at all)."""
    if pour is None:
        validate.bead_id(bead_id)
    town.reload_config()
    config = town.config.rigs.get(rig)
    if config is None:
        known = ", ".join(sorted(town.config.rigs)) or "none yet (vermas-runner rig add)"
        raise NotFound(f"unknown rig {rig!r}; rigs in this town: {known}")
    with town.db.write() as conn:
        if pour is not None:
            bead_id = pour(conn)
        assert bead_id is not None
        if branch is None:
            row = admit(conn, bead_id, actor, force)
        else:
            row = beads.fetch_row(conn, bead_id)
            refused = rework_refusal(row["status"], row["assignee"])
            if refused is not None:
                raise Conflict(f"{bead_id}: {refused}")
        taken = {r[0] for r in conn.execute("SELECT name FROM polecats WHERE rig = ?", (rig,))}
        # A name someone slung work to directly (no slot) is not free either.
        taken |= {r[0].rsplit("/", 1)[1] for r in conn.execute(
            "SELECT assignee FROM issues WHERE status = 'hooked' AND assignee GLOB ?", (f"{rig}/polecats/*",))}
        # The spawn lock is taken before the row commits, so a `spawning` row whose lock is free
        # is always an abandoned spawn (a name being repaired right now is skipped).
        lock, name = None, None
        free = free_names(NAME_POOL, taken, config.max_polecats)
        if prefer in free:  # a re-sling takes the name (and so the kept worktree) of the branch's polecat
            free = [str(prefer), *(n for n in free if n != prefer)]
        for candidate in free:
            lock = spawn_lock(town, rig, candidate)
            if lock.acquire(wait=False):
                name = candidate
                break
        if name is None or lock is None:
            raise Conflict(
                f"rig {rig} has {len(taken)} of {config.max_polecats} polecats busy; wait for one to "
                "finish, nuke one (vermas-runner polecat nuke), or raise max_polecats in town.toml"
            )
        try:
            address = _address(rig, name)
            stamp, ts = timeutil.now()
            worktree = str(worktree_path(town, address))
            on_branch = branch or branch_name(name, bead_id)
            conn.execute(
                "INSERT INTO polecats(rig, name, bead_id, branch, worktree, state, created_at) "
                "VALUES (?,?,?,?,?,?,?)",
                (rig, name, bead_id, on_branch, worktree, PolecatState.SPAWNING.value, stamp),
            )
            conn.execute(
                "UPDATE issues SET status = 'hooked', assignee = ?, closed_at = NULL, close_reason = NULL, "
                "updated_at = ?, updated_ts = ? WHERE id = ?",
                (str(address), stamp, ts, bead_id),
            )
            if in_txn is not None:
                in_txn(conn, address)
            town.db.touch("issues")
        except BaseException:
            lock.release()
            raise
    info = PolecatInfo(address=str(address), rig=rig, name=name, bead_id=bead_id,
                       branch=on_branch, worktree=worktree, state=PolecatState.SPAWNING,
                       created_at=stamp, prior_status=row["status"])
    return info, lock


def allocate(town: Town, actor: Address, bead_id: str, rig: str, force: bool = False) -> PolecatInfo:
    """Reserve a slot and hook the bead to it in one transaction: never two polecats with
    one name, never more than max_polecats, never a bead hooked twice. (A slot left at
    `spawning` by itself is what repair rolls back; spawn goes on to make it.)"""
    info, lock = _allocate(town, actor, bead_id, rig, force)
    lock.release()
    return info


def release(town: Town, rig: str, name: str, reopen_bead: bool, status: str = "open") -> None:
    """Give the slot back; optionally put a still-hooked bead back (to open, or to the status
    it had before a spawn that failed)."""
    address = f"{rig}/polecats/{name}"
    with town.db.write() as conn:
        conn.execute("DELETE FROM polecats WHERE rig = ? AND name = ?", (rig, name))
        if reopen_bead:
            stamp, ts = timeutil.now()
            conn.execute(
                "UPDATE issues SET status = ?, assignee = NULL, updated_at = ?, updated_ts = ? "
                "WHERE assignee = ? AND status = 'hooked'",
                (status, stamp, ts, address),
            )
        town.db.touch("issues")


def set_state(town: Town, rig: str, name: str, state: PolecatState, only_from: PolecatState | None = None) -> bool:
    """Store a slot's state (compare-and-set when only_from is given); True if it changed."""
    sql, args = "UPDATE polecats SET state = ? WHERE rig = ? AND name = ?", [state.value, rig, name]
    if only_from is not None:
        sql, args = sql + " AND state = ?", [*args, only_from.value]
    with town.db.write() as conn:
        return conn.execute(sql, args).rowcount > 0


def list_polecats(town: Town, rig: str | None = None) -> list[PolecatInfo]:
    sql = "SELECT rig, name, bead_id, branch, worktree, state, created_at FROM polecats"
    args: tuple[str, ...] = ()
    if rig:
        sql, args = sql + " WHERE rig = ?", (rig,)
    with town.db.read() as conn:
        rows = conn.execute(sql + " ORDER BY rig, created_at", args).fetchall()
    return [PolecatInfo(address=f"{r['rig']}/polecats/{r['name']}", **dict(r)) for r in rows]


def find(town: Town, rig: str, name: str) -> PolecatInfo | None:
    return next((p for p in list_polecats(town, rig) if p.name == name), None)


def _sandbox(town: Town, info: PolecatInfo) -> spawnrepair.SandboxSeen:
    return spawnrepair.observe_sandbox(canonical_clone(town, info.rig), Path(str(info.worktree)), info.branch,
                                       town.config.rigs[info.rig].default_branch)


def create_worktree(town: Town, info: PolecatInfo) -> None:
    """A fresh branch from the rig's default branch, in the polecat's folder. The rig is
    synced first (fetch, fast-forward), so a new branch starts from the upstream's latest; a
    failed sync raises and no polecat is spawned on a stale base. In steps (branch,
    registered with no checkout, checkout), so that a crash between any two leaves a state
    repair recognises; an existing finished worktree is kept (its work stays), and whatever
    else is in the way is cleared first (a foreign folder is moved aside, never deleted)."""
    clone = canonical_clone(town, info.rig)
    path, branch = Path(str(info.worktree)), str(info.branch)
    box = _sandbox(town, info)
    if box.tree is spawnrepair.TreeState.GOOD:
        return
    _apply(town, None, info, spawnrepair.clear_steps(box))
    if not git.has_ref(clone, f"refs/heads/{branch}"):
        try:
            base = sync_rig(town, info.rig).after
        except VermasError as exc:
            raise type(exc)(f"no polecat spawned: {exc} (`vermas-runner rig sync {info.rig}` retries "
                            "the fetch)") from None
        git.run(clone, "branch", "--", branch, base)
    _checkpoint("branch")
    path.parent.mkdir(parents=True, exist_ok=True)
    git.run(clone, "worktree", "add", "--quiet", "--no-checkout", "--", str(path), branch)
    _checkpoint("registered")
    git.run(path, "reset", "--quiet", "--hard")
    _checkpoint("checked-out")


def unmerged_commits(town: Town, info: PolecatInfo) -> int:
    clone = canonical_clone(town, info.rig)
    if not info.branch or not git.has_ref(clone, f"refs/heads/{info.branch}"):
        return 0
    base = town.config.rigs[info.rig].default_branch
    return int(git.run(clone, "rev-list", "--count", f"{base}..refs/heads/{info.branch}"))


def observe(town: Town, sessions: TownSessions, info: PolecatInfo, spawner_alive: bool) -> SpawnSeen:
    with town.db.read() as conn:
        hooked = conn.execute("SELECT 1 FROM issues WHERE id = ? AND status = 'hooked' AND assignee = ?",
                              (info.bead_id, info.address)).fetchone() is not None
    return SpawnSeen(state=info.state, spawner_alive=spawner_alive, bead_hooked=hooked,
                     session_alive=sessions.alive(_address(info.rig, info.name)), sandbox=_sandbox(town, info))


def _apply(town: Town, sessions: TownSessions | None, info: PolecatInfo, steps: tuple[Step, ...],
           reopen_status: str = "open") -> list[str]:
    """Run a plan's steps (the thin effect of spawnrepair's decisions); notes say what was kept."""
    clone = canonical_clone(town, info.rig)
    base = town.config.rigs[info.rig].default_branch
    path, notes = Path(str(info.worktree)), []
    for step in steps:
        if step is Step.KILL_SESSION and sessions is not None:
            sessions.kill(_address(info.rig, info.name))
        elif step is Step.REMOVE_TREE:
            git.run(clone, "worktree", "remove", "--force", "--force", str(path), check=False)
            if path.is_dir() and not path.is_symlink():  # git refused (e.g. HEAD on a deleted branch)
                shutil.rmtree(path)
        elif step is Step.SET_ASIDE:
            stamp = timeutil.now()[0].replace(":", "").replace("+", "Z")
            dest = town.layout.polecat_leftover(info.rig, info.name, "".join(c for c in stamp if c.isalnum()))
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.rename(path, dest)
            notes.append(f"moved {path} (not its finished git worktree, or holding changes) to {dest}")
        elif step is Step.REMOVE_EMPTY_DIR:
            path.rmdir()
        elif step is Step.PRUNE:
            if os.path.realpath(path) in spawnrepair.worktree_entries(clone):
                git.run(clone, "worktree", "remove", "--force", "--force", str(path), check=False)
            git.run(clone, "worktree", "prune")
        elif step is Step.DELETE_BRANCH:
            # Looked at again just before: a branch that gained commits since is kept.
            if spawnrepair.branch_state(clone, info.branch, base) is spawnrepair.BranchState.MERGED:
                git.run(clone, "branch", "-D", str(info.branch))
        elif step is Step.MAKE_TREE:
            create_worktree(town, info)
        elif step is Step.MARK_STARTED:
            set_state(town, info.rig, info.name, PolecatState.STARTED)
        elif step is Step.RELEASE_SLOT:
            release(town, info.rig, info.name, reopen_bead=True, status=reopen_status)
    if Step.RELEASE_SLOT in steps and spawnrepair.branch_state(clone, info.branch, base) is not \
            spawnrepair.BranchState.NONE:
        notes.append(f"kept branch {info.branch} ({unmerged_commits(town, info)} commit(s) not in {base})")
    return notes


def repair(town: Town, sessions: TownSessions, rig: str, name: str,
           only_spawning: bool = False) -> RepairReport | None:
    """Repair or roll back one polecat (see spawnrepair.decide), unless a spawn, repair or
    nuke of it is in progress elsewhere. None when there was nothing to do."""
    lock = spawn_lock(town, rig, name)
    if not lock.acquire(wait=False):
        return None
    try:
        info = find(town, rig, name)
        if info is None or rig not in town.config.rigs or (only_spawning and info.state is not PolecatState.SPAWNING):
            return None
        report = RepairReport(address=info.address, state=info.state, steps=[], why="could not look at it")
        try:
            plan = spawnrepair.decide(observe(town, sessions, info, spawner_alive=False))
            if not plan.steps:
                return None
            report.steps, report.why = list(plan.steps), plan.why
            report.notes = _apply(town, sessions, info, plan.steps)
        except (VermasError, OSError) as exc:  # reported (up, runner log); the next round tries again
            report.error = str(exc)[:500]
        return report
    finally:
        lock.release()


def repair_spawns(town: Town, sessions: TownSessions, only_spawning: bool = False) -> list[RepairReport]:
    """Repair every polecat (`up`), or only abandoned spawns (the patrol: a `spawning` slot
    whose spawn lock nobody holds)."""
    reports = []
    for p in list_polecats(town):
        if only_spawning and (p.state is not PolecatState.SPAWNING or lock_held(spawn_lock(town, p.rig, p.name))):
            continue
        report = repair(town, sessions, p.rig, p.name, only_spawning=only_spawning)
        if report is not None:
            reports.append(report)
    return reports


def gupp(town: Town, sessions: TownSessions, rig: str, name: str, wait: bool = False,
         lock: Flock | None = None) -> bool:
    """Deliver a started polecat's GUPP nudge, once: under its GUPP lock (taken, or handed
    over already held), only while its state is still `started`, and `working` only when the
    nudge was confirmed submitted. Whoever tries first (the slinging caller) may die trying;
    the lock then drops with it and the runner's patrol delivers it. True if delivered now."""
    lock = lock or gupp_lock(town, rig, name)
    if not lock.acquire(wait=wait):
        return False
    try:
        info = find(town, rig, name)
        if info is None or info.state is not PolecatState.STARTED:
            return False
        result = launch.kick(town, sessions, _address(rig, name))
        delivered = bool(result and result.submitted)
        if delivered:
            set_state(town, rig, name, PolecatState.WORKING, only_from=PolecatState.STARTED)
        return delivered
    finally:
        lock.release()


def mark_nudged(town: Town, addresses: list[str]) -> None:
    """Sessions `up` restarted and nudged itself: `started` becomes `working` (nothing else changes)."""
    for text in addresses:
        parts = text.split("/")
        if len(parts) == 3 and parts[1] == "polecats":
            set_state(town, parts[0], parts[2], PolecatState.WORKING, only_from=PolecatState.STARTED)


def respawn_on_branch(town: Town, sessions: TownSessions, actor: Address, bead_id: str, rig: str, branch: str,
                      in_txn: InTxn | None = None) -> PolecatInfo:
    """Work the refinery sent back whose polecat is gone: a NEW polecat (next free name) on the
    bead's EXISTING branch, so its commits are where it starts. The branch must not be checked
    out anywhere (the caller frees it from the old worktree first). `in_txn` runs in the hooking's
    transaction (the REWORK_REQUEST mailed to the new address, so its hook shows it from the
    first turn). The session starts `started`: the runner's patrol delivers its GUPP nudge."""
    permissions.require(actor, Action.SLING)
    clone = canonical_clone(town, rig)
    if not git.has_ref(clone, f"refs/heads/{branch}"):
        raise NotFound(f"branch {branch} of {bead_id} is not in {rig}'s clone; nothing to continue from")
    info, lock = _allocate(town, actor, bead_id, rig, force=False, branch=branch, in_txn=in_txn)
    return _bring_up(town, sessions, info, lock, kick="none")


def checkouts_of(town: Town, rig: str, branch: str) -> list[Path]:
    """The worktrees of `rig`'s clone that have `branch` checked out (git allows one)."""
    entries = spawnrepair.worktree_entries(canonical_clone(town, rig))
    return [Path(path) for path, entry in entries.items() if entry.get("branch") == f"refs/heads/{branch}"]


def free_checkout(town: Town, sessions: TownSessions, rig: str, worktree: Path) -> str | None:
    """Remove a worktree whose work is committed (the caller saved anything else first), its
    polecat's session and slot with it; the branch stays. Returns the slot's name, if one held it."""
    clone = canonical_clone(town, rig)
    name = next((p.name for p in list_polecats(town, rig)
                 if p.worktree and os.path.realpath(p.worktree) == os.path.realpath(worktree)), None)
    lock = spawn_lock(town, rig, name) if name else None
    if lock is not None and not lock.acquire(wait=False):
        raise spawnrepair.in_progress(f"{rig}/polecats/{name}")
    try:
        if name is not None:
            sessions.kill(_address(rig, name))
        git.run(clone, "worktree", "remove", "--force", "--force", str(worktree))
        if name is not None:
            release(town, rig, name, reopen_bead=False)
    finally:
        if lock is not None:
            lock.release()
    return name


def spawn(
    town: Town, actor: Address, bead_id: str | None, rig: str, sessions: TownSessions | None = None,
    kick: str = "background", force: bool = False, branch: str | None = None, prefer: str | None = None,
    pour: Pour | None = None,
) -> PolecatInfo:
    """Slot, sandbox, session: reserve a name and hook the bead (one transaction), make the
    worktree, start the session, then `started`. On failure, roll back and free the slot; if
    this process dies part way, repair (`up`, the patrol) does. kick: "wait" nudges it here
    and returns once delivered; "background" tries from a thread of this process; "none"
    leaves it to the runner's patrol, which finishes whatever a caller did not. `branch`: an
    existing branch to work on instead of a new one (the witness re-slinging an orphan), and
    `prefer`: the name to take if it is free (that branch's polecat, whose worktree was kept);
    `pour`: write the bead (bead_id None) in the hooking's transaction (see _allocate)."""
    from vermas.sessions import TownSessions  # deferred: libtmux (~70 ms) only when a session is touched

    permissions.require(actor, Action.SLING)
    tmux = sessions or TownSessions(town.root)
    info, lock = _allocate(town, actor, bead_id, rig, force, branch, prefer, pour=pour)
    return _bring_up(town, tmux, info, lock, kick)


def _bring_up(town: Town, tmux: TownSessions, info: PolecatInfo, lock: Flock, kick: str) -> PolecatInfo:
    """Sandbox and session for an allocated slot (its spawn lock held), then `started`; rolled
    back on failure (an existing branch with commits is always kept)."""
    rig = info.rig
    address = _address(rig, info.name)
    nudge_lock = gupp_lock(town, rig, info.name)
    try:
        try:
            _checkpoint("allocated")
            create_worktree(town, info)
            launch.start_agent(town, tmux, address)
            _checkpoint("session")
        except Exception:
            steps = spawnrepair.decide_rollback(observe(town, tmux, info, spawner_alive=False))
            _apply(town, tmux, info, steps, reopen_status=info.prior_status or "open")
            raise
        if kick != "none":  # ours to try first; taken before `started` so the patrol waits for us
            nudge_lock.acquire(wait=True)
        set_state(town, rig, info.name, PolecatState.STARTED)
    finally:
        lock.release()
    state = PolecatState.STARTED
    if kick == "wait":
        if gupp(town, tmux, rig, info.name, lock=nudge_lock):
            state = PolecatState.WORKING
    elif kick != "none":
        threading.Thread(target=gupp, args=(town, tmux, rig, info.name), kwargs={"lock": nudge_lock},
                         daemon=True).start()
    return info.model_copy(update={"state": state})


def nuke(town: Town, rig: str, name: str, force: bool = False,
         sessions: TownSessions | None = None) -> PolecatInfo:
    """Remove a polecat from whatever state it is in: session, worktree (or a folder that
    is not one: moved aside), git's entry, a merged branch, slot. Refuses while its branch
    holds unmerged commits unless force; even then the branch is kept, never deleted."""
    from vermas.sessions import TownSessions  # deferred: libtmux (~70 ms) only when a session is touched

    if find(town, rig, name) is None:
        raise NotFound(f"no polecat {rig}/polecats/{name}; `vermas-runner polecat list` shows them")
    if rig not in town.config.rigs:
        raise NotFound(f"rig {rig!r} of {rig}/polecats/{name} is not in town.toml any more; add it back first")
    tmux = sessions or TownSessions(town.root)
    lock = spawn_lock(town, rig, name)
    if not lock.acquire(wait=False):
        raise spawnrepair.in_progress(f"{rig}/polecats/{name}")
    try:
        info = find(town, rig, name)
        if info is None:
            raise NotFound(f"no polecat {rig}/polecats/{name}; `vermas-runner polecat list` shows them")
        plan = spawnrepair.decide_nuke(observe(town, tmux, info, spawner_alive=False), force, info.address)
        notes = _apply(town, tmux, info, plan.steps)
    finally:
        lock.release()
    return info.model_copy(update={"state": PolecatState.NUKED, "notes": notes})
