"""What needs a person, wherever people look (`status --problems`, the `--watch` header's
count, the dashboard's escalations panel). The decision is pure; readers at the bottom.

Agents (each rule reads the evidence `status` already has: the session, the latest hook event,
the hook, the polecat slot, the open escalations about it):

- dead: the session is not running (a polecat that finished, state done, is not a problem);
- waiting: its latest event is a permission prompt or a dialog (Claude Code waits on a person);
- stuck: alive, holding hooked work, and silent (no hook event, no MCP call) for at least the
  town's `[patrol] stuck_after` seconds, as the witness counts it;
- escalated: its polecat slot is escalated, or an escalation about it is still open.

Not agents (each a row of its own kind, `ProblemRow.kind`):

- a merge request that is `failed` (its checks could not run; backing off or escalated), or
  escalated (rework/conflict past `max_attempts`, or any open escalation about it);
- a rig's merge queue that is paused (red target) or held (the town prevents merging);
- every other open escalation, whoever raised it.

An open escalation about a row that is shown rides on that row (one row per cause); the rest
are rows of kind `escalation`, so every open escalation is somewhere.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from enum import StrEnum

from pydantic import BaseModel

from vermas import patrol_log, timeutil
from vermas.errors import NotFound
from vermas.events import EventKind
from vermas.patrol_types import StandingEscalation
from vermas.protocol import PolecatState
from vermas.refinery import ledger
from vermas.refinery.types import MergeConfig, MRState
from vermas.status import AgentRow, MergeQueueStatus, RunnerStatus
from vermas.town import Town

WAITING_DETAILS = frozenset({"permission_prompt", "elicitation_dialog"})


class Problem(StrEnum):
    DEAD = "dead"
    WAITING = "waiting"
    STUCK = "stuck"
    ESCALATED = "escalated"
    FAILED = "failed"  # a merge request whose checks could not run
    PAUSED = "paused"  # a merge queue paused for a red target
    HELD = "held"  # a merge queue held: the town itself prevents merging


class ProblemKind(StrEnum):
    """What a problem row is about."""

    AGENT = "agent"
    MERGE_REQUEST = "merge_request"
    QUEUE = "queue"
    ESCALATION = "escalation"


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


# ---- beyond agents: merge requests, queues, escalations (pure) ----------------------------------------

TROUBLED_STATES = (MRState.FAILED, MRState.REWORK, MRState.CONFLICT)  # states a request may need a person in


class RequestFacts(BaseModel):
    """A merge request as the problem rules see it: its row, and the reason of its latest event."""

    id: str
    rig: str
    bead: str
    polecat: str = ""
    state: MRState
    attempts: int = 0
    failures: int = 0
    not_before: float | None = None
    since: float | None = None  # its last change
    reason: str = ""


class QueueFacts(BaseModel):
    """A rig's merge queue as the problem rules see it."""

    rig: str
    paused_sha: str | None = None
    paused_reason: str | None = None
    resume_requested: bool = False
    held: str | None = None  # the hold's kind
    held_reason: str | None = None
    held_since: float | None = None


class EscalationRef(BaseModel):
    """An open escalation, as a row names it."""

    key: str
    to: str
    subject: str
    raised_at: float
    acked: bool = False


class ProblemRow(BaseModel):
    """One thing that needs a person. `subject` is the agent's address, the request's id, the
    rig, or the escalation's key (by `kind`); `escalations` are the open ones about it."""

    kind: ProblemKind
    subject: str
    problems: list[Problem]
    reason: str = ""
    rig: str | None = None
    bead: str | None = None
    since: float | None = None
    state: str | None = None  # kind merge_request: its state
    escalations: list[EscalationRef] = []
    watch: WatchRow | None = None  # kind agent: its watch row


def escalation_about(e: StandingEscalation) -> tuple[ProblemKind, str]:
    """The row an escalation rides on: a merge request, a rig's queue, an agent, or its own."""
    if e.key.startswith(ledger.MR_ESCALATION_PREFIX):
        mr_id = e.key[len(ledger.MR_ESCALATION_PREFIX):].rpartition(":")[0]
        if mr_id:
            return ProblemKind.MERGE_REQUEST, mr_id
    for prefix in (ledger.TARGET_RED_PREFIX, ledger.HOLD_PREFIX):
        if e.key.startswith(prefix):
            rig = e.key[len(prefix):].partition(":")[0]
            if rig:
                return ProblemKind.QUEUE, rig
    if e.agent:
        return ProblemKind.AGENT, e.agent
    return ProblemKind.ESCALATION, e.key


def request_problems(req: RequestFacts, max_attempts: int, escalated: bool) -> list[Problem]:
    """failed: its checks could not run; escalated: an open escalation about it, or a send-back
    state after max_attempts send-backs (the refinery escalates instead of sending it back)."""
    found: list[Problem] = []
    if req.state is MRState.FAILED:
        found.append(Problem.FAILED)
    if escalated or (req.state in (MRState.REWORK, MRState.CONFLICT) and req.attempts >= max_attempts):
        found.append(Problem.ESCALATED)
    return found


def request_reason(req: RequestFacts) -> str:
    """One line: the request's state and why, and what happens next without a person."""
    why = " ".join(req.reason.split())[:300]
    line = f"{req.state.value}: {why}" if why else req.state.value
    if req.state is MRState.FAILED:
        line += (f" (tried {req.failures}x; retried automatically)" if req.not_before is not None
                 else f" (tried {req.failures}x; waits for mq retry {req.id})")
    return line


def queue_problems(q: QueueFacts, escalated: bool) -> list[Problem]:
    found: list[Problem] = []
    if q.paused_sha is not None:
        found.append(Problem.PAUSED)
    if q.held is not None:
        found.append(Problem.HELD)
    if escalated:
        found.append(Problem.ESCALATED)
    return found


