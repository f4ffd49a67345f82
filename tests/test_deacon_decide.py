"""The deacon's decisions (pure): restarts with backoff at each edge, the crash loop (escalated
once, cleared by acknowledgement or stability, never stuck), heartbeat staleness, re-escalation
to the overseer once per cause, CONVOY_LANDED exactly once; and simulated hours of rounds."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vermas import protocol
from vermas.deacon import decide
from vermas.deacon.decide import (
    ConvoySeen, NudgeAgent, Reescalate, ResetBackoff, RestartAgent, StaleHeartbeat, SupervisedHistory, TownSeen,
)
from vermas.patrol_types import (
    Escalate, Evidence, HookEvent, HookKind, PatrolConfig, ResolveEscalation, SendMail, StandingEscalation,
    TmuxEvidence,
)
from vermas.protocol import ConvoyLanded

CFG = PatrolConfig()
NOW = 1_000_000.0
MAYOR = "mayor"


def agent(name: str = MAYOR, alive: bool = True, started: float = NOW - 10, session_start: bool = True,
          exit_status: int | None = None, pane_alive: bool = True) -> Evidence:
    events = (HookEvent(kind=HookKind.SESSION_START, at=started + 1),) if session_start else ()
    return Evidence(agent=name, events=events, tmux=TmuxEvidence(session=alive, pane_alive=pane_alive,
                                                                 exit_status=exit_status, started_at=started))


DEAD = agent(alive=False)


def run(*supervised: Evidence, now: float = NOW, restarts: tuple[float, ...] = (), reset_at: float | None = None,
        standing: dict[str, StandingEscalation] | None = None, cfg: PatrolConfig = CFG, **kw: Any) -> list[Any]:
    history = {e.agent: SupervisedHistory(restarts=restarts, reset_at=reset_at) for e in supervised}
    seen = TownSeen(supervised=supervised, history=history, standing=standing or {}, **kw)
    return decide.decide_town(seen, cfg, now)


def kinds(actions: list[Any]) -> list[type]:
    return [type(a) for a in actions]


# ---- keeping sessions alive --------------------------------------------------------------------


def test_a_live_session_is_left_alone() -> None:
    assert run(agent()) == []
    assert run(agent(name="gt/witness"), agent(name="gt/refinery")) == []


@pytest.mark.parametrize("who", ["mayor", "gt/witness", "gt/refinery"])
def test_a_dead_session_is_restarted_at_once(who: str) -> None:
    actions = run(agent(name=who, alive=False))
    assert kinds(actions) == [RestartAgent] and (actions[0].agent, actions[0].attempt) == (who, 1)


@pytest.mark.parametrize("how", [dict(pane_alive=False, exit_status=0), dict(pane_alive=False, exit_status=137)])
def test_an_exited_or_dead_pane_is_restarted(how: dict[str, Any]) -> None:
    assert kinds(run(agent(**how))) == [RestartAgent]


@pytest.mark.parametrize(("after", "restart"), [(CFG.grace, False), (CFG.grace + 1, True)])
def test_a_session_that_never_reported_session_start_is_restarted_beyond_grace(after: float, restart: bool) -> None:
    actions = run(agent(started=NOW - after, session_start=False))
    assert kinds(actions) == ([RestartAgent] if restart else [])


# (previous restarts as offsets before NOW of the latest; wait that must pass after the latest)
BACKOFF = [((0,), 30), ((30, 0), 60), ((90, 30, 0), 120), ((2000, 1500, 1000, 500, 0), 480),
           ((5000, 4000, 3000, 2000, 1000, 0), 600), ((9000, 8000, 7000, 6000, 5000, 4000, 3000, 0), 600)]


@pytest.mark.parametrize(("offsets", "wait"), BACKOFF)
@pytest.mark.parametrize("delta", [-1, 0, 1])
def test_restarts_back_off_doubling_from_30s_to_10min(offsets: tuple[float, ...], wait: float, delta: int) -> None:
    latest = NOW - wait - delta
    restarts = tuple(latest - o for o in offsets)
    actions = run(DEAD, restarts=restarts, now=NOW)
    assert kinds(actions) == ([RestartAgent] if delta > 0 else [])
    if actions:
        assert actions[0].attempt == len(offsets) + 1 and f"backoff {wait:g}s" in actions[0].reason


def test_the_backoff_waits_are_the_documented_ones() -> None:
    assert [CFG.deacon_wait(n) for n in range(8)] == [0, 30, 60, 120, 240, 480, 600, 600]
    assert CFG.deacon_wait(10_000) == 600  # no overflow for any count


def five_within(span: float) -> tuple[float, ...]:
    step = span / 4
    return tuple(NOW - 1000 - span + i * step for i in range(5))


@pytest.mark.parametrize(("span", "loop"), [(CFG.crash_loop_window - 1, True), (CFG.crash_loop_window, True),
                                            (CFG.crash_loop_window + 1, False)])
def test_five_restarts_within_15_minutes_is_a_crash_loop(span: float, loop: bool) -> None:
    restarts = five_within(span)
    actions = run(DEAD, restarts=restarts)
    if loop:
        assert kinds(actions) == [Escalate]
        esc = actions[0]
        assert esc.to == "overseer" and esc.key == decide.crash_loop_key(MAYOR, restarts[0])
        assert esc.message.reason == "crash-loop" and esc.message.key == esc.key
        assert protocol.parse(*protocol.format(esc.message)) == esc.message
    else:
        assert kinds(actions) == [RestartAgent]


def test_four_restarts_are_not_a_loop() -> None:
    assert kinds(run(DEAD, restarts=five_within(100)[1:])) == [RestartAgent]


def test_a_standing_crash_loop_is_not_repeated_and_not_restarted() -> None:
    restarts = five_within(400)
    key = decide.crash_loop_key(MAYOR, restarts[0])
    standing = {key: StandingEscalation(key=key, to="overseer", raised_at=NOW - 5000)}
    assert run(DEAD, restarts=restarts, standing=standing, now=NOW + 86400) == []


def test_the_overseers_acknowledgement_clears_the_crash_loop() -> None:
    restarts = five_within(400)
    key = decide.crash_loop_key(MAYOR, restarts[0])
    acked = {key: StandingEscalation(key=key, to="overseer", raised_at=NOW - 900, acked_at=NOW - 60)}
    actions = run(DEAD, restarts=restarts, standing=acked)
    assert kinds(actions) == [RestartAgent] and actions[0].attempt == 1  # earlier restarts no longer count


@pytest.mark.parametrize(("alive_for", "reset"), [(CFG.stable_reset, False), (CFG.stable_reset + 1, True)])
def test_the_backoff_resets_after_30_minutes_stable(alive_for: float, reset: bool) -> None:
    restarts = (NOW - alive_for - 100, NOW - alive_for)
    key = decide.crash_loop_key(MAYOR, restarts[0])
    standing = {key: StandingEscalation(key=key, to="overseer", raised_at=NOW - 5000, acked_at=NOW - 4000)}
    actions = run(agent(), restarts=restarts)
    assert kinds(actions) == ([ResetBackoff] if reset else [])
    if reset:
        assert actions[0].at == NOW
        assert kinds(run(agent(), restarts=restarts, standing=standing)) == [ResetBackoff, ResolveEscalation]


def test_restarts_before_the_reset_do_not_count() -> None:
    restarts = five_within(400)
    actions = run(DEAD, restarts=restarts, reset_at=restarts[-1])
    assert kinds(actions) == [RestartAgent] and actions[0].attempt == 1
    assert run(agent(), restarts=restarts, reset_at=restarts[-1]) == []  # nothing left to reset


def simulate(hours: float, lives: float, ack_at: float | None = None) -> tuple[list[float], list[Escalate]]:
    """Rounds every 2 s for `hours`; the session dies `lives` seconds after each restart. The
    deacon's actions are applied to its history as the effect layer would."""
    restarts: list[float] = []
    reset_at: float | None = None
    standing: dict[str, StandingEscalation] = {}
    escalations: list[Escalate] = []
    t, end = 0.0, hours * 3600
    while t < end:
        if ack_at is not None and t >= ack_at:  # the overseer acknowledges what stands then, once
            standing = {k: v.model_copy(update={"acked_at": t}) for k, v in standing.items()}
            ack_at = None
        alive = bool(restarts) and t - restarts[-1] < lives
        ev = agent(alive=alive, started=restarts[-1] if restarts else 0.0)
        seen = TownSeen(supervised=(ev,), history={MAYOR: SupervisedHistory(tuple(restarts), reset_at)},
                        standing=standing)
        for a in decide.decide_town(seen, CFG, t):
            if isinstance(a, RestartAgent):
                restarts.append(t)
            elif isinstance(a, ResetBackoff):
                reset_at = a.at
            elif isinstance(a, Escalate):
                escalations.append(a)
                standing[a.key] = StandingEscalation(key=a.key, to=a.to, raised_at=t)
            elif isinstance(a, ResolveEscalation):
                standing.pop(a.key, None)
        t += 2
    return restarts, escalations


