"""Sling: put a bead on an agent's hook, compare-and-set inside one write transaction so
two processes can never both take one bead, and no agent ever holds two.

One dispatch rule (`classify_target`) serves the MCP `sling` tool and `vermas-runner sling`
alike, and one refusal rule (`refusal`) keeps a bead that is being worked, waiting in the
merge queue or closed from being slung again unless the overseer forces it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vermas import beads, permissions, polecat, timeutil, validate
from vermas.dispatch import TargetKind, admit, classify_target
from vermas.errors import Conflict
from vermas.hooks import hooked_id
from vermas.permissions import Action

if TYPE_CHECKING:  # tmux is imported only where a session is touched
    from vermas.addresses import Address
    from vermas.sessions import TownSessions
    from vermas.town import Town


def sling(town: Town, actor: Address, bead_id: str, target: str, force: bool = False,
          sessions: TownSessions | None = None, kick: str = "background") -> beads.Bead:
    """To an agent address: hook the bead there. To a rig name: spawn a polecat for it; it
    is `started` once its session is up, and `working` only once its GUPP nudge was
    delivered. `kick` says who tries first ("wait": this call, "background": a thread of
    this process, "none": nobody); whoever fails or dies trying, the runner's patrol
    delivers it (polecat.gupp), so a one-shot caller may exit at once."""
    validate.bead_id(bead_id)
    permissions.require(actor, Action.SLING)
    town.reload_config()
    where = classify_target(target, town.config.rigs)
    if where.kind is TargetKind.RIG:
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
        permissions.require(actor, Action.UNSLING, permissions.bead_target(row))
        stamp, ts = timeutil.now()
        conn.execute(
            "UPDATE issues SET status = 'open', assignee = NULL, updated_at = ?, updated_ts = ? "
            "WHERE id = ?",
            (stamp, ts, bead_id),
        )
        town.db.touch("issues")
        return beads.fetch(conn, bead_id)
