"""Molecules: a cooked proto poured into the store as beads, walked step by step.

A molecule is a root bead (issue_type `molecule`, label `formula:<name>`) and one child bead
per step (`<root>.N`, a parent-child dependency on the root, label `step:<id>`), with each
step's `needs` as `blocks` dependencies. These are ordinary bd-format beads, so vermas's
export writes them and bd reads them. Every verb is one write transaction: a molecule is
poured whole or not at all, and a step is closed once (compare-and-set under BEGIN IMMEDIATE).
"""

from __future__ import annotations

import sqlite3
from enum import StrEnum

from pydantic import BaseModel

from vermas import beads, faults, ids, permissions, timeutil, validate
from vermas.addresses import Address, parse_address
from vermas.errors import Conflict, InvalidInput, NotFound
from vermas.hooks import hooked_id
from vermas.molecules.formula import Proto
from vermas.permissions import Action
from vermas.store import Database
from vermas.town import Town

MOLECULE_TYPE = "molecule"
STEP_LABEL = "step:"
FORMULA_LABEL = "formula:"
# Crash-test checkpoints (vermas/faults.py), both inside the write transaction, before COMMIT:
POUR_KILL_POINT = "mol-pour"  # the root and every step bead inserted, the `needs` not yet
STEP_DONE_KILL_POINT = "mol-step-done"  # the step checked and its UPDATE made


class Marker(StrEnum):
    DONE = "done"
    CURRENT = "current"  # the first ready step in formula order: the one to work on now
    READY = "ready"
    BLOCKED = "blocked"


class StepState(BaseModel):
    step: str  # the formula's step id
    bead_id: str
    title: str
    marker: Marker
    needs: list[str]
    description: str = ""
    acceptance: str = ""
    outcome: str | None = None  # the summary given when it was done


class MoleculeStatus(BaseModel):
    root: str
    formula: str
    holder: str | None  # None: on no hook, or closed
    steps: list[StepState]
    current: StepState | None  # in full, acceptance included


class StepDone(BaseModel):
    next: StepState | None  # None: every step is done (squash the molecule)
    molecule: MoleculeStatus  # the checklist after the close


class Removed(BaseModel):
    root: str
    beads: list[str]


def markers(states: dict[str, str], needs: dict[str, list[str]], order: list[str]) -> dict[str, Marker]:
    """Each step's marker from its bead status and its needs (pure): closed steps are done,
    open ones ready when all they need is done, else blocked; the first ready one is current."""
    result: dict[str, Marker] = {}
    for step in order:
        if states[step] == "closed":
            result[step] = Marker.DONE
        elif all(states[n] == "closed" for n in needs[step]):
            result[step] = Marker.READY
        else:
            result[step] = Marker.BLOCKED
    for step in order:
        if result[step] is Marker.READY:
            result[step] = Marker.CURRENT
            break
    return result


# --- pour ------------------------------------------------------------------------------------


def pour(town: Town, actor: Address, proto: Proto, hook: str | None = None, rig: str | None = None) -> MoleculeStatus:
    """Write the root and one bead per step in ONE transaction; `hook` puts the root on that
    agent's hook (the walker). Nothing is written if any part fails."""
    permissions.require(actor, Action.MOL_POUR)
    if hook is not None:
        hook = str(parse_address(hook))
    town.require_rig(rig)
    prefix = town.prefix_for_rig(rig or actor.rig)
    title = validate.title(f"{proto.formula}: {proto.description or proto.formula}"[:200])
    with town.db.write() as conn:
        if hook is not None and (held := hooked_id(conn, hook)) is not None:
            raise Conflict(f"{hook}'s hook is occupied by {held}; one hooked bead per agent")
        root = ids.new_bead_id(conn, prefix, f"{proto.formula}\x00{actor}")
        beads.insert(conn, town.db, bead_id=root, title=title, actor=str(actor), description=_root_text(proto),
                     issue_type=MOLECULE_TYPE, status="hooked" if hook else "open", assignee=hook,
                     labels=[FORMULA_LABEL + proto.formula])
        step_ids: dict[str, str] = {}
        for n, step in enumerate(proto.steps, 1):
            bead_id = f"{root}.{n}"
            step_ids[step.id] = bead_id
            beads.insert(conn, town.db, bead_id=bead_id, title=step.title[:200], actor=str(actor),
                         description=step.description, priority=step.priority,
                         labels=sorted({STEP_LABEL + step.id, *step.labels}),
                         acceptance_criteria=step.acceptance)
            beads.add_dependency(conn, town.db, bead_id, root, "parent-child", str(actor))
        faults.checkpoint(POUR_KILL_POINT)
        for step in proto.steps:
            for need in step.needs:
                beads.add_dependency(conn, town.db, step_ids[step.id], step_ids[need], "blocks", str(actor))
        return _status(conn, root)


