"""Town status: one read of the store summarising work, hooks, mail and convoys."""

from __future__ import annotations

import datetime as dt
import time
from typing import TYPE_CHECKING

from pydantic import BaseModel, JsonValue

from vermas import convoy, cost, events, patrol_log, polecat, rig, up
from vermas.cost import CostReport
from vermas.molecules import molecule
from vermas.refinery import ledger
from vermas.refinery.types import MRState, QueueHold
from vermas.town import Town
from vermas.witness.classify import classify

if TYPE_CHECKING:
    from vermas.addresses import Address
    from vermas.sessions import TownSessions


class HookedAgent(BaseModel):
    agent: str
    bead_id: str
    title: str


class TownStatus(BaseModel):
    town: str
    beads_by_status: dict[str, int]
    hooked: list[HookedAgent]
    unread_mail: dict[str, int]
    convoys: list[convoy.ConvoyStatus]
    rigs: list[str]


def town_status(town: Town) -> TownStatus:
    with town.db.read() as conn:
        by_status = {r[0]: r[1] for r in conn.execute(
            "SELECT status, COUNT(*) FROM issues GROUP BY status ORDER BY status")}
        hooked = [HookedAgent(agent=r[0], bead_id=r[1], title=r[2]) for r in conn.execute(
            "SELECT assignee, id, title FROM issues WHERE status = 'hooked' AND assignee IS NOT NULL "
            "ORDER BY assignee")]
        unread = {r[0]: r[1] for r in conn.execute(
            "SELECT recipient, COUNT(*) FROM messages WHERE read_at IS NULL GROUP BY recipient "
            "ORDER BY recipient")}
    return TownStatus(
        town=town.config.name, beads_by_status=by_status, hooked=hooked, unread_mail=unread,
        convoys=convoy.list_convoys(town), rigs=sorted(town.config.rigs),
    )


class AgentRow(BaseModel):
    """One agent of the town: its session, and why it died if it did (`death` is set when
    tmux kept the dead pane; a session killed from outside is just not alive)."""

    address: str
    session: str
    alive: bool
    hooked: str | None = None
    last_activity: str | None = None
    last_event: events.AgentEvent | None = None  # the newest hook or MCP event (vermas.events)
    death: up.SessionDeath | None = None
    state: AgentState | None = None  # as the patrols classify it (polecats: see `polecats` for the slot)
    molecule: str | None = None  # the hooked bead is a molecule: its walk, e.g. "1/3 steps, at test"


class MergeQueueStatus(BaseModel):
    """One rig's merge queue as `status` shows it: how many requests in each state, whether it
    is paused (on which target sha, why) or held (the town prevents merging), who holds its
    lease, and what it tests with (or the loud marker that its merges are untested)."""

    rig: str
    counts: dict[str, int]  # every MRState, 0 included, in the enum's order
    paused_sha: str | None = None
    paused_reason: str | None = None
    resume_requested: bool = False
    hold: QueueHold | None = None  # the town itself prevents merging (its kind, reason, since)
    lease_owner: str | None = None
    lease_expires_at: float | None = None
    lease_expired: bool = False  # its owner stopped renewing it (died); the next runner takes it
    test_command: str
    untested: bool

    @property
    def tests(self) -> str:
        return rig.UNTESTED if self.untested else self.test_command


def merge_queues(town: Town) -> list[MergeQueueStatus]:
    counts, now = ledger.counts_by_state(town), time.time()
    out = []
    for name in sorted(town.config.rigs):
        state = ledger.queue_state(town, name)
        command = town.config.rigs[name].test_command
        seen = counts.get(name, {})
        out.append(MergeQueueStatus(
            rig=name, counts={s.value: seen.get(s.value, 0) for s in MRState},
            paused_sha=state.paused_sha, paused_reason=state.paused_reason, resume_requested=state.resume_requested,
            hold=state.hold,
            lease_owner=state.lease.owner if state.lease else None,
            lease_expires_at=state.lease.expires_at if state.lease else None,
            lease_expired=state.lease is not None and state.lease.expires_at <= now,
            test_command=command, untested=not command.strip()))
    return out


class Heartbeat(BaseModel):
    """A loop's latest heartbeat: `runner` is the runner process, `patrol` its patrol rounds."""

    loop: str
    at: float
    age: float
    stale: bool  # older than [patrol] heartbeat_stale_after: the runner died or its round hangs


class PatrolEventRow(BaseModel):
    """A recorded patrol action with its reason and evidence (vermas.patrol_log)."""

    seq: int
    time: str
    patrol: str
    action: str
    agent: str | None = None
    bead: str | None = None
    reason: str
    evidence: dict[str, JsonValue] = {}  # the JSON the patrol recorded
    ok: bool = True


class EscalationRow(BaseModel):
    """An escalation that stands (not resolved): to whom, since when, acknowledged or not."""

    key: str
    to: str
    raised: str
    acked: bool
    reescalated: bool
    subject: str
    agent: str | None = None
    bead: str | None = None


class AgentState(BaseModel):
    """An agent's state as the patrols judge it, the evidence's sentence, and since when."""

    state: str
    reason: str
    since: str | None = None


