"""The witness's decisions (pure): each state's action at each threshold edge (±1 s), each limit,
the POLECAT_DONE checks including the stale-mail and name-reuse races, HELP, orphans, the
escalation dedup; and, as hypothesis properties over any evidence and history, the invariants:
no nuke of a worktree with unmerged or uncommitted work, a save before anything that ends a
session on a dirty worktree, a running tool is never restarted or nudged, one escalation per key."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from vermas import protocol
from vermas.patrol_types import (
    Escalate, Evidence, GitEvidence, HookEvent, HookKind, Hooking, NotificationKind, PatrolConfig, ResolveEscalation,
    SendMail, StandingEscalation, TmuxEvidence,
)
from vermas.protocol import Help, MergeReady, Merged, PolecatDone, PolecatState
from vermas.witness import decide
from vermas.witness.types import (
    AckMail, BranchSeen, GuppNudge, HookJudgment, InboxMail, MergeRequestSeen, NukePolecat, ReopenBead, Resling,
    RestartSession, RigHistory, RigSeen, SaveRescue, StopSession,
)

CFG = PatrolConfig()
K = HookKind
T0 = 100_000.0  # the session's start
HOOKED = T0 - 50  # when the bead was hooked to this slot
NUX = "gt/polecats/nux"
BEAD = "gt-a1"
BRANCH = "polecat/nux/gt-a1"


def e(kind: HookKind, at: float, tool: str | None = None, note: NotificationKind | None = None) -> HookEvent:
    return HookEvent(kind=kind, at=at, tool=tool, notification=note)


def ev(*events: HookEvent, agent: str = NUX, session: bool = True, pane_alive: bool = True,
       exit_status: int | None = None, started: float | None = T0, state: PolecatState = PolecatState.WORKING,
       bead: str | None = BEAD, ahead: int = 1, uncommitted: int = 0, git: bool = True, hooked_since: float = HOOKED,
       excerpt: str = "", **kw: Any) -> Evidence:
    return Evidence(
        agent=agent, events=events, polecat_state=state, hooked_bead=bead,
        tmux=TmuxEvidence(session=session, pane_alive=pane_alive, exit_status=exit_status, started_at=started,
                          excerpt=excerpt),
        git=GitEvidence(head="c0ffee", branch=BRANCH, ahead=ahead, uncommitted=uncommitted) if git else None,
        hooking=Hooking(bead=bead or BEAD, branch=BRANCH, since=hooked_since), **kw)


def run(*polecats: Evidence, now: float, history: RigHistory | None = None, inbox: tuple[InboxMail, ...] = (),
        mrs: dict[str, MergeRequestSeen] | None = None, branches: tuple[BranchSeen, ...] = (),
        cfg: PatrolConfig = CFG) -> list[Any]:
    seen = RigSeen(rig="gt", polecats=polecats, inbox=inbox, merge_requests=mrs or {}, branches=branches)
    return decide.decide_rig(seen, history or RigHistory(), cfg, now)


def kinds(actions: list[Any]) -> list[type]:
    return [type(a) for a in actions]


def assert_wire(msg: protocol.ProtocolMessage) -> None:
    assert protocol.parse(*protocol.format(msg)) == msg


SS = e(K.SESSION_START, T0 + 1)
UPS = e(K.USER_PROMPT_SUBMIT, T0 + 2)
IDLE_AT = T0 + 100


def idle(**kw: Any) -> Evidence:
    """Idle after a turn that called tools (a tool-less turn is its own case: toolless_turn)."""
    return ev(SS, UPS, e(K.PRE_TOOL_USE, T0 + 3, "Bash"), e(K.POST_TOOL_USE, T0 + 4, "Bash"), e(K.STOP, IDLE_AT),
              **kw)


# ---- done ----------------------------------------------------------------------------------------


def test_a_done_polecat_has_its_session_stopped_and_its_worktree_kept() -> None:
    actions = run(ev(UPS, state=PolecatState.DONE, state_since=T0 + 9), now=T0 + 10)
    assert kinds(actions) == [StopSession]
    assert "worktree stays" in actions[0].reason
    assert run(ev(UPS, state=PolecatState.DONE, session=False), now=T0 + 10) == []  # already gone


def test_a_done_polecat_with_uncommitted_files_is_saved_before_the_stop() -> None:
    actions = run(ev(UPS, state=PolecatState.DONE, uncommitted=2), now=T0 + 10)
    assert kinds(actions) == [SaveRescue, StopSession]


# ---- starting ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("after", "restart"), [(CFG.grace - 1, False), (CFG.grace, False), (CFG.grace + 1, True)])
def test_starting_without_session_start_is_restarted_beyond_the_grace(after: float, restart: bool) -> None:
    actions = run(ev(), now=T0 + after)
    assert kinds(actions) == ([RestartSession] if restart else [])
    if restart:
        assert actions[0].attempt == 1 and "no SessionStart" in actions[0].reason


def test_a_spawning_polecat_is_the_spawns_business() -> None:
    assert run(ev(session=False, state=PolecatState.SPAWNING, state_since=T0), now=T0 + 10_000) == []


# ---- working: never restarted, escalated after stuck_after ---------------------------------------


@pytest.mark.parametrize("tool", [True, False])
@pytest.mark.parametrize(("quiet", "escalate"), [(CFG.stuck_after - 1, False), (CFG.stuck_after, False),
                                                 (CFG.stuck_after + 1, True), (10 * CFG.stuck_after, True)])
def test_working_is_never_restarted_and_escalated_only_after_stuck_after(tool: bool, quiet: float,
                                                                        escalate: bool) -> None:
    last = e(K.PRE_TOOL_USE, T0 + 3, "Bash") if tool else e(K.POST_TOOL_USE, T0 + 3, "Bash")
    actions = run(ev(SS, UPS, last, excerpt="$ sleep 120"), now=T0 + 3 + quiet)
    assert kinds(actions) == ([Escalate] if escalate else [])
    if escalate:
        esc = actions[0]
        assert esc.key == f"stuck:{NUX}:{BEAD}" and esc.to == "mayor" and esc.message.reason == "stuck"
        assert ("tool Bash running" in esc.reason) is tool and "sleep 120" in esc.message.text
        assert_wire(esc.message)


def test_a_stuck_escalation_is_sent_once_while_it_stands_and_resolved_when_work_resumes() -> None:
    stuck = ev(SS, UPS, e(K.PRE_TOOL_USE, T0 + 3, "Bash"))
    now = T0 + 3 + CFG.stuck_after + 1
    first = run(stuck, now=now)
    key = first[0].key
    standing = {key: StandingEscalation(key=key, to="mayor", raised_at=now)}
    assert run(stuck, now=now + 600, history=RigHistory(standing=standing)) == []
    resumed = ev(SS, UPS, e(K.PRE_TOOL_USE, T0 + 3, "Bash"), e(K.POST_TOOL_USE, now + 5, "Bash"))
    assert run(resumed, now=now + 10, history=RigHistory(standing=standing)) == [
        ResolveEscalation(key=key, reason="its condition is gone")]


# ---- idle: GUPP nudges with backoff, then a restart ----------------------------------------------


def nudges(*times: float) -> RigHistory:
    return RigHistory(nudges={BEAD: times})


N1 = IDLE_AT + 61
N2 = N1 + 121
N3 = N2 + 241
# (case, history, seconds after the reference time, expected action kinds)
IDLE_TABLE = [
    ("1st nudge not yet", nudges(), IDLE_AT + 60, []),
    ("1st nudge after 1 min", nudges(), IDLE_AT + 61, [GuppNudge]),
    ("2nd nudge not yet", nudges(N1), N1 + 120, []),
    ("2nd nudge after 2 min more", nudges(N1), N1 + 121, [GuppNudge]),
    ("3rd nudge not yet", nudges(N1, N2), N2 + 240, []),
    ("3rd nudge after 4 min more", nudges(N1, N2), N2 + 241, [GuppNudge]),
    ("restart not yet", nudges(N1, N2, N3), N3 + 240, []),
    ("restart after the 3rd nudge and 4 min more", nudges(N1, N2, N3), N3 + 241, [RestartSession]),
    ("nudges of an earlier session do not count", nudges(T0 - 900, T0 - 600, T0 - 300), IDLE_AT + 61, [GuppNudge]),
]


@pytest.mark.parametrize(("history", "now", "expected"), [t[1:] for t in IDLE_TABLE], ids=[t[0] for t in IDLE_TABLE])
def test_idle_with_hooked_work_is_nudged_with_backoff_then_restarted(history: RigHistory, now: float,
                                                                     expected: list[type]) -> None:
    actions = run(idle(), now=now, history=history)
    assert kinds(actions) == expected
    if expected == [GuppNudge]:
        assert not actions[0].start  # an idle session's nudge: skipped while someone else nudges it
        assert actions[0].attempt == 1 + sum(1 for t in history.nudges[BEAD] if t >= T0)


def test_an_agent_that_answered_a_nudge_is_timed_from_its_new_idle() -> None:
    """Nudged at N1, it worked and went idle again at N1 + 50: the 2nd nudge waits 2 min from then."""
    again = ev(SS, UPS, e(K.STOP, IDLE_AT), e(K.USER_PROMPT_SUBMIT, N1 + 1), e(K.STOP, N1 + 50))
    assert run(again, now=N1 + 50 + 120, history=nudges(N1)) == []
    assert kinds(run(again, now=N1 + 50 + 121, history=nudges(N1))) == [GuppNudge]


# ---- started: the start nudge never confirmed ------------------------------------------------


SS_AT = T0 + 1  # SessionStart; the slot stays `started` until a GUPP nudge is confirmed
U1 = SS_AT + CFG.gupp_wait(0) + 1
U2 = U1 + CFG.gupp_wait(1) + 1
U3 = U2 + CFG.gupp_wait(2) + 1
# (case, history, now, expected): a session whose start nudge was never confirmed (its runner
# died before, and the next one found the session already running) is nudged like an idle one,
# and escalated only after the last nudge's wait.
UNCONFIRMED_TABLE = [
    ("1st re-nudge not yet", nudges(), SS_AT + CFG.gupp_wait(0), []),
    ("1st re-nudge", nudges(), SS_AT + CFG.gupp_wait(0) + 1, [GuppNudge]),
    ("2nd not yet", nudges(U1), U1 + CFG.gupp_wait(1), []),
    ("2nd", nudges(U1), U1 + CFG.gupp_wait(1) + 1, [GuppNudge]),
    ("3rd not yet", nudges(U1, U2), U2 + CFG.gupp_wait(2), []),
    ("3rd", nudges(U1, U2), U2 + CFG.gupp_wait(2) + 1, [GuppNudge]),
    ("escalation not yet", nudges(U1, U2, U3), U3 + CFG.gupp_wait(3), []),
    ("escalation after the last nudge's wait", nudges(U1, U2, U3), U3 + CFG.gupp_wait(3) + 1, [Escalate]),
    ("nudges of an earlier session do not count", nudges(T0 - 900, T0 - 600, T0 - 300), SS_AT + CFG.gupp_wait(0) + 1,
     [GuppNudge]),
    ("never escalated at stuck_after before its nudges", nudges(), SS_AT + CFG.stuck_after + 1, [GuppNudge]),
]


@pytest.mark.parametrize(("history", "now", "expected"), [t[1:] for t in UNCONFIRMED_TABLE],
                         ids=[t[0] for t in UNCONFIRMED_TABLE])
def test_an_unconfirmed_start_nudge_is_nudged_again_with_backoff_then_escalated(
        history: RigHistory, now: float, expected: list[type]) -> None:
    actions = run(ev(SS, state=PolecatState.STARTED), now=now, history=history)
    assert kinds(actions) == expected
    if expected == [GuppNudge]:
        assert actions[0].bead == BEAD and "never confirmed" in actions[0].reason and actions[0].start
        assert actions[0].attempt == 1 + sum(1 for t in history.nudges[BEAD] if t >= T0)
    if expected == [Escalate]:
        assert actions[0].key == f"gupp-undelivered:{NUX}:{BEAD}" and "after 3 nudges" in actions[0].reason


def test_an_unconfirmed_start_with_no_nudges_allowed_is_escalated_after_the_first_wait() -> None:
    cfg = PatrolConfig(gupp_max_nudges=0)
    assert run(ev(SS, state=PolecatState.STARTED), now=SS_AT + cfg.gupp_wait(0), cfg=cfg) == []
    assert kinds(run(ev(SS, state=PolecatState.STARTED), now=SS_AT + cfg.gupp_wait(0) + 1, cfg=cfg)) == [Escalate]


@pytest.mark.parametrize(("after", "escalate"), [(CFG.stuck_after, False), (CFG.stuck_after + 1, True)])
def test_an_unconfirmed_start_without_hooked_work_is_escalated_after_stuck_after(after: float,
                                                                                escalate: bool) -> None:
    actions = run(ev(SS, state=PolecatState.STARTED, bead=None), now=SS_AT + after)
    assert kinds(actions) == ([Escalate] if escalate else [])


def test_an_unconfirmed_start_escalation_stands_while_waiting_and_is_resolved_once_confirmed() -> None:
    key = f"gupp-undelivered:{NUX}:{BEAD}"
    standing = {key: StandingEscalation(key=key, to="mayor", raised_at=U3 + 500)}
    history = RigHistory(nudges={BEAD: (U3 + 600,)}, standing=standing)  # a later nudge, still unconfirmed
    assert run(ev(SS, state=PolecatState.STARTED), now=U3 + 610, history=history) == []
    working = ev(SS, UPS, e(K.PRE_TOOL_USE, U3 + 605, "Bash"))  # confirmed: it works
    assert run(working, now=U3 + 610, history=history) == [ResolveEscalation(key=key, reason="its condition is gone")]


@given(times=st.lists(st.floats(min_value=T0 - 5000, max_value=T0 + 20_000), max_size=6),
       after=st.floats(min_value=0, max_value=30_000))
@settings(max_examples=300, deadline=None)
def test_an_unconfirmed_start_with_hooked_work_is_never_escalated_before_its_nudges(times: list[float],
                                                                                   after: float) -> None:
    now = SS_AT + after
    history = nudges(*sorted(t for t in times if t <= now))
    actions = run(ev(SS, state=PolecatState.STARTED), now=now, history=history)
    this_session = [t for t in history.nudges[BEAD] if t >= T0] if history.nudges.get(BEAD) else []
    assert len(actions) <= 1
    if any(isinstance(a, Escalate) for a in actions):
        assert len(this_session) >= CFG.gupp_max_nudges
    if any(isinstance(a, GuppNudge) for a in actions):
        assert len(this_session) < CFG.gupp_max_nudges


TOOLLESS = ev(SS, UPS, e(K.STOP, IDLE_AT))  # the first prompt reached the model before its MCP tools


@pytest.mark.parametrize(("history", "after", "cfg", "expected"), [
    (RigHistory(), 3, CFG, []),  # toolless_renudge 3 s: at exactly 3 s it waits one more round
    (RigHistory(), 4, CFG, [GuppNudge]),  # long before gupp_first (60 s)
    (nudges(IDLE_AT + 4), 124, CFG, []),  # once: then the normal backoff from that nudge (2nd: 120 s)
    (nudges(IDLE_AT + 4), 125, CFG, [GuppNudge]),
    (nudges(T0 - 50), 4, CFG, [GuppNudge]),  # a nudge of an earlier session does not count
    (RigHistory(), 4, PatrolConfig(gupp_max_nudges=0), []),  # no nudges at all: none
    (RigHistory(), 11, PatrolConfig(toolless_renudge=10), [GuppNudge]),
])
def test_a_turn_that_ended_without_any_tool_call_is_renudged_once_quickly(
        history: RigHistory, after: float, cfg: PatrolConfig, expected: list[type]) -> None:
    actions = run(TOOLLESS, now=IDLE_AT + after, history=history, cfg=cfg)
    assert kinds(actions) == expected
    if expected and not history.nudges:
        assert actions[0].attempt == 1 and "without any tool call" in actions[0].reason


def test_the_quick_renudge_needs_hooked_work_and_an_idle_session() -> None:
    assert run(ev(SS, UPS, e(K.STOP, IDLE_AT), bead=None), now=IDLE_AT + 30) == []
    working = ev(SS, UPS, e(K.STOP, IDLE_AT), e(K.USER_PROMPT_SUBMIT, IDLE_AT + 1))
    assert run(working, now=IDLE_AT + 30) == []
    with_mcp = ev(SS, UPS, e(K.STOP, IDLE_AT), last_mcp_call=T0 + 3)  # it did reach a vermas tool
    assert run(with_mcp, now=IDLE_AT + 30) == []


def test_idle_without_hooked_work_is_left_alone() -> None:
    assert run(idle(bead=None), now=IDLE_AT + 10_000) == []


@pytest.mark.parametrize(("ahead", "uncommitted", "git", "nuke"), [
    (0, 0, True, True), (1, 0, True, False), (0, 1, True, False), (0, 0, False, False)])
def test_only_a_clean_deferred_slot_is_nuked(ahead: int, uncommitted: int, git: bool, nuke: bool) -> None:
    slot = idle(bead=None, state=PolecatState.DEFERRED, ahead=ahead, uncommitted=uncommitted, git=git)
    assert kinds(run(slot, now=IDLE_AT + 5)) == ([NukePolecat] if nuke else [])


# ---- waiting ------------------------------------------------------------------------------------


def test_waiting_is_escalated_with_the_pane_excerpt_and_never_nudged() -> None:
    waiting = ev(SS, UPS, e(K.PRE_TOOL_USE, T0 + 3, "Bash"),
                 e(K.NOTIFICATION, T0 + 4, note=NotificationKind.PERMISSION),
                 excerpt="Do you want to proceed?\n> 1. Yes\n  2. No")
    for now in (T0 + 5, T0 + 50_000):
        actions = run(waiting, now=now, history=nudges())
        assert kinds(actions) == [Escalate]
        esc = actions[0]
        assert esc.key == f"waiting:{NUX}:{BEAD}" and "Do you want to proceed?" in esc.message.text
        assert esc.message.key == esc.key and esc.message.agent == NUX
        assert "no keystrokes" in esc.reason
        assert_wire(esc.message)


def test_a_long_pane_excerpt_keeps_its_end() -> None:
    waiting = ev(e(K.NOTIFICATION, T0 + 4, note=NotificationKind.PERMISSION), excerpt="x" * 5000 + "THE PROMPT")
    text = run(waiting, now=T0 + 5)[0].message.text
    assert "THE PROMPT" in text and len(text) < 3000


# ---- exited or dead: restart, at most max_restarts per bead --------------------------------------


DEAD = dict(session=False)


@pytest.mark.parametrize("how", [dict(session=False), dict(pane_alive=False, exit_status=1),
                                 dict(pane_alive=False, exit_status=0)])
def test_dead_or_exited_with_hooked_work_is_restarted_in_place(how: dict[str, Any]) -> None:
    actions = run(ev(UPS, **how), now=T0 + 5)
    assert kinds(actions) == [RestartSession]
    assert (actions[0].agent, actions[0].bead, actions[0].attempt) == (NUX, BEAD, 1)


def test_dead_without_hooked_work_is_not_restarted() -> None:
    assert run(ev(UPS, bead=None, **DEAD), now=T0 + 5) == []


def test_a_dirty_worktree_is_saved_to_a_rescue_ref_right_before_the_restart() -> None:
    actions = run(ev(UPS, uncommitted=3, **DEAD), now=T0 + 5)
    assert kinds(actions) == [SaveRescue, RestartSession]
    save = actions[0]
    assert save.ref.startswith(f"refs/vermas/rescue/{BEAD}/") and save.files == 3
    assert save.ref in save.note and "3 files" in save.note
    assert decide.rescue_ref(BEAD, NUX, 0.0) == f"refs/vermas/rescue/{BEAD}/19700101T000000Z"


def test_an_unreadable_worktree_is_saved_too_before_a_restart() -> None:
    actions = run(ev(UPS, git=False, **DEAD), now=T0 + 5)
    assert kinds(actions) == [SaveRescue, RestartSession] and actions[0].files is None


@pytest.mark.parametrize("done", [0, 1, 2])
def test_restarts_below_the_limit_are_numbered(done: int) -> None:
    history = RigHistory(restarts={BEAD: tuple(HOOKED + 10 * i for i in range(done))})
    actions = run(ev(UPS, **DEAD), now=T0 + 5, history=history)
    assert kinds(actions) == [RestartSession] and actions[0].attempt == done + 1


def test_restarts_of_an_earlier_hooking_do_not_count() -> None:
    history = RigHistory(restarts={BEAD: (HOOKED - 3, HOOKED - 2, HOOKED - 1)})
    assert kinds(run(ev(UPS, **DEAD), now=T0 + 5, history=history)) == [RestartSession]


def test_beyond_max_restarts_the_bead_is_reopened_naming_branch_and_commits_and_escalated() -> None:
    history = RigHistory(restarts={BEAD: (HOOKED, HOOKED + 1, HOOKED + 2)})
    actions = run(ev(UPS, uncommitted=2, ahead=4, **DEAD), now=T0 + 5, history=history)
    assert kinds(actions) == [SaveRescue, ReopenBead, Escalate]
    save, reopen, esc = actions
    assert (reopen.bead, reopen.branch, reopen.commits, reopen.head) == (BEAD, BRANCH, 4, "c0ffee")
    assert BRANCH in reopen.note and "4 commits" in reopen.note and save.ref in reopen.note
    assert esc.to == "mayor" and esc.message.reason == "restarts-exhausted" and esc.message.bead == BEAD
    assert esc.key == f"restarts-exhausted:{BEAD}:{int(HOOKED)}"
    assert_wire(esc.message)
    # while that escalation stands, a repeat round reopens (idempotent effect) but never re-escalates
    standing = {esc.key: StandingEscalation(key=esc.key, to="mayor", raised_at=T0 + 5)}
    again = run(ev(UPS, **DEAD), now=T0 + 7,
                history=RigHistory(restarts=history.restarts, standing=standing))
    assert kinds(again) == [ReopenBead]


def test_a_live_idle_session_beyond_its_limits_is_stopped_before_its_bead_is_reopened() -> None:
    history = RigHistory(nudges={BEAD: (N1, N2, N3)}, restarts={BEAD: (HOOKED, HOOKED + 1, HOOKED + 2)})
    actions = run(idle(), now=N3 + 241, history=history)
    assert kinds(actions) == [StopSession, ReopenBead, Escalate]


def test_max_restarts_zero_reopens_at_once() -> None:
    actions = run(ev(UPS, **DEAD), now=T0 + 5, cfg=PatrolConfig(max_restarts=0))
    assert kinds(actions) == [ReopenBead, Escalate]


# ---- POLECAT_DONE --------------------------------------------------------------------------------


MR = MergeRequestSeen(id="gt-mr1", bead=BEAD, polecat=NUX, branch=BRANCH, created_at=T0 + 500)


def done_mail(sent_at: float = T0 + 500, status: str = "COMPLETED", sender: str = NUX, bead: str = BEAD,
              branch: str | None = BRANCH, mr: str | None = "gt-mr1", mail_id: str = "m1") -> InboxMail:
    msg = PolecatDone(bead=bead, status=status, polecat=NUX, branch=branch, commit="c0ffee", merge_request=mr,
                      text="did it")
    return InboxMail(id=mail_id, sender=sender, sent_at=sent_at, subject=msg.subject(), message=msg)


DONE_SLOT = ev(UPS, state=PolecatState.DONE, bead=None, session=False)


def test_a_valid_polecat_done_is_forwarded_as_merge_ready_then_acknowledged() -> None:
    actions = run(DONE_SLOT, now=T0 + 501, inbox=(done_mail(),), mrs={"gt-mr1": MR})
    assert kinds(actions) == [SendMail, AckMail]
    send, ack = actions
    assert send.to == "gt/refinery" and send.idempotency_key == "merge_ready:gt-mr1"
    assert send.message == MergeReady(bead=BEAD, branch=BRANCH, merge_request="gt-mr1", commit="c0ffee",
                                      polecat=NUX, text="did it")
    assert ack.id == "m1"
    assert_wire(send.message)


def _only_ack(actions: list[Any], phrase: str) -> None:
    assert kinds(actions) == [AckMail] and phrase in actions[0].reason, actions


def test_name_reuse_stale_mail_for_an_earlier_bead_never_touches_the_new_session() -> None:
    """nux finished gt-a0 and was nuked; a new nux now works on gt-a1. The old mail arrives late."""
    new_nux = ev(SS, UPS, e(K.PRE_TOOL_USE, T0 + 3, "Bash"))  # busy on gt-a1
    old = done_mail(sent_at=HOOKED - 100, bead="gt-a0", branch="polecat/nux/gt-a0", mr="gt-mr0")
    mrs = {"gt-mr0": MergeRequestSeen(id="gt-mr0", bead="gt-a0", polecat=NUX, branch="polecat/nux/gt-a0",
                                      created_at=HOOKED - 100)}
    _only_ack(run(new_nux, now=T0 + 10, inbox=(old,), mrs=mrs), "now holds gt-a1")


@pytest.mark.parametrize(("sent_at", "valid"), [(HOOKED - 1, False), (HOOKED, True), (HOOKED + 1, True)])
def test_same_bead_mail_from_before_the_current_hooking_is_stale(sent_at: float, valid: bool) -> None:
    """The bead was re-slung to a new nux (hooked at HOOKED): mail from the earlier hooking is stale."""
    mr = MergeRequestSeen(id="gt-mr1", bead=BEAD, polecat=NUX, branch=BRANCH, created_at=sent_at)
    actions = run(DONE_SLOT, now=T0 + 10, inbox=(done_mail(sent_at=sent_at),), mrs={"gt-mr1": mr})
    if valid:
        assert kinds(actions) == [SendMail, AckMail]
    else:
        _only_ack(actions, "before the current hooking")


@pytest.mark.parametrize(("mail", "mrs", "phrase"), [
    (done_mail(sender="gt/polecats/slit"), {"gt-mr1": MR}, "not by gt/polecats/nux"),
    (done_mail(branch="polecat/nux/other"), {"gt-mr1": MR}, "branch polecat/nux/other"),
    (done_mail(), {}, "not in the store"),
    (done_mail(mr=None), {"gt-mr1": MR}, "not in the store"),
    (done_mail(), {"gt-mr1": MergeRequestSeen(id="gt-mr1", bead="gt-zz", polecat=NUX, branch=BRANCH,
                                              created_at=T0)}, "not this hooking"),
    (done_mail(), {"gt-mr1": MergeRequestSeen(id="gt-mr1", bead=BEAD, polecat=NUX, branch=BRANCH,
                                              created_at=HOOKED - 1)}, "not this hooking"),
    (done_mail(), {"gt-mr1": MergeRequestSeen(id="gt-mr1", bead=BEAD, polecat=NUX, branch=BRANCH,
                                              created_at=T0, state="merged")}, "already merged"),
    (done_mail(branch=None), {"gt-mr1": MergeRequestSeen(id="gt-mr1", bead=BEAD, polecat=NUX, branch=None,
                                                         created_at=T0)}, "names no branch"),
    (done_mail(status="WHATEVER"), {}, "unknown status"),
])
def test_invalid_polecat_done_is_acknowledged_and_nothing_else(mail: InboxMail, mrs: dict[str, MergeRequestSeen],
                                                                phrase: str) -> None:
    _only_ack(run(DONE_SLOT, now=T0 + 501, inbox=(mail,), mrs=mrs), phrase)


def test_polecat_done_from_a_polecat_with_no_slot_is_stale() -> None:
    _only_ack(run(now=T0 + 501, inbox=(done_mail(),), mrs={"gt-mr1": MR}), "holds no hooking")


def test_polecat_done_escalated_goes_to_the_mayor_and_deferred_is_acknowledged() -> None:
    actions = run(DONE_SLOT, now=T0 + 501, inbox=(done_mail(status="ESCALATED", mr=None),))
    assert kinds(actions) == [Escalate, AckMail]
    assert actions[0].message.reason == "polecat-escalated" and actions[0].message.text == "did it"
    _only_ack(run(DONE_SLOT, now=T0 + 501, inbox=(done_mail(status="DEFERRED", mr=None),)), "DEFERRED")


# ---- HELP, MERGED, plain mail ------------------------------------------------------------------


def help_mail(mail_id: str = "h1", sender: str = NUX) -> InboxMail:
    msg = Help(bead=BEAD, text="tests hang on import")
    return InboxMail(id=mail_id, sender=sender, sent_at=T0 + 5, subject="HELP: tests hang", message=msg)


def test_help_becomes_a_bead_hooked_to_the_witness_session_with_the_evidence() -> None:
    actions = run(idle(excerpt="pytest -x\nhangs"), now=IDLE_AT + 10, inbox=(help_mail(),))
    assert kinds(actions) == [HookJudgment, AckMail]
    bead = actions[0]
    assert bead.to == "gt/witness" and bead.key == "help:h1"
    assert "tests hang on import" in bead.description and "state: idle" in bead.description
    assert "hangs" in bead.description  # the sender's pane excerpt
    assert HookJudgment not in kinds(run(idle(), now=IDLE_AT + 10, inbox=(help_mail(),),
                                         history=RigHistory(judgment_keys=frozenset({"help:h1"}))))


def test_help_from_someone_else_has_no_polecat_evidence() -> None:
    actions = run(now=T0, inbox=(help_mail(sender="overseer"),))
    assert "evidence:" not in actions[0].description


def test_merged_is_acknowledged_and_plain_mail_left_for_the_session() -> None:
    merged = InboxMail(id="g1", sender="gt/refinery", sent_at=T0, subject="MERGED gt-a1",
                       message=Merged(bead=BEAD))
    plain = InboxMail(id="p1", sender="overseer", sent_at=T0, subject="how is it going?", message=None)
    actions = run(now=T0, inbox=(merged, plain))
    assert actions == [AckMail(id="g1", reason="MERGED gt-a1 noted; the refinery cleans up")]


# ---- orphans -----------------------------------------------------------------------------------


def orphan(**kw: Any) -> BranchSeen:
    base: dict[str, Any] = dict(branch="polecat/slit/gt-b2", bead="gt-b2", ahead=2, merge_request=False,
                                polecat_present=False, bead_status="open", bead_assignee=None)
    return BranchSeen(**{**base, **kw})


@pytest.mark.parametrize(("branch", "expected"), [
    (orphan(), [Resling]),
    (orphan(polecat_present=True), []),
    (orphan(merge_request=True), []),
    (orphan(ahead=0), []),
    (orphan(bead_status="closed"), [Escalate]),
    (orphan(bead_status="hooked", bead_assignee="gt/polecats/ace"), [Escalate]),
    (orphan(bead=None, bead_status=None), [Escalate]),
])
def test_an_orphan_branch_is_reslung_or_escalated_never_deleted(branch: BranchSeen, expected: list[type]) -> None:
    actions = run(now=T0, branches=(branch,))
    assert kinds(actions) == expected
    if expected == [Resling]:
        assert (actions[0].bead, actions[0].branch) == ("gt-b2", "polecat/slit/gt-b2")
    if expected == [Escalate]:
        assert actions[0].key == "orphan:gt:polecat/slit/gt-b2" and "kept" in actions[0].message.text


@pytest.mark.parametrize(("since", "expected"), [(CFG.grace, []), (CFG.grace + 1, [Escalate])])
def test_an_orphan_is_reslung_once_then_escalated_if_orphaned_again_after_the_grace(
        since: float, expected: list[type]) -> None:
    history = RigHistory(reslung={"polecat/slit/gt-b2": T0 - since})
    actions = run(now=T0, branches=(orphan(),), history=history)
    assert kinds(actions) == expected
    if expected:
        assert "re-slung" in actions[0].message.text and "kept" in actions[0].message.text


def test_an_orphan_whose_bead_ran_out_of_restarts_is_left_to_that_escalation() -> None:
    standing = {"restarts-exhausted:gt-b2:99000": StandingEscalation(key="restarts-exhausted:gt-b2:99000", to="mayor",
                                                                     raised_at=T0 - 5)}
    assert run(now=T0, branches=(orphan(),), history=RigHistory(standing=standing)) == []
    other = {"restarts-exhausted:gt-c3:99000": standing["restarts-exhausted:gt-b2:99000"]}
    assert kinds(run(now=T0, branches=(orphan(),), history=RigHistory(standing=other))) == [Resling]


def test_a_resling_is_keyed_by_its_branch() -> None:
    assert Resling(bead="gt-b2", branch="polecat/slit/gt-b2", reason="r").key == "resling:polecat/slit/gt-b2"


# ---- properties ------------------------------------------------------------------------------------

KILLING = (RestartSession, StopSession, ReopenBead)
NAMES = ("nux", "slit", "ace", "max")

kinds_st = st.sampled_from(list(HookKind))
event_st = st.builds(
    lambda kind, at, note, tool: HookEvent(kind=kind, at=at, tool=tool,
                                           notification=note if kind is K.NOTIFICATION else None),
    kinds_st, st.floats(T0 - 100, T0 + 9000, allow_nan=False), st.sampled_from(list(NotificationKind)),
    st.sampled_from(["Bash", "Read", None]))


@st.composite
def polecat_st(draw: st.DrawFn, name: str) -> Evidence:
    session = draw(st.booleans())
    return Evidence(
        agent=f"gt/polecats/{name}", events=tuple(draw(st.lists(event_st, max_size=6))),
        tmux=TmuxEvidence(session=session, pane_alive=draw(st.booleans()),
                          exit_status=draw(st.sampled_from([0, 1, None])),
                          started_at=draw(st.sampled_from([T0, None]))),
        last_mcp_call=draw(st.sampled_from([None, T0 + 50, T0 + 5000])),
        git=draw(st.none() | st.builds(GitEvidence, head=st.just("c0"), branch=st.just(f"polecat/{name}/x"),
                                       ahead=st.integers(0, 3), uncommitted=st.integers(0, 3))),
        hooked_bead=draw(st.sampled_from([None, f"gt-{name}"])),
        hooking=draw(st.none() | st.builds(Hooking, bead=st.just(f"gt-{name}"), branch=st.just(f"polecat/{name}/x"),
                                           since=st.sampled_from([T0 - 100, T0 + 100]))),
        polecat_state=draw(st.sampled_from(list(PolecatState))),
        state_since=draw(st.sampled_from([None, T0])))


@st.composite
def round_st(draw: st.DrawFn) -> tuple[RigSeen, RigHistory, float]:
    names = draw(st.lists(st.sampled_from(NAMES), unique=True, max_size=4))
    polecats = tuple(draw(polecat_st(n)) for n in names)
    times = st.lists(st.floats(T0 - 200, T0 + 9000, allow_nan=False), max_size=4).map(tuple)
    beads = [f"gt-{n}" for n in NAMES]
    history = RigHistory(
        nudges={b: draw(times) for b in beads}, restarts={b: draw(times) for b in beads},
        standing={k: StandingEscalation(key=k, to="mayor", raised_at=T0) for k in draw(st.lists(st.sampled_from(
            [f"{kind}:gt/polecats/{n}:gt-{n}" for kind in ("waiting", "stuck") for n in NAMES]
            + [f"orphan:gt:polecat/{n}/x" for n in NAMES])))})
    branches = tuple(BranchSeen(branch=f"polecat/{n}/x", bead=f"gt-{n}", ahead=draw(st.integers(0, 2)),
                                merge_request=draw(st.booleans()), polecat_present=False,
                                bead_status=draw(st.sampled_from(["open", "closed"])))
                     for n in draw(st.lists(st.sampled_from(NAMES), unique=True, max_size=2)))
    now = draw(st.floats(T0, T0 + 20_000, allow_nan=False))
    return RigSeen(rig="gt", polecats=polecats, branches=branches), history, now


@settings(max_examples=400, deadline=None)
@given(round_st())
def test_invariants_hold_for_any_evidence_and_history(case: tuple[RigSeen, RigHistory, float]) -> None:
    seen, history, now = case
    actions = decide.decide_rig(seen, history, CFG, now)
    by_agent = {p.agent: p for p in seen.polecats}
    keys = [a.key for a in actions if isinstance(a, Escalate)]
    assert len(keys) == len(set(keys)), "one escalation per key in a round"
    assert not set(keys) & set(history.standing), "never again while it stands"
    for i, action in enumerate(actions):
        if isinstance(action, NukePolecat):
            git = by_agent[action.agent].git
            assert git is not None and git.ahead == 0 and git.uncommitted == 0, "never nuke unmerged work"
        if isinstance(action, KILLING):
            git = by_agent[action.agent].git
            if git is None or git.uncommitted > 0:
                assert any(isinstance(a, SaveRescue) and a.agent == action.agent for a in actions[:i]), \
                    "a save precedes anything that ends a dirty session"
        if isinstance(action, RestartSession | GuppNudge):
            p = by_agent[action.agent]
            current = [x for x in p.events if p.tmux.started_at is None or x.at >= p.tmux.started_at]
            last = max(current, key=lambda x: (x.at, x.seq), default=None)
            mcp_later = p.last_mcp_call is not None and last is not None and p.last_mcp_call > last.at
            running_tool = (last is not None and last.kind is K.PRE_TOOL_USE and not mcp_later
                            and p.tmux.session and p.tmux.pane_alive)
            assert not running_tool, "a running tool is never restarted or nudged for that alone"
    per_agent = [a.agent for a in actions if isinstance(a, RestartSession | GuppNudge | NukePolecat)]
    assert len(per_agent) == len(set(per_agent)), "one restart, nudge or nuke per agent per round"


@settings(max_examples=200, deadline=None)
@given(polecat_st("nux"), st.floats(T0 - 1000, T0 + 9000, allow_nan=False), st.sampled_from(["COMPLETED", "DEFERRED",
                                                                                             "ESCALATED"]))
def test_stale_completion_mail_never_produces_more_than_its_ack(p: Evidence, sent_at: float, status: str) -> None:
    """Mail for an earlier hooking (another bead, or sent before this hooking began) only gets acknowledged:
    whatever the new session's state, the actions are exactly what the same round gives without the mail."""
    hooking = p.hooking or Hooking(bead="gt-nux", branch="polecat/nux/x", since=T0)
    p = p.model_copy(update={"hooking": hooking})
    stale_bead = sent_at >= hooking.since
    mail = done_mail(sent_at=min(sent_at, hooking.since - 1) if not stale_bead else sent_at, status=status,
                     bead="gt-old" if stale_bead else hooking.bead, branch=None)
    assert isinstance(mail.message, PolecatDone)
    mrs = {"gt-mr1": MergeRequestSeen(id="gt-mr1", bead=mail.message.bead, polecat=NUX, branch=None,
                                      created_at=mail.sent_at)}
    without = decide.decide_rig(RigSeen(rig="gt", polecats=(p,), merge_requests=mrs), RigHistory(), CFG, T0 + 9000)
    with_mail = decide.decide_rig(RigSeen(rig="gt", polecats=(p,), inbox=(mail,), merge_requests=mrs), RigHistory(),
                                  CFG, T0 + 9000)
    assert with_mail[:len(without)] == without
    assert kinds(with_mail[len(without):]) == [AckMail] and "stale" in with_mail[-1].reason


