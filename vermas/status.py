"""Town status: one read of the store summarising work, hooks, mail and convoys."""

from __future__ import annotations

import datetime as dt
import time
from typing import TYPE_CHECKING

from pydantic import BaseModel

from vermas import convoy, cost, events, polecat, rig, up
from vermas.cost import CostReport
from vermas.refinery import ledger
from vermas.refinery.types import MRState
from vermas.town import Town

if TYPE_CHECKING:
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


class MergeQueueStatus(BaseModel):
    """One rig's merge queue as `status` shows it: how many requests in each state, whether it
    is paused (on which target sha, why), who holds its lease, and what it tests with (or the
    loud marker that its merges are untested)."""

    rig: str
    counts: dict[str, int]  # every MRState, 0 included, in the enum's order
    paused_sha: str | None = None
    paused_reason: str | None = None
    resume_requested: bool = False
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
            lease_owner=state.lease.owner if state.lease else None,
            lease_expires_at=state.lease.expires_at if state.lease else None,
            lease_expired=state.lease is not None and state.lease.expires_at <= now,
            test_command=command, untested=not command.strip()))
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
    cost: CostReport | None = None  # per agent and per bead (None: the store could not say)


def runner_status(town: Town, sessions: TownSessions) -> RunnerStatus:
    """Everything `vermas-runner status` shows: which sessions live, what they hold."""
    base = town_status(town)
    hooked = {h.agent: h.bead_id for h in base.hooked}
    rows = []
    addresses = up.core_agents(town) + up.polecat_agents(town)
    latest = events.latest(town, [str(a) for a in addresses])
    for address in addresses:
        info = sessions.info(address)
        when = (dt.datetime.fromtimestamp(info.last_activity, dt.timezone.utc).isoformat(timespec="seconds")
                if info.last_activity else None)
        rows.append(AgentRow(address=str(address), session=info.session_name, alive=info.alive,
                             hooked=hooked.get(str(address)), last_activity=when, death=up.death_of(info),
                             last_event=latest.get(str(address))))
    pid = up.runner_pid(town)
    return RunnerStatus(
        town=town.config.name, root=str(town.root), runner_pid=pid, agents=rows,
        rigs=rig.list_rigs(town),
        # state: spawning, started (session up, GUPP nudge not yet delivered), working, done
        # (merge request queued, waiting for the refinery), escalated or deferred (PolecatState).
        polecats=polecat.list_polecats(town),
        unread_mail=base.unread_mail, convoys=base.convoys, merge_queues=merge_queues(town),
        cost=cost_section(town),
    )


def cost_section(town: Town) -> cost.CostReport | None:
    """Status's cost section: new transcript lines read, then the totals. Never fails a status:
    a store that cannot answer (busy past its timeout, damaged) gives None, and the next try reads."""
    try:
        return cost.cost_report(town)
    except Exception:  # noqa: BLE001 - status must show the town even when cost cannot be read
        return None
