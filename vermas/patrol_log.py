"""What the patrols did and what stands: the `patrol_events` log and the `escalations` table.

Why a table of its own and not `agent_events`: agent events are evidence written by Claude
Code's hooks on every tool call, pruned to the newest few hundred per agent; patrol events are
the patrols' memory (nudges and restarts per bead, deacon restarts per agent, judgment beads
made), which decisions count and which must not be pruned away by a busy agent's tool calls.
Escalations get a row per dedup key so "one escalation per cause, never repeated while it
stands" is a primary key, and the mail's own `acked_at` says whether it was acknowledged.

Every write here is one short transaction; an escalation's mail and its standing row commit
together, so a crash never leaves mail without its row (which would send it again) or a row
without its mail (which would never send it).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from vermas import mail, protocol, timeutil
from vermas.patrol_types import StandingEscalation
from vermas.protocol import Escalation
from vermas.store import Database
from vermas.town import Town

log = logging.getLogger("vermas.patrol")
MAX_EVIDENCE_CHARS = 8000


@dataclass(frozen=True)
class PatrolEvent:
    """One recorded patrol action: what, to whom, why, on which evidence, and whether it worked."""

    seq: int
    at: float
    patrol: str  # "witness:<rig>" or "deacon"
    action: str  # snake_case of the action's type (restart_session, gupp_nudge, escalate, ...)
    agent: str | None
    bead: str | None
    key: str | None
    reason: str
    evidence: Mapping[str, Any] = field(default_factory=dict)
    ok: bool = True


def _evidence_text(evidence: Mapping[str, Any]) -> str:
    text = json.dumps(evidence, default=str, sort_keys=True)
    if len(text) <= MAX_EVIDENCE_CHARS:
        return text
    return json.dumps({"truncated": text[:MAX_EVIDENCE_CHARS]})


def insert(conn: sqlite3.Connection, patrol: str, action: str, reason: str, at: float, agent: str | None = None,
           bead: str | None = None, key: str | None = None, evidence: Mapping[str, Any] | None = None,
           ok: bool = True) -> PatrolEvent:
    cur = conn.execute(
        "INSERT INTO patrol_events(at, patrol, action, agent, bead, key, reason, evidence, ok) "
        "VALUES (?,?,?,?,?,?,?,?,?)",
        (at, patrol, action, agent, bead, key, reason, _evidence_text(evidence or {}), int(ok)))
    return PatrolEvent(int(cur.lastrowid or 0), at, patrol, action, agent, bead, key, reason, dict(evidence or {}), ok)


def record(town: Town, patrol: str, action: str, reason: str, at: float, agent: str | None = None,
           bead: str | None = None, key: str | None = None, evidence: Mapping[str, Any] | None = None,
           ok: bool = True) -> PatrolEvent:
    """Append one patrol event in its own transaction."""
    with town.db.write() as conn:
        return insert(conn, patrol, action, reason, at, agent, bead, key, evidence, ok)


def _row(r: sqlite3.Row) -> PatrolEvent:
    try:
        evidence = json.loads(r["evidence"] or "{}")
    except ValueError:
        evidence = {}
    return PatrolEvent(r["seq"], r["at"], r["patrol"], r["action"], r["agent"], r["bead"], r["key"], r["reason"],
                       evidence, bool(r["ok"]))


def events(town: Town, agent: str | None = None, action: str | None = None, after_seq: int = 0,
           limit: int = 200) -> list[PatrolEvent]:
    """Patrol events oldest first (the newest `limit` matching, or the first after `after_seq`)."""
    where, params = ["seq > ?"], [after_seq]
    for column, value in (("agent", agent), ("action", action)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)  # type: ignore[arg-type]
    order = "ASC" if after_seq else "DESC"
    with town.db.read() as conn:
        rows = [_row(r) for r in conn.execute(
            f"SELECT * FROM patrol_events WHERE {' AND '.join(where)} ORDER BY seq {order} LIMIT ?",
            (*params, limit))]
    return rows if after_seq else rows[::-1]


def times(conn: sqlite3.Connection, action: str, column: str, values: Iterable[str],
          ok_only: bool = True) -> dict[str, tuple[float, ...]]:
    """{value: times of `action` events whose `column` (agent or bead) is that value}, oldest first."""
    assert column in ("agent", "bead")
    out: dict[str, tuple[float, ...]] = {}
    for value in values:
        rows = conn.execute(f"SELECT at FROM patrol_events WHERE action = ? AND {column} = ?"
                            + (" AND ok = 1" if ok_only else "") + " ORDER BY at", (action, value)).fetchall()
        if rows:
            out[value] = tuple(float(r[0]) for r in rows)
    return out


def keys(conn: sqlite3.Connection, action: str) -> frozenset[str]:
    return frozenset(r[0] for r in conn.execute(
        "SELECT DISTINCT key FROM patrol_events WHERE action = ? AND key IS NOT NULL AND ok = 1", (action,)))


# ---- escalations ---------------------------------------------------------------------------


def standing(conn: sqlite3.Connection) -> dict[str, StandingEscalation]:
    """Every escalation not resolved, with its mail's acknowledgement time."""
    out: dict[str, StandingEscalation] = {}
    for r in conn.execute(
            "SELECT e.*, m.acked_at AS acked FROM escalations e LEFT JOIN messages m ON m.id = e.message_id "
            "WHERE e.resolved_at IS NULL"):
        out[r["key"]] = StandingEscalation(
            key=r["key"], to=r["recipient"], raised_at=r["raised_at"],
            acked_at=timeutil.parse(r["acked"]) if r["acked"] else None, reescalated_at=r["reescalated_at"],
            subject=r["subject"], bead=r["bead"], agent=r["agent"], reason=r["reason"])
    return out


