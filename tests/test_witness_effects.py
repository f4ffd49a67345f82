"""The patrols' effects, each once for real: real git worktrees, the real store, real tmux on
the town's private socket. The agent is a shell that sleeps (no model is needed to die, be
restarted or be stopped); `now` is injected where a threshold would otherwise be waited for.

1. A polecat's session killed mid-work with uncommitted (and untracked) changes: one witness
   round saves them to refs/vermas/rescue/<bead>/<time> without touching the worktree, names
   the ref in the bead's notes, and restarts the session in the same worktree.
2. A done polecat: its session is stopped, its worktree kept; its POLECAT_DONE is forwarded to
   the refinery as MERGE_READY and acknowledged.
3. A stale POLECAT_DONE for an earlier hooking of the same name never touches the new session.
4. Past max_restarts: the bead goes back to open with a note naming its branch and commits,
   one ESCALATION to the mayor (standing, not repeated), branch and worktree kept.
5. The deacon restarts a killed mayor session, backs off, and escalates a crash loop once.
6. A failing round is recorded with its traceback and never raises.
7. An idle polecat with hooked work gets the GUPP nudge (with backoff) under the GUPP lock.
8. Hook events from the store map onto the classifier's kinds.
9. A spoofed SessionEnd (no session id, through the real hook) for a running polecat restarts
   nothing and is logged once with the pane's last output; the process's real end restarts it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import git, make_repo
from vermas import agents, beads, events, patrol_log, polecat, rig
from vermas.addresses import Address, Role, parse_address
from vermas.deacon import patrol as deacon_patrol
from vermas.patrol_types import HookKind, NotificationKind
from vermas.protocol import MergeReady, PolecatState, parse
from vermas.sessions import TownSessions, launch
from vermas.town import Town
from vermas.witness import classify, observe
from vermas.witness import patrol as witness_patrol

pytestmark = pytest.mark.tmux
MAYOR = parse_address("mayor")
NUX = parse_address("gt/polecats/nux")
AUTHOR = ["-c", "user.email=nux@vermas.invalid", "-c", "user.name=nux"]


class Rigged:
    """A town with rig gt whose agents are `sh -c 'sleep 600'`, on the town's own tmux socket."""

    def __init__(self, base: Path, **patrol: object) -> None:
        self.town, _ = Town.init(base / "town")
        rig.add(self.town, "gt", str(make_repo(base / "src")), prefix="gt", max_polecats=2)
        self.town.config.agent.command, self.town.config.agent.args = "sh", ["-c", "sleep 600", "agent"]
        if patrol:
            self.town.config.patrol = self.town.config.patrol.model_copy(update=patrol)
        self.town.save_config()
        self.sessions = TownSessions(self.town.root)

    def spawn(self, title: str = "do it") -> tuple[str, Path]:
        bead = beads.create(self.town, MAYOR, title, rig="gt").id
        info = polecat.spawn(self.town, MAYOR, bead, "gt", sessions=self.sessions, kick="none")
        assert info.address == str(NUX)
        return bead, Path(str(info.worktree))

    def commit(self, worktree: Path, name: str = "work.txt") -> str:
        (worktree / name).write_text("committed work\n")
        git(worktree, "add", name)
        git(worktree, *AUTHOR, "commit", "-q", "-m", f"add {name}")
        return git(worktree, "rev-parse", "HEAD")

    def bead(self, bead: str) -> beads.BeadDetail:
        return beads.show(self.town, bead)

    def pane_path(self, address: Address) -> str:
        out = self.sessions.server.cmd("display-message", "-p", "-t", f"={address.session_name}:",
                                       "#{pane_current_path}")
        return out.stdout[0]

    def mail_to(self, to: str) -> list[tuple[str, str, str, str | None]]:
        with self.town.db.read() as conn:
            return [(r[0], r[1], r[2], r[3]) for r in conn.execute(
                "SELECT sender, subject, body, acked_at FROM messages WHERE recipient = ? ORDER BY created_ts", (to,))]

    def close(self) -> None:
        self.sessions.kill_server()
        self.town.close()


