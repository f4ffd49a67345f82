"""The deacon's decisions, town-wide: keep the mayor, every witness and refinery session alive,
watch the patrol loops' heartbeats, re-escalate what nobody acknowledged, and announce landed
convoys exactly once. Pure: from observed facts and history to typed actions.

A live coordinator whose session's turns all ended without a tool call is nudged once more
(NudgeAgent, `toolless_renudge` after that Stop): its first prompt reached the model before
its MCP tools connected, and nothing else would prompt it again.

Restarts: a dead (or exited, or never-started beyond `grace`) supervised session is restarted
at once, then with backoff (`deacon_backoff` doubling up to `deacon_backoff_cap`, counted after
the previous restart). The count is the restarts since the last reset; a session alive longer
than `stable_reset` after its last restart gets ResetBackoff. `crash_loop_restarts` restarts
spanning at most `crash_loop_window` is a crash loop: no more restarts, one ESCALATION to the
overseer; the overseer's acknowledgement clears it (restarts before it no longer count), so the
flag never sticks and the mail is never repeated.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from vermas.patrol_types import (
    MAYOR, OVERSEER, AgentState, Escalate, Evidence, PatrolConfig, ResolveEscalation, SendMail,
    StandingEscalation, line,
)
from vermas.protocol import ConvoyLanded, Escalation
from vermas.witness.classify import Classification, classify, toolless_turn

S = AgentState

# ---- observed --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SupervisedHistory:
    """The deacon's restarts of one session, and when its count was last reset (stable)."""

    restarts: tuple[float, ...] = ()
    reset_at: float | None = None
    nudges: tuple[float, ...] = ()  # the deacon's re-nudges of it (after a tool-less turn)


@dataclass(frozen=True)
class ConvoySeen:
    id: str
    creator: str | None
    landed: bool  # every tracked bead is closed
    title: str = ""
    beads: int = 0


@dataclass(frozen=True)
class TownSeen:
    supervised: tuple[Evidence, ...] = ()  # mayor, <rig>/witness, <rig>/refinery sessions
    history: Mapping[str, SupervisedHistory] = field(default_factory=dict)
    heartbeats: Mapping[str, float] = field(default_factory=dict)  # patrol loop -> its latest heartbeat
    standing: Mapping[str, StandingEscalation] = field(default_factory=dict)
    convoys: tuple[ConvoySeen, ...] = ()
    sent_keys: frozenset[str] = frozenset()  # idempotency keys of one-shot mail already sent


# ---- actions ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RestartAgent:
    """Start the agent's session again; `attempt` is its restart number since the last reset."""

    agent: str
    attempt: int
    reason: str


@dataclass(frozen=True)
class NudgeAgent:
    """The GUPP nudge again: its session's turns all ended without a tool call (see
    classify.toolless_turn). Once per session."""

    agent: str
    reason: str


@dataclass(frozen=True)
class ResetBackoff:
    """The session has been stable: restarts before `at` no longer count."""

    agent: str
    at: float
    reason: str


@dataclass(frozen=True)
class Reescalate:
    """The escalation under `key` went unacknowledged: tell the overseer, once (record the time)."""

    key: str
    to: str
    message: Escalation
    reason: str


@dataclass(frozen=True)
class StaleHeartbeat:
    """A patrol loop's heartbeat is old: log it (with its age) for `status` and the events."""

    loop: str
    age: float
    reason: str


DeaconAction = (RestartAgent | NudgeAgent | ResetBackoff | Reescalate | StaleHeartbeat | Escalate | ResolveEscalation
                | SendMail)


class _Escalator(Protocol):
    """The round's escalate callback: dedups by key against standing ones and this round's."""

    def __call__(self, key: str, message: Escalation, reason: str, agent: str | None = None) -> None: ...


def crash_loop_key(agent: str, first: float) -> str:
    return f"crashloop:{agent}:{int(first)}"


def decide_town(seen: TownSeen, cfg: PatrolConfig, now: float) -> list[DeaconAction]:
    actions: list[DeaconAction] = []
    escalated: set[str] = set()

    def escalate(key: str, message: Escalation, reason: str, agent: str | None = None) -> None:
        if key in seen.standing or key in escalated:
            return
        escalated.add(key)
        actions.append(Escalate(key=key, to=OVERSEER, message=message.model_copy(update={"key": line(key)}),
                                reason=reason, agent=agent))

    for ev in seen.supervised:
        _supervise(ev, classify(ev), seen.history.get(ev.agent, SupervisedHistory()), seen.standing, cfg, now,
                   actions, escalate)
    for loop, beat in sorted(seen.heartbeats.items()):
        key, age = f"heartbeat:{loop}", now - beat
        if age > cfg.heartbeat_stale_after:
            reason = f"patrol loop {loop}: last heartbeat {age:.0f}s ago (> {cfg.heartbeat_stale_after:g}s)"
            actions.append(StaleHeartbeat(loop=loop, age=age, reason=reason))
            escalate(key, Escalation(reason="heartbeat-stale", agent=line(loop), text=reason), reason)
        elif key in seen.standing:
            actions.append(ResolveEscalation(key=key, reason=f"patrol loop {loop} beats again"))
    actions += _reescalations(seen.standing, cfg, now)
    actions += _convoys(seen.convoys, seen.sent_keys)
    return actions


