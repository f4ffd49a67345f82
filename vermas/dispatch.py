"""Who and what may be slung: the pure rules shared by `sling` (to an agent) and polecat
allocation (to a rig), so both refuse the same beads with the same words.

A leaf under sling and polecat (both import it), which keeps the two free of a cycle."""

from __future__ import annotations

import sqlite3
from collections.abc import Collection
from enum import Enum

from pydantic import BaseModel

from vermas import beads
from vermas.addresses import ALLOWED_FORMS, TOWN_ROLES, Address, Role, is_rig_name, parse_address
from vermas.errors import Conflict, Forbidden, InvalidInput, VermasError
from vermas.twins import twin

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
        return Conflict(f"bead is already hooked by {assignee}; {twin('unsling')} it first")
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