def actions(recorded: list[patrol_log.PatrolEvent]) -> list[tuple[str, str | None, bool]]:
    return [(e.action, e.agent, e.ok) for e in recorded]


def test_killed_session_with_uncommitted_work_is_rescued_then_restarted_in_its_worktree(rigged: Rigged) -> None:
    bead, worktree = rigged.spawn()
    rigged.commit(worktree)
    (worktree / "README.md").write_text("edited, not committed\n")
    (worktree / "new.txt").write_text("a new file, never added\n")
    git(worktree, "add", "README.md")  # staged too: the real index must stay as it is
    index_before = git(worktree, "diff", "--cached", "--name-only")
    head_before = git(worktree, "rev-parse", "HEAD")
    old_pid = rigged.sessions.panes()[NUX.session_name].pid
    assert rigged.sessions.kill(NUX)

    events = witness_patrol.round(rigged.town, rigged.sessions)

    assert actions(events) == [("save_rescue", str(NUX), True), ("restart_session", str(NUX), True)]
    ref = events[0].evidence["ref"]
    assert ref.startswith(f"refs/vermas/rescue/{bead}/")
    # The ref holds both changes, on top of the branch's commit ...
    assert git(worktree, "show", f"{ref}:README.md") == "edited, not committed"
    assert git(worktree, "show", f"{ref}:new.txt") == "a new file, never added"
    assert git(worktree, "rev-parse", f"{ref}^") == head_before
    # ... and the worktree, its index and its branch are untouched.
    assert git(worktree, "rev-parse", "HEAD") == head_before
    assert git(worktree, "diff", "--cached", "--name-only") == index_before
    assert (worktree / "new.txt").read_text() == "a new file, never added\n"
    assert "?? new.txt" in git(worktree, "status", "--porcelain")
    # The bead's notes name the ref; the event says why.
    assert ref in rigged.bead(bead).notes
    assert "dead" in events[1].reason and "restart 1 of 3" in events[1].reason
    # A new session runs in the same worktree; its nudge is the runner's kick again.
    pane = rigged.sessions.panes()[NUX.session_name]
    assert not pane.dead and pane.pid != old_pid
    assert Path(rigged.pane_path(NUX)).resolve() == worktree.resolve()
    assert polecat.find(rigged.town, "gt", "nux").state is PolecatState.STARTED
    # The next round sees a session that is starting (within grace): nothing more.
    assert witness_patrol.round(rigged.town, rigged.sessions) == []


def test_done_polecat_session_is_stopped_worktree_kept_and_done_mail_forwarded(rigged: Rigged) -> None:
    bead, worktree = rigged.spawn()
    commit = rigged.commit(worktree)
    mr = polecat.done(rigged.town, NUX, "COMPLETED", "did it")
    assert rigged.sessions.alive(NUX)

    events = witness_patrol.round(rigged.town, rigged.sessions)

    assert [e.action for e in events] == ["stop_session", "send_mail", "ack_mail"]
    assert not rigged.sessions.alive(NUX) and NUX.session_name not in rigged.sessions.panes()
    assert git(worktree, "rev-parse", "HEAD") == commit and (worktree / "work.txt").is_file()
    assert polecat.find(rigged.town, "gt", "nux").state is PolecatState.DONE
    [(sender, subject, body, _)] = rigged.mail_to("gt/refinery")
    msg = parse(subject, body)
    assert sender == "gt/witness" and isinstance(msg, MergeReady)
    assert (msg.bead, msg.merge_request, msg.commit, msg.branch) == (bead, mr.id, commit, mr.branch)
    [(_, done_subject, _, acked)] = rigged.mail_to("gt/witness")
    assert done_subject.startswith("POLECAT_DONE") and acked is not None
    # Nothing is done twice: the session is gone, the mail acknowledged, the forward idempotent.
    assert witness_patrol.round(rigged.town, rigged.sessions) == []
    assert len(rigged.mail_to("gt/refinery")) == 1


