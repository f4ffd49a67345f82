"""Starting an agent in its session and kicking it: the launch spec goes into a tmux
session, and once the prompt is ready the agent is nudged to check its hook (GUPP).

Used by `up` (every core agent) and by polecat spawning (one polecat), so it lives with the
sessions rather than in either of them.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from vermas import agents
from vermas.addresses import Address
from vermas.progress import ProgressEvent, ProgressFn, ignore
from vermas.sessions import nudge
from vermas.town import Town

if TYPE_CHECKING:  # tmux is imported only where a session is touched
    from vermas.sessions import TownSessions

GUPP_NUDGE = "vermas: call hook_check now; if your hook has work, run it (GUPP)."
READY_TIMEOUT = 90.0
FIRST_TURN_WAIT = 20.0  # how long a kick watches for the first turn's first tool call


def claude_config_home(town: Town) -> Path:
    env = town.config.agent.env
    if env.get("CLAUDE_CONFIG_DIR"):
        return Path(env["CLAUDE_CONFIG_DIR"])
    return Path(env.get("HOME") or Path.home())


def start_agent(town: Town, sessions: TownSessions, address: Address) -> bool:
    spec = agents.launch_spec(town, address)
    if "claude" in Path(town.config.agent.command).name:
        # Claude Code asks for trust per git checkout (a town-root entry does not cover the
        # worktrees below it), so each agent folder is trusted. The file is rewritten only
        # when an entry is missing; if an exiting session's own rewrite drops ours anyway,
        # wait_ready answers the dialog.
        agents.trust_directories(claude_config_home(town), [town.root, Path(spec.cwd)],
                                 town.config.agent.env.get("ANTHROPIC_API_KEY"))
    return sessions.start(address, Path(spec.cwd), spec.argv, spec.env)


def wait_ready(town: Town, sessions: TownSessions, address: Address, timeout: float = READY_TIMEOUT) -> bool:
    """The prompt is idle and the agent's MCP server has started (so its tools are there)."""
    deadline = time.monotonic() + timeout
    marker = agents.ready_marker(town, address)
    answered = False
    while time.monotonic() < deadline:
        if not sessions.alive(address):
            return False
        text = sessions.capture(address)
        if not answered and nudge.is_trust_dialog(text):
            answered = nudge.accept_trust_dialog(sessions, address)
            continue
        screen = nudge.read_screen(text)
        if screen.ready and not screen.busy and marker.exists():
            time.sleep(0.5)  # let Claude Code finish the MCP handshake it just began
            return True
        time.sleep(0.25)
    return False


def kick(town: Town, sessions: TownSessions, address: Address,
         first_turn_wait: float = FIRST_TURN_WAIT, progress: ProgressFn = ignore) -> nudge.NudgeResult | None:
    """Once the prompt is ready, nudge the agent to check its hook (GUPP without a human).
    Then watch its first turn (up to `first_turn_wait`, returning at its first tool call):
    a turn that ended without any tool call saw no MCP tools yet, so it is nudged once more."""
    task = str(address)
    progress(ProgressEvent(task, "waiting for its prompt and MCP server"))
    if not wait_ready(town, sessions, address):
        why = "its session ended" if not sessions.alive(address) else f"not ready within {READY_TIMEOUT:g}s"
        progress(ProgressEvent(task, f"{why}; the patrol will nudge it", finished=True, ok=False))
        return None
    progress(ProgressEvent(task, "ready; nudging it to check its hook"))
    result = nudge.nudge(town, sessions, address, GUPP_NUDGE, sender="deacon")
    ok = bool(result and result.submitted)
    progress(ProgressEvent(task, "ready and nudged (GUPP)" if ok else "ready; nudge queued as mail",
                           finished=True, ok=ok))
    if result.submitted and first_turn_wait > 0 and toolless_first_turn(town, sessions, address, first_turn_wait):
        time.sleep(town.config.patrol.toolless_renudge)  # let Claude Code finish connecting its MCP server
        again = nudge.nudge(town, sessions, address, GUPP_NUDGE, sender="deacon")
        return result.model_copy(update={"reason": (result.reason + "; " if result.reason else "")
                                         + f"re-nudged after a tool-less first turn (submitted: {again.submitted})"})
    return result


def toolless_first_turn(town: Town, sessions: TownSessions, address: Address, timeout: float,
                        poll: float = 0.25) -> bool:
    """True when the session's turns so far all ended without a tool call (the hooks show
    UserPromptSubmit then Stop; classify.toolless_turn decides); False at its first tool call,
    when the session is gone, or after `timeout` with the turn still running."""
    from vermas.patrol_types import Evidence, HookKind, TmuxEvidence  # deferred: pydantic models, only for kicks
    from vermas.witness.classify import toolless_turn  # deferred: the patrol's pure rule, only for kicks
    from vermas.witness.observe import hook_events  # deferred: store rows to typed events, only for kicks

    deadline = time.monotonic() + timeout
    while True:
        started = sessions.created().get(address.session_name)
        if started is None:
            return False
        with town.db.read() as conn:
            events, mcp = hook_events(conn, str(address))
        ev = Evidence(agent=str(address), tmux=TmuxEvidence(session=True, started_at=started), events=events,
                      last_mcp_call=mcp)
        if toolless_turn(ev) is not None:
            return True
        if (mcp is not None and mcp >= started) or any(e.kind is HookKind.PRE_TOOL_USE and e.at >= started
                                                       for e in events):
            return False
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)


def kick_all(town: Town, sessions: TownSessions, addresses: list[Address],
             progress: ProgressFn = ignore) -> list[str]:
    results: dict[str, bool] = {}

    def run(a: Address) -> None:
        r = kick(town, sessions, a, progress=progress)
        results[str(a)] = bool(r and r.submitted)

    threads = [threading.Thread(target=run, args=(a,), daemon=True) for a in addresses]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sorted(a for a, ok in results.items() if ok)
