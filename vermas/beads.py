"""Beads: bd-compatible work items, their dependencies, and bd 1.0's ready rule."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from pydantic import BaseModel, Field

from vermas import ids, permissions, timeutil, validate
from vermas.addresses import Address, parse_address
from vermas.errors import Conflict, InvalidInput, NotFound
from vermas.inspector.records import latest_report_summary
from vermas.permissions import Action
from vermas.store import Database
from vermas.town import Town
from vermas.twins import twin

# bd 1.0 excludes these system types; vermas adds convoy (a tracking bead, never work).
READY_EXCLUDED_TYPES = ("message", "merge-request", "gate", "molecule", "agent", "rig", "convoy")
MAX_READY = 10_000
MAX_LIST = 10_000


class Dependency(BaseModel):
    issue_id: str
    depends_on_id: str
    type: str
    created_at: str
    created_by: str | None = None


class Comment(BaseModel):
    id: int | str
    issue_id: str
    author: str | None = None
    text: str
    created_at: str


class BeadSummary(BaseModel):
    """What lists return: enough to choose, cheap in context tokens."""

    id: str
    title: str
    status: str
    priority: int
    issue_type: str
    assignee: str | None = None


class Bead(BeadSummary):
    description: str = ""
    design: str = ""
    acceptance_criteria: str = ""
    notes: str = ""
    owner: str | None = None
    labels: list[str] = Field(default_factory=list)
    created_at: str
    created_by: str | None = None
    updated_at: str
    started_at: str | None = None
    closed_at: str | None = None
    close_reason: str | None = None
    external_ref: str | None = None
    ephemeral: bool = False


class MergeSummary(BaseModel):
    """A merge request of this bead as bead_show shows it: where it stands and its latest
    recorded step (`mq_show` gives every step with its evidence)."""

    id: str
    state: str
    commit: str | None = None
    merged_sha: str | None = None
    last: str = ""  # "<at> <state>: <reason>" of the latest event


class BeadDetail(Bead):
    dependencies: list[Dependency] = Field(default_factory=list)
    dependents: list[Dependency] = Field(default_factory=list)
    comments: list[Comment] = Field(default_factory=list)
    verification: dict[str, Any] | None = None  # the latest VerMAS report, summarised
    merge_requests: list[MergeSummary] = Field(default_factory=list)


BEAD_COLUMNS = (
    "id, title, description, design, acceptance_criteria, notes, status, priority, issue_type, "
    "assignee, owner, created_at, created_by, updated_at, started_at, closed_at, close_reason, "
    "external_ref, ephemeral"
)


def _bead(conn: sqlite3.Connection, row: sqlite3.Row) -> Bead:
    data = dict(row)
    data["ephemeral"] = bool(data["ephemeral"])
    data["labels"] = [
        r[0] for r in conn.execute("SELECT label FROM labels WHERE issue_id = ? ORDER BY label", (row["id"],))
    ]
    return Bead(**data)


def fetch_row(conn: sqlite3.Connection, bead_id: str) -> sqlite3.Row:
    row: sqlite3.Row | None = conn.execute(f"SELECT {BEAD_COLUMNS} FROM issues WHERE id = ?", (bead_id,)).fetchone()
    if row is None:
        raise NotFound(f"no bead {bead_id!r} in this town; {twin('bead_list')} or {twin('bead_ready')} "
                       "show existing ids")
    return row


def fetch(conn: sqlite3.Connection, bead_id: str) -> Bead:
    return _bead(conn, fetch_row(conn, bead_id))


def insert(
    conn: sqlite3.Connection,
    db: Database,
    *,
    bead_id: str,
    title: str,
    actor: str,
    description: str = "",
    issue_type: str = "task",
    priority: int = 2,
    status: str = "open",
    assignee: str | None = None,
    labels: list[str] | None = None,
    acceptance_criteria: str = "",
) -> None:
    """Insert a new bead inside the caller's write transaction."""
    stamp, ts = timeutil.now()
    conn.execute(
        "INSERT INTO issues (id, title, description, acceptance_criteria, status, priority, "
        "issue_type, assignee, created_at, created_ts, created_by, updated_at, updated_ts, closed_at) "
        "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (
            bead_id, title, description, acceptance_criteria, status, priority, issue_type,
            assignee, stamp, ts, actor, stamp, ts, stamp if status == "closed" else None,
        ),
    )
    conn.executemany(
        "INSERT INTO labels(issue_id, label) VALUES (?, ?)", [(bead_id, lb) for lb in labels or []]
    )
    ids.bump_prefix(conn, ids.prefix_of(bead_id))
    db.touch("issues")


