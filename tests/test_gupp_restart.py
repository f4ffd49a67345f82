"""A restarted session always gets its GUPP nudge. Seen: the witness restarted a killed polecat,
then the runner was killed before that session's start nudge was confirmed; the next runner found
the session "already running", never got the nudge in, and escalated it ("SessionStart 61s ago
and its GUPP nudge never confirmed") while its bead stayed hooked and unworked.

Now (decisions in tests/test_witness_decide.py, exhaustively): a session with hooked work whose
start nudge is unconfirmed is nudged again with the idle backoff, whichever runner's witness finds
it, before any escalation; a confirmed nudge makes the slot `working`; and the nudge the dead
runner left typed in the input box (no Enter) is submitted as it is, once, instead of blocking
every later nudge as someone else's text.

Real tmux (the town's private socket), a real polecat worktree, and a stand-in for Claude Code's
input box (tests/input_box_standin.py) that logs each submitted line; `now` is injected where the
first GUPP wait would otherwise be waited for."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import make_repo
from vermas import beads, events, patrol_log, polecat, rig
from vermas.addresses import parse_address
from vermas.events import EventKind
from vermas.protocol import PolecatState
from vermas.sessions import TownSessions, launch, nudge
from vermas.town import Town
from vermas.witness import patrol as witness_patrol

pytestmark = pytest.mark.tmux
STANDIN = Path(__file__).with_name("input_box_standin.py")
MAYOR = parse_address("mayor")
NUX = parse_address("gt/polecats/nux")


def wait_for(check: Callable[[], bool], what: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} never happened within {within:g}s")
        time.sleep(0.1)


def submitted(log: Path) -> list[str]:
    return [json.loads(line)["submitted"] for line in log.read_text().splitlines()] if log.exists() else []


def test_a_restarted_session_whose_nudger_died_is_nudged_by_the_next_runners_witness(tmp_path: Path) -> None:
    town, _ = Town.init(tmp_path / "town")
    rig.add(town, "gt", str(make_repo(tmp_path / "src")), prefix="gt", max_polecats=2)
    log = tmp_path / "box.log"
    # The agent is the input box stand-in (the launch's own arguments go to sh, unused).
    town.config.agent.command = "sh"
    town.config.agent.args = ["-c", f"exec {sys.executable} {STANDIN} {log}", "agent"]
    town.config.patrol = town.config.patrol.model_copy(update={"gupp_first": 10.0})
    town.save_config()
    sessions = TownSessions(town.root)
    try:
        bead = beads.create(town, MAYOR, "do it", rig="gt").id
        polecat.spawn(town, MAYOR, bead, "gt", sessions=sessions, kick="none")
        # Killed, and restarted by one witness round: `started`, its nudge the runner's to give.
        assert sessions.kill(NUX)
        restarted = witness_patrol.round(town, sessions)
        assert [(e.action, e.ok) for e in restarted] == [("restart_session", True)]
        assert polecat.find(town, "gt", "nux").state is PolecatState.STARTED
        wait_for(lambda: nudge.read_screen(sessions.capture(NUX)).ready, "the input box")
        events.record(town, str(NUX), EventKind.SESSION_START, detail="startup")
        # That runner typed the GUPP nudge and was killed before its Enter.
        assert sessions.type_literal(NUX, launch.GUPP_NUDGE)
        wait_for(lambda: nudge.same_text(nudge.read_screen(sessions.capture(NUX)).input_text, launch.GUPP_NUDGE),
                 "the dead runner's text in the box")

        # The next runner's witness, within the first GUPP wait: nothing yet (and no escalation).
        start = time.time()
        assert witness_patrol.round(town, sessions, now=start + 5) == []
        # Past it: a GUPP nudge, not an escalation.
        nudged = witness_patrol.round(town, sessions, now=start + 12)
        assert [(e.action, e.ok) for e in nudged] == [("gupp_nudge", True)]
        assert "never confirmed" in nudged[0].reason and nudged[0].bead == bead
        # Delivered once (the text already in the box, submitted as it was) and confirmed: `working`.
        wait_for(lambda: polecat.find(town, "gt", "nux").state is PolecatState.WORKING, "the confirmation")
        assert submitted(log) == [launch.GUPP_NUDGE]
        assert nudge.read_screen(sessions.capture(NUX)).input_text == ""
        with town.db.read() as conn:
            assert patrol_log.standing(conn) == {}  # never escalated
            queued = conn.execute("SELECT COUNT(*) FROM messages WHERE recipient = ?", (str(NUX),)).fetchone()[0]
        assert queued == 0  # delivered, not queued as NUDGE mail
    finally:
        sessions.kill_server()
        town.close()


def test_a_start_nudge_that_keeps_failing_elsewhere_still_ends_in_one_escalation(tmp_path: Path) -> None:
    """The runner's kick holds the GUPP lock on every round and never gets the nudge in: each
    witness re-nudge counts as an attempt (not skipped), so after gupp_max_nudges of them and the
    last wait it is escalated, once, instead of waiting forever behind the lock."""
    town, _ = Town.init(tmp_path / "town")
    rig.add(town, "gt", str(make_repo(tmp_path / "src")), prefix="gt", max_polecats=2)
    town.config.agent.command, town.config.agent.args = "sh", ["-c", "sleep 600", "agent"]
    town.config.patrol = town.config.patrol.model_copy(update={"gupp_first": 10.0})
    town.save_config()
    cfg = town.config.patrol
    sessions = TownSessions(town.root)
    lock = polecat.gupp_lock(town, "gt", "nux")
    try:
        bead = beads.create(town, MAYOR, "do it", rig="gt").id
        polecat.spawn(town, MAYOR, bead, "gt", sessions=sessions, kick="none")
        events.record(town, str(NUX), EventKind.SESSION_START, detail="startup")
        start = time.time()
        assert lock.acquire(wait=False)  # a runner's kick, delivering (and failing) all along
        now, seen = start, []
        for attempt in range(cfg.gupp_max_nudges):
            now += cfg.gupp_wait(attempt) + 1
            seen = witness_patrol.round(town, sessions, now=now)
            assert [(e.action, e.ok) for e in seen] == [("gupp_nudge", True)], seen
            assert seen[0].evidence["attempt"] == attempt + 1 and "delivered_by" in seen[0].evidence
        assert witness_patrol.round(town, sessions, now=now + cfg.gupp_wait(cfg.gupp_max_nudges)) == []
        escalated = witness_patrol.round(town, sessions, now=now + cfg.gupp_wait(cfg.gupp_max_nudges) + 1)
        assert [(e.action, e.key) for e in escalated] == [("escalate", f"gupp-undelivered:{NUX}:{bead}")]
        assert witness_patrol.round(town, sessions, now=now + 600) == []  # once: it stands
        assert polecat.find(town, "gt", "nux").state is PolecatState.STARTED
    finally:
        lock.release()
        sessions.kill_server()
        town.close()
