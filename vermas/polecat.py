"""Polecats: ephemeral workers, slot + sandbox + session. This module holds their whole
life: allocation of a named slot and the hook (one transaction), the git worktree, the
session start, `polecat_done` at the end of the work, and nuking."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel

from vermas import beads, git, mail, permissions, protocol, timeutil, validate
from vermas.addresses import Address, Role
from vermas.dispatch import admit
from vermas.errors import Conflict, InvalidInput, NotFound, VermasError
from vermas.hooks import hooked_id
from vermas.permissions import Action
from vermas.refinery import ledger
from vermas.rig import canonical_clone
from vermas.rig import sync as sync_rig
from vermas.sessions import launch
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
        stamp, ts = timeutil.now()
        mr_id = None
        if status == "COMPLETED":
            assert tree is not None
            # The queue of record (vermas.refinery.ledger): the same commit re-sent is one request;
            # a new commit after rework replaces the bead's older open requests.
            mr_id = ledger.enqueue_in_txn(
                conn, town.db, mr_prefix=town.prefix_for_rig(rig), rig=rig, bead=bead_id, polecat=str(actor),
                branch=tree.branch, commit=tree.commit, base=tree.base, summary=summary, actor=str(actor),
                title=source["title"], priority=source["priority"]).id
        next_status = NEXT_STATUS[status]
        conn.execute(
            "UPDATE issues SET status = ?, assignee = ?, updated_at = ?, updated_ts = ? WHERE id = ?",
            (next_status, None if status == "DEFERRED" else str(actor), stamp, ts, bead_id),
        )
        if summary:
            beads.add_comment(conn, bead_id, str(actor), f"polecat_done {status}: {summary}", stamp)
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
        state="queued" if mr_id else "none", summary=summary, witness_message_id=message.id,
    )


# --- Spawning and nuking (slot + sandbox + session) ---------------------------------------

NAME_POOL = (
    "nux", "slit", "furiosa", "capable", "toast", "dag", "cheedo", "angharad", "ace", "rictus",
    "morsov", "keeper", "valkyrie", "max", "immortan", "corpus", "organic", "splendid",
)


class PolecatInfo(BaseModel):
    prior_status: str | None = None  # the bead's status before allocate hooked it (not stored)
    address: str
    rig: str
    name: str
    bead_id: str | None
    branch: str | None
    worktree: str | None
    state: str
    created_at: str


def choose_name(pool: tuple[str, ...], taken: set[str], max_polecats: int) -> str | None:
    """First free name among the rig's first `max_polecats` slots (pure)."""
    names = [pool[i] if i < len(pool) else f"polecat{i + 1}" for i in range(max_polecats)]
    return next((n for n in names if n not in taken), None)


def branch_name(name: str, bead_id: str) -> str:
    return f"polecat/{name}/{bead_id}"


def allocate(town: Town, actor: Address, bead_id: str, rig: str, force: bool = False) -> PolecatInfo:
    """Reserve a slot and hook the bead to it in one transaction: never two polecats with
    one name, never more than max_polecats, never a bead hooked twice."""
    validate.bead_id(bead_id)
    town.reload_config()
    config = town.config.rigs.get(rig)
    if config is None:
        known = ", ".join(sorted(town.config.rigs)) or "none yet (vermas-runner rig add)"
        raise NotFound(f"unknown rig {rig!r}; rigs in this town: {known}")
    with town.db.write() as conn:
        row = admit(conn, bead_id, actor, force)
        taken = {r[0] for r in conn.execute("SELECT name FROM polecats WHERE rig = ?", (rig,))}
        # A name someone slung work to directly (no slot) is not free either.
        taken |= {r[0].rsplit("/", 1)[1] for r in conn.execute(
            "SELECT assignee FROM issues WHERE status = 'hooked' AND assignee GLOB ?", (f"{rig}/polecats/*",))}
        name = choose_name(NAME_POOL, taken, config.max_polecats)
        if name is None:
            raise Conflict(
                f"rig {rig} has {len(taken)} of {config.max_polecats} polecats busy; wait for one to "
                "finish, nuke one (vermas-runner polecat nuke), or raise max_polecats in town.toml"
            )
        address = Address(role=Role.POLECAT, rig=rig, name=name)
        stamp, ts = timeutil.now()
        worktree = str(worktree_path(town, address))
        conn.execute(
            "INSERT INTO polecats(rig, name, bead_id, branch, worktree, state, created_at) "
            "VALUES (?,?,?,?,?,?,?)",
            (rig, name, bead_id, branch_name(name, bead_id), worktree, "spawning", stamp),
        )
        conn.execute(
            "UPDATE issues SET status = 'hooked', assignee = ?, closed_at = NULL, close_reason = NULL, "
            "updated_at = ?, updated_ts = ? WHERE id = ?",
            (str(address), stamp, ts, bead_id),
        )
        town.db.touch("issues")
    return PolecatInfo(address=str(address), rig=rig, name=name, bead_id=bead_id,
                       branch=branch_name(name, bead_id), worktree=worktree, state="spawning",
                       created_at=stamp, prior_status=row["status"])


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