def add_dependency(
    conn: sqlite3.Connection, db: Database, issue_id: str, depends_on_id: str, dep_type: str, actor: str
) -> Dependency:
    stamp, _ = timeutil.now()
    conn.execute(
        "INSERT INTO dependencies(issue_id, depends_on_id, type, created_at, created_by) "
        "VALUES (?,?,?,?,?) ON CONFLICT(issue_id, depends_on_id) DO UPDATE SET type = excluded.type",
        (issue_id, depends_on_id, dep_type, stamp, actor),
    )
    touch_bead(conn, db, issue_id)
    return Dependency(
        issue_id=issue_id, depends_on_id=depends_on_id, type=dep_type, created_at=stamp, created_by=actor
    )


def touch_bead(conn: sqlite3.Connection, db: Database, bead_id: str) -> None:
    stamp, ts = timeutil.now()
    conn.execute("UPDATE issues SET updated_at = ?, updated_ts = ? WHERE id = ?", (stamp, ts, bead_id))
    db.touch("issues")


def create(
    town: Town,
    actor: Address,
    title: str,
    description: str = "",
    issue_type: str = "task",
    priority: int = 2,
    labels: list[str] | None = None,
    parent: str | None = None,
    rig: str | None = None,
    acceptance_criteria: str = "",
) -> Bead:
    title = validate.title(title)
    description = validate.body(description, "description")
    acceptance_criteria = validate.body(acceptance_criteria, "acceptance_criteria")
    validate.choice(issue_type, "issue_type", validate.CREATE_TYPES)
    validate.priority(priority)
    label_list = validate.labels(labels)
    if parent is not None:
        validate.bead_id(parent, "parent")
    town.require_rig(rig)
    prefix = town.prefix_for_rig(rig or actor.rig)
    with town.db.write() as conn:
        if parent is not None:
            fetch_row(conn, parent)
            bead_id = ids.new_child_id(conn, parent)
        else:
            bead_id = ids.new_bead_id(conn, prefix, f"{title}\x00{description}\x00{actor}")
        insert(
            conn, town.db, bead_id=bead_id, title=title, actor=str(actor), description=description,
            issue_type=issue_type, priority=priority, labels=label_list,
            acceptance_criteria=acceptance_criteria,
        )
        if parent is not None:
            add_dependency(conn, town.db, bead_id, parent, "parent-child", str(actor))
        return fetch(conn, bead_id)


def show(town: Town, bead_id: str) -> BeadDetail:
    validate.bead_id(bead_id)
    with town.db.read() as conn:
        bead = fetch(conn, bead_id)
        deps = [Dependency(**dict(r)) for r in conn.execute(
            "SELECT issue_id, depends_on_id, type, created_at, created_by FROM dependencies "
            "WHERE issue_id = ? ORDER BY depends_on_id", (bead_id,))]
        dependents = [Dependency(**dict(r)) for r in conn.execute(
            "SELECT issue_id, depends_on_id, type, created_at, created_by FROM dependencies "
            "WHERE depends_on_id = ? ORDER BY issue_id", (bead_id,))]
        comments = [Comment(**dict(r)) for r in conn.execute(
            "SELECT id, issue_id, author, text, created_at FROM comments WHERE issue_id = ? "
            "ORDER BY created_at, rowid", (bead_id,))]
        summary = latest_report_summary(conn, bead_id)
        merges = _merge_summaries(conn, bead_id)
    return BeadDetail(**bead.model_dump(), dependencies=deps, dependents=dependents, comments=comments,
                      verification=summary.model_dump(mode="json") if summary else None, merge_requests=merges)


def _merge_summaries(conn: sqlite3.Connection, bead_id: str) -> list[MergeSummary]:
    """The bead's merge requests, oldest first, each with its latest event (read here with SQL:
    the refinery package builds on beads, not the other way round)."""
    out = []
    for r in conn.execute("SELECT id, state, commit_sha, merged_sha FROM merge_requests WHERE bead_id = ? "
                          "ORDER BY created_at, id", (bead_id,)).fetchall():
        event = conn.execute("SELECT at, to_state, evidence FROM mr_events WHERE mr_id = ? ORDER BY seq DESC "
                             "LIMIT 1", (r["id"],)).fetchone()
        last = ""
        if event is not None:
            evidence = json.loads(event["evidence"] or "{}")
            reason = evidence.get("reason") if isinstance(evidence, dict) else None
            last = f"{event['at']} {event['to_state']}" + (f": {str(reason)[:200]}" if reason else "")
        out.append(MergeSummary(id=r["id"], state=r["state"], commit=r["commit_sha"], merged_sha=r["merged_sha"],
                                last=last))
    return out


