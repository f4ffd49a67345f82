"""The patrols' mail and escalation guarantees, for real (real store, the town's private tmux
socket, the real witness/deacon rounds), and what `status` shows of them:

1. HELP mail -> a bead hooked to the rig's witness session holding the evidence; no model call.
2. CONVOY_LANDED to the convoy's creator and the mayor exactly once over many rounds, also after
   a "restarted" patrol (a fresh Town and sessions object on the same store).
3. An escalation to the mayor stands under its key (never sent twice), is re-escalated to the
   overseer once after `reescalate_after`, and an acknowledged one is never re-escalated.
4. The runner's rounds: a raising or hanging round is logged with its traceback, the loop goes on.
5. `status` (model and --json) shows heartbeats, agents' states, patrol events and escalations.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

from tests.test_witness_effects import MAYOR, Rigged
from vermas import beads, convoy, mail, patrol, patrol_log, protocol, status
from vermas.addresses import parse_address
from vermas.deacon import patrol as deacon_patrol
from vermas.patrol_types import OVERSEER
from vermas.protocol import Escalation, Help
from vermas.sessions import TownSessions
from vermas.town import Town
from vermas.witness import patrol as witness_patrol

import pytest

pytestmark = pytest.mark.tmux


def _mail(r: Rigged, to: str, kind: str) -> list[tuple[str, str, str, str | None]]:
    return [m for m in r.mail_to(to) if m[1].startswith(kind)]


def test_help_mail_becomes_a_bead_hooked_to_the_witness_with_the_evidence(rigged: Rigged) -> None:
    bead, _ = rigged.spawn()
    subject, body = protocol.format(Help(bead=bead, text="the tests need a database I cannot reach"))
    sent = mail.send(rigged.town, parse_address("gt/polecats/nux"), "gt/witness", subject, body)

    recorded = witness_patrol.round(rigged.town, rigged.sessions)
    again = witness_patrol.round(rigged.town, rigged.sessions)

    judged = [e for e in recorded if e.action == "hook_judgment"]
    assert len(judged) == 1 and judged[0].ok
    assert not [e for e in again if e.action == "hook_judgment"]  # once, not every round
    made = beads.show(rigged.town, judged[0].evidence["bead"])
    assert made.status == "hooked" and made.assignee == "gt/witness"
    assert "gt/polecats/nux" in made.title
    assert sent.id in made.description and "database I cannot reach" in made.description
    assert _mail(rigged, "gt/witness", "HELP")[0][3] is not None  # acknowledged


def test_convoy_landed_mail_goes_to_creator_and_mayor_exactly_once_across_restarts(rigged: Rigged) -> None:
    creator = parse_address("gt/crew/ann")
    b1 = beads.create(rigged.town, MAYOR, "one", rig="gt").id
    b2 = beads.create(rigged.town, MAYOR, "two", rig="gt").id
    c = convoy.create(rigged.town, creator, "ship it", [b1, b2])
    beads.close(rigged.town, MAYOR, b1, "done")
    for _ in range(3):
        deacon_patrol.round(rigged.town, rigged.sessions)
    assert not _mail(rigged, "mayor", "CONVOY_LANDED")  # not landed yet
    beads.close(rigged.town, MAYOR, b2, "done")
    for _ in range(3):
        deacon_patrol.round(rigged.town, rigged.sessions)
    again = Town.open(rigged.town.root)  # the patrol restarted: a fresh view of the same store
    try:
        for _ in range(3):
            deacon_patrol.round(again, TownSessions(again.root))
    finally:
        again.close()
    for to in ("gt/crew/ann", "mayor"):
        landed = _mail(rigged, to, "CONVOY_LANDED")
        assert len(landed) == 1, (to, landed)
        assert c.id in landed[0][1] + landed[0][2]


def _raise(r: Rigged, key: str, at: float) -> patrol_log.PatrolEvent | None:
    return patrol_log.raise_escalation(r.town, "witness:gt", "gt/witness", key, "mayor",
                                       Escalation(reason="stuck", agent="gt/polecats/nux", text="no events"),
                                       "stuck beyond stuck_after", at, "gt/polecats/nux")


def test_escalation_stands_is_reescalated_once_and_an_acked_one_never(rigged: Rigged) -> None:
    after = rigged.town.config.patrol.reescalate_after
    t0 = time.time()
    assert _raise(rigged, "stuck:a", t0) is not None
    assert _raise(rigged, "stuck:a", t0 + 1) is None  # one per key while it stands
    assert _raise(rigged, "stuck:b", t0) is not None
    with rigged.town.db.read() as conn:
        b_msg = conn.execute("SELECT message_id FROM escalations WHERE key = 'stuck:b'").fetchone()[0]
    mail.ack(rigged.town, MAYOR, b_msg)
    assert len(_mail(rigged, "mayor", "ESCALATION")) == 2

    def reesc(now: float) -> list[patrol_log.PatrolEvent]:
        return [e for e in deacon_patrol.round(rigged.town, rigged.sessions, now) if e.action == "reescalate"]

    assert reesc(t0 + after - 1) == []  # not yet
    first = reesc(t0 + after + 1)
    assert [(e.key, e.evidence["to"]) for e in first] == [("stuck:a", OVERSEER)]  # b was acknowledged
    assert reesc(t0 + after + 60) == [] and reesc(t0 + 10 * after) == []  # once
    assert len(_mail(rigged, OVERSEER, "ESCALATION")) == 1
    assert _raise(rigged, "stuck:a", t0 + 10 * after) is None  # still standing: never repeated
    with rigged.town.db.read() as conn:
        assert set(patrol_log.standing(conn)) == {"stuck:a", "stuck:b"}


def test_status_shows_heartbeats_states_patrol_events_and_escalations(rigged: Rigged) -> None:
    rigged.spawn()
    _raise(rigged, "stuck:a", time.time())
    deacon_patrol.patrols(rigged.town, rigged.sessions)
    patrol.beat_runner(rigged.town)
    s = status.runner_status(rigged.town, rigged.sessions)
    assert {b.loop for b in s.heartbeats} >= {"runner", "patrol"} and not any(b.stale for b in s.heartbeats)
    assert not s.runner_alive  # no runner pid: a heartbeat alone is not a live runner
    assert [x.key for x in s.escalations] == ["stuck:a"] and not s.escalations[0].acked
    assert any(e.action == "escalate" and e.reason for e in s.patrol_events)
    nux = next(a for a in s.agents if a.address == "gt/polecats/nux")
    assert nux.state is not None and nux.state.state and nux.state.reason
    out = subprocess.run([sys.executable, "-m", "vermas_runner.cli", "status", "--json", "--town",
                          str(rigged.town.root)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["escalations"][0]["key"] == "stuck:a" and data["heartbeats"] and data["patrol_events"]
    assert all("state" in a for a in data["agents"])
    table = subprocess.run([sys.executable, "-m", "vermas_runner.cli", "status", "--town", str(rigged.town.root)],
                           capture_output=True, text=True, timeout=120)
    assert table.returncode == 0, table.stderr
    assert "heartbeat" in table.stdout and "stuck:a" in table.stdout and "escalate" in table.stdout


def test_rounds_log_a_raise_and_a_hang_with_their_traceback_and_go_on() -> None:
    lines: list[str] = []
    rounds = patrol.Rounds(out=lines.append)
    ran: list[str] = []

    def boom() -> None:
        ran.append("boom")
        raise RuntimeError("patrol bug")

    assert rounds.step(boom, hang_after=0.1)
    deadline = time.monotonic() + 30
    while rounds.busy() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert any("RuntimeError: patrol bug" in x and "Traceback" in x for x in lines)
    release = threading.Event()

    def hang_here() -> None:
        release.wait(60)

    assert rounds.step(hang_here, hang_after=0.2)
    while not any("hung" in x for x in lines) and time.monotonic() < deadline:
        assert not rounds.step(lambda: ran.append("piled"), hang_after=0.2)  # never a second round
        time.sleep(0.05)
    hung = next(x for x in lines if "hung" in x)
    assert "hang_here" in hung and "release.wait" in hung  # the hung round's stack
    assert sum("hung" in x for x in lines) == 1  # reported once
    release.set()
    while rounds.busy() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert rounds.step(lambda: ran.append("next"), hang_after=0.2)  # the loop goes on
    while rounds.busy() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ran == ["boom", "next"] and any("returned" in x for x in lines)
