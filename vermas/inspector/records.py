"""Where the inspector keeps its work in the town store.

- `verification_specs`: the Designer's Specification per bead, with a hash of the bead text
  it was made from (so an edited bead is re-specified). Its criteria are also written into
  the bead's own `acceptance_criteria` field, which bd and the JSONL export understand.
- `verification_plans`: the Strategist's tests per bead, with the hash of the spec they were
  planned for (a new spec makes the old plan stale).
- `verification_outcomes`: the cache: one decided criterion per (bead, commit, criterion,
  fingerprint of the criterion and its tests, level). Re-verifying an unchanged commit reuses
  these, so it runs no test and calls no model.
- `verification_reports`: every VerificationReport, newest last.

Tables are created lazily (CREATE TABLE IF NOT EXISTS) the first time the inspector writes,
so the core schema in store.py stays the inspector's business only where it reads beads.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import weakref
from typing import Any

from pydantic import BaseModel, Field

from vermas import timeutil
from vermas.inspector.models import (
    AcceptanceCriterion,
    CriterionOutcome,
    Level,
    ModelCall,
    Specification,
    Stage,
    TestPlan,
    TestSpec,
    VerificationReport,
    VerificationSummary,
)
from vermas.store import Database

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS verification_specs (
        bead_id TEXT PRIMARY KEY,
        spec_json TEXT NOT NULL,
        spec_hash TEXT NOT NULL,
        source_hash TEXT NOT NULL,
        source_acceptance_criteria TEXT NOT NULL,
        rendered_acceptance_criteria TEXT NOT NULL,
        calls_json TEXT NOT NULL,
        created_by TEXT NOT NULL,
        created_at TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS verification_plans (
        bead_id TEXT PRIMARY KEY,
        spec_hash TEXT NOT NULL,
        plan_json TEXT NOT NULL,
        calls_json TEXT NOT NULL,
        created_by TEXT NOT NULL,
        created_at TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS verification_outcomes (
        bead_id TEXT NOT NULL,
        commit_sha TEXT NOT NULL,
        criterion_id TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        level TEXT NOT NULL,
        stage TEXT NOT NULL,
        outcome_json TEXT NOT NULL,
        created_at TEXT NOT NULL,
        PRIMARY KEY (bead_id, commit_sha, criterion_id, fingerprint, level))""",
    """CREATE TABLE IF NOT EXISTS verification_reports (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        bead_id TEXT NOT NULL,
        commit_sha TEXT NOT NULL,
        level TEXT NOT NULL,
        overall TEXT NOT NULL,
        report_json TEXT NOT NULL,
        created_at TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS verification_reports_bead ON verification_reports(bead_id, id)",
)
TABLES = ("verification_specs", "verification_plans", "verification_outcomes", "verification_reports")
_READY: weakref.WeakSet[Database] = weakref.WeakSet()


class SpecRecord(BaseModel):
    """What verify_spec returns: the stored Specification and how it came to be."""

    bead_id: str
    specification: Specification
    acceptance_criteria: str = Field(description="the text written to the bead's acceptance_criteria")
    reused: bool = Field(description="true if the stored spec was still current and no model was called")
    calls: list[ModelCall] = Field(default_factory=list)
    created_by: str
    created_at: str


class PlanRecord(BaseModel):
    """What verify_plan returns: the stored tests for a bead's current Specification."""

    bead_id: str
    tests: list[TestSpec]
    reused: bool
    calls: list[ModelCall] = Field(default_factory=list)
    created_by: str
    created_at: str


def digest(value: Any) -> str:
    data = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(data.encode()).hexdigest()[:32]


def source_hash(title: str, description: str, design: str) -> str:
    """What the spec was made from (acceptance_criteria is compared separately: we rewrite it)."""
    return digest([title, description, design])


def spec_hash(spec: Specification) -> str:
    return digest(spec.model_dump(mode="json"))


def fingerprint(criterion: AcceptanceCriterion, tests: list[TestSpec]) -> str:
    """A cached outcome is valid only for the same criterion checked by the same commands."""
    return digest([criterion.model_dump(mode="json"), [t.model_dump(mode="json") for t in tests]])


def ensure_schema(db: Database) -> None:
    """Create the inspector's tables once per Database object (idempotent across processes)."""
    if db in _READY:
        return
    with db.write() as conn:
        for statement in SCHEMA:
            conn.execute(statement)
    _READY.add(db)