def _iso(at: float | None) -> str | None:
    return dt.datetime.fromtimestamp(at, dt.timezone.utc).isoformat(timespec="seconds") if at else None


RECENT_PATROL_EVENTS = 10


def heartbeats(town: Town, now: float) -> list[Heartbeat]:
    with town.db.read() as conn:
        beats = patrol_log.heartbeats(conn)
    limit = town.config.patrol.heartbeat_stale_after
    return [Heartbeat(loop=k, at=v, age=round(now - v, 1), stale=now - v > limit) for k, v in sorted(beats.items())]


def patrol_activity(town: Town) -> tuple[list[PatrolEventRow], list[EscalationRow]]:
    recent = [PatrolEventRow(seq=e.seq, time=_iso(e.at) or "", patrol=e.patrol, action=e.action, agent=e.agent,
                             bead=e.bead, reason=e.reason, evidence=dict(e.evidence), ok=e.ok)
              for e in patrol_log.events(town, limit=RECENT_PATROL_EVENTS)]
    with town.db.read() as conn:
        standing = patrol_log.standing(conn)
    open_ = [EscalationRow(key=e.key, to=e.to, raised=_iso(e.raised_at) or "", acked=e.acked_at is not None,
                           reescalated=e.reescalated_at is not None, subject=e.subject, agent=e.agent, bead=e.bead)
             for e in sorted(standing.values(), key=lambda e: e.raised_at)]
    return recent, open_


def agent_states(town: Town, sessions: TownSessions, addresses: list[Address]) -> dict[str, AgentState]:
    """Each agent's state from the same evidence the patrols decide on (tmux + hook events)."""
    from vermas.witness.observe import TmuxView, agent_evidence  # deferred: it imports tmux; town_status (MCP) must not
    view = TmuxView.take(sessions)
    out: dict[str, AgentState] = {}
    with town.db.read() as conn:
        for address in addresses:
            c = classify(agent_evidence(conn, view, sessions, address))
            out[str(address)] = AgentState(state=str(c.state), reason=c.reason, since=_iso(c.since))
    return out


class RunnerStatus(BaseModel):
    town: str
    root: str
    runner_pid: int | None
    agents: list[AgentRow]
    rigs: list[rig.RigInfo]
    polecats: list[polecat.PolecatInfo]
    unread_mail: dict[str, int]
    convoys: list[convoy.ConvoyStatus]
    merge_queues: list[MergeQueueStatus] = []
    heartbeats: list[Heartbeat] = []
    runner_alive: bool = False  # its pid runs and its heartbeat is fresh
    patrol_events: list[PatrolEventRow] = []  # the newest, oldest first
    escalations: list[EscalationRow] = []  # standing ones
    cost: CostReport | None = None  # per agent and per bead (None: the store could not say)


def runner_status(town: Town, sessions: TownSessions) -> RunnerStatus:
    """Everything `vermas-runner status` shows: which sessions live, what they hold."""
    base = town_status(town)
    hooked = {h.agent: h.bead_id for h in base.hooked}
    rows = []
    addresses = up.core_agents(town) + up.polecat_agents(town)
    latest = events.latest(town, [str(a) for a in addresses])
    states = agent_states(town, sessions, list(addresses))
    with town.db.read() as conn:
        walks = {agent: molecule.progress(conn, bead) for agent, bead in hooked.items()}
    for address in addresses:
        info = sessions.info(address)
        when = (dt.datetime.fromtimestamp(info.last_activity, dt.timezone.utc).isoformat(timespec="seconds")
                if info.last_activity else None)
        rows.append(AgentRow(address=str(address), session=info.session_name, alive=info.alive,
                             hooked=hooked.get(str(address)), last_activity=when, death=up.death_of(info),
                             last_event=latest.get(str(address)), state=states.get(str(address)),
                             molecule=walks.get(str(address))))
    pid = up.runner_pid(town)
    beats = heartbeats(town, time.time())
    runner_beat = next((b for b in beats if b.loop == "runner"), None)
    recent, standing = patrol_activity(town)
    return RunnerStatus(
        town=town.config.name, root=str(town.root), runner_pid=pid, agents=rows,
        rigs=rig.list_rigs(town),
        # state: spawning, started (session up, GUPP nudge not yet delivered), working, done
        # (merge request queued, waiting for the refinery), escalated or deferred (PolecatState).
        polecats=polecat.list_polecats(town),
        unread_mail=base.unread_mail, convoys=base.convoys, merge_queues=merge_queues(town),
        heartbeats=beats, runner_alive=pid is not None and runner_beat is not None and not runner_beat.stale,
        patrol_events=recent, escalations=standing,
        cost=cost_section(town),
    )


def cost_section(town: Town) -> cost.CostReport | None:
    """Status's cost section: new transcript lines read, then the totals. Never fails a status:
    a store that cannot answer (busy past its timeout, damaged) gives None, and the next try reads."""
    try:
        return cost.cost_report(town)
    except Exception:  # noqa: BLE001 - status must show the town even when cost cannot be read
        return None