def test_stale_polecat_done_for_an_earlier_hooking_never_touches_the_new_session(rigged: Rigged) -> None:
    first, worktree = rigged.spawn("first")
    rigged.commit(worktree)
    polecat.done(rigged.town, NUX, "COMPLETED", "first done")
    # Before the witness reads that mail, the slot is nuked and nux is spawned on new work.
    polecat.nuke(rigged.town, "gt", "nux", force=True, sessions=rigged.sessions)
    time.sleep(1.05)  # the new session's tmux start time (whole seconds) is after the old mail
    second, _ = rigged.spawn("second")
    assert second != first
    pid = rigged.sessions.panes()[NUX.session_name].pid

    events = witness_patrol.round(rigged.town, rigged.sessions)

    assert [e.action for e in events] == ["ack_mail"]
    assert "POLECAT_DONE ignored: stale" in events[0].reason and second in events[0].reason
    assert rigged.sessions.panes()[NUX.session_name].pid == pid  # the new session runs on
    assert rigged.mail_to("gt/refinery") == []  # no MERGE_READY for the old hooking
    assert polecat.find(rigged.town, "gt", "nux").state is PolecatState.STARTED


def test_past_max_restarts_the_bead_is_reopened_naming_its_branch_and_escalated_once(tmp_path: Path) -> None:
    r = Rigged(tmp_path, max_restarts=1)
    try:
        bead, worktree = r.spawn()
        head = r.commit(worktree)
        branch = polecat.branch_name("nux", bead)
        now = time.time()
        assert r.sessions.kill(NUX)
        assert actions(witness_patrol.round(r.town, r.sessions, now)) == [("restart_session", str(NUX), True)]
        (worktree / "unsaved.txt").write_text("typed after the restart\n")
        assert r.sessions.kill(NUX)

        events = witness_patrol.round(r.town, r.sessions, now + 5)

        assert [e.action for e in events] == ["save_rescue", "reopen_bead", "escalate"]
        ref = events[0].evidence["ref"]
        assert git(worktree, "show", f"{ref}:unsaved.txt") == "typed after the restart"
        detail = r.bead(bead)
        assert (detail.status, detail.assignee) == ("open", None)
        assert f"continue from branch {branch} (1 commits beyond the target, head {head})" in detail.notes
        assert ref in detail.notes
        # Slot released; branch, worktree and rescue ref kept; no session left running.
        assert polecat.find(r.town, "gt", "nux") is None
        clone = rig.canonical_clone(r.town, "gt")
        assert git(clone, "rev-parse", f"refs/heads/{branch}") == head
        assert (worktree / "work.txt").is_file() and git(clone, "rev-parse", "--verify", ref)
        assert NUX.session_name not in r.sessions.panes()
        [(sender, subject, body, _)] = r.mail_to("mayor")
        assert sender == "gt/witness" and subject.startswith("ESCALATION")
        assert "reason: restarts-exhausted" in body and f"branch: {branch}" in body
        with r.town.db.read() as conn:
            standing = patrol_log.standing(conn)
        assert [s.key for s in standing.values()] == [events[2].key] and events[2].key.startswith(
            f"restarts-exhausted:{bead}:")
        assert witness_patrol.round(r.town, r.sessions, now + 60) == []
        assert len(r.mail_to("mayor")) == 1
    finally:
        r.close()