def _root_text(proto: Proto) -> str:
    lines = [proto.description, "", f"formula {proto.formula} v{proto.version} ({proto.source})"]
    lines += [f"var {k} = {v}" for k, v in sorted(proto.vars.items())]
    return "\n".join(lines).strip()


# --- status ----------------------------------------------------------------------------------


def _root_row(conn: sqlite3.Connection, root: str) -> sqlite3.Row:
    row = beads.fetch_row(conn, root)
    if row["issue_type"] != MOLECULE_TYPE:
        raise InvalidInput(f"{root} is a {row['issue_type']}, not a molecule root; mol_pour makes one")
    return row


def _step_rows(conn: sqlite3.Connection, root: str) -> list[sqlite3.Row]:
    return conn.execute(
        "SELECT i.id, i.title, i.description, i.acceptance_criteria, i.status, i.close_reason, "
        "(SELECT substr(label, ?) FROM labels WHERE issue_id = i.id AND label LIKE 'step:%' LIMIT 1) AS step "
        "FROM dependencies d JOIN issues i ON i.id = d.issue_id "
        "WHERE d.depends_on_id = ? AND d.type = 'parent-child' ORDER BY i.created_ts, length(i.id), i.id",
        (len(STEP_LABEL) + 1, root),
    ).fetchall()


def _status(conn: sqlite3.Connection, root: str) -> MoleculeStatus:
    row = _root_row(conn, root)
    rows = _step_rows(conn, root)
    by_bead = {r["id"]: r["step"] for r in rows}
    needs = {r["step"]: [by_bead[d[0]] for d in conn.execute(
        "SELECT depends_on_id FROM dependencies WHERE issue_id = ? AND type = 'blocks' ORDER BY depends_on_id",
        (r["id"],)) if d[0] in by_bead] for r in rows}
    order = [r["step"] for r in rows]
    marks = markers({r["step"]: r["status"] for r in rows}, needs, order)
    steps = [StepState(step=r["step"], bead_id=r["id"], title=r["title"], marker=marks[r["step"]],
                       needs=needs[r["step"]], description=r["description"], acceptance=r["acceptance_criteria"],
                       outcome=r["close_reason"] if r["status"] == "closed" else None) for r in rows]
    labels = [r[0] for r in conn.execute("SELECT label FROM labels WHERE issue_id = ?", (root,))]
    formula = next((lb[len(FORMULA_LABEL):] for lb in labels if lb.startswith(FORMULA_LABEL)), "")
    current = next((s for s in steps if s.marker is Marker.CURRENT), None)
    holder = row["assignee"] if row["status"] == "hooked" else None
    brief = [s.model_copy(update={"description": "", "acceptance": ""}) for s in steps]
    return MoleculeStatus(root=root, formula=formula, holder=holder, steps=brief, current=current)


def _root_of(conn: sqlite3.Connection, actor: Address, root: str | None) -> str:
    if root is not None:
        validate.bead_id(root, "root")
        return root
    held = hooked_id(conn, str(actor))
    if held is None or beads.fetch_row(conn, held)["issue_type"] != MOLECULE_TYPE:
        raise NotFound(f"{actor} has no molecule on its hook; pass the molecule's root id")
    return held


def _root_of_step_bead(conn: sqlite3.Connection, step_id: str) -> str | None:
    """The root of a step given by its bead id (None: not a step bead; a formula step id)."""
    if not ids.is_bead_id(step_id):
        return None
    row = conn.execute("SELECT depends_on_id FROM dependencies WHERE issue_id = ? AND type = 'parent-child'",
                       (step_id,)).fetchone()
    return str(row[0]) if row else None


def status(town: Town, actor: Address, root: str | None = None) -> MoleculeStatus:
    """The checklist of a molecule (default: the one on the actor's hook)."""
    with town.db.read() as conn:
        return _status(conn, _root_of(conn, actor, root))


# --- step_done -------------------------------------------------------------------------------