def test_a_crash_looping_session_is_escalated_once_in_three_hours() -> None:
    restarts, escalations = simulate(3, lives=1)
    assert len(escalations) == 1 and len(restarts) == 5  # then it stays down until acknowledged
    gaps = [b - a for a, b in zip(restarts, restarts[1:])]
    assert all(g > w for g, w in zip(gaps, (30, 60, 120, 240)))


def test_after_the_acknowledgement_it_tries_again_and_a_new_loop_is_a_new_escalation() -> None:
    restarts, escalations = simulate(3, lives=1, ack_at=3600)
    assert len(escalations) == 2 and len(restarts) == 10
    assert escalations[0].key != escalations[1].key


def test_a_session_that_lives_long_is_restarted_every_time_without_escalation() -> None:
    restarts, escalations = simulate(6, lives=CFG.stable_reset + 60)
    assert escalations == [] and len(restarts) >= 10


# ---- heartbeats -------------------------------------------------------------------------------


@pytest.mark.parametrize(("age", "stale"), [(CFG.heartbeat_stale_after, False), (CFG.heartbeat_stale_after + 1, True)])
def test_a_stale_patrol_heartbeat_is_reported_and_escalated_once(age: float, stale: bool) -> None:
    actions = run(heartbeats={"witness": NOW - age})
    assert kinds(actions) == ([StaleHeartbeat, Escalate] if stale else [])
    if stale:
        key = actions[1].key
        assert key == "heartbeat:witness" and actions[1].to == "overseer"
        standing = {key: StandingEscalation(key=key, to="overseer", raised_at=NOW)}
        assert kinds(run(heartbeats={"witness": NOW - age}, standing=standing)) == [StaleHeartbeat]
        assert kinds(run(heartbeats={"witness": NOW}, standing=standing)) == [ResolveEscalation]