def counted_restarts(agent: str, h: SupervisedHistory, standing: Mapping[str, StandingEscalation]) -> list[float]:
    """Restarts since the last reset: a stable period, or the overseer's acknowledgement of a crash
    loop (a restart at the very time of the acknowledgement came after it, so it counts)."""
    acked = float("-inf")
    prefix = f"crashloop:{agent}:"
    for esc in standing.values():
        if esc.key.startswith(prefix) and esc.acked_at is not None:
            acked = max(acked, esc.acked_at)
    return sorted(t for t in h.restarts if (h.reset_at is None or t > h.reset_at) and t >= acked)


def _supervise(ev: Evidence, c: Classification, h: SupervisedHistory, standing: Mapping[str, StandingEscalation],
               cfg: PatrolConfig, now: float, actions: list[DeaconAction],
               escalate: _Escalator) -> None:
    counted = counted_restarts(ev.agent, h, standing)
    hung_start = (c.state is S.STARTING and not c.session_started and c.since is not None
                  and now - c.since > cfg.grace)
    if c.state not in (S.DEAD, S.EXITED) and not hung_start:
        _renudge(ev, c, h, cfg, now, actions)
        if counted and now - counted[-1] > cfg.stable_reset:
            actions.append(ResetBackoff(agent=ev.agent, at=now,
                                        reason=f"alive {now - counted[-1]:.0f}s since its last restart "
                                               f"(> {cfg.stable_reset:g}s): backoff reset"))
            for key in sorted(k for k in standing if k.startswith(f"crashloop:{ev.agent}:")):
                actions.append(ResolveEscalation(key=key, reason=f"{ev.agent} is stable again"))
        return
    why = f"no SessionStart {now - (c.since or now):.0f}s after start" if hung_start else f"{c.state}: {c.reason}"
    n = cfg.crash_loop_restarts
    if len(counted) >= n and counted[-1] - counted[-n] <= cfg.crash_loop_window:
        span = counted[-1] - counted[-n]
        reason = (f"crash loop: {n} restarts within {span:.0f}s (<= {cfg.crash_loop_window:g}s); "
                  f"not restarting until the overseer acknowledges ({why})")
        escalate(crash_loop_key(ev.agent, counted[-n]),
                 Escalation(agent=ev.agent, reason="crash-loop", rig=_rig_of(ev.agent), text=reason), reason, ev.agent)
        return
    wait = cfg.deacon_wait(len(counted))
    if counted and now - counted[-1] <= wait:
        return  # backing off
    actions.append(RestartAgent(agent=ev.agent, attempt=len(counted) + 1,
                                reason=f"{why}; restart {len(counted) + 1} since the last reset"
                                       + (f" (backoff {wait:g}s)" if wait else "")))


def _renudge(ev: Evidence, c: Classification, h: SupervisedHistory, cfg: PatrolConfig, now: float,
             actions: list[DeaconAction]) -> None:
    """A coordinator whose first turns saw no tools (MCP not connected yet) is nudged once more."""
    if c.state is not S.IDLE:
        return
    stopped = toolless_turn(ev)
    start = ev.tmux.started_at
    if stopped is None or now - stopped <= cfg.toolless_renudge:
        return
    if any(start is None or t >= start for t in h.nudges):
        return  # once per session
    actions.append(NudgeAgent(agent=ev.agent, reason=f"its turn ended {now - stopped:.0f}s ago without any tool "
                                                     "call (its MCP tools may not have connected yet): re-nudged once"))


def _rig_of(agent: str) -> str | None:
    return agent.split("/", 1)[0] if "/" in agent else None


def _reescalations(standing: Mapping[str, StandingEscalation], cfg: PatrolConfig, now: float) -> list[DeaconAction]:
    out: list[DeaconAction] = []
    for key in sorted(standing):
        esc = standing[key]
        if esc.acked_at is not None or esc.reescalated_at is not None or esc.to == OVERSEER:
            continue
        age = now - esc.raised_at
        if age <= cfg.reescalate_after:
            continue
        text = (f"escalated to {esc.to} {age:.0f}s ago and not acknowledged (reescalate_after "
                f"{cfg.reescalate_after:g}s): {esc.subject or key}")
        out.append(Reescalate(key=key, to=OVERSEER, message=Escalation(
            bead=esc.bead, agent=esc.agent, reason=line(f"unacknowledged: {esc.reason or 'escalation'}"),
            key=line(key), text=text), reason=text))
    return out


def _convoys(convoys: tuple[ConvoySeen, ...], sent: frozenset[str]) -> list[DeaconAction]:
    out: list[DeaconAction] = []
    for convoy in convoys:
        if not convoy.landed:
            continue
        for to in dict.fromkeys(r for r in (convoy.creator, MAYOR) if r):  # creator first; once if the mayor
            idem = f"convoy_landed:{convoy.id}:{to}"
            if idem in sent:
                continue
            out.append(SendMail(to=to, message=ConvoyLanded(
                convoy=convoy.id, title=line(convoy.title) if convoy.title else None,
                beads=str(convoy.beads) if convoy.beads else None,
                text=f"convoy {convoy.id} landed: all {convoy.beads} tracked beads are closed"),
                idempotency_key=idem, reason=f"convoy {convoy.id} landed"))
    return out
