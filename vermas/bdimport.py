"""Import bd JSONL (both bd eras) into the store: upsert by id, newer `updated_at` wins.

Accepts lines with or without `"_type"`, local-offset or UTC timestamps, int or string
comment ids; skips tombstones and non-issue lines; ignores unknown fields. The whole
file is one transaction, so a bad file writes nothing.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from vermas import ids, timeutil, validate
from vermas.errors import InvalidInput
from vermas.town import Town

TEXT_FIELDS = ("description", "design", "acceptance_criteria", "notes")
OPTIONAL_FIELDS = ("assignee", "owner", "created_by", "started_at", "close_reason", "external_ref")


class ImportReport(BaseModel):
    lines: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped_older: int = 0
    tombstones: int = 0
    other: int = 0


def _need(record: dict[str, Any], key: str, lineno: int) -> Any:
    if record.get(key) in (None, ""):
        raise InvalidInput(f"line {lineno}: missing required field {key!r}")
    return record[key]


def _ts(record: dict[str, Any], key: str, lineno: int) -> float:
    try:
        return timeutil.parse(str(record[key]))
    except (KeyError, ValueError) as exc:
        raise InvalidInput(f"line {lineno}: {key} {record.get(key)!r} is not an RFC 3339 timestamp") from exc


def _upsert(conn: sqlite3.Connection, rec: dict[str, Any], lineno: int, report: ImportReport) -> None:
    bead_id = str(_need(rec, "id", lineno))
    if not ids.BEAD_ID_RE.fullmatch(bead_id) or len(bead_id) > ids.MAX_ID_LEN:
        raise InvalidInput(f"line {lineno}: invalid bead id {bead_id[:60]!r}")
    created_ts = _ts(rec, "created_at", lineno)
    updated_at = rec.get("updated_at") or rec["created_at"]
    updated_ts = _ts(rec, "updated_at", lineno) if rec.get("updated_at") else created_ts
    existing = conn.execute("SELECT updated_ts FROM issues WHERE id = ?", (bead_id,)).fetchone()
    if existing is not None and existing[0] >= updated_ts:
        report.unchanged += existing[0] == updated_ts
        report.skipped_older += existing[0] > updated_ts
        return
    status = str(_need(rec, "status", lineno))
    if status not in validate.STATUSES:
        raise InvalidInput(f"line {lineno}: status {status[:30]!r} is not one of {', '.join(validate.STATUSES)}")
    priority = rec.get("priority", 2)
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise InvalidInput(f"line {lineno}: priority {priority!r} is not an integer")
    closed_at = rec.get("closed_at") if status == "closed" else None
    if status == "closed" and not closed_at:
        closed_at = updated_at
    row = {
        "id": bead_id, "title": str(_need(rec, "title", lineno)), "status": status,
        "priority": priority, "issue_type": str(rec.get("issue_type") or "task"),
        "created_at": rec["created_at"], "created_ts": created_ts, "updated_at": updated_at,
        "updated_ts": updated_ts, "closed_at": closed_at, "ephemeral": int(bool(rec.get("ephemeral"))),
    }
    for key in TEXT_FIELDS:
        row[key] = str(rec.get(key) or "")
    for key in OPTIONAL_FIELDS:
        row[key] = rec.get(key) or None
    cols = ", ".join(row)
    conn.execute(
        f"INSERT OR REPLACE INTO issues ({cols}) VALUES ({', '.join('?' * len(row))})", tuple(row.values())
    )
    if existing is None:
        ids.bump_prefix(conn, ids.prefix_of(bead_id))
        report.created += 1
    else:
        report.updated += 1
    conn.execute("DELETE FROM labels WHERE issue_id = ?", (bead_id,))
    conn.executemany("INSERT OR IGNORE INTO labels(issue_id, label) VALUES (?, ?)",
                     [(bead_id, str(lb)) for lb in rec.get("labels") or []])
    conn.execute("DELETE FROM dependencies WHERE issue_id = ?", (bead_id,))
    for dep in rec.get("dependencies") or []:
        conn.execute(
            "INSERT OR REPLACE INTO dependencies(issue_id, depends_on_id, type, created_at, created_by) "
            "VALUES (?,?,?,?,?)",
            (bead_id, str(dep["depends_on_id"]), str(dep.get("type") or "blocks"),
             dep.get("created_at") or rec["created_at"], dep.get("created_by")),
        )
    conn.execute("DELETE FROM comments WHERE issue_id = ?", (bead_id,))
    for n, comment in enumerate(rec.get("comments") or [], start=1):
        conn.execute(
            "INSERT OR REPLACE INTO comments(issue_id, id, author, text, created_at) VALUES (?,?,?,?,?)",
            (bead_id, comment.get("id", n), comment.get("author"), str(comment.get("text") or ""),
             comment.get("created_at") or rec["created_at"]),
        )


def import_lines(town: Town, lines: list[str]) -> ImportReport:
    report = ImportReport()
    parsed: list[tuple[int, dict[str, Any]]] = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        report.lines += 1
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"line {lineno}: not JSON ({exc.msg}); nothing was imported") from exc
        if not isinstance(rec, dict):
            raise InvalidInput(f"line {lineno}: expected a JSON object; nothing was imported")
        if rec.get("_type", "issue") != "issue":
            report.other += 1
        elif rec.get("status") == "tombstone":
            report.tombstones += 1
        else:
            parsed.append((lineno, rec))
    with town.db.write() as conn:
        for lineno, rec in parsed:
            _upsert(conn, rec, lineno, report)
        town.db.touch("issues")
    return report


def import_file(town: Town, path: Path) -> ImportReport:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}") from exc
    return import_lines(town, text.splitlines())
