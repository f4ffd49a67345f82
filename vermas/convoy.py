"""Convoys: a tracked batch of beads, possibly across rigs, that lands when all are closed.

A convoy is a bead of type `convoy` with `tracks` dependencies, which never block, so
tracking work never changes what is ready.
"""

from __future__ import annotations

import sqlite3

from pydantic import BaseModel

from vermas import beads, ids, validate
from vermas.addresses import Address
from vermas.errors import InvalidInput, NotFound
from vermas.town import Town

MAX_TRACKED = 1000


class ConvoyStatus(BaseModel):
    id: str
    title: str
    status: str
    closed: int
    total: int
    landed: bool
    open_beads: list[str]


def _status(conn: sqlite3.Connection, convoy_id: str) -> ConvoyStatus:
    row = conn.execute(
        "SELECT id, title, status FROM issues WHERE id = ? AND issue_type = 'convoy'", (convoy_id,)
    ).fetchone()
    if row is None:
        raise NotFound(f"no convoy {convoy_id!r}; convoy_list shows existing convoys")
    tracked = beads.tracked(conn, convoy_id)
    open_beads = [r[0] for r in tracked if r[1] != "closed"]
    total = len(tracked)
    return ConvoyStatus(
        id=row["id"], title=row["title"], status=row["status"], closed=total - len(open_beads),
        total=total, landed=beads.is_landed(tracked), open_beads=open_beads[:50],
    )


def create(town: Town, actor: Address, title: str, bead_ids: list[str]) -> ConvoyStatus:
    title = validate.title(title)
    if not isinstance(bead_ids, list) or not bead_ids or len(bead_ids) > MAX_TRACKED:
        raise InvalidInput(f"bead_ids must be a list of 1 to {MAX_TRACKED} bead ids")
    wanted = list(dict.fromkeys(validate.bead_id(b, "bead_ids[]") for b in bead_ids))
    with town.db.write() as conn:
        for bead_id in wanted:
            beads.fetch_row(conn, bead_id)
        convoy_id = ids.new_bead_id(conn, town.config.prefix, f"convoy\x00{title}\x00{actor}")
        beads.insert(conn, town.db, bead_id=convoy_id, title=title, actor=str(actor),
                     issue_type="convoy", description=f"Convoy tracking {len(wanted)} bead(s).")
        for bead_id in wanted:
            beads.add_dependency(conn, town.db, convoy_id, bead_id, "tracks", str(actor))
        beads.land_if_done(conn, town.db, convoy_id, str(actor))
        return _status(conn, convoy_id)


def status(town: Town, convoy_id: str) -> ConvoyStatus:
    validate.bead_id(convoy_id, "convoy_id")
    with town.db.read() as conn:
        return _status(conn, convoy_id)


def list_convoys(town: Town, include_landed: bool = False, limit: int = 50) -> list[ConvoyStatus]:
    validate.limit(limit, 1000)
    sql = "SELECT id FROM issues WHERE issue_type = 'convoy'"
    if not include_landed:
        sql += " AND status != 'closed'"
    sql += " ORDER BY created_ts DESC LIMIT ?"
    with town.db.read() as conn:
        return [_status(conn, r[0]) for r in conn.execute(sql, (limit,)).fetchall()]

