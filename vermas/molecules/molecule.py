"""Molecules: a cooked proto poured into the store as beads, walked step by step.

A molecule is a root bead (issue_type `molecule`, label `formula:<name>`) and one child bead
per step (`<root>.N`, a parent-child dependency on the root, label `step:<id>`), with each
step's `needs` as `blocks` dependencies. These are ordinary bd-format beads, so vermas's
export writes them and bd reads them. Every verb is one write transaction: a molecule is
poured whole or not at all, and a step is closed once (compare-and-set under BEGIN IMMEDIATE).

A wisp is the same shape poured ephemeral: ids `<prefix>-wisp-<n>` (sequential, so a deleted
wisp's id is never handed out again), every bead `ephemeral`,
its root in the `wisps` table, and none of it exported (its progress is kept in the store, not
in one JSONL row per step). It leaves nothing behind: squash writes one permanent digest bead
and deletes the wisp, burn deletes it, and the deacon sweeps a closed wisp after
`[patrol] wisp_max_age` (`sweep_wisps`), so a walker that forgets to report leaks nothing.
"""

from __future__ import annotations

import sqlite3
import time
from contextlib import nullcontext
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel

from vermas import beads, faults, ids, permissions, timeutil, validate
from vermas.addresses import Address, parse_address
from vermas.beads import hooked_id
from vermas.errors import Conflict, InvalidInput, NotFound
from vermas.molecules import formula
from vermas.molecules.formula import Proto
from vermas.permissions import Action
from vermas.store import Database
from vermas.town import Town

MOLECULE_TYPE = "molecule"
STEP_LABEL = formula.STEP_LABEL
FORMULA_LABEL = formula.FORMULA_LABEL
DIGEST_LABEL = "digest"  # a squashed wisp's permanent record
WISP_INFIX = "wisp"  # a wisp's ids: <prefix>-wisp-<n>, as bd names its wisps
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
    wisp: bool = False
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


def places(town: Town, rig: str | None) -> tuple[Path, Path | None]:
    """Where formulas are looked for: the town root and the rig's canonical clone (looked at
    first); `rig` must be a rig of the town when given."""
    town.require_rig(rig)
    clone = town.layout.canonical_clone(rig) if rig and rig in town.config.rigs else None
    return town.root, clone


def cook_named(town: Town, name: str, variables: dict[str, str], rig: str | None) -> Proto:
    """The formula `name`, as found for `rig`, cooked with `variables` (nothing written)."""
    return formula.cook(formula.load(name, *places(town, rig)), variables)


def pour(town: Town, actor: Address, proto: Proto, hook: str | None = None, rig: str | None = None,
         wisp: bool = False) -> MoleculeStatus:
    """Write the root and one bead per step in ONE transaction; `hook` puts the root on that
    agent's hook (the walker); `wisp`: ephemeral (see the module doc). Nothing is written if
    any part fails."""
    permissions.require(actor, Action.MOL_POUR)
    if hook is not None:
        hook = str(parse_address(hook))
    town.require_rig(rig)
    prefix = town.prefix_for_rig(rig or actor.rig)
    with town.db.write() as conn:
        if hook is not None and (held := hooked_id(conn, hook)) is not None:
            raise Conflict(f"{hook}'s hook is occupied by {held}; one hooked bead per agent")
        root = pour_in_txn(conn, town.db, actor, proto, prefix, hook, wisp)
        return _status(conn, root)


def pour_in_txn(conn: sqlite3.Connection, db: Database, actor: Address, proto: Proto, prefix: str,
                hook: str | None = None, wisp: bool = False) -> str:
    """The pour inside the caller's write transaction (a sling pours and spawns in one); the root."""
    title = validate.title(formula.root_title(proto))
    with db.unexported("issues") if wisp else nullcontext():  # a wisp never reaches the JSONL
        root = ids.new_sequential_id(conn, f"{prefix}-{WISP_INFIX}") if wisp \
            else ids.new_bead_id(conn, prefix, f"{proto.formula}\x00{actor}")
        beads.insert(conn, db, bead_id=root, title=title, actor=str(actor), description=_root_text(proto),
                     issue_type=MOLECULE_TYPE, status="hooked" if hook else "open", assignee=hook,
                     labels=[FORMULA_LABEL + proto.formula], acceptance_criteria=root_acceptance(proto))
        _pour_steps(conn, db, actor, proto, root)
        if wisp:
            conn.execute("UPDATE issues SET ephemeral = 1 WHERE id = ? OR id GLOB ?", (root, root + ".*"))
            conn.execute("INSERT INTO wisps(root, created_ts) VALUES (?, ?)", (root, time.time()))
    return root


def root_acceptance(proto: Proto) -> str:
    """The root's acceptance criteria: each step's, so the inspector's Designer, which reads the
    bead it verifies (the root, at merge), receives them as the bead's criteria (pure)."""
    return "\n".join(f"- {s.id} ({s.title}): {s.acceptance}" for s in proto.steps if s.acceptance.strip())