@settings(max_examples=300, deadline=None)
@given(st.lists(event_st, max_size=5), st.floats(T0 + 1, T0 + 9000, allow_nan=False), st.booleans(),
       st.sampled_from([PolecatState.WORKING, PolecatState.STARTED]), st.floats(0, 30 * 86400, allow_nan=False),
       st.lists(st.floats(T0 - 200, T0 + 9000, allow_nan=False), max_size=5))
def test_a_long_running_tool_is_never_restarted_nudged_or_stopped(
        before: list[HookEvent], pre_at: float, dirty: bool, state: PolecatState, wait: float,
        times: list[float]) -> None:
    """However long a tool runs and whatever was done before, a live session whose latest event is
    PreToolUse gets at most an escalation (after stuck_after), never a restart, nudge or stop."""
    events = tuple(x for x in before if x.at < pre_at) + (e(K.PRE_TOOL_USE, pre_at, "Bash"),)
    p = ev(*events, state=state, uncommitted=int(dirty))
    history = RigHistory(nudges={BEAD: tuple(times)}, restarts={BEAD: tuple(times)})
    actions = run(p, now=pre_at + wait, history=history)
    assert set(kinds(actions)) <= {Escalate}
    assert bool(actions) == (wait > CFG.stuck_after)


@settings(max_examples=200, deadline=None)
@given(st.floats(IDLE_AT, IDLE_AT + 5000, allow_nan=False),
       st.lists(st.floats(T0, IDLE_AT + 5000, allow_nan=False), max_size=6), st.integers(0, 3))
