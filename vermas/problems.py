"""Which agents need a person: dead, waiting on a prompt, stuck, or escalated. Pure.

`vermas-runner status --watch --problems` shows only these. Each rule reads the evidence
`status` already has (RunnerStatus: the session, the latest hook event, the hook, the polecat
slot) plus the open escalations, so the view never judges on anything `status` does not show:

- dead: the session is not running (a polecat that finished, state done, is not a problem);
- waiting: its latest event is a permission prompt or a dialog (Claude Code waits on a person);
- stuck: alive, holding hooked work, and silent (no hook event, no MCP call) for at least the
  town's `[patrol] stuck_after` seconds, as the witness counts it;
- escalated: its polecat slot is escalated, or an escalation about it is still open.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from enum import StrEnum

from pydantic import BaseModel

from vermas.events import EventKind
from vermas.protocol import PolecatState
from vermas.status import AgentRow, RunnerStatus

WAITING_DETAILS = frozenset({"permission_prompt", "elicitation_dialog"})


class Problem(StrEnum):
    DEAD = "dead"
    WAITING = "waiting"
    STUCK = "stuck"
    ESCALATED = "escalated"


class WatchRow(BaseModel):
    """One agent as the watching view shows it: its status row and what is wrong, if anything."""

    agent: AgentRow
    polecat_state: str | None = None
    open_escalations: int = 0
    problems: list[Problem] = []
    quiet_s: float | None = None  # seconds since its latest event


def problems_of(row: AgentRow, polecat_state: str | None, open_escalations: int, now: float,
                stuck_after: float) -> list[Problem]:
    """What is wrong with one agent, in Problem's order (empty: nothing)."""
    found: list[Problem] = []
    if not row.alive and polecat_state != PolecatState.DONE:
        found.append(Problem.DEAD)
    event = row.last_event
    if row.alive and event is not None and event.kind == EventKind.NOTIFICATION and event.detail in WAITING_DETAILS:
        found.append(Problem.WAITING)
    if (row.alive and row.hooked and event is not None and now - event.at >= stuck_after
            and Problem.WAITING not in found):
        found.append(Problem.STUCK)
    if polecat_state == PolecatState.ESCALATED or open_escalations > 0:
        found.append(Problem.ESCALATED)
    return found


def watch_rows(status: RunnerStatus, escalations: dict[str, int], now: float, stuck_after: float) -> list[WatchRow]:
    """Every agent of a status, with its problems."""
    states = {p.address: str(p.state) for p in status.polecats}
    rows = []
    for agent in status.agents:
        state, open_count = states.get(agent.address), escalations.get(agent.address, 0)
        rows.append(WatchRow(
            agent=agent, polecat_state=state, open_escalations=open_count,
            problems=problems_of(agent, state, open_count, now, stuck_after),
            quiet_s=None if agent.last_event is None else max(0.0, now - agent.last_event.at)))
    return rows


def only_problems(rows: Sequence[WatchRow]) -> list[WatchRow]:
    """The rows `--problems` keeps."""
    return [r for r in rows if r.problems]


def open_escalations(conn: sqlite3.Connection) -> dict[str, int]:
    """Open (unresolved) escalations per agent they are about."""
    return {r[0]: r[1] for r in conn.execute(
        "SELECT agent, COUNT(*) FROM escalations WHERE resolved_at IS NULL AND agent IS NOT NULL GROUP BY agent")}