def test_deacon_restarts_a_killed_mayor_and_escalates_a_crash_loop_once(tmp_path: Path) -> None:
    town, _ = Town.init(tmp_path / "town")
    town.config.agent.command, town.config.agent.args = "sh", ["-c", "sleep 600", "agent"]
    town.save_config()
    sessions = TownSessions(town.root)
    mayor = Address(role=Role.MAYOR)
    try:
        assert launch.start_agent(town, sessions, mayor)
        now = time.time()
        assert deacon_patrol.round(town, sessions, now) == []  # alive: nothing to do
        sessions.kill(mayor)

        first = deacon_patrol.round(town, sessions, now)
        assert actions(first) == [("restart_agent", "mayor", True)]
        assert sessions.alive(mayor)
        # Backoff: killed again at once, the next restart waits deacon_backoff (30 s).
        sessions.kill(mayor)
        assert deacon_patrol.round(town, sessions, now + 10) == []
        assert not sessions.alive(mayor)
        t = now
        for wait in (31, 61, 121, 241):  # restarts 2..5, each just past its backoff
            t += wait
            assert actions(deacon_patrol.round(town, sessions, t)) == [("restart_agent", "mayor", True)]
            assert sessions.alive(mayor)
            sessions.kill(mayor)
        # Five restarts within 15 minutes: no sixth, one ESCALATION to the overseer.
        t += 481
        loop = deacon_patrol.round(town, sessions, t)
        assert [e.action for e in loop] == ["escalate"] and loop[0].key.startswith("crashloop:mayor:")
        assert not sessions.alive(mayor)
        for later in (t + 600, t + 3600):
            assert deacon_patrol.round(town, sessions, later) == []
        with town.db.read() as conn:
            sent = conn.execute("SELECT sender, subject, body FROM messages WHERE recipient = 'overseer'").fetchall()
        assert len(sent) == 1 and sent[0][0] == "deacon" and sent[0][1].startswith("ESCALATION")
        assert "reason: crash-loop" in sent[0][2]
    finally:
        sessions.kill_server()
        town.close()


def test_a_failing_round_is_recorded_with_its_traceback_and_never_raises(rigged: Rigged) -> None:
    rigged.spawn()
    with rigged.town.db.write() as conn:  # a store the patrol cannot read: observe raises
        conn.execute("ALTER TABLE merge_requests RENAME TO merge_requests_gone")
    events = witness_patrol.round(rigged.town, rigged.sessions)
    assert [(e.action, e.patrol, e.ok) for e in events] == [("round_failed", "witness:gt", False)]
    assert "merge_requests" in events[0].reason and "Traceback" in events[0].evidence["traceback"]
    assert patrol_log.events(rigged.town, action="round_failed")[0].seq == events[0].seq


def test_idle_polecat_gets_the_gupp_nudge_under_the_gupp_lock_with_backoff(rigged: Rigged) -> None:
    bead, _ = rigged.spawn()
    polecat.set_state(rigged.town, "gt", "nux", PolecatState.WORKING)  # its first nudge was delivered
    time.sleep(1.05)  # hook events must be newer than the session's start (whole seconds)
    t = time.time()
    events.record(rigged.town, str(NUX), events.EventKind.SESSION_START, at=t)
    events.record(rigged.town, str(NUX), events.EventKind.STOP, at=t + 0.1)  # its turn ended, bead still hooked
    lock = polecat.gupp_lock(rigged.town, "gt", "nux")

    assert witness_patrol.round(rigged.town, rigged.sessions, t + 30) == []  # idle, but not for 60 s yet
    nudged = witness_patrol.round(rigged.town, rigged.sessions, t + 61)
    assert [(e.action, e.bead, e.ok) for e in nudged] == [("gupp_nudge", bead, True)]
    assert "nudge 1 of 3" in nudged[0].reason
    assert polecat.lock_held(lock)  # the typing runs in a thread, holding the lock the runner's kick takes
    assert witness_patrol.round(rigged.town, rigged.sessions, t + 150) == []  # the 2nd waits 120 s more
    second = witness_patrol.round(rigged.town, rigged.sessions, t + 182)
    assert [(e.action, e.ok) for e in second] == [("gupp_nudge", False)]  # the 1st is still typing
    assert "GUPP lock is held" in second[0].reason


def test_hook_events_map_to_the_classifier_kinds(rigged: Rigged) -> None:
    agent = str(NUX)
    for kind, tool, detail, at in [(events.EventKind.SESSION_START, None, "", 1.0),
                                   (events.EventKind.PRE_TOOL_USE, "Bash", "", 2.0),
                                   (events.EventKind.POST_TOOL_USE_FAILURE, "Bash", "", 3.0),
                                   (events.EventKind.TOOL, "bead_show", "", 4.0),
                                   (events.EventKind.NOTIFICATION, None, "auth_success", 5.0),
                                   (events.EventKind.NOTIFICATION, None, "permission_prompt", 6.0)]:
        events.record(rigged.town, agent, kind, tool=tool, detail=detail, at=at)
    with rigged.town.db.read() as conn:
        seen, mcp = observe.hook_events(conn, agent)
    assert [(e.kind, e.tool, e.notification) for e in seen] == [
        (HookKind.SESSION_START, None, None), (HookKind.PRE_TOOL_USE, "Bash", None),
        (HookKind.POST_TOOL_USE, "Bash", None), (HookKind.NOTIFICATION, None, NotificationKind.PERMISSION)]
    assert mcp == 4.0