def test_an_idle_polecat_gets_at_most_max_nudges_per_session_then_a_saved_restart(
        now: float, sent: list[float], dirty: int) -> None:
    history = nudges(*sorted(t for t in sent if t <= now))
    actions = run(idle(uncommitted=dirty), now=now, history=history)
    count = len(history.nudges[BEAD])
    if any(isinstance(a, GuppNudge) for a in actions):
        assert count < CFG.gupp_max_nudges and actions == [a for a in actions if isinstance(a, GuppNudge)]
    if any(isinstance(a, RestartSession) for a in actions):
        assert count >= CFG.gupp_max_nudges
        assert kinds(actions) == ([SaveRescue] if dirty else []) + [RestartSession]


def test_the_decide_benchmark_runs_and_reports_its_figures(tmp_path: Path) -> None:
    """bench/bench_patrol_decide.py --quick end to end; the timing target is the benchmark's to judge."""
    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(root / "bench" / "bench_patrol_decide.py"), "--quick",
                           "--json-out", str(out)], cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode in (0, 1), proc.stderr
    figures = json.loads(out.read_text())["figures"]
    assert figures["model_calls"] == 0 and figures["witness_cycle_p50_ms"] > 0 and figures["deacon_cycle_p50_ms"] > 0
    assert "| witness, 50 polecats |" in proc.stdout