def raise_escalation(town: Town, patrol: str, sender: str, key: str, to: str, message: Escalation, reason: str,
                     at: float, agent: str | None = None) -> PatrolEvent | None:
    """ESCALATION mail to `to` and its standing row, in one transaction; None (nothing sent)
    when an escalation under `key` stands already."""
    with town.db.write() as conn:
        return raise_escalation_in_txn(conn, town.db, patrol, sender, key, to, message, reason, at, agent)


def raise_escalation_in_txn(conn: sqlite3.Connection, db: Database, patrol: str, sender: str, key: str, to: str,
                            message: Escalation, reason: str, at: float, agent: str | None = None,
                            idempotency_key: str | None = None) -> PatrolEvent | None:
    """`raise_escalation` inside the caller's write transaction, for an escalation that must
    commit with the state change that caused it (the refinery's transitions and holds)."""
    row = conn.execute("SELECT resolved_at FROM escalations WHERE key = ?", (key,)).fetchone()
    if row is not None and row[0] is None:
        return None
    subject, body = protocol.format(message)
    sent = mail.send_in_txn(conn, db, sender, to, subject, body,
                            idempotency_key=(idempotency_key or f"escalation:{key}:{at:.3f}")[:mail.MAX_KEY_CHARS])
    conn.execute(
        "INSERT INTO escalations(key, recipient, raised_at, message_id, subject, bead, agent, reason) "
        "VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(key) DO UPDATE SET recipient = excluded.recipient, "
        "raised_at = excluded.raised_at, message_id = excluded.message_id, subject = excluded.subject, "
        "bead = excluded.bead, agent = excluded.agent, reason = excluded.reason, reescalated_at = NULL, "
        "resolved_at = NULL",
        (key, to, at, sent.id, subject, message.bead, agent or message.agent, message.reason))
    return insert(conn, patrol, "escalate", reason, at, agent or message.agent, message.bead, key,
                  {"to": to, "message": sent.id, "subject": subject, "text": message.text})


def resolve(town: Town, patrol: str, key: str, reason: str, at: float) -> PatrolEvent | None:
    with town.db.write() as conn:
        return resolve_in_txn(conn, patrol, key, reason, at)


def resolve_in_txn(conn: sqlite3.Connection, patrol: str, key: str, reason: str, at: float) -> PatrolEvent | None:
    """Resolve the escalation standing under `key` (None when none stands), in the caller's transaction."""
    changed = conn.execute("UPDATE escalations SET resolved_at = ? WHERE key = ? AND resolved_at IS NULL",
                           (at, key)).rowcount
    if not changed:
        return None
    return insert(conn, patrol, "resolve_escalation", reason, at, key=key)


def resolve_prefixed_in_txn(conn: sqlite3.Connection, patrol: str, prefix: str, reason: str,
                            at: float) -> list[PatrolEvent]:
    """Resolve every standing escalation whose key starts with `prefix` (one cause per key,
    e.g. every red-target escalation of a rig when its queue resumes)."""
    if not prefix:
        raise ValueError("an empty prefix would resolve every escalation")
    keys = [r[0] for r in conn.execute("SELECT key FROM escalations WHERE resolved_at IS NULL AND "
                                       "substr(key, 1, ?) = ?", (len(prefix), prefix))]
    return [e for k in keys if (e := resolve_in_txn(conn, patrol, k, reason, at)) is not None]


def reescalate(town: Town, patrol: str, sender: str, key: str, to: str, message: Escalation, reason: str,
               at: float) -> PatrolEvent | None:
    """Tell `to` (the overseer) about an unacknowledged escalation, once: the time is recorded
    with the mail in one transaction."""
    subject, body = protocol.format(message)
    with town.db.write() as conn:
        row = conn.execute("SELECT reescalated_at, resolved_at FROM escalations WHERE key = ?", (key,)).fetchone()
        if row is None or row[0] is not None or row[1] is not None:
            return None
        sent = mail.send_in_txn(conn, town.db, sender, to, subject, body,
                                idempotency_key=f"reescalation:{key}"[:mail.MAX_KEY_CHARS])
        conn.execute("UPDATE escalations SET reescalated_at = ? WHERE key = ?", (at, key))
        return insert(conn, patrol, "reescalate", reason, at, message.agent, message.bead, key,
                      {"to": to, "message": sent.id})


# ---- heartbeats ----------------------------------------------------------------------------


def beat(town: Town, loop: str, at: float | None = None) -> None:
    """The patrol loop `loop` is alive at `at` (the deacon and `status` read these)."""
    with town.db.write() as conn:
        conn.execute("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                     (f"heartbeat:{loop}", repr(time.time() if at is None else at)))


def heartbeats(conn: sqlite3.Connection) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in conn.execute("SELECT key, value FROM meta WHERE key GLOB 'heartbeat:*'"):
        try:
            out[key.split(":", 1)[1]] = float(value)
        except ValueError:
            continue
    return out