def step_done(town: Town, actor: Address, step_id: str, summary: str = "", root: str | None = None) -> StepDone:
    """Close one step, by the root's holder only, and answer with the next step. The check and
    the close are one transaction with a compare-and-set, so of two racing callers one wins."""
    summary = validate.body(summary, "summary")
    with town.db.write() as conn:
        root_id = _root_of(conn, actor, root if root is not None else _root_of_step_bead(conn, step_id))
        row = _root_row(conn, root_id)
        permissions.require(actor, Action.MOL_STEP, permissions.bead_target(row))
        before = _status(conn, root_id)
        step = next((s for s in before.steps if step_id in (s.step, s.bead_id)), None)
        if step is None:
            raise NotFound(f"molecule {root_id} has no step {step_id!r}; steps: "
                           f"{', '.join(s.step for s in before.steps)}")
        if step.marker is Marker.DONE:
            raise Conflict(f"step {step.step} ({step.bead_id}) is already done")
        if step.marker is Marker.BLOCKED:
            waiting = [n for n in step.needs if next(s for s in before.steps if s.step == n).marker is not Marker.DONE]
            raise Conflict(f"step {step.step} is blocked: it needs {', '.join(waiting)} done first")
        stamp, ts = timeutil.now()
        changed = conn.execute(
            "UPDATE issues SET status = 'closed', closed_at = ?, close_reason = ?, updated_at = ?, updated_ts = ? "
            "WHERE id = ? AND status != 'closed'", (stamp, summary or "done", stamp, ts, step.bead_id)).rowcount
        if changed != 1:
            raise Conflict(f"step {step.step} ({step.bead_id}) was closed by someone else meanwhile")
        faults.checkpoint(STEP_DONE_KILL_POINT)
        town.db.touch("issues")
        after = _status(conn, root_id)
        return StepDone(next=after.current, molecule=after)


# --- squash and burn -------------------------------------------------------------------------


def _may_manage(conn: sqlite3.Connection, actor: Address, root: str) -> tuple[sqlite3.Row, list[sqlite3.Row]]:
    validate.bead_id(root, "root")
    row = _root_row(conn, root)
    if row["status"] == "closed":
        raise Conflict(f"molecule {root} is closed already (squashed at {row['closed_at']})")
    permissions.require(actor, Action.MOL_MANAGE, permissions.bead_target(row))
    return row, _step_rows(conn, root)


def _delete(conn: sqlite3.Connection, db: Database, bead_ids: list[str]) -> None:
    for table, column in (("labels", "issue_id"), ("comments", "issue_id"), ("dependencies", "issue_id"),
                          ("dependencies", "depends_on_id"), ("issues", "id")):
        conn.executemany(f"DELETE FROM {table} WHERE {column} = ?", [(b,) for b in bead_ids])
    db.touch("issues")


def digest(status: MoleculeStatus, summary: str) -> str:
    """The digest's text: the summary, then each step's outcome (pure)."""
    lines = [summary.strip() or "(no summary)", "", "Steps:"]
    for s in status.steps:
        outcome = s.outcome if s.marker is Marker.DONE else f"not done ({s.marker.value})"
        lines.append(f"- {s.step}: {s.title}: {outcome}")
    return "\n".join(lines)


def squash(town: Town, actor: Address, root: str, summary: str = "") -> beads.Bead:
    """Close the molecule into one digest bead (the root, closed, its notes the summary and
    each step's outcome); the step beads are removed, so one bead remains."""
    summary = validate.body(summary, "summary")
    with town.db.write() as conn:
        _, rows = _may_manage(conn, actor, root)
        text = digest(_status(conn, root), summary)
        stamp, ts = timeutil.now()
        conn.execute("UPDATE issues SET notes = ?, updated_at = ?, updated_ts = ? WHERE id = ?",
                     (text, stamp, ts, root))
        _delete(conn, town.db, [r["id"] for r in rows])
        beads.close_in_txn(conn, town.db, root, "squashed: " + (summary.splitlines()[0] if summary else "done"),
                           str(actor))
        return beads.fetch(conn, root)


def burn(town: Town, actor: Address, root: str, force: bool = False) -> Removed:
    """Remove a molecule with no record; refused once a step is done unless `force`."""
    with town.db.write() as conn:
        _, rows = _may_manage(conn, actor, root)
        done = [r["step"] for r in rows if r["status"] == "closed"]
        if done and not force:
            raise Conflict(f"molecule {root} has done steps ({', '.join(done)}); mol_squash keeps a record of "
                           "them, or burn with force=true discards them")
        removed = [r["id"] for r in rows] + [root]
        _delete(conn, town.db, removed)
        return Removed(root=root, beads=removed)
