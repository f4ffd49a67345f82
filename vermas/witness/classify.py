"""An agent's state from direct evidence: evidence -> (AgentState, reason, since). Pure.

Precedence, strongest evidence first, and why:
1. the slot's stored state: `done` (polecat_done COMPLETED) outranks anything the session shows,
   and `spawning` belongs to the spawn (and its repair), so both are answered from the store;
2. tmux: a missing session or a dead pane is certain, whatever the hooks last said (a killed
   session sends no SessionEnd);
3. the current session's hook events (and vermas MCP calls as activity), the latest deciding:
   UserPromptSubmit / PreToolUse / PostToolUse / an MCP call -> working, Stop or the idle
   notification -> idle, the permission notification -> waiting, SessionEnd -> exited,
   SessionStart alone -> starting while the runner's GUPP nudge is pending, else idle;
   no event yet -> starting.
A SessionEnd hook event alone never ends a session: anyone can record one (the hook takes any
town agent's name; tests/test_witness_effects.py spoofs one), so while tmux shows the pane and
its process alive, every SessionEnd of the current session is set aside
(`Classification.ended_unconfirmed`) and the state comes from the other events; the witness
logs each one that contradicts the pane (vermas/witness/decide.py). A real end is confirmed by tmux within a
moment: the pane dies (remain-on-exit) or its process is gone, and then the SessionEnd counts.
Events older than the session's start belong to an earlier session and are ignored, so a
restarted session is judged on its own evidence. So is the killed predecessor's end hook, fired
after its SIGHUP and stamped after the restart (seen end to end, tests/test_patrol_e2e.py): a
SessionEnd whose Claude Code session id is not that of the current session's SessionStart, or,
when either id is unknown, one within STALE_END_S of the session's start. A session that really
ends leaves a dead pane or no session, which rank first anyway. `since` is when the current state began:
the earliest event of the trailing run of events that all mean this state.
"""

from __future__ import annotations

from dataclasses import dataclass

from vermas.patrol_types import AgentState, Evidence, HookEvent, HookKind, NotificationKind
from vermas.protocol import PolecatState

S = AgentState
_BY_KIND = {
    HookKind.USER_PROMPT_SUBMIT: S.WORKING,
    HookKind.PRE_TOOL_USE: S.WORKING,
    HookKind.POST_TOOL_USE: S.WORKING,
    HookKind.STOP: S.IDLE,
    HookKind.SESSION_END: S.EXITED,
}
_MCP = "mcp"  # an MCP tool call, ranked with the hook events
STALE_END_S = 5.0  # a SessionEnd this soon after the session's start is an earlier process's


@dataclass(frozen=True)
class Classification:
    """The state, a sentence saying which evidence decided it, and since when (None when the
    evidence holds no time, e.g. a live session whose start is unknown). `last_activity` is
    the current session's latest event or MCP call; `tool` names a tool that started and has
    not finished (a long-running tool is working, never stuck for that alone);
    `session_started` tells whether Claude Code reported SessionStart in this session."""

    state: AgentState
    reason: str
    since: float | None
    last_activity: float | None = None
    tool: str | None = None
    session_started: bool = False
    session_id: str | None = None  # Claude Code's id of the current session (its latest SessionStart's)
    ended_unconfirmed: tuple[HookEvent, ...] = ()  # SessionEnds set aside: the pane's process still runs


def _state_of(kind: HookKind | str, notification: NotificationKind | None, gupp_pending: bool) -> AgentState:
    if kind == _MCP:
        return S.WORKING
    if kind is HookKind.NOTIFICATION:
        return S.WAITING if notification is NotificationKind.PERMISSION else S.IDLE
    if kind is HookKind.SESSION_START:
        return S.STARTING if gupp_pending else S.IDLE
    return _BY_KIND[HookKind(kind)]


def process_runs(ev: Evidence) -> bool:
    """tmux shows the session, its pane alive, and its process not known to be gone."""
    return ev.tmux.session and ev.tmux.pane_alive and ev.tmux.process_alive is not False


def _session_events(ev: Evidence) -> tuple[list[HookEvent], str | None]:
    """The current session's events in order (time, then the store's row order), SessionEnds
    included, and Claude Code's id of the current session (None when not known)."""
    start = ev.tmux.started_at
    if start is None:
        ordered = sorted(ev.events, key=lambda e: (e.at, e.seq))
        begun = [e.session for e in ordered if e.kind is HookKind.SESSION_START and e.session]
        return ordered, begun[-1] if begun else None
    fresh = sorted((e for e in ev.events if e.at >= start), key=lambda e: (e.at, e.seq))
    begun = [e.session for e in fresh if e.kind is HookKind.SESSION_START and e.session]
    current = begun[-1] if begun else None
    return [e for e in fresh if not _predecessors_end(e, current, start)], current


def current_events(ev: Evidence) -> list[HookEvent]:
    """The current session's events in order (time, then the store's row order), without the
    SessionEnds that tmux does not confirm (the pane's process still runs)."""
    events, _ = _session_events(ev)
    if not process_runs(ev):
        return events
    return [e for e in events if e.kind is not HookKind.SESSION_END]