def _pour_steps(conn: sqlite3.Connection, db: Database, actor: Address, proto: Proto, root: str) -> None:
    step_ids: dict[str, str] = {}
    for n, step in enumerate(proto.steps, 1):
        bead_id = f"{root}.{n}"
        step_ids[step.id] = bead_id
        beads.insert(conn, db, bead_id=bead_id, title=step.title[:200], actor=str(actor),
                     description=step.description, priority=step.priority,
                     labels=sorted({STEP_LABEL + step.id, *step.labels}), acceptance_criteria=step.acceptance)
        beads.add_dependency(conn, db, bead_id, root, "parent-child", str(actor))
    faults.checkpoint(POUR_KILL_POINT)
    for step in proto.steps:
        for need in step.needs:
            beads.add_dependency(conn, db, step_ids[step.id], step_ids[need], "blocks", str(actor))


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
    name = next((lb[len(FORMULA_LABEL):] for lb in labels if lb.startswith(FORMULA_LABEL)), "")
    current = next((s for s in steps if s.marker is Marker.CURRENT), None)
    holder = row["assignee"] if row["status"] == "hooked" else None
    brief = [s.model_copy(update={"description": "", "acceptance": ""}) for s in steps]
    return MoleculeStatus(root=root, formula=name, wisp=is_wisp(conn, root), holder=holder, steps=brief,
                          current=current)


def is_wisp(conn: sqlite3.Connection, root: str) -> bool:
    return conn.execute("SELECT 1 FROM wisps WHERE root = ?", (root,)).fetchone() is not None


BOXES = {Marker.DONE: "[x]", Marker.CURRENT: "[>]", Marker.READY: "[ ]", Marker.BLOCKED: "[-]"}


def checklist(state: MoleculeStatus) -> list[str]:
    """The checklist as markdown lines (pure): one per step with its marker, what a blocked step
    waits for, and a done step's outcome; then the current step in full, acceptance included."""
    lines = []
    for s in state.steps:
        tail = ""
        if s.marker is Marker.DONE and s.outcome:
            tail = f": {s.outcome.splitlines()[0][:120]}"
        elif s.marker is Marker.BLOCKED:
            tail = f" (needs {', '.join(s.needs)})"
        lines.append(f"- {BOXES[s.marker]} {s.marker.value} `{s.step}` {s.title}{tail}")
    cur = state.current
    if cur is not None:
        lines += ["", f"Current step `{cur.step}` ({cur.bead_id}): {cur.title}"]
        if cur.description:
            lines += ["", cur.description]
        if cur.acceptance:
            lines += ["", f"Acceptance: {cur.acceptance}"]
        lines += ["", f"When it is done: mol_step_done(step_id='{cur.step}', summary=...)."]
    elif state.steps:
        lines += ["", "Every step is done."]
    return lines


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


def progress(conn: sqlite3.Connection, bead_id: str) -> str | None:
    """A hooked bead's walk in a few words for status views: `2/3 steps, at test` (None: the
    bead is not a molecule root). Markers are computed as the checklist does."""
    row = conn.execute("SELECT issue_type FROM issues WHERE id = ?", (bead_id,)).fetchone()
    if row is None or row[0] != MOLECULE_TYPE:
        return None
    state = _status(conn, bead_id)
    done = sum(1 for s in state.steps if s.marker is Marker.DONE)
    at = f", at {state.current.step}" if state.current is not None else ""
    return f"{done}/{len(state.steps)} steps{at}"


def open_steps(conn: sqlite3.Connection, root: str) -> list[str]:
    """The formula ids of a molecule's steps not done yet, in order (none: not a molecule)."""
    return [r["step"] for r in _step_rows(conn, root) if r["status"] != "closed"]


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
        after = _status(conn, root_id)
        if not after.wisp:  # a wisp's rows are never exported: its progress leaves the JSONL as it is
            town.db.touch("issues")
        if after.wisp and all(s.marker is Marker.DONE for s in after.steps):  # the sweep's clock starts
            conn.execute("UPDATE wisps SET closed_ts = ? WHERE root = ?", (ts, root_id))
        return StepDone(next=after.current, molecule=after)


# --- squash and burn -------------------------------------------------------------------------


def _may_manage(conn: sqlite3.Connection, actor: Address, root: str) -> tuple[sqlite3.Row, list[sqlite3.Row], bool]:
    """The root row, its step rows, and whether it is a wisp; a closed molecule is refused (its
    record is final) unless it is a wisp, which is always removable."""
    validate.bead_id(root, "root")
    row = _root_row(conn, root)
    wisp = is_wisp(conn, root)
    if row["status"] == "closed" and not wisp:
        raise Conflict(f"molecule {root} is closed already (at {row['closed_at']}); its record is kept")
    permissions.require(actor, Action.MOL_MANAGE, permissions.bead_target(row))
    return row, _step_rows(conn, root), wisp