def set_state(town: Town, rig: str, name: str, state: str) -> None:
    with town.db.write() as conn:
        conn.execute("UPDATE polecats SET state = ? WHERE rig = ? AND name = ?", (state, rig, name))


def list_polecats(town: Town, rig: str | None = None) -> list[PolecatInfo]:
    sql = "SELECT rig, name, bead_id, branch, worktree, state, created_at FROM polecats"
    args: tuple[str, ...] = ()
    if rig:
        sql, args = sql + " WHERE rig = ?", (rig,)
    with town.db.read() as conn:
        rows = conn.execute(sql + " ORDER BY rig, created_at", args).fetchall()
    return [PolecatInfo(address=f"{r['rig']}/polecats/{r['name']}", **dict(r)) for r in rows]


def create_worktree(town: Town, info: PolecatInfo) -> None:
    """A fresh branch from the rig's default branch, in the polecat's folder. The rig is
    synced first (fetch, fast-forward), so the branch starts from the upstream's latest; a
    failed sync raises and no polecat is spawned on a stale base."""
    clone = canonical_clone(town, info.rig)
    path = Path(str(info.worktree))
    if git.is_worktree(path):
        return  # respawn after a crash: keep the work that is there
    if git.has_ref(clone, f"refs/heads/{info.branch}"):
        git.run(clone, "worktree", "add", "--quiet", "--", str(path), str(info.branch))
    else:
        try:
            base = sync_rig(town, info.rig).after
        except VermasError as exc:
            raise type(exc)(f"no polecat spawned: {exc} (`vermas-runner rig sync {info.rig}` retries "
                            "the fetch)") from None
        git.run(clone, "worktree", "add", "--quiet", "-b", str(info.branch), "--", str(path), base)


def unmerged_commits(town: Town, info: PolecatInfo) -> int:
    clone = canonical_clone(town, info.rig)
    if not info.branch or not git.has_ref(clone, f"refs/heads/{info.branch}"):
        return 0
    base = town.config.rigs[info.rig].default_branch
    return int(git.run(clone, "rev-list", "--count", f"{base}..{info.branch}"))


def remove_worktree(town: Town, info: PolecatInfo) -> None:
    clone = canonical_clone(town, info.rig)
    if info.worktree and Path(info.worktree).exists():
        git.run(clone, "worktree", "remove", "--force", info.worktree)
    git.run(clone, "worktree", "prune", check=False)
    if info.branch and git.has_ref(clone, f"refs/heads/{info.branch}"):
        git.run(clone, "branch", "-D", info.branch)


def spawn(
    town: Town, actor: Address, bead_id: str, rig: str, sessions: TownSessions | None = None,
    kick: str = "background", force: bool = False,
) -> PolecatInfo:
    """Slot, sandbox, session: reserve a name and hook the bead (one transaction), make the
    worktree, start the session. On failure, undo in reverse and free the slot."""
    from vermas.sessions import TownSessions  # deferred: libtmux (~70 ms) only when a session is touched

    permissions.require(actor, Action.SLING)
    tmux = sessions or TownSessions(town.root)
    info = allocate(town, actor, bead_id, rig, force=force)
    address = Address(role=Role.POLECAT, rig=rig, name=info.name)
    try:
        create_worktree(town, info)
        launch.start_agent(town, tmux, address)
    except Exception:
        try:
            tmux.kill(address)
            if unmerged_commits(town, info) == 0:
                remove_worktree(town, info)
        finally:
            release(town, rig, info.name, reopen_bead=True, status=info.prior_status or "open")
        raise
    # "started" asks the runner's patrol to nudge it; "working" means this call nudges it.
    state = "started" if kick == "none" else "working"
    set_state(town, rig, info.name, state)
    if kick != "none":
        if kick == "wait":
            launch.kick(town, tmux, address)
        else:  # the caller (an MCP tool) returns now; the session gets its GUPP nudge when ready
            threading.Thread(target=launch.kick, args=(town, tmux, address), daemon=True).start()
    return info.model_copy(update={"state": state})


def nuke(town: Town, rig: str, name: str, force: bool = False,
         sessions: TownSessions | None = None) -> PolecatInfo:
    """Remove a polecat: session, worktree, branch, slot. Refuses while its branch holds
    commits that are not merged, unless force (a human's explicit decision)."""
    from vermas.sessions import TownSessions  # deferred: libtmux (~70 ms) only when a session is touched

    found = [p for p in list_polecats(town, rig) if p.name == name]
    if not found:
        raise NotFound(f"no polecat {rig}/polecats/{name}; `vermas-runner polecat list` shows them")
    info = found[0]
    ahead = unmerged_commits(town, info)
    if ahead and not force:
        raise Conflict(
            f"{info.address} has {ahead} unmerged commit(s) on {info.branch}; merge them first or "
            "nuke with --force to throw them away"
        )
    tmux = sessions or TownSessions(town.root)
    tmux.kill(Address(role=Role.POLECAT, rig=rig, name=name))
    remove_worktree(town, info)
    release(town, rig, name, reopen_bead=True)
    return info.model_copy(update={"state": "nuked"})