def _has_tables(conn: sqlite3.Connection) -> bool:
    row = conn.execute(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN (?, ?, ?, ?)", TABLES
    ).fetchone()
    return bool(row[0] == len(TABLES))


# -- specs ------------------------------------------------------------------------------------


def load_spec_row(conn: sqlite3.Connection, bead_id: str) -> sqlite3.Row | None:
    if not _has_tables(conn):
        return None
    row: sqlite3.Row | None = conn.execute(
        "SELECT * FROM verification_specs WHERE bead_id = ?", (bead_id,)).fetchone()
    return row


def spec_record(row: sqlite3.Row, *, reused: bool, calls: list[ModelCall] | None = None) -> SpecRecord:
    stored_calls = [ModelCall.model_validate(c) for c in json.loads(row["calls_json"])]
    return SpecRecord(
        bead_id=row["bead_id"], specification=Specification.model_validate_json(row["spec_json"]),
        acceptance_criteria=row["rendered_acceptance_criteria"], reused=reused,
        calls=calls if calls is not None else stored_calls, created_by=row["created_by"],
        created_at=row["created_at"],
    )


def spec_is_current(row: sqlite3.Row, bead: sqlite3.Row) -> bool:
    """The stored spec still describes the bead: its text unchanged and its criteria ours."""
    return bool(
        row["source_hash"] == source_hash(bead["title"], bead["description"], bead["design"])
        and bead["acceptance_criteria"] == row["rendered_acceptance_criteria"]
    )


def store_spec(
    conn: sqlite3.Connection, db: Database, bead: sqlite3.Row, spec: Specification,
    calls: list[ModelCall], actor: str,
) -> None:
    """Save the spec and write its criteria into the bead (inside the caller's transaction)."""
    stamp, ts = timeutil.now()
    rendered = spec.render_acceptance_criteria()
    previous = load_spec_row(conn, bead["id"])
    # Keep what a human wrote before the Designer ever ran, not our own earlier rendering.
    source_ac = bead["acceptance_criteria"]
    if previous is not None and source_ac == previous["rendered_acceptance_criteria"]:
        source_ac = previous["source_acceptance_criteria"]
    conn.execute(
        "INSERT INTO verification_specs (bead_id, spec_json, spec_hash, source_hash, "
        "source_acceptance_criteria, rendered_acceptance_criteria, calls_json, created_by, created_at) "
        "VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT(bead_id) DO UPDATE SET spec_json = excluded.spec_json, "
        "spec_hash = excluded.spec_hash, source_hash = excluded.source_hash, "
        "source_acceptance_criteria = excluded.source_acceptance_criteria, "
        "rendered_acceptance_criteria = excluded.rendered_acceptance_criteria, "
        "calls_json = excluded.calls_json, created_by = excluded.created_by, created_at = excluded.created_at",
        (bead["id"], spec.model_dump_json(), spec_hash(spec),
         source_hash(bead["title"], bead["description"], bead["design"]), source_ac, rendered,
         json.dumps([c.model_dump(mode="json") for c in calls]), actor, stamp),
    )
    if bead["acceptance_criteria"] != rendered:
        conn.execute(
            "UPDATE issues SET acceptance_criteria = ?, updated_at = ?, updated_ts = ? WHERE id = ?",
            (rendered, stamp, ts, bead["id"]),
        )
        db.touch("issues")


def source_acceptance_criteria(conn: sqlite3.Connection, bead: sqlite3.Row) -> str:
    """The human's criteria for the Designer's prompt: never feed it its own earlier output."""
    row = load_spec_row(conn, bead["id"])
    if row is not None and bead["acceptance_criteria"] == row["rendered_acceptance_criteria"]:
        return str(row["source_acceptance_criteria"])
    return str(bead["acceptance_criteria"])


# -- plans ------------------------------------------------------------------------------------


def load_plan_row(conn: sqlite3.Connection, bead_id: str) -> sqlite3.Row | None:
    if not _has_tables(conn):
        return None
    row: sqlite3.Row | None = conn.execute(
        "SELECT * FROM verification_plans WHERE bead_id = ?", (bead_id,)).fetchone()
    return row


