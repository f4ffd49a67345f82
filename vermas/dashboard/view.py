"""The dashboard's data: one typed snapshot of the town, built from the store by the same
readers `status` uses. Pure of the web: the page renders it, tests assert on it.

Agents' tmux evidence is optional (`panes`): without it, every agent is judged from its hook
events alone; the web layer passes one `list-panes` look per snapshot.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Mapping

from pydantic import BaseModel, Field

from vermas import beads, convoy, cost, patrol_log, timeutil, up
from vermas.addresses import Address
from vermas.cost import CostReport
from vermas.molecules import molecule
from vermas.patrol_types import Evidence, TmuxEvidence
from vermas.problems import ProblemRow, town_problems
from vermas.protocol import PolecatState
from vermas.refinery import ledger
from vermas.refinery.types import MRState
from vermas.status import MergeQueueStatus, merge_queues
from vermas.town import Town
from vermas.witness.classify import classify
from vermas.witness.observe import hook_events

EVENTS_PER_AGENT = 5
FEED = 40
FAILED_STATES = (MRState.REWORK.value, MRState.CONFLICT.value, MRState.FAILED.value)


class AgentView(BaseModel):
    address: str
    role: str
    state: str
    since: float | None = None
    evidence: str = ""
    hooked: str | None = None
    molecule: str | None = None  # the hooked bead is a molecule: "1/3 steps, at test"
    unread: int = 0
    last_events: list[str] = Field(default_factory=list)


class RequestView(BaseModel):
    id: str
    bead: str
    polecat: str
    state: str
    attempts: int
    queued_at: float
    updated_at: str | None = None


class RunView(BaseModel):
    sha: str
    command: str
    status: str
    duration_s: float
    at: float


class QueueView(BaseModel):
    status: MergeQueueStatus
    requests: list[RequestView]
    runs: list[RunView]
    last_failure: dict[str, object] | None = None


class ReadyBead(BaseModel):
    id: str
    title: str
    priority: int


class EscalationView(BaseModel):
    key: str
    to: str
    subject: str
    raised_at: float
    acked: bool
    agent: str | None = None
    bead: str | None = None


class FeedItem(BaseModel):
    at: float
    source: str  # agent or patrol
    who: str
    what: str


class Snapshot(BaseModel):
    town: str
    taken_at: float
    agents: list[AgentView]
    queues: list[QueueView]
    convoys: list[convoy.ConvoyStatus]
    beads_by_status: dict[str, int]
    ready: list[ReadyBead]
    unread_mail: dict[str, int]
    escalations: list[EscalationView]
    # the escalations panel: failed or escalated merge requests, paused or held queues, and every
    # open escalation (riding on its request's or queue's row, or a row of its own); agents' own
    # problems are in the agents panel (vermas.problems decides all of it)
    problems: list[ProblemRow] = Field(default_factory=list)
    feed: list[FeedItem]
    cost: CostReport | None = None  # None: nothing recorded yet (the page shows no panel)


def cost_section(town: Town) -> CostReport | None:
    """The cost panel: tokens and USD per agent and per bead (vermas.cost, new transcript lines
    read first), or None when nothing is recorded yet or the store cannot say right now (a
    dashboard must render the town even then)."""
    try:
        report = cost.cost_report(town)
    except Exception:  # noqa: BLE001 - the rest of the page still renders; the next snapshot retries
        return None
    return report if report.by_agent or report.by_bead else None


def _agents(town: Town, conn: sqlite3.Connection, addresses: list[Address],
            panes: Mapping[str, TmuxEvidence] | None) -> list[AgentView]:
    hooked = {r[0]: r[1] for r in conn.execute(
        "SELECT assignee, id FROM issues WHERE status = 'hooked' AND assignee IS NOT NULL")}
    unread = {r[0]: r[1] for r in conn.execute(
        "SELECT recipient, COUNT(*) FROM messages WHERE read_at IS NULL GROUP BY recipient")}
    slots = {f"{r[0]}/polecats/{r[1]}": (r[2], r[3]) for r in conn.execute(
        "SELECT rig, name, state, created_at FROM polecats")}
    out = []
    for address in addresses:
        out.append(_agent(conn, address, hooked, unread, slots, panes))
    return out


def _agent(conn: sqlite3.Connection, address: Address, hooked: Mapping[str, str], unread: Mapping[str, int],
           slots: Mapping[str, tuple[str, str]], panes: Mapping[str, TmuxEvidence] | None) -> AgentView:
    name = str(address)
    events, mcp = hook_events(conn, name)
    slot = slots.get(name)
    state: PolecatState | None = None
    since = None
    if slot:
        try:
            state = PolecatState(slot[0])
        except ValueError:
            state = None
        since = timeutil.parse(slot[1]) if slot[1] else None
    tmux = panes.get(address.session_name) if panes is not None else None
    if tmux is None:  # unknown: judge from the hooks, as if the session were up
        tmux = TmuxEvidence(session=panes is None)
    c = classify(Evidence(agent=name, tmux=tmux, events=events, last_mcp_call=mcp, polecat_state=state,
                          state_since=since))
    tail = [f"{e.kind.value}{':' + e.tool if e.tool else ''}" for e in events[-EVENTS_PER_AGENT:]]
    return AgentView(address=name, role=address.role.value, state=c.state.value, since=c.since, evidence=c.reason,
                     hooked=hooked.get(name), unread=unread.get(name, 0), last_events=tail[::-1],
                     molecule=molecule.progress(conn, hooked[name]) if name in hooked else None)


def _queues(town: Town, conn: sqlite3.Connection) -> list[QueueView]:
    out = []
    for status in merge_queues(town):
        rows = ledger.list_requests(town, rig=status.rig)[-30:]
        runs = []
        for r in conn.execute("SELECT sha, command, outcome, at_ts FROM mq_runs WHERE rig = ? ORDER BY at_ts DESC "
                              "LIMIT 10", (status.rig,)):
            try:
                o = json.loads(r[2])
            except ValueError:
                o = {}
            runs.append(RunView(sha=r[0][:10], command=r[1], status=str(o.get("status", "?")),
                                duration_s=float(o.get("duration_s") or 0.0), at=float(r[3])))
        fail = conn.execute(
            "SELECT e.mr_id, e.to_state, e.at, e.evidence FROM mr_events e JOIN merge_requests m ON m.id = e.mr_id "
            f"WHERE m.rig = ? AND e.to_state IN ({','.join('?' * len(FAILED_STATES))}) ORDER BY e.seq DESC LIMIT 1",
            (status.rig, *FAILED_STATES)).fetchone()
        last = None
        if fail:
            try:
                ev = json.loads(fail[3] or "{}")
            except ValueError:
                ev = {}
            last = {"mr": fail[0], "state": fail[1], "at": fail[2], **{k: ev.get(k) for k in
                    ("reason", "command", "exit_status", "duration_s", "output_tail") if k in ev}}
        out.append(QueueView(status=status, runs=runs, last_failure=last, requests=[RequestView(
            id=r.id, bead=r.bead, polecat=r.polecat, state=r.state.value, attempts=r.attempts, queued_at=r.queued_at,
            updated_at=r.updated_at) for r in rows]))
    return out


def _feed(conn: sqlite3.Connection) -> list[FeedItem]:
    items = [FeedItem(at=r[0], source="agent", who=r[1], what=f"{r[2]}{':' + r[3] if r[3] else ''}")
             for r in conn.execute("SELECT at, agent, kind, tool FROM agent_events ORDER BY id DESC LIMIT ?", (FEED,))]
    items += [FeedItem(at=r[0], source="patrol", who=r[1], what=f"{r[2]} {r[3] or ''}: {r[4]}".strip())
              for r in conn.execute("SELECT at, patrol, action, agent, reason FROM patrol_events ORDER BY seq DESC "
                                    "LIMIT ?", (FEED,))]
    return sorted(items, key=lambda i: i.at, reverse=True)[:FEED]


def snapshot(town: Town, panes: Mapping[str, TmuxEvidence] | None = None) -> Snapshot:
    """Everything the page shows, read in one store snapshot (queue rows by their own readers)."""
    queues = _queues_outside(town)
    addresses = up.core_agents(town) + up.polecat_agents(town)
    with town.db.read() as conn:
        by_status = {r[0]: r[1] for r in conn.execute("SELECT status, COUNT(*) FROM issues GROUP BY status")}
        unread = {r[0]: r[1] for r in conn.execute(
            "SELECT recipient, COUNT(*) FROM messages WHERE read_at IS NULL GROUP BY recipient ORDER BY recipient")}
        agents = _agents(town, conn, addresses, panes)
        standing = patrol_log.standing(conn)
        feed = _feed(conn)
    ready = [ReadyBead(id=b.id, title=b.title, priority=b.priority) for b in beads.ready(town, limit=30)]
    escalations = [EscalationView(key=e.key, to=e.to, subject=e.subject, raised_at=e.raised_at,
                                  acked=e.acked_at is not None, agent=e.agent, bead=e.bead)
                   for e in sorted(standing.values(), key=lambda e: e.raised_at)]
    found = town_problems(town, [], [q.status for q in queues])
    return Snapshot(town=town.config.name, taken_at=time.time(), agents=agents, queues=queues,
                    convoys=convoy.list_convoys(town), beads_by_status=by_status, ready=ready, unread_mail=unread,
                    escalations=escalations, problems=found, feed=feed, cost=cost_section(town))


def _queues_outside(town: Town) -> list[QueueView]:
    """The queues through a reader of their own: the ledger's readers take the store's lock themselves."""
    conn = town.db.snapshot_reader()
    try:
        return _queues(town, conn)
    finally:
        conn.close()
