"""An agent's state from its evidence (pure): every state, the precedence between the store,
tmux and the hooks, the session boundary (events of an earlier session never count), and
`since` (when the current state began)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from vermas.patrol_types import (
    AgentState, Evidence, GitEvidence, HookEvent, HookKind, NotificationKind, TmuxEvidence,
)
from vermas.protocol import PolecatState
from vermas.witness.classify import classify, toolless_turn

S = AgentState
K = HookKind
T0 = 10_000.0  # the session's start


def e(kind: HookKind, at: float, tool: str | None = None, note: NotificationKind | None = None,
      seq: int = 0, session: str | None = None) -> HookEvent:
    return HookEvent(kind=kind, at=at, tool=tool, notification=note, seq=seq, session=session)


def perm(at: float) -> HookEvent:
    return e(K.NOTIFICATION, at, note=NotificationKind.PERMISSION)


def idle_note(at: float) -> HookEvent:
    return e(K.NOTIFICATION, at, note=NotificationKind.IDLE)


def ev(*events: HookEvent, session: bool = True, pane_alive: bool = True, exit_status: int | None = None,
       started: float | None = T0, state: PolecatState | None = PolecatState.WORKING,
       process_alive: bool | None = None, **kw: Any) -> Evidence:
    return Evidence(agent="gt/polecats/nux", tmux=TmuxEvidence(session=session, pane_alive=pane_alive,
                                                               exit_status=exit_status, started_at=started,
                                                               process_alive=process_alive),
                    events=events, polecat_state=state, git=GitEvidence(), hooked_bead="gt-a1", **kw)


SS = e(K.SESSION_START, T0 + 1)
UPS = e(K.USER_PROMPT_SUBMIT, T0 + 2)

# (case, evidence, state, since, phrase in the reason)
TABLE = [
    ("no event yet", ev(), S.STARTING, T0, "no SessionStart"),
    ("SessionStart, GUPP pending", ev(SS, state=PolecatState.STARTED), S.STARTING, T0 + 1, "GUPP nudge"),
    ("SessionStart alone after the nudge", ev(SS), S.IDLE, T0 + 1, "SessionStart"),
    ("prompt submitted", ev(SS, UPS), S.WORKING, T0 + 2, "UserPromptSubmit"),
    ("tool running", ev(SS, UPS, e(K.PRE_TOOL_USE, T0 + 3, "Bash")), S.WORKING, T0 + 2, "tool Bash running"),
    ("tool finished, turn goes on", ev(SS, UPS, e(K.PRE_TOOL_USE, T0 + 3, "Bash"), e(K.POST_TOOL_USE, T0 + 4, "Bash")),
     S.WORKING, T0 + 2, "PostToolUse"),
    ("turn ended", ev(SS, UPS, e(K.STOP, T0 + 9)), S.IDLE, T0 + 9, "Stop"),
    ("idle notification after Stop keeps since", ev(UPS, e(K.STOP, T0 + 9), idle_note(T0 + 69)), S.IDLE, T0 + 9,
     "idle notification"),
    ("permission prompt", ev(UPS, e(K.PRE_TOOL_USE, T0 + 3, "Bash"), perm(T0 + 4)), S.WAITING, T0 + 4,
     "permission prompt"),
    ("permission granted, tool done", ev(UPS, e(K.PRE_TOOL_USE, T0 + 3, "Bash"), perm(T0 + 4),
                                         e(K.POST_TOOL_USE, T0 + 30, "Bash")), S.WORKING, T0 + 30, "PostToolUse"),
    ("new prompt after idle", ev(UPS, e(K.STOP, T0 + 9), e(K.USER_PROMPT_SUBMIT, T0 + 20)), S.WORKING, T0 + 20,
     "UserPromptSubmit"),
    ("SessionEnd, pane alive, its process gone", ev(UPS, e(K.SESSION_END, T0 + 9), process_alive=False), S.EXITED,
     T0 + 9, "SessionEnd"),
    # anyone can record a SessionEnd: while tmux shows the pane's process running, it is set aside
    ("SessionEnd, pane and process alive", ev(UPS, e(K.SESSION_END, T0 + 9), process_alive=True), S.WORKING, T0 + 2,
     "UserPromptSubmit"),
    ("SessionEnd, pane alive, process not known", ev(UPS, e(K.SESSION_END, T0 + 9)), S.WORKING, T0 + 2,
     "UserPromptSubmit"),
    # the killed predecessor's SessionEnd hook, stamped just after the restart: not this session's
    ("stale SessionEnd right after the start", ev(SS, e(K.SESSION_END, T0 + 2)), S.IDLE, T0 + 1, "SessionStart"),
    # with Claude Code's session ids, by id whatever the time: a late predecessor's end is not this session's,
    ("predecessor's SessionEnd, late, by id", ev(e(K.SESSION_START, T0 + 1, session="new"),
                                                 e(K.SESSION_END, T0 + 40, session="old")), S.IDLE, T0 + 1,
     "SessionStart"),
    # ... and the session's own end counts even right after its start
    ("own SessionEnd, early, by id", ev(e(K.SESSION_START, T0 + 1, session="new"),
                                        e(K.SESSION_END, T0 + 2, session="new"), process_alive=False), S.EXITED, T0 + 2,
     "SessionEnd"),
    ("end with an id, start without: by time", ev(SS, e(K.SESSION_END, T0 + 2, session="old")), S.IDLE, T0 + 1,
     "SessionStart"),
    ("pane dead, status 0", ev(UPS, pane_alive=False, exit_status=0), S.EXITED, T0 + 2, "status 0"),
    ("pane dead, status 1", ev(UPS, pane_alive=False, exit_status=1), S.DEAD, T0 + 2, "exit status 1"),
    ("pane dead by a signal", ev(UPS, pane_alive=False, exit_status=None), S.DEAD, T0 + 2, "signal"),
    ("session gone mid-tool", ev(UPS, e(K.PRE_TOOL_USE, T0 + 3, "Bash"), session=False), S.DEAD, T0 + 3,
     "tmux session is gone"),
    ("session gone, no event: since its start", ev(session=False), S.DEAD, T0, "gone"),
    ("done outranks a live turn", ev(UPS, state=PolecatState.DONE, state_since=T0 + 50), S.DONE, T0 + 50,
     "COMPLETED"),
    ("done outranks a dead session", ev(session=False, state=PolecatState.DONE, state_since=T0 + 50), S.DONE,
     T0 + 50, "COMPLETED"),
    ("spawning, no session yet", ev(session=False, state=PolecatState.SPAWNING, state_since=T0 - 3), S.STARTING,
     T0 - 3, "spawning"),
    ("mayor (no polecat state), SessionStart alone", ev(SS, state=None), S.IDLE, T0 + 1, "SessionStart"),
]


@pytest.mark.parametrize(("evidence", "state", "since", "phrase"), [t[1:] for t in TABLE], ids=[t[0] for t in TABLE])
def test_each_state_from_its_evidence(evidence: Evidence, state: AgentState, since: float, phrase: str) -> None:
    c = classify(evidence)
    assert (c.state, c.since) == (state, since)
    assert phrase in c.reason


def test_every_state_is_in_the_table() -> None:
    assert {t[2] for t in TABLE} == set(AgentState)


def test_a_running_tool_is_named_and_only_until_it_finishes() -> None:
    pre = e(K.PRE_TOOL_USE, T0 + 3, "Bash")
    assert classify(ev(UPS, pre)).tool == "Bash"
    assert classify(ev(UPS, pre, e(K.POST_TOOL_USE, T0 + 200, "Bash"))).tool is None
    assert classify(ev(UPS, pre, perm(T0 + 4))).tool is None  # waiting, not running


@pytest.mark.parametrize(("at", "counts"), [(T0 - 1, False), (T0, True), (T0 + 1, True)])
def test_events_before_the_session_started_belong_to_an_earlier_session(at: float, counts: bool) -> None:
    """A restarted session is judged on its own evidence: the old session's Stop (one second
    before the new start) does not make the new one idle; an event at the start second counts."""
    c = classify(ev(e(K.STOP, at)))
    assert c.state is (S.IDLE if counts else S.STARTING)
    assert c.session_started is False
    assert (c.last_activity == at) is counts


def test_a_session_start_of_the_earlier_session_does_not_count_as_started() -> None:
    c = classify(ev(e(K.SESSION_START, T0 - 30), e(K.STOP, T0 - 20)))
    assert (c.state, c.session_started, c.since) == (S.STARTING, False, T0)


@pytest.mark.parametrize(("mcp", "state"), [(T0 + 10, S.WORKING), (T0 + 9, S.IDLE), (T0 + 8, S.IDLE),
                                            (T0 - 1, S.IDLE)])
def test_an_mcp_call_is_activity_ranked_before_a_hook_of_the_same_time(mcp: float, state: AgentState) -> None:
    c = classify(ev(UPS, e(K.STOP, T0 + 9), last_mcp_call=mcp))
    assert c.state is state
    assert c.last_activity == max(T0 + 9, mcp)


def test_an_mcp_call_alone_is_working_when_hooks_failed() -> None:
    c = classify(ev(last_mcp_call=T0 + 5))
    assert (c.state, c.since, c.last_activity) == (S.WORKING, T0 + 5, T0 + 5)
    assert "vermas MCP call" in c.reason


def test_the_store_order_breaks_ties_of_equal_times() -> None:
    stop, prompt = e(K.STOP, T0 + 5, seq=1), e(K.USER_PROMPT_SUBMIT, T0 + 5, seq=2)
    assert classify(ev(prompt, stop)).state is S.WORKING  # given out of order, sorted by seq
    assert classify(ev(e(K.STOP, T0 + 5, seq=3), prompt)).state is S.IDLE


def test_a_live_session_of_unknown_start_uses_all_events() -> None:
    assert classify(ev(e(K.STOP, 5.0), started=None)).state is S.IDLE
    assert classify(ev(started=None)).since is None  # nothing known: no time to judge from


def test_the_last_activity_is_the_latest_event_of_the_session() -> None:
    c = classify(ev(SS, UPS, e(K.PRE_TOOL_USE, T0 + 7, "Bash")))
    assert c.last_activity == T0 + 7 and c.session_started


def test_a_notification_needs_its_kind_and_other_events_have_none() -> None:
    with pytest.raises(ValidationError, match="permission|idle"):
        HookEvent(kind=K.NOTIFICATION, at=1.0)
    with pytest.raises(ValidationError, match="only for them"):
        HookEvent(kind=K.STOP, at=1.0, notification=NotificationKind.IDLE)


STOP_AT = T0 + 20
# (case, evidence, the Stop time toolless_turn reports or None)
TOOLLESS_TABLE = [
    ("prompt, then Stop, nothing between", ev(SS, UPS, e(K.STOP, STOP_AT)), STOP_AT),
    ("two tool-less turns: the latest Stop", ev(SS, UPS, e(K.STOP, T0 + 5), e(K.USER_PROMPT_SUBMIT, T0 + 6),
                                                  e(K.STOP, STOP_AT)), STOP_AT),
    ("the idle notice after it changes nothing", ev(SS, UPS, e(K.STOP, STOP_AT), idle_note(STOP_AT + 60)), STOP_AT),
    ("a tool ran", ev(SS, UPS, e(K.PRE_TOOL_USE, T0 + 3, "Bash"), e(K.POST_TOOL_USE, T0 + 4, "Bash"),
                      e(K.STOP, STOP_AT)), None),
    ("a tool started", ev(SS, UPS, e(K.PRE_TOOL_USE, T0 + 3, "Bash"), e(K.STOP, STOP_AT)), None),
    ("a vermas MCP call", ev(SS, UPS, e(K.STOP, STOP_AT), last_mcp_call=T0 + 3), None),
    ("an MCP call of an earlier session", ev(SS, UPS, e(K.STOP, STOP_AT), last_mcp_call=T0 - 5), STOP_AT),
    ("a tool of an earlier session", ev(e(K.PRE_TOOL_USE, T0 - 5, "Bash"), SS, UPS, e(K.STOP, STOP_AT)), STOP_AT),
    ("the turn still runs", ev(SS, UPS), None),
    ("no prompt yet", ev(SS), None),
    ("Stop without a prompt", ev(SS, e(K.STOP, STOP_AT)), None),
    ("a permission prompt after", ev(SS, UPS, e(K.STOP, STOP_AT), perm(STOP_AT + 1)), None),
    ("no event", ev(), None),
]


@pytest.mark.parametrize(("evidence", "stopped"), [t[1:] for t in TOOLLESS_TABLE], ids=[t[0] for t in TOOLLESS_TABLE])
def test_a_session_whose_turns_all_ended_without_a_tool_call(evidence: Evidence, stopped: float | None) -> None:
    assert toolless_turn(evidence) == stopped


@pytest.mark.parametrize("end_session", [None, "cur", "old"])
@pytest.mark.parametrize("pane_alive", [True, False])
@pytest.mark.parametrize("process_alive", [True, False])
def test_a_session_end_counts_only_when_tmux_confirms_it(end_session: str | None, pane_alive: bool,
                                                         process_alive: bool) -> None:
    """Every combination: a dead pane decides by itself; a live pane whose process is gone lets
    this session's SessionEnd count (not another session's); a live process sets it aside and
    names it, whatever id it carries, and the session id is the latest SessionStart's."""
    start = e(K.SESSION_START, T0 + 1, session="cur")
    end = e(K.SESSION_END, T0 + 30, seq=9, session=end_session)
    c = classify(ev(start, UPS, e(K.PRE_TOOL_USE, T0 + 3, "Bash"), end, pane_alive=pane_alive,
                    exit_status=None if pane_alive else 0, process_alive=process_alive))
    assert c.session_id == "cur"
    if not pane_alive:
        assert (c.state, c.ended_unconfirmed) == (S.EXITED, ())
        assert "status 0" in c.reason
    elif not process_alive:
        assert c.ended_unconfirmed == ()
        assert c.state is (S.WORKING if end_session == "old" else S.EXITED)
    else:
        assert c.state is S.WORKING and "tool Bash running" in c.reason
        assert c.ended_unconfirmed == (() if end_session == "old" else (end,))
