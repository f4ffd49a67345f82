"""Sling: put a bead on an agent's hook, compare-and-set inside one write transaction so
two processes can never both take one bead, and no agent ever holds two."""

from __future__ import annotations

from vermas import beads, permissions, polecat, timeutil, validate
from vermas.addresses import Address, is_rig_name, parse_address
from vermas.errors import Conflict, InvalidInput
from vermas.hooks import hooked_id
from vermas.permissions import Action
from vermas.town import Town
from vermas.twins import twin

HOOKABLE = ("open", "in_progress", "blocked", "deferred", "pinned")


def sling(town: Town, actor: Address, bead_id: str, target: str) -> beads.Bead:
    """To an agent address: hook the bead there. To a rig name: spawn a polecat for it."""
    validate.bead_id(bead_id)
    if isinstance(target, str) and "/" not in target and is_rig_name(target):
        town.reload_config()
        if target not in town.config.rigs:
            known = ", ".join(sorted(town.config.rigs)) or "none yet (vermas-runner rig add)"
            raise InvalidInput(f"unknown rig {target!r}; rigs in this town: {known}; or give an agent address")
        polecat.spawn(town, actor, bead_id, target)
        with town.db.read() as conn:
            return beads.fetch(conn, bead_id)
    agent = parse_address(target)
    permissions.require(actor, Action.SLING)
    with town.db.write() as conn:
        row = beads.fetch_row(conn, bead_id)
        if row["status"] == "hooked":
            raise Conflict(f"{bead_id} is already hooked by {row['assignee']}; {twin('unsling')} it first")
        if row["status"] not in HOOKABLE:
            raise Conflict(f"{bead_id} is {row['status']}; only {', '.join(HOOKABLE)} beads can be slung")
        holder = hooked_id(conn, str(agent))
        if holder is not None:
            raise Conflict(f"{agent}'s hook is occupied by {holder}; one hooked bead per agent")
        stamp, ts = timeutil.now()
        conn.execute(
            "UPDATE issues SET status = 'hooked', assignee = ?, updated_at = ?, updated_ts = ? "
            "WHERE id = ?",
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
