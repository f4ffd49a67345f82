"""Sling: put a bead on an agent's hook, compare-and-set inside one write transaction so
two processes can never both take one bead, and no agent ever holds two.

One dispatch rule (`classify_target`) serves the MCP `sling` tool and `vermas-runner sling`
alike, and one refusal rule (`refusal`) keeps a bead that is being worked, waiting in the
merge queue or closed from being slung again unless the overseer forces it."""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

from vermas import beads, permissions, polecat, timeutil, validate
from vermas.dispatch import TargetKind, admit, classify_target
from vermas.errors import Conflict, InvalidInput, NotFound
from vermas.hooks import hooked_id
from vermas.molecules import formula, molecule
from vermas.molecules.molecule import MoleculeStatus
from vermas.permissions import Action

if TYPE_CHECKING:  # tmux is imported only where a session is touched
    from vermas.addresses import Address
    from vermas.sessions import TownSessions
    from vermas.town import Town


FORMULA_REF = "formula:"  # a bead_id naming a formula to pour and sling (formula:NAME)


def sling(town: Town, actor: Address, bead_id: str, target: str, force: bool = False,
          sessions: TownSessions | None = None, kick: str = "background",
          vars: list[str] | None = None) -> beads.Bead:  # noqa: A002 - the tools' name for it
    """To an agent address: hook the bead there. To a rig name: spawn a polecat for it; it
    is `started` once its session is up, and `working` only once its GUPP nudge was
    delivered. `kick` says who tries first ("wait": this call, "background": a thread of
    this process, "none": nobody); whoever fails or dies trying, the runner's patrol
    delivers it (polecat.gupp), so a one-shot caller may exit at once. `bead_id`
    formula:NAME pours that formula with `vars` (name=value) and slings its root."""
    if isinstance(bead_id, str) and bead_id.startswith(FORMULA_REF):
        poured = sling_formula(town, actor, bead_id[len(FORMULA_REF):], formula.parse_vars(vars), target,
                               sessions, kick)
        return beads.show(town, poured.root)
    if vars:
        raise InvalidInput(f"vars are for a formula (bead_id {FORMULA_REF}NAME); {str(bead_id)[:40]!r} is a bead")
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


def sling_formula(town: Town, actor: Address, name: str, variables: dict[str, str], target: str,
                  sessions: TownSessions | None = None, kick: str = "background") -> MoleculeStatus:
    """Pour the formula and hook its root, in one transaction: onto an agent's hook, or to a rig
    name, where a polecat is spawned for it exactly as for a bead. The formula is looked up for
    the target's rig (its canonical clone's .beads/formulas first). Either the molecule exists
    hooked, or nothing was written; if the polecat's sandbox or session cannot be made, the
    unstarted molecule is burned."""
    permissions.require(actor, Action.SLING)
    permissions.require(actor, Action.MOL_POUR)
    town.reload_config()
    where = classify_target(target, town.config.rigs)
    rig = where.rig if where.kind is TargetKind.RIG else (where.agent.rig if where.agent else None)
    rig = rig if rig in town.config.rigs else None
    proto = molecule.cook_named(town, name, variables, rig)
    if where.kind is TargetKind.RIG:
        assert rig is not None
        prefix = town.prefix_for_rig(rig)
        poured: list[str] = []

        def pour(conn: sqlite3.Connection) -> str:
            poured.append(molecule.pour_in_txn(conn, town.db, actor, proto, prefix))
            return poured[-1]

        try:
            info = polecat.spawn(town, actor, None, rig, sessions, kick=kick, pour=pour)
        except Exception:
            if poured:  # poured: either rolled back with the hooking, or hooked and the bring-up failed
                _burn_unstarted(town, actor, poured[-1])
            raise
        return molecule.status(town, actor, info.bead_id)
    assert where.agent is not None
    return molecule.pour(town, actor, proto, hook=str(where.agent), rig=rig)


def _burn_unstarted(town: Town, actor: Address, root: str) -> None:
    try:
        molecule.burn(town, actor, root)
    except (Conflict, NotFound):  # walked or removed meanwhile: not ours to discard
        pass


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
