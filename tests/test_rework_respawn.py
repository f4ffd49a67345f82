"""Work the refinery sends back while its polecat's session is dead: the witness gives the bead to
a NEW polecat on the SAME branch (its commits kept), with the REWORK_REQUEST in its inbox (and a
note on the bead) from its first turn. A live session keeps the work (the refinery hooks it back
to the same polecat; that path is in tests/test_refinery_worker.py).

The decisions are pure (every branch below); the effect runs once for real: the refinery worker on
a real rig with a red test command sends the work back, one witness round respawns it on real git
and real tmux (the town's private socket; the agent is a sleeping shell, no model needed)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import git
from tests.refinery_rig import MergeRig
from vermas import beads, polecat, protocol
from vermas.addresses import parse_address
from vermas.patrol_types import PatrolConfig, SendMail
from vermas.protocol import PolecatState, ReworkRequest
from vermas.refinery import ledger, worker
from vermas.refinery.types import MRState
from vermas.sessions import TownSessions
from vermas.town import Town
from vermas.witness import decide
from vermas.witness import patrol as witness_patrol
from vermas.witness.types import AckMail, BeadSeen, InboxMail, MergeRequestSeen, ReworkRespawn, RigSeen

NOW = 200_000.0
BEAD, MR, BRANCH, OLD = "gt-a1", "gt-mr1", "polecat/nux/gt-a1", "gt/polecats/nux"
HELD = BeadSeen("in_progress", "gt/polecats/nux")


def rework(**kw: Any) -> ReworkRequest:
    fields = {"bead": BEAD, "merge_request": MR, "polecat": OLD, "branch": BRANCH, "reason": "tests",
              "command": "make test", "exit_status": "1", "attempt": "1", "text": "make test exited 1\n\nFAILED x"}
    return ReworkRequest(**{**fields, **kw})


def decide_one(msg: ReworkRequest, bead: BeadSeen | None = HELD, mr_state: str = "rework",
               sender: str = "gt/refinery") -> list[Any]:
    subject, _ = protocol.format(msg)
    mail = InboxMail(id="m1", sender=sender, sent_at=NOW - 5, subject=subject, message=msg)
    mrs = {MR: MergeRequestSeen(id=MR, bead=BEAD, polecat=OLD, branch=BRANCH, created_at=NOW - 60, state=mr_state)}
    seen = RigSeen(rig="gt", inbox=(mail,), merge_requests=mrs, rework_beads={BEAD: bead} if bead else {})
    return decide.decide_rig(seen, decide.RigHistory(), PatrolConfig(), NOW)


@pytest.mark.parametrize("reason", ["tests", "verification", "conflict"])
def test_rework_for_a_polecat_that_is_not_alive_goes_to_a_new_polecat_on_the_same_branch(reason: str) -> None:
    msg = rework(reason=reason)
    [action] = decide_one(msg)
    assert isinstance(action, ReworkRespawn)
    assert (action.bead, action.branch, action.mail_id, action.message) == (BEAD, BRANCH, "m1", msg)
    assert action.rescue_ref.startswith(f"refs/vermas/rescue/{BEAD}/")
    # The ack is part of the effect (after the new polecat has it), never a separate action.
    assert not any(isinstance(a, AckMail) for a in decide_one(msg))


def test_rework_whose_bead_is_already_hooked_is_forwarded_to_its_holder_and_acked() -> None:
    """A respawn that crashed after the hooking, before the ack: forward (idempotently), no second polecat."""
    msg = rework()
    forward, ack = decide_one(msg, BeadSeen("hooked", "gt/polecats/slit"))
    assert isinstance(forward, SendMail) and forward.to == "gt/polecats/slit" and forward.message == msg
    assert forward.idempotency_key == "rework:m1"
    assert isinstance(ack, AckMail) and ack.id == "m1"


@pytest.mark.parametrize(("bead", "mr_state", "sender", "msg", "why"), [
    (BeadSeen("closed", OLD), "rework", "gt/refinery", rework(), "is closed"),
    (None, "rework", "gt/refinery", rework(), "is unknown"),
    (BeadSeen("in_progress", OLD), "queued", "gt/refinery", rework(), "is queued, not waiting"),
    (BeadSeen("in_progress", OLD), "rejected", "gt/refinery", rework(), "is rejected, not waiting"),
    (BeadSeen("in_progress", OLD), "rework", "gt/refinery", rework(merge_request="gt-zz"), "not in the store"),
    (BeadSeen("in_progress", OLD), "rework", "gt/polecats/nux", rework(), "did not come"),
    (BeadSeen("in_progress", OLD), "conflict", "gt/refinery", rework(branch=None), "names no branch"),
])
def test_rework_that_needs_no_new_polecat_is_acknowledged_with_the_reason(
        bead: BeadSeen | None, mr_state: str, sender: str, msg: ReworkRequest, why: str) -> None:
    [action] = decide_one(msg, bead, mr_state, sender)
    assert isinstance(action, AckMail) and why in action.reason, action


def test_rework_refusal_is_only_for_hooked_and_closed_beads() -> None:
    assert polecat.rework_refusal("in_progress", OLD) is None and polecat.rework_refusal("open", None) is None
    assert "hooked by x" in str(polecat.rework_refusal("hooked", "x"))
    assert "closed" in str(polecat.rework_refusal("closed", OLD))


# ---- the effect, once for real ----------------------------------------------------------------------------


@pytest.fixture
def rigged(tmp_path: Path) -> Iterator[tuple[Town, MergeRig, TownSessions]]:
    town, _ = Town.init(tmp_path / "town")
    rig = MergeRig(town, tmp_path)
    town.config.agent.command, town.config.agent.args = "sh", ["-c", "sleep 600", "agent"]
    town.save_config()
    sessions = TownSessions(town.root)
    try:
        yield town, rig, sessions
    finally:
        sessions.kill_server()
        town.close()


@pytest.mark.tmux
def test_a_dead_polecats_rework_is_respawned_on_its_branch_with_the_request_in_its_inbox(
        rigged: tuple[Town, MergeRig, TownSessions]) -> None:
    town, mr, sessions = rigged
    bead = beads.create(town, parse_address("mayor"), "Add the feature", rig="gt").id
    first = polecat.spawn(town, parse_address("mayor"), bead, "gt", sessions=sessions, kick="none")
    old, worktree = parse_address(first.address), Path(str(first.worktree))
    work = mr.commit(bead, old, worktree, {"feature.txt": "BROKEN\n"}, "feature")  # red: the test command greps it
    (worktree / "scratch.txt").write_text("not committed\n")  # must survive the respawn (rescue ref)
    assert sessions.kill(old)  # its session died after polecat_done

    [step] = worker.drain(town, "gt", "runner-test", max_steps=1, alive=lambda req: sessions.alive(
        parse_address(req.polecat)))
    assert step.reworked == [work.mr] and ledger.get(town, work.mr).state is MRState.REWORK
    [sent] = mr.mail_to("gt/witness", protocol.ProtocolKind.REWORK_REQUEST)  # not alive: to the witness

    events = witness_patrol.round(town, sessions)
    respawned = [e for e in events if e.action == "rework_respawn"]
    assert respawned and respawned[0].ok, [(e.action, e.reason) for e in events]
    [new] = [p for p in polecat.list_polecats(town, "gt")]
    # A new slot (the freed name may be reused) and a new session, on the old branch.
    assert new.created_at != first.created_at and new.branch == work.branch and new.state is PolecatState.STARTED
    new_tree = Path(str(new.worktree))
    # The same branch, its commit kept, checked out in the new polecat's worktree; the old one is gone.
    assert git(new_tree, "rev-parse", "--abbrev-ref", "HEAD") == work.branch
    assert git(new_tree, "rev-parse", "HEAD") == work.commit
    assert sessions.alive(parse_address(new.address))
    row = mr.bead_row(bead)
    assert (row["status"], row["assignee"]) == ("hooked", new.address)
    # The REWORK_REQUEST, as the refinery wrote it, is in the new polecat's inbox; the witness's is acked.
    [forwarded] = mr.mail_to(new.address, protocol.ProtocolKind.REWORK_REQUEST)
    assert forwarded == sent and isinstance(forwarded, ReworkRequest) and forwarded.reason == "tests"
    with town.db.read() as conn:
        acked = conn.execute("SELECT acked_at FROM messages WHERE recipient = 'gt/witness' AND subject = ?",
                             (f"REWORK_REQUEST {bead}",)).fetchone()[0]
    assert acked is not None
    notes = beads.show(town, bead).notes
    assert f"continue on branch {work.branch}" in notes and "refs/vermas/rescue/" in notes
    ref = next(line.split(" saved to ")[1].split()[0] for line in notes.splitlines() if " saved to " in line)
    assert git(mr.clone, "show", f"{ref}:scratch.txt") == "not committed"
    # A second round does nothing more: the mail is acked, one polecat holds the bead.
    assert not [e for e in witness_patrol.round(town, sessions) if e.action == "rework_respawn"]
    assert len(polecat.list_polecats(town, "gt")) == 1
    # The new polecat's fix merges through the queue as the bead's next request.
    fixed = mr.commit(bead, parse_address(new.address), new_tree, {"feature.txt": "working\n"}, "fix")
    worker.drain(town, "gt", "runner-test")
    assert ledger.get(town, fixed.mr).state is MRState.MERGED and mr.bead_row(bead)["status"] == "closed"
    assert ledger.get(town, work.mr).state is MRState.REJECTED  # superseded by the fix
    assert git(mr.bare, "show", "main:feature.txt") == "working"