def list_beads(
    town: Town,
    status: str | None = None,
    issue_type: str | None = None,
    assignee: str | None = None,
    label: str | None = None,
    limit: int = 50,
) -> list[BeadSummary]:
    """Newest first, so an agent sees what just happened without paging."""
    validate.limit(limit, MAX_LIST)
    where, args = [], []
    if status is not None:
        where.append("status = ?")
        args.append(validate.choice(status, "status", validate.STATUSES))
    if issue_type is not None:
        where.append("issue_type = ?")
        args.append(validate.choice(issue_type, "issue_type", validate.ALL_TYPES))
    if assignee is not None:
        where.append("assignee = ?")
        args.append(assignee)
    if label is not None:
        where.append("id IN (SELECT issue_id FROM labels WHERE label = ?)")
        args.append(label)
    sql = "SELECT id, title, status, priority, issue_type, assignee FROM issues"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY created_ts DESC, id LIMIT ?"
    with town.db.read() as conn:
        return [BeadSummary(**dict(r)) for r in conn.execute(sql, (*args, limit))]


def hooked_id(conn: sqlite3.Connection, address: str) -> str | None:
    """The bead on `address`'s hook: status `hooked`, assignee that address (None: empty)."""
    row = conn.execute(
        "SELECT id FROM issues WHERE assignee = ? AND status = 'hooked' ORDER BY updated_ts LIMIT 1",
        (address,),
    ).fetchone()
    return row[0] if row else None


# A molecule's steps are its walker's checklist, not work for anyone else to take: never ready.
CANDIDATES_SQL = f"""
SELECT id, title, status, priority, issue_type, assignee FROM issues
 WHERE status = 'open' AND ephemeral = 0 AND issue_type NOT IN {READY_EXCLUDED_TYPES!r}
   AND NOT EXISTS (SELECT 1 FROM dependencies d JOIN issues p ON p.id = d.depends_on_id
                    WHERE d.issue_id = issues.id AND d.type = 'parent-child' AND p.issue_type = 'molecule')
 ORDER BY priority, created_ts, id
"""
DEPS_SQL = "SELECT type, depends_on_id FROM dependencies WHERE issue_id = ?"
STATUS_SQL = "SELECT status FROM issues WHERE id = ?"


def ready(town: Town, limit: int = 20) -> list[BeadSummary]:
    """bd 1.0's ready: open, not ephemeral nor a system type, not blocked, and (vermas) not a
    molecule's step.

    Blocked means a `blocks`/`conditional-blocks` dependency on a bead that is not closed,
    or a parent (via `parent-child`) that is blocked, transitively. A closed blocker never
    blocks (the seed got this wrong). Candidates are walked in ready order and checked one
    by one, so the cost follows `limit`, not the size of the town (computing every blocked
    bead first took ~90 ms at 100k beads).
    """
    validate.limit(limit, MAX_READY)
    out: list[BeadSummary] = []
    with town.db.read() as conn:
        memo: dict[str, bool] = {}
        for row in conn.execute(CANDIDATES_SQL):
            if not _blocked(conn, row[0], memo, 0):
                out.append(BeadSummary(id=row[0], title=row[1], status=row[2], priority=row[3],
                                       issue_type=row[4], assignee=row[5]))
                if len(out) >= limit:
                    break
    return out


def _blocked(conn: sqlite3.Connection, bead_id: str, memo: dict[str, bool], depth: int) -> bool:
    """Is this bead blocked, by its own blockers or a blocked ancestor? (memoised per call)"""
    if bead_id in memo:
        return memo[bead_id]
    memo[bead_id] = False  # a parent-child cycle in imported data must not recurse forever
    blocked = False
    for dep_type, target in conn.execute(DEPS_SQL, (bead_id,)).fetchall():
        if dep_type in validate.BLOCKING_DEP_TYPES:
            status = conn.execute(STATUS_SQL, (target,)).fetchone()
            blocked = status is not None and status[0] != "closed"
        elif dep_type == "parent-child" and depth < 64:
            blocked = _blocked(conn, target, memo, depth + 1)
        if blocked:
            break
    memo[bead_id] = blocked
    return blocked