# ---- re-escalation ------------------------------------------------------------------------------


def esc(**kw: Any) -> dict[str, StandingEscalation]:
    base: dict[str, Any] = dict(key="waiting:gt/polecats/nux:gt-a1", to="mayor", raised_at=NOW - 3601,
                                subject="ESCALATION gt-a1", bead="gt-a1", agent="gt/polecats/nux", reason="waiting")
    return {base["key"]: StandingEscalation(**{**base, **kw})}


@pytest.mark.parametrize(("standing", "again"), [
    (esc(), True),
    (esc(raised_at=NOW - 3600), False),
    (esc(raised_at=NOW - 3599), False),
    (esc(acked_at=NOW - 10), False),
    (esc(reescalated_at=NOW - 10), False),
    (esc(to="overseer"), False),
])
def test_an_unacknowledged_escalation_goes_to_the_overseer_once(standing: dict[str, StandingEscalation],
                                                                 again: bool) -> None:
    actions = run(standing=standing)
    assert kinds(actions) == ([Reescalate] if again else [])
    if again:
        r = actions[0]
        assert r.to == "overseer" and r.key == "waiting:gt/polecats/nux:gt-a1"
        assert r.message.bead == "gt-a1" and "not acknowledged" in r.message.text
        assert protocol.parse(*protocol.format(r.message)) == r.message


# ---- convoys ----------------------------------------------------------------------------------


def convoy(**kw: Any) -> ConvoySeen:
    base: dict[str, Any] = dict(id="hq-cv1", creator="overseer", landed=True, title="Release 1", beads=3)
    return ConvoySeen(**{**base, **kw})