def unconfirmed_ends(ev: Evidence) -> tuple[HookEvent, ...]:
    """The current session's SessionEnds that tmux contradicts: the pane's process still runs."""
    if not process_runs(ev):
        return ()
    events, _ = _session_events(ev)
    return tuple(e for e in events if e.kind is HookKind.SESSION_END)


def _predecessors_end(e: HookEvent, current: str | None, start: float) -> bool:
    """A SessionEnd that belongs to the process this session replaced: by Claude Code's session
    id when both are known (another session's end, however late), else by time (STALE_END_S)."""
    if e.kind is not HookKind.SESSION_END:
        return False
    if e.session and current:
        return e.session != current
    return e.at < start + STALE_END_S


def classify(ev: Evidence) -> Classification:
    events = current_events(ev)
    _, session_id = _session_events(ev)
    unconfirmed = unconfirmed_ends(ev)
    start = ev.tmux.started_at
    mcp = ev.last_mcp_call if ev.last_mcp_call is not None and (start is None or ev.last_mcp_call >= start) else None
    # An MCP call ranks before a hook event of the same time: its Pre/PostToolUse bracket it.
    timeline: list[tuple[float, int, HookKind | str, NotificationKind | None, str | None]] = [
        (e.at, 0, e.kind, e.notification, e.tool) for e in events]
    if mcp is not None:
        timeline.append((mcp, -1, _MCP, None, None))
        timeline.sort(key=lambda t: (t[0], t[1]))
    last = timeline[-1][0] if timeline else None
    started = any(e.kind is HookKind.SESSION_START for e in events)

    def result(state: AgentState, reason: str, since: float | None, tool: str | None = None) -> Classification:
        return Classification(state, reason, since, last, tool, started, session_id, unconfirmed)

    if ev.polecat_state is PolecatState.DONE:
        return result(S.DONE, "polecat_done COMPLETED: its merge request is queued", ev.state_since)
    if ev.polecat_state is PolecatState.SPAWNING:
        return result(S.STARTING, "spawning: its worktree and session are being made", ev.state_since)
    seen_since = last if last is not None else start
    if not ev.tmux.session:
        return result(S.DEAD, "its tmux session is gone", seen_since)
    if not ev.tmux.pane_alive:
        if ev.tmux.exit_status == 0:
            return result(S.EXITED, "Claude Code exited with status 0 (the pane is dead)", seen_since)
        how = "killed by a signal" if ev.tmux.exit_status is None else f"exit status {ev.tmux.exit_status}"
        return result(S.DEAD, f"the pane's process died ({how})", seen_since)
    if not timeline:
        return result(S.STARTING, "session up; no SessionStart from Claude Code yet", start)
    gupp_pending = ev.polecat_state is PolecatState.STARTED
    states = [_state_of(kind, note, gupp_pending) for _, _, kind, note, _ in timeline]
    state = states[-1]
    first = len(states) - 1
    while first > 0 and states[first - 1] is state:
        first -= 1
    since = timeline[first][0]
    at, _, kind, note, tool = timeline[-1]
    if state is S.WORKING:
        if kind is HookKind.PRE_TOOL_USE:
            return result(state, f"tool {tool or '?'} running since {at:.0f} (PreToolUse, no PostToolUse yet)",
                          since, tool or "?")
        what = "a vermas MCP call" if kind == _MCP else str(kind)
        return result(state, f"turn running (last: {what} at {at:.0f})", since)
    if state is S.IDLE:
        what = "idle notification" if kind is HookKind.NOTIFICATION else str(kind)
        return result(state, f"turn ended ({what} at {at:.0f}); no prompt since", since)
    if state is S.WAITING:
        return result(state, f"a permission prompt or dialog waits (Notification at {at:.0f})", since)
    if state is S.EXITED:
        return result(state, f"SessionEnd at {at:.0f}: Claude Code ended (its pane's process is gone)", since)
    return result(S.STARTING, f"SessionStart at {at:.0f}; its GUPP nudge is not confirmed yet", since)


def toolless_turn(ev: Evidence) -> float | None:
    """When the current session has prompted the model and every turn ended without a single
    tool call (no PreToolUse, no vermas MCP call) and it is idle now: the time of that last
    Stop; else None.

    Why: Claude Code can send a first prompt to the model before the agent's MCP server has
    connected; the model then sees no vermas tools, answers in text and stops (the hooks show
    UserPromptSubmit then Stop and nothing between). Nothing prompts it again, so the patrols
    (and the kick) re-nudge it once, at once, instead of waiting the normal GUPP backoff."""
    start = ev.tmux.started_at
    if ev.last_mcp_call is not None and (start is None or ev.last_mcp_call >= start):
        return None
    events = [e for e in current_events(ev) if e.kind is not HookKind.NOTIFICATION
              or e.notification is not NotificationKind.IDLE]  # the idle notice follows a Stop: still idle
    if not events or events[-1].kind is not HookKind.STOP:
        return None
    kinds = {e.kind for e in events}
    if HookKind.PRE_TOOL_USE in kinds or HookKind.POST_TOOL_USE in kinds or HookKind.USER_PROMPT_SUBMIT not in kinds:
        return None
    return events[-1].at