def _delete(conn: sqlite3.Connection, db: Database, bead_ids: list[str], wisp: bool = False) -> None:
    """Every row of these beads; a wisp's deletion leaves the export as it is."""
    for table, column in (("labels", "issue_id"), ("comments", "issue_id"), ("dependencies", "issue_id"),
                          ("dependencies", "depends_on_id"), ("hook_log", "bead_id"), ("wisps", "root"),
                          ("issues", "id")):
        conn.executemany(f"DELETE FROM {table} WHERE {column} = ?", [(b,) for b in bead_ids])
    if not wisp:
        db.touch("issues")


def digest(status: MoleculeStatus, summary: str) -> str:
    """The digest's text: the summary, then each step's outcome (pure)."""
    lines = [summary.strip() or "(no summary)", "", "Steps:"]
    for s in status.steps:
        outcome = s.outcome if s.marker is Marker.DONE else f"not done ({s.marker.value})"
        lines.append(f"- {s.step}: {s.title}: {outcome}")
    return "\n".join(lines)


def _reason(summary: str) -> str:
    return "squashed: " + (summary.splitlines()[0] if summary.strip() else "done")


def squash(town: Town, actor: Address, root: str, summary: str = "") -> beads.Bead:
    """Close the molecule into one digest bead carrying the summary and each step's outcome; the
    step beads are removed, so one bead remains. A poured molecule's root becomes the digest; a
    wisp gets a new permanent digest bead (exported) and is deleted whole."""
    summary = validate.body(summary, "summary")
    with town.db.write() as conn:
        row, rows, wisp = _may_manage(conn, actor, root)
        state = _status(conn, root)
        text = digest(state, summary)
        stamp, ts = timeutil.now()
        if wisp:
            target = ids.new_bead_id(conn, ids.prefix_of(root).removesuffix(f"-{WISP_INFIX}"), f"digest\x00{root}")
            beads.insert(conn, town.db, bead_id=target, title=row["title"], actor=str(actor),
                         description=row["description"], issue_type=MOLECULE_TYPE,
                         labels=[FORMULA_LABEL + state.formula, DIGEST_LABEL])
            _delete(conn, town.db, [r["id"] for r in rows] + [root], wisp=True)
        else:
            target = root
            _delete(conn, town.db, [r["id"] for r in rows])
        conn.execute("UPDATE issues SET notes = ?, updated_at = ?, updated_ts = ? WHERE id = ?",
                     (text, stamp, ts, target))
        beads.close_in_txn(conn, town.db, target, _reason(summary), str(actor))
        return beads.fetch(conn, target)


def burn(town: Town, actor: Address, root: str, force: bool = False) -> Removed:
    """Remove a molecule with no record: always a wisp; a poured molecule is refused once a step
    is done unless `force` (mol_squash keeps the record)."""
    with town.db.write() as conn:
        _, rows, wisp = _may_manage(conn, actor, root)
        done = [r["step"] for r in rows if r["status"] == "closed"]
        if done and not force and not wisp:
            raise Conflict(f"molecule {root} has done steps ({', '.join(done)}); mol_squash keeps a record of "
                           "them, or burn with force=true discards them")
        removed = [r["id"] for r in rows] + [root]
        _delete(conn, town.db, removed, wisp=wisp)
        return Removed(root=root, beads=removed)


# --- the wisp sweep ----------------------------------------------------------------------------


def expired_wisps(closed: dict[str, float | None], max_age_s: float, now: float) -> list[str]:
    """The wisps to remove (pure): closed (every step done, or the root closed) more than
    `max_age_s` ago. An open wisp is its walker's, however old."""
    return sorted(root for root, at in closed.items() if at is not None and now - at > max_age_s)


def sweep_wisps(town: Town, max_age_s: float, now: float | None = None) -> list[str]:
    """Delete every wisp closed more than `max_age_s` ago, whole, in one transaction; the roots.
    A wisp row whose root is gone (deleted by hand) goes too. The deacon runs this each round."""
    now = time.time() if now is None else now
    with town.db.read() as conn:  # each patrol round: a read, and a write only when there is work
        if not _sweepable(_wisps_seen(conn), max_age_s, now):
            return []
    with town.db.write() as conn:
        seen = _wisps_seen(conn)
        conn.executemany("DELETE FROM wisps WHERE root = ?", [(r[0],) for r in seen if r[1]])
        gone = expired_wisps({r[0]: r[2] for r in seen if not r[1]}, max_age_s, now)
        for root in gone:
            _delete(conn, town.db, [r["id"] for r in _step_rows(conn, root)] + [root], wisp=True)
        return gone


def _wisps_seen(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    """(root, root row gone, closed at) of every wisp: closed when every step was done, or at the
    root's last update when the root itself was closed (merged)."""
    return conn.execute(
        "SELECT w.root, i.id IS NULL, CASE WHEN i.status = 'closed' THEN COALESCE(w.closed_ts, i.updated_ts) "
        "ELSE w.closed_ts END FROM wisps w LEFT JOIN issues i ON i.id = w.root").fetchall()


def _sweepable(seen: list[sqlite3.Row], max_age_s: float, now: float) -> bool:
    return any(r[1] for r in seen) or bool(expired_wisps({r[0]: r[2] for r in seen if not r[1]}, max_age_s, now))
