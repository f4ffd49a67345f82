"""Polecats: ephemeral workers. This module holds what a polecat itself does at the end
of its work (`polecat_done`); spawning and nuking live with the runner."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from vermas import beads, git, ids, mail, timeutil
from vermas.addresses import Address, Role
from vermas.errors import Conflict, Forbidden, InvalidInput
from vermas.hooks import hooked_id
from vermas.town import Town

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
    return town.root / str(actor.rig) / "polecats" / str(actor.name)


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
    if actor.role is not Role.POLECAT:
        raise Forbidden(f"polecat_done is for polecats; {actor} is a {actor.role.value}")
    if status not in DONE_STATUSES:
        raise InvalidInput(f"invalid status {str(status)[:30]!r}; allowed: {', '.join(DONE_STATUSES)}")
    if not isinstance(summary, str) or len(summary) > MAX_SUMMARY_CHARS:
        raise InvalidInput(f"summary must be text of at most {MAX_SUMMARY_CHARS} characters")
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
                + "; commit them (or discard them) before polecat_done"
            )
        if tree.commits_ahead == 0:
            raise Conflict(
                f"COMPLETED with no commits: {tree.branch} has nothing beyond {tree.base}; "
                "commit your work first, or use ESCALATED or DEFERRED"
            )
    rig = str(actor.rig)
    with town.db.write() as conn:
        bead_id = hooked_id(conn, str(actor))
        if bead_id is None:
            raise Conflict(f"{actor} has no hooked work; nothing to finish")
        source = beads.fetch_row(conn, bead_id)
        stamp, ts = timeutil.now()
        mr_id = None
        if status == "COMPLETED":
            assert tree is not None
            mr_id = ids.new_bead_id(conn, town.prefix_for_rig(rig), f"mr\x00{bead_id}\x00{tree.commit}")
            description = (
                f"branch: {tree.branch}\ncommit: {tree.commit}\ntarget: {tree.base}\n"
                f"source_issue: {bead_id}\npolecat: {actor}\nrig: {rig}\n\n{summary}"
            )
            beads.insert(conn, town.db, bead_id=mr_id, title=f"Merge: {source['title'][:400]}",
                         actor=str(actor), description=description, issue_type="merge-request",
                         priority=source["priority"])
            beads.add_dependency(conn, town.db, mr_id, bead_id, "related", str(actor))
            conn.execute(
                "INSERT INTO merge_requests (id, bead_id, rig, polecat, branch, commit_sha, base, state, "
                "summary, created_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (mr_id, bead_id, rig, str(actor), tree.branch, tree.commit, tree.base, "queued",
                 summary, stamp),
            )
        next_status = NEXT_STATUS[status]
        conn.execute(
            "UPDATE issues SET status = ?, assignee = ?, updated_at = ?, updated_ts = ? WHERE id = ?",
            (next_status, None if status == "DEFERRED" else str(actor), stamp, ts, bead_id),
        )
        if summary:
            beads.add_comment(conn, bead_id, str(actor), f"polecat_done {status}: {summary}", stamp)
        town.db.touch("issues")
        lines = [f"bead: {bead_id}", f"status: {status}", f"polecat: {actor}"]
        if tree is not None:
            lines += [f"branch: {tree.branch}", f"commit: {tree.commit}"]
        if mr_id:
            lines.append(f"merge_request: {mr_id}")
        message = mail.send_in_txn(
            conn, town.db, str(actor), f"{rig}/witness", f"POLECAT_DONE {actor.name} {bead_id}",
            "\n".join(lines) + (f"\n\n{summary}" if summary else ""),
            idempotency_key=f"polecat_done:{bead_id}:{status}:{tree.commit if tree else ''}",
        )
    return MergeRequest(
        id=mr_id, bead_id=bead_id, polecat=str(actor), rig=rig, status=status,
        branch=tree.branch if tree else None, commit=tree.commit if tree else None,
        base=tree.base if tree else None, commits_ahead=tree.commits_ahead if tree else 0,
        state="queued" if mr_id else "none", summary=summary, witness_message_id=message.id,
    )