@pytest.mark.parametrize(("c", "sent", "to"), [
    (convoy(), frozenset(), ["overseer", "mayor"]),
    (convoy(creator="mayor"), frozenset(), ["mayor"]),
    (convoy(creator=None), frozenset(), ["mayor"]),
    (convoy(), frozenset({"convoy_landed:hq-cv1:overseer"}), ["mayor"]),
    (convoy(), frozenset({"convoy_landed:hq-cv1:overseer", "convoy_landed:hq-cv1:mayor"}), []),
    (convoy(landed=False), frozenset(), []),
])
def test_convoy_landed_mail_to_creator_and_mayor_exactly_once(c: ConvoySeen, sent: frozenset[str],
                                                              to: list[str]) -> None:
    actions = run(convoys=(c,), sent_keys=sent)
    assert [a.to for a in actions] == to
    for a in actions:
        assert isinstance(a, SendMail) and a.idempotency_key == f"convoy_landed:hq-cv1:{a.to}"
        assert a.message == ConvoyLanded(convoy="hq-cv1", title="Release 1", beads="3",
                                         text="convoy hq-cv1 landed: all 3 tracked beads are closed")
        assert protocol.parse(*protocol.format(a.message)) == a.message


def test_convoy_landed_over_an_hour_of_rounds_is_sent_once_per_recipient() -> None:
    sent: set[str] = set()
    mails = []
    for i in range(1800):
        for a in run(convoys=(convoy(),), sent_keys=frozenset(sent), now=NOW + 2 * i):
            mails.append(a)
            sent.add(a.idempotency_key)
    assert sorted(m.to for m in mails) == ["mayor", "overseer"]


# ---- properties ---------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(NOW - 20_000, NOW, allow_nan=False), max_size=9), st.booleans(),
       st.sampled_from([None, NOW - 5000, NOW - 100]), st.booleans(), st.floats(0, 20_000, allow_nan=False))
def test_never_a_restart_inside_a_crash_loop_and_one_escalation_per_key(
        restarts: list[float], alive: bool, reset_at: float | None, standing_loop: bool, later: float) -> None:
    restarts.sort()
    h = SupervisedHistory(tuple(restarts), reset_at)
    counted = decide.counted_restarts(MAYOR, h, {})
    standing = {}
    if standing_loop and len(counted) >= 5:
        key = decide.crash_loop_key(MAYOR, counted[-5])
        standing = {key: StandingEscalation(key=key, to="overseer", raised_at=NOW)}
    seen = TownSeen(supervised=(agent(alive=alive),), history={MAYOR: h}, standing=standing)
    now = NOW + later
    actions = decide.decide_town(seen, CFG, now)
    in_loop = len(counted) >= 5 and counted[-1] - counted[-5] <= CFG.crash_loop_window
    if in_loop or alive:
        assert RestartAgent not in kinds(actions)
    if counted and not alive and not in_loop:
        restarted = RestartAgent in kinds(actions)
        assert restarted == (now - counted[-1] > CFG.deacon_wait(len(counted)))
    keys = [a.key for a in actions if isinstance(a, Escalate)]
    assert len(keys) == len(set(keys)) and not set(keys) & set(standing)


# ---- a coordinator whose first turn saw no tools ---------------------------------------------------


def toolless(name: str = MAYOR, stop_at: float = NOW - 4, **kw: Any) -> Evidence:
    started = NOW - 10
    events = (HookEvent(kind=HookKind.SESSION_START, at=started + 1),
              HookEvent(kind=HookKind.USER_PROMPT_SUBMIT, at=started + 2), HookEvent(kind=HookKind.STOP, at=stop_at))
    return Evidence(agent=name, events=events, tmux=TmuxEvidence(session=True, started_at=started), **kw)


@pytest.mark.parametrize(("evidence", "nudged", "expected"), [
    (toolless(), (), [NudgeAgent]),
    (toolless(name="gt/refinery"), (), [NudgeAgent]),
    (toolless(stop_at=NOW - 3), (), []),  # toolless_renudge (3 s) not yet beyond
    (toolless(), (NOW - 2,), []),  # once per session
    (toolless(), (NOW - 100,), [NudgeAgent]),  # a nudge of its earlier session does not count
    (toolless(last_mcp_call=NOW - 7), (), []),  # it called a vermas tool: connected
    (agent(), (), []),  # SessionStart alone: no prompt yet
])
def test_a_coordinator_whose_turn_ended_without_any_tool_call_is_renudged_once(
        evidence: Evidence, nudged: tuple[float, ...], expected: list[type]) -> None:
    seen = TownSeen(supervised=(evidence,), history={evidence.agent: SupervisedHistory(nudges=nudged)})
    actions = decide.decide_town(seen, CFG, NOW)
    assert kinds(actions) == expected
    if expected:
        assert actions[0].agent == evidence.agent and "without any tool call" in actions[0].reason