def update(
    town: Town,
    actor: Address,
    bead_id: str,
    *,
    status: str | None = None,
    priority: int | None = None,
    assignee: str | None = None,
    title: str | None = None,
    description: str | None = None,
    notes: str | None = None,
    acceptance_criteria: str | None = None,
    comment: str | None = None,
) -> Bead:
    validate.bead_id(bead_id)
    changes: dict[str, Any] = {}
    if status is not None:
        validate.choice(status, "status", validate.STATUSES)
        if status == "hooked":
            raise InvalidInput("status 'hooked' is set only by sling (it checks the agent's hook)")
        changes["status"] = status
    if priority is not None:
        changes["priority"] = validate.priority(priority)
    if assignee is not None:
        if assignee != "":
            parse_address(assignee)
        changes["assignee"] = assignee or None
    if title is not None:
        changes["title"] = validate.title(title)
    for field, value in (("description", description), ("notes", notes),
                         ("acceptance_criteria", acceptance_criteria)):
        if value is not None:
            changes[field] = validate.body(value, field)
    if comment is not None and not validate.body(comment, "comment").strip():
        raise InvalidInput("comment must be non-empty text")
    if not changes and comment is None:
        raise InvalidInput(
            "nothing to update: give at least one of status, priority, assignee, title, "
            "description, notes, acceptance_criteria, comment"
        )
    with town.db.write() as conn:
        row = fetch_row(conn, bead_id)
        _may_update(actor, row, changes)
        if row["status"] == "hooked" and ("status" in changes or "assignee" in changes):
            raise Conflict(
                f"{bead_id} is hooked by {row['assignee']}; its status and assignee change only "
                f"through {twin('unsling')} or {twin('polecat_done')}"
            )
        if changes.get("status") == "closed":
            _may_close(actor, row)
        stamp, ts = timeutil.now()
        if "status" in changes:
            new = changes["status"]
            changes["closed_at"] = (row["closed_at"] or stamp) if new == "closed" else None
            if new != "closed":
                changes["close_reason"] = None
            if new == "in_progress" and row["started_at"] is None:
                changes["started_at"] = stamp
        sets = "".join(f"{k} = ?, " for k in changes)  # a comment alone still bumps updated_at,
        conn.execute(  # so a bd import of the export does not skip it as unchanged
            f"UPDATE issues SET {sets}updated_at = ?, updated_ts = ? WHERE id = ?",
            (*changes.values(), stamp, ts, bead_id),
        )
        if comment is not None:
            add_comment(conn, bead_id, str(actor), comment, stamp)
        town.db.touch("issues")
        if changes.get("status") == "closed":
            land_convoys_tracking(conn, town.db, bead_id, str(actor))
        return fetch(conn, bead_id)


def add_comment(conn: sqlite3.Connection, bead_id: str, author: str, text: str, stamp: str) -> None:
    row = conn.execute(
        "SELECT MAX(CAST(id AS INTEGER)) FROM comments WHERE issue_id = ?", (bead_id,)
    ).fetchone()
    conn.execute(
        "INSERT INTO comments(issue_id, id, author, text, created_at) VALUES (?,?,?,?,?)",
        (bead_id, (row[0] or 0) + 1, author, text, stamp),
    )


def close_in_txn(
    conn: sqlite3.Connection, db: Database, bead_id: str, reason: str, actor: str
) -> None:
    stamp, ts = timeutil.now()
    conn.execute(
        "UPDATE issues SET status = 'closed', closed_at = COALESCE(closed_at, ?), close_reason = ?, "
        "updated_at = ?, updated_ts = ? WHERE id = ?",
        (stamp, reason or None, stamp, ts, bead_id),
    )
    db.touch("issues")
    land_convoys_tracking(conn, db, bead_id, actor)


# --- Convoy landing: closing a bead lands the convoys it completes (same transaction) -----


def tracked(conn: sqlite3.Connection, convoy_id: str) -> list[sqlite3.Row]:
    """(depends_on_id, status) of each bead a convoy tracks, by id."""
    return conn.execute(
        "SELECT d.depends_on_id, i.status FROM dependencies d LEFT JOIN issues i ON i.id = d.depends_on_id "
        "WHERE d.issue_id = ? AND d.type = 'tracks' ORDER BY d.depends_on_id",
        (convoy_id,),
    ).fetchall()


