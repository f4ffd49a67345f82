"""The deacon's eyes, town-wide: the mayor's and every rig's witness and refinery sessions
(tmux and hook events, the same evidence the witness reads for polecats), its own restarts
of each (from patrol events), the patrol loops' heartbeats, standing escalations, and the
convoys that landed but whose CONVOY_LANDED mail is not sent yet.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

from vermas import patrol_log
from vermas.addresses import Address, Role, parse_address
from vermas.deacon.decide import ConvoySeen, SupervisedHistory, TownSeen
from vermas.errors import InvalidInput
from vermas.patrol_types import MAYOR
from vermas.town import Town
from vermas.witness.observe import TmuxView, agent_evidence

if TYPE_CHECKING:  # tmux is imported only where a session is touched
    from vermas.sessions import TownSessions

DEACON = "deacon"


def supervised(town: Town) -> list[Address]:
    """The long-lived sessions the deacon keeps alive (the same list `up` starts)."""
    out = [Address(role=Role.MAYOR)]
    for rig in sorted(town.config.rigs):
        out += [Address(role=Role.WITNESS, rig=rig), Address(role=Role.REFINERY, rig=rig)]
    return out


def _history(conn: sqlite3.Connection, agents: list[str]) -> dict[str, SupervisedHistory]:
    restarts = patrol_log.times(conn, "restart_agent", "agent", agents)
    resets = patrol_log.times(conn, "reset_backoff", "agent", agents)
    nudges = patrol_log.times(conn, "nudge_agent", "agent", agents)
    return {a: SupervisedHistory(restarts=restarts.get(a, ()), reset_at=resets[a][-1] if a in resets else None,
                                 nudges=nudges.get(a, ()))
            for a in agents if a in restarts or a in resets or a in nudges}


def _creator(value: str | None) -> str | None:
    if not value:
        return None
    try:
        return str(parse_address(value))
    except InvalidInput:
        return None  # an imported bead's creator may be no vermas address; the mayor is still told


def landed_convoys(conn: sqlite3.Connection) -> tuple[tuple[ConvoySeen, ...], frozenset[str]]:
    """Landed convoys still owed a CONVOY_LANDED mail (to the mayor or their creator), and
    the idempotency keys of what was already sent for them."""
    rows = conn.execute(
        "SELECT c.id, c.title, c.created_by, (SELECT COUNT(*) FROM dependencies d WHERE d.issue_id = c.id "
        "AND d.type = 'tracks') AS n FROM issues c WHERE c.issue_type = 'convoy' AND c.status = 'closed' "
        "AND c.close_reason LIKE 'landed%' AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.sender = ? "
        "AND m.idempotency_key = 'convoy_landed:' || c.id || ':' || ?)", (DEACON, MAYOR)).fetchall()
    convoys, sent = [], set()
    for r in rows:
        creator = _creator(r["created_by"])
        convoys.append(ConvoySeen(id=r["id"], creator=creator, landed=True, title=r["title"], beads=int(r["n"])))
        for to in (creator, MAYOR):
            key = f"convoy_landed:{r['id']}:{to}"
            if to and conn.execute("SELECT 1 FROM messages WHERE sender = ? AND idempotency_key = ?",
                                   (DEACON, key)).fetchone():
                sent.add(key)
    return tuple(convoys), frozenset(sent)


def observe_town(town: Town, sessions: TownSessions, view: TmuxView | None = None) -> TownSeen:
    view = view or TmuxView.take(sessions)
    agents = supervised(town)
    with town.db.read() as conn:
        evidence = tuple(agent_evidence(conn, view, sessions, a) for a in agents)
        convoys, sent = landed_convoys(conn)
        return TownSeen(supervised=evidence, history=_history(conn, [str(a) for a in agents]),
                        heartbeats=patrol_log.heartbeats(conn), standing=patrol_log.standing(conn),
                        convoys=convoys, sent_keys=sent)