# ---- the [patrol] config ---------------------------------------------------------------------------


def test_the_patrol_defaults_are_the_issues_numbers() -> None:
    c = PatrolConfig()
    assert (c.grace, c.stuck_after, c.max_restarts, c.reescalate_after) == (120, 1800, 3, 3600)
    assert [c.gupp_wait(n) for n in range(c.gupp_max_nudges + 1)] == [60, 120, 240, 240]
    assert (c.deacon_backoff, c.deacon_backoff_cap, c.crash_loop_restarts, c.crash_loop_window,
            c.stable_reset) == (30, 600, 5, 900, 1800)


def test_every_threshold_is_documented_in_the_one_docstring() -> None:
    doc = PatrolConfig.__doc__ or ""
    assert [name for name in PatrolConfig.model_fields if f"{name} =" not in doc and f"{name}," not in doc] == []


@pytest.mark.parametrize(("field", "bad", "ok"), [
    ("interval", 0.1, 0.2), ("grace", 9, 10), ("grace", 3601, 3600), ("gupp_first", 9, 10), ("gupp_factor", 4.5, 4),
    ("gupp_max_nudges", -1, 0), ("gupp_max_nudges", 11, 10), ("stuck_after", 59, 60), ("max_restarts", 21, 20),
    ("deacon_backoff", 0, 1), ("crash_loop_restarts", 1, 2), ("crash_loop_window", 59, 60),
    ("stable_reset", 86401, 86400), ("reescalate_after", 59, 60), ("heartbeat_stale_after", 3601, 3600),
])
def test_each_threshold_is_bounded_and_a_bad_one_is_named(field: str, bad: float, ok: float) -> None:
    assert getattr(PatrolConfig(**{field: ok}), field) == ok
    with pytest.raises(ValidationError, match=field):
        PatrolConfig(**{field: bad})


def test_inconsistent_thresholds_are_refused_naming_both() -> None:
    with pytest.raises(ValidationError, match="deacon_backoff_cap .* deacon_backoff"):
        PatrolConfig(deacon_backoff=60, deacon_backoff_cap=30)
    with pytest.raises(ValidationError, match="heartbeat_stale_after .* two intervals"):
        PatrolConfig(interval=10, heartbeat_stale_after=15)
    with pytest.raises(ValidationError, match="extra"):
        PatrolConfig(gupp_backoff=[1, 2])  # type: ignore[call-arg]