def is_landed(tracked_rows: list[sqlite3.Row]) -> bool:
    """A convoy lands when it tracks at least one bead and every tracked bead is closed (pure)."""
    return bool(tracked_rows) and all(r[1] == "closed" for r in tracked_rows)


def land_if_done(conn: sqlite3.Connection, db: Database, convoy_id: str, actor: str) -> None:
    row = conn.execute("SELECT status FROM issues WHERE id = ?", (convoy_id,)).fetchone()
    if row is not None and row[0] != "closed" and is_landed(tracked(conn, convoy_id)):
        close_in_txn(conn, db, convoy_id, "landed: all tracked beads closed", actor)


def land_convoys_tracking(conn: sqlite3.Connection, db: Database, bead_id: str, actor: str) -> None:
    """Called inside the transaction that closes bead_id: land convoys it completes."""
    for (convoy_id,) in conn.execute(
        "SELECT d.issue_id FROM dependencies d JOIN issues c ON c.id = d.issue_id "
        "WHERE d.depends_on_id = ? AND d.type = 'tracks' AND c.issue_type = 'convoy' "
        "AND c.status != 'closed'",
        (bead_id,),
    ).fetchall():
        land_if_done(conn, db, convoy_id, actor)


def _may_update(actor: Address, row: sqlite3.Row, changes: dict[str, Any]) -> None:
    """Permission for an update (vermas.permissions): any field or comment is an edit;
    setting or clearing the assignee is an assignment as well."""
    target = permissions.bead_target(row)
    permissions.require(actor, Action.BEAD_EDIT, target)
    if "assignee" in changes:
        permissions.require(actor, Action.BEAD_ASSIGN, target)


def _may_close(actor: Address, row: sqlite3.Row) -> None:
    """The one close rule, for bead_close and bead_update(status=closed) alike: the
    permission, then the state (closing twice is a Conflict)."""
    permissions.require(actor, Action.BEAD_CLOSE, permissions.bead_target(row))
    if row["status"] == "closed":
        raise Conflict(f"{row['id']} is already closed (at {row['closed_at']}); bead_update(status='open') "
                       "reopens it")


def close(town: Town, actor: Address, bead_id: str, reason: str = "") -> Bead:
    validate.bead_id(bead_id)
    reason = validate.body(reason, "reason")
    with town.db.write() as conn:
        row = fetch_row(conn, bead_id)
        _may_close(actor, row)
        close_in_txn(conn, town.db, bead_id, reason, str(actor))
        return fetch(conn, bead_id)


def dep_add(
    town: Town, actor: Address, bead_id: str, depends_on_id: str, dep_type: str = "blocks"
) -> Dependency:
    """`bead_id` depends on (is blocked by, for blocking types) `depends_on_id`."""
    validate.bead_id(bead_id)
    validate.bead_id(depends_on_id, "depends_on_id")
    validate.choice(dep_type, "dep_type", validate.DEP_TYPES)
    if bead_id == depends_on_id:
        raise InvalidInput("a bead cannot depend on itself")
    with town.db.write() as conn:
        # A dependency changes the dependent bead (a blocker hides it from bead_ready, a parent
        # re-files it), so it is an edit of `bead_id` under the edit rule; the blocker is only read.
        permissions.require(actor, Action.BEAD_EDIT, permissions.bead_target(fetch_row(conn, bead_id)))
        fetch_row(conn, depends_on_id)
        if dep_type in validate.BLOCKING_DEP_TYPES + ("parent-child",) and _reaches(
            conn, depends_on_id, bead_id
        ):
            raise Conflict(
                f"adding {bead_id} -> {depends_on_id} ({dep_type}) would make a cycle: "
                f"{depends_on_id} already depends on {bead_id}"
            )
        return add_dependency(conn, town.db, bead_id, depends_on_id, dep_type, str(actor))


def _reaches(conn: sqlite3.Connection, start: str, goal: str) -> bool:
    """Does `start` already depend on `goal` through blocking or parent links?"""
    row = conn.execute(
        f"""WITH RECURSIVE reach(id) AS (
              SELECT ? UNION
              SELECT d.depends_on_id FROM dependencies d JOIN reach r ON d.issue_id = r.id
               WHERE d.type IN {validate.BLOCKING_DEP_TYPES + ('parent-child',)!r})
            SELECT 1 FROM reach WHERE id = ? LIMIT 1""",
        (start, goal),
    ).fetchone()
    return row is not None