def queue_reason(q: QueueFacts) -> str:
    parts = []
    if q.paused_sha is not None:
        parts.append(f"paused at {q.paused_sha[:12]}: {q.paused_reason or 'no reason recorded'}"
                     + (" (resume requested)" if q.resume_requested else ""))
    if q.held is not None:
        parts.append(f"held ({q.held}): {q.held_reason or 'no reason recorded'}")
    return "; ".join(parts)


def _ref(e: StandingEscalation) -> EscalationRef:
    return EscalationRef(key=e.key, to=e.to, subject=e.subject, raised_at=e.raised_at, acked=e.acked_at is not None)


def find_problems(agents: Sequence[WatchRow], requests: Sequence[RequestFacts], queues: Sequence[QueueFacts],
                  escalations: Sequence[StandingEscalation], max_attempts: Mapping[str, int],
                  default_max_attempts: int) -> list[ProblemRow]:
    """Every problem of the town, one row per cause: agents (their own rules), then merge
    requests, then queues, then the open escalations that ride on none of those rows."""
    about: dict[tuple[ProblemKind, str], list[StandingEscalation]] = {}
    for e in sorted(escalations, key=lambda e: (e.raised_at, e.key)):
        about.setdefault(escalation_about(e), []).append(e)
    rows: list[ProblemRow] = []
    placed: set[tuple[ProblemKind, str]] = set()

    def add(kind: ProblemKind, subject: str, found: list[Problem], **fields: object) -> None:
        if found:
            rows.append(ProblemRow(kind=kind, subject=subject, problems=found,
                                   escalations=[_ref(e) for e in about.get((kind, subject), [])], **fields))
            placed.add((kind, subject))

    for a in agents:
        add(ProblemKind.AGENT, a.agent.address, list(a.problems), watch=a, since=a.agent.last_event.at
            if a.agent.last_event else None, reason=a.agent.state.reason if a.agent.state else "")
    for r in requests:
        escalated = (ProblemKind.MERGE_REQUEST, r.id) in about
        add(ProblemKind.MERGE_REQUEST, r.id, request_problems(r, max_attempts.get(r.rig, default_max_attempts),
                                                              escalated),
            reason=request_reason(r), rig=r.rig, bead=r.bead, since=r.since, state=r.state.value)
    for q in queues:
        add(ProblemKind.QUEUE, q.rig, queue_problems(q, (ProblemKind.QUEUE, q.rig) in about),
            reason=queue_reason(q), rig=q.rig, since=q.held_since)
    for where, standing in about.items():
        if where in placed:
            continue
        for e in standing:
            rows.append(ProblemRow(kind=ProblemKind.ESCALATION, subject=e.key, problems=[Problem.ESCALATED],
                                   reason=f"to {e.to}: {e.subject}" + (f" ({e.reason})" if e.reason else ""),
                                   bead=e.bead, since=e.raised_at, escalations=[_ref(e)]))
    return rows


# ---- readers ----------------------------------------------------------------------------------------


def open_escalations(conn: sqlite3.Connection) -> dict[str, int]:
    """Open (unresolved) escalations per agent they are about (one about a merge request or a
    queue rides on that row, even when it names the refinery as its agent)."""
    out: dict[str, int] = {}
    for e in patrol_log.standing(conn).values():
        kind, subject = escalation_about(e)
        if kind is ProblemKind.AGENT:
            out[subject] = out.get(subject, 0) + 1
    return out


def queue_facts(queues: Sequence[MergeQueueStatus]) -> list[QueueFacts]:
    return [QueueFacts(rig=q.rig, paused_sha=q.paused_sha, paused_reason=q.paused_reason,
                       resume_requested=q.resume_requested, held=q.hold.kind.value if q.hold else None,
                       held_reason=q.hold.reason if q.hold else None, held_since=q.hold.since if q.hold else None)
            for q in queues]


def request_facts(town: Town, named: Sequence[str] = ()) -> list[RequestFacts]:
    """Requests in a state that may need a person, and those named by an open escalation."""
    rows = {r.id: r for r in ledger.list_requests(town, states=TROUBLED_STATES)}
    for mr_id in named:
        if mr_id not in rows:
            try:
                rows[mr_id] = ledger.get(town, mr_id)
            except NotFound:  # an escalation naming a request that is gone stays a row of its own
                continue
    out = []
    for r in sorted(rows.values(), key=lambda r: (r.queued_at, r.id)):
        history = ledger.events(town, r.id)
        why = str(history[-1].evidence.get("reason", "")) if history else ""
        try:
            since = timeutil.parse(r.updated_at) if r.updated_at else None
        except ValueError:
            since = None
        out.append(RequestFacts(id=r.id, rig=r.rig, bead=r.bead, polecat=r.polecat, state=r.state,
                                attempts=r.attempts, failures=r.failures, not_before=r.not_before, since=since,
                                reason=why))
    return out


def town_problems(town: Town, agents: Sequence[WatchRow], queues: Sequence[MergeQueueStatus]) -> list[ProblemRow]:
    """Read the town's merge requests and open escalations, then decide (find_problems)."""
    with town.db.read() as conn:
        standing = list(patrol_log.standing(conn).values())
    named = [subject for kind, subject in map(escalation_about, standing) if kind is ProblemKind.MERGE_REQUEST]
    rigs = town.config.rigs
    return find_problems(agents, request_facts(town, named), queue_facts(queues), standing,
                         {name: rig.merge.max_attempts for name, rig in rigs.items()},
                         MergeConfig().max_attempts)