def plan_record(row: sqlite3.Row, *, reused: bool, calls: list[ModelCall] | None = None) -> PlanRecord:
    plan = TestPlan.model_validate_json(row["plan_json"])
    stored_calls = [ModelCall.model_validate(c) for c in json.loads(row["calls_json"])]
    return PlanRecord(bead_id=row["bead_id"], tests=plan.tests, reused=reused,
                      calls=calls if calls is not None else stored_calls,
                      created_by=row["created_by"], created_at=row["created_at"])


def store_plan(
    conn: sqlite3.Connection, bead_id: str, spec: Specification, plan: TestPlan,
    calls: list[ModelCall], actor: str,
) -> None:
    stamp, _ = timeutil.now()
    conn.execute(
        "INSERT INTO verification_plans (bead_id, spec_hash, plan_json, calls_json, created_by, created_at) "
        "VALUES (?,?,?,?,?,?) ON CONFLICT(bead_id) DO UPDATE SET spec_hash = excluded.spec_hash, "
        "plan_json = excluded.plan_json, calls_json = excluded.calls_json, "
        "created_by = excluded.created_by, created_at = excluded.created_at",
        (bead_id, spec_hash(spec), plan.model_dump_json(),
         json.dumps([c.model_dump(mode="json") for c in calls]), actor, stamp),
    )


# -- outcome cache ----------------------------------------------------------------------------


def cached_outcomes(
    conn: sqlite3.Connection, bead_id: str, commit: str, fingerprints: dict[str, str]
) -> list[tuple[str, Stage, Level, CriterionOutcome]]:
    """Every cached (criterion, stage, level, outcome) whose fingerprint still matches."""
    if not _has_tables(conn):
        return []
    out = []
    for row in conn.execute(
        "SELECT criterion_id, fingerprint, level, stage, outcome_json FROM verification_outcomes "
        "WHERE bead_id = ? AND commit_sha = ? ORDER BY created_at", (bead_id, commit),
    ):
        if fingerprints.get(row["criterion_id"]) == row["fingerprint"]:
            out.append((row["criterion_id"], row["stage"], row["level"],
                        CriterionOutcome.model_validate_json(row["outcome_json"])))
    return out


def store_outcome(
    conn: sqlite3.Connection, bead_id: str, commit: str, fp: str, level: Level, outcome: CriterionOutcome
) -> None:
    stamp, _ = timeutil.now()
    conn.execute(
        "INSERT OR REPLACE INTO verification_outcomes (bead_id, commit_sha, criterion_id, fingerprint, "
        "level, stage, outcome_json, created_at) VALUES (?,?,?,?,?,?,?,?)",
        (bead_id, commit, outcome.criterion_id, fp, level, outcome.stage,
         outcome.model_copy(update={"cached": False}).model_dump_json(), stamp),
    )


# -- reports ----------------------------------------------------------------------------------


def store_report(conn: sqlite3.Connection, report: VerificationReport) -> int:
    stamp, _ = timeutil.now()
    cur = conn.execute(
        "INSERT INTO verification_reports (bead_id, commit_sha, level, overall, report_json, created_at) "
        "VALUES (?,?,?,?,?,?)",
        (report.bead_id, report.commit, report.level, report.overall, report.model_dump_json(), stamp),
    )
    return int(cur.lastrowid or 0)


def latest_report(conn: sqlite3.Connection, bead_id: str) -> VerificationReport | None:
    """The newest verification report of a bead, or None (also when nothing was ever verified).

    For bead_show: safe on a store where the inspector never ran (its tables do not exist).
    """
    if not _has_tables(conn):
        return None
    row = conn.execute(
        "SELECT report_json FROM verification_reports WHERE bead_id = ? ORDER BY id DESC LIMIT 1",
        (bead_id,),
    ).fetchone()
    return VerificationReport.model_validate_json(row[0]) if row else None


def latest_report_summary(conn: sqlite3.Connection, bead_id: str) -> VerificationSummary | None:
    """The newest report in a few hundred bytes (outcome per criterion, no evidence): for bead_show."""
    report = latest_report(conn, bead_id)
    return report.summarize() if report is not None else None


def report_history(conn: sqlite3.Connection, bead_id: str, limit: int = 20) -> list[dict[str, Any]]:
    """Newest first: when, which commit, which level, which overall result."""
    if not _has_tables(conn):
        return []
    return [dict(r) for r in conn.execute(
        "SELECT id, commit_sha, level, overall, created_at FROM verification_reports WHERE bead_id = ? "
        "ORDER BY id DESC LIMIT ?", (bead_id, limit))]