def _hook(town: Town, kind: str, payload: dict[str, object]) -> None:
    """One event through the real hook entry point (vermas/hookevent.py, as Claude Code runs it)."""
    proc = subprocess.run(agents.event_hook_argv(town, NUX, kind), input=json.dumps(payload).encode(),
                          capture_output=True, timeout=30)
    assert (proc.returncode, proc.stdout) == (0, b"")


def test_a_spoofed_session_end_never_restarts_a_running_polecat_and_is_logged_once(tmp_path: Path) -> None:
    """A healthy polecat mid-tool; anyone records a SessionEnd without a session id for it through
    the real hook. tmux shows its pane and process alive: the witness restarts nothing, and says
    why once (ignore_event, with the pane's last output)."""
    r = Rigged(tmp_path)
    try:
        r.town.config.agent.args = ["-c", "echo building the widget; exec sleep 600", "agent"]
        r.town.save_config()
        bead, _ = r.spawn()
        polecat.set_state(r.town, "gt", "nux", PolecatState.WORKING)  # its GUPP nudge was delivered
        pid = r.sessions.panes()[NUX.session_name].pid
        time.sleep(1.05)  # hook events must be newer than the session's start (whole seconds)
        _hook(r.town, "SessionStart", {"session_id": "c0ffee-1", "source": "startup"})
        _hook(r.town, "UserPromptSubmit", {"session_id": "c0ffee-1"})
        _hook(r.town, "PreToolUse", {"session_id": "c0ffee-1", "tool_name": "Bash"})
        # Beyond STALE_END_S after the start, where an end without an id was taken as this session's.
        time.sleep(classify.STALE_END_S + 1)
        _hook(r.town, "SessionEnd", {"reason": "other"})  # no session_id: a spoof
        with r.town.db.read() as conn:
            [(seq, session)] = conn.execute("SELECT id, session FROM agent_events WHERE kind = 'SessionEnd'").fetchall()
        assert session is None

        recorded = witness_patrol.round(r.town, r.sessions)

        assert [(e.action, e.agent, e.ok) for e in recorded] == [("ignore_event", str(NUX), True)]
        [ignored] = recorded
        assert ignored.key == f"ignored:{NUX}:{seq}" and ignored.evidence["event"] == seq
        assert "carries no Claude Code session id" in ignored.reason and "process running" in ignored.reason
        assert "tool Bash running" in ignored.reason
        assert ignored.evidence["pane_pid"] == pid and ignored.evidence["tmux"]["process_alive"] is True
        assert "building the widget" in ignored.evidence["last_output"]
        pane = r.sessions.panes()[NUX.session_name]
        assert (pane.dead, pane.pid) == (False, pid)  # the same process runs on
        assert r.bead(bead).status == "hooked" and patrol_log.events(r.town, action="restart_session") == []
        # Once per event: the next round has nothing to say about it.
        assert witness_patrol.round(r.town, r.sessions) == []
        # The session really ends (its process exits): now the witness restarts it.
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while not r.sessions.panes()[NUX.session_name].dead and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [e.action for e in witness_patrol.round(r.town, r.sessions)] == ["restart_session"]
    finally:
        r.close()


def test_process_alive_reads_the_kernel_a_zombie_is_not_alive() -> None:
    child = subprocess.Popen(["sh", "-c", "exit 0"])
    deadline = time.monotonic() + 10
    while observe.process_alive(child.pid) and time.monotonic() < deadline:  # exited, not reaped: a zombie
        time.sleep(0.02)
    assert observe.process_alive(child.pid) is False
    child.wait()
    assert observe.process_alive(child.pid) is False  # reaped: gone
    assert observe.process_alive(os.getpid()) is True
    assert observe.process_alive(None) is None
