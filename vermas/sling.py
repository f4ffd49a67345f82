"""Sling: put a bead on an agent's hook, compare-and-set inside one write transaction so
two processes can never both take one bead, and no agent ever holds two.

One dispatch rule (`classify_target`) serves the MCP `sling` tool and `vermas-runner sling`
alike, and one refusal rule (`refusal`) keeps a bead that is being worked, waiting in the
merge queue or closed from being slung again unless the overseer forces it."""

from __future__ import annotations

import sqlite3
from collections.abc import Collection
from enum import Enum
from typing import TYPE_CHECKING

from pydantic import BaseModel

from vermas import beads, timeutil, validate
from vermas.addresses import ALLOWED_FORMS, TOWN_ROLES, Address, Role, is_rig_name, parse_address
from vermas.errors import Conflict, Forbidden, InvalidInput, VermasError
from vermas.hooks import hooked_id
from vermas.town import Town

if TYPE_CHECKING:  # tmux is imported only where a session is touched
    from vermas.sessions import TownSessions

HOOKABLE = ("open", "in_progress", "blocked", "deferred", "pinned")
# Statuses a plain sling refuses and `force` (overseer only) overrides.
FORCEABLE = ("in_progress", "closed")
CLOSED_MR_STATES = ("merged", "rejected", "closed")


class TargetKind(str, Enum):
    AGENT = "agent"  # hook the bead to this address
    RIG = "rig"  # spawn a polecat in this rig for it


class SlingTarget(BaseModel, frozen=True):
    kind: TargetKind
    agent: Address | None = None
    rig: str | None = None


def classify_target(target: str, rigs: Collection[str]) -> SlingTarget:
    """Pure: an agent address (mayor, deacon, overseer, rig/witness, rig/crew/x, ...) or the
    name of a rig of this town. Anything else is InvalidInput naming both forms."""
    if not isinstance(target, str) or not target:
        raise InvalidInput(f"sling target must be a rig name or an agent address ({ALLOWED_FORMS})")
    if "/" in target or target in TOWN_ROLES:
        return SlingTarget(kind=TargetKind.AGENT, agent=parse_address(target))
    if is_rig_name(target) and target in rigs:
        return SlingTarget(kind=TargetKind.RIG, rig=target)
    known = ", ".join(sorted(rigs)) or "none yet (vermas-runner rig add)"
    raise InvalidInput(
        f"unknown rig {target[:40]!r}; rigs in this town: {known}; or give an agent address ({ALLOWED_FORMS})"
    )


class OpenMergeRequest(BaseModel, frozen=True):
    id: str
    branch: str | None
    state: str


def refusal(status: str, assignee: str | None, open_mrs: list[OpenMergeRequest], actor: Address,
            force: bool) -> VermasError | None:
    """Pure: why this bead may not be slung now (an error to raise), or None."""
    if actor.role is Role.POLECAT:
        return Forbidden("polecats do not sling work; mail your witness or the mayor instead")
    if force and actor.role is not Role.OVERSEER:
        return Forbidden(f"force is for the overseer only; {actor} may not force a sling")
    if status == "hooked":
        return Conflict(f"bead is already hooked by {assignee}; unsling it first")
    if force:
        return None
    if open_mrs:
        mr = open_mrs[0]
        return Conflict(
            f"bead has an open merge request {mr.id} (branch {mr.branch}, {mr.state}); it waits for "
            "the refinery. Slinging it again would redo the work; the overseer may force it"
        )
    if status == "in_progress":
        return Conflict(f"bead is in_progress, held by {assignee or 'nobody'}; the overseer may force it")
    if status == "closed":
        return Conflict("bead is closed; reopen it (bead_update status=open) or the overseer may force it")
    if status not in HOOKABLE:
        return Conflict(f"bead is {status}; only {', '.join(HOOKABLE)} beads can be slung")
    return None


def open_merge_requests(conn: sqlite3.Connection, bead_id: str) -> list[OpenMergeRequest]:
    marks = ",".join("?" * len(CLOSED_MR_STATES))
    rows = conn.execute(
        f"SELECT id, branch, state FROM merge_requests WHERE bead_id = ? AND state NOT IN ({marks}) "
        "ORDER BY created_at", (bead_id, *CLOSED_MR_STATES)).fetchall()
    return [OpenMergeRequest(id=r[0], branch=r[1], state=r[2]) for r in rows]


def admit(conn: sqlite3.Connection, bead_id: str, actor: Address, force: bool) -> sqlite3.Row:
    """Inside a write transaction: the bead's row if it may be slung, else raise."""
    row = beads.fetch_row(conn, bead_id)
    error = refusal(row["status"], row["assignee"], open_merge_requests(conn, bead_id), actor, force)
    if error is not None:
        raise type(error)(f"{bead_id}: {error}")
    return row


def sling(town: Town, actor: Address, bead_id: str, target: str, force: bool = False,
          sessions: TownSessions | None = None, kick: str = "background") -> beads.Bead:
    """To an agent address: hook the bead there. To a rig name: spawn a polecat for it."""
    validate.bead_id(bead_id)
    town.reload_config()
    where = classify_target(target, town.config.rigs)
    if where.kind is TargetKind.RIG:
        from vermas import polecat

        polecat.spawn(town, actor, bead_id, str(where.rig), sessions, kick=kick, force=force)
        with town.db.read() as conn:
            return beads.fetch(conn, bead_id)
    agent = where.agent
    assert agent is not None
    with town.db.write() as conn:
        admit(conn, bead_id, actor, force)
        holder = hooked_id(conn, str(agent))
        if holder is not None:
            raise Conflict(f"{agent}'s hook is occupied by {holder}; one hooked bead per agent")
        stamp, ts = timeutil.now()
        conn.execute(
            "UPDATE issues SET status = 'hooked', assignee = ?, closed_at = NULL, close_reason = NULL, "
            "updated_at = ?, updated_ts = ? WHERE id = ?",
            (str(agent), stamp, ts, bead_id),
        )
        town.db.touch("issues")
        return beads.fetch(conn, bead_id)


def unsling(town: Town, actor: Address, bead_id: str) -> beads.Bead:
    """Take a bead off its hook, back to open. The holder, its rig's witness, or a
    town-level coordinator may do it."""
    validate.bead_id(bead_id)
    with town.db.write() as conn:
        row = beads.fetch_row(conn, bead_id)
        if row["status"] != "hooked":
            raise Conflict(f"{bead_id} is {row['status']}, not hooked; nothing to unsling")
        holder = row["assignee"]
        holder_rig = holder.split("/", 1)[0] if holder and "/" in holder else None
        allowed = (
            actor.is_privileged
            or holder == str(actor)
            or (actor.role is Role.WITNESS and actor.rig == holder_rig)
        )
        if not allowed:
            raise Forbidden(
                f"{actor} may not unsling {bead_id} (held by {holder}); the holder, its witness, "
                "mayor, deacon or overseer may"
            )
        stamp, ts = timeutil.now()
        conn.execute(
            "UPDATE issues SET status = 'open', assignee = NULL, updated_at = ?, updated_ts = ? "
            "WHERE id = ?",
            (stamp, ts, bead_id),
        )
        town.db.touch("issues")
        return beads.fetch(conn, bead_id)
