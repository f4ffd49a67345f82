"""Hooks: where an agent's work hangs. A bead is on X's hook when its status is `hooked`
and its assignee is X. GUPP: if your hook has work, run it."""

from __future__ import annotations

import sqlite3

from pydantic import BaseModel

from vermas import beads, mail
from vermas.addresses import Address, Role
from vermas.town import Town

GUPP = {
    Role.POLECAT: (
        "GUPP: the bead above is on your hook; work it now without asking. Do the work in your "
        "worktree, commit on your branch, then call polecat_done(status='COMPLETED', summary=...). "
        "If you cannot finish, call polecat_done with ESCALATED (needs help) or DEFERRED."
    ),
    Role.CREW: "GUPP: the bead above is on your hook; work it, then close it or hand it back.",
}
DEFAULT_WORK = "GUPP: the bead above is on your hook; run it now, then report by mail."
NO_WORK = {
    Role.POLECAT: "Your hook is empty. Check mail_inbox; if nothing is there, wait for work.",
    Role.WITNESS: "No hooked work. Patrol: read mail_inbox (POLECAT_DONE, HELP) and act on it.",
    Role.REFINERY: "No hooked work. Read mail_inbox for MERGE_READY and process the merge queue.",
    Role.MAYOR: "No hooked work. Read mail_inbox, then use bead_ready and sling to dispatch.",
}


class HookStatus(BaseModel):
    bead: beads.BeadDetail | None
    unread_mail: int
    instructions: str


def hooked_id(conn: sqlite3.Connection, address: str) -> str | None:
    row = conn.execute(
        "SELECT id FROM issues WHERE assignee = ? AND status = 'hooked' ORDER BY updated_ts LIMIT 1",
        (address,),
    ).fetchone()
    return row[0] if row else None


def check(town: Town, actor: Address) -> HookStatus:
    with town.db.read() as conn:
        bead_id = hooked_id(conn, str(actor))
        unread = mail.unread_count(conn, str(actor))
    bead = beads.show(town, bead_id) if bead_id else None
    if bead is not None:
        text = GUPP.get(actor.role, DEFAULT_WORK)
    else:
        text = NO_WORK.get(actor.role, "No hooked work. Read mail_inbox for requests.")
    if unread:
        text += f" You have {unread} unread message(s): mail_inbox."
    return HookStatus(bead=bead, unread_mail=unread, instructions=text)
