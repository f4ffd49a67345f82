"""The rework loop always ends. Work the refinery sent back (failed tests, a conflict) comes back
to a polecat with the evidence on its hook (hook_check's sent_back, the SessionStart context)
and in its REWORK_REQUEST mail; polecat_done with the SAME commit is refused, saying why and what
to do (it used to answer "queued" while nothing was queued, and the bead was orphaned); every
send-back counts toward `max_attempts`, and the last one is exactly one escalation, recorded in
the `escalations` table (what `status --problems` and the dashboard read), not only mailed.

Pure rule: every request state; the loop: a real rig (bare upstream, canonical clone, real
worktree commits, the real refinery worker and test command)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import git
from tests.refinery_rig import MergeRig, Work
from tests.test_refinery_e2e import QueueTown, e2e, process_queue_until, sling_all
from vermas import hooks, mail, patrol_log, polecat, prime, problems, protocol
from vermas.addresses import parse_address
from vermas.errors import Conflict
from vermas.protocol import PolecatState, ReworkRequest
from vermas.refinery import ledger, queue, worker
from vermas.refinery.types import MRState
from vermas.testing.standin import StandinModelServer
from vermas.town import Town
from vermas_runner import demo


@pytest.mark.parametrize("state", list(MRState))
def test_a_resent_commit_is_refused_only_when_it_was_sent_back_or_rejected(state: MRState) -> None:
    refused = queue.resend_refusal("gt-mr1", state, "c" * 40, "polecat/nux/gt-a1", "make test exited 1\nFAILED x")
    if state in (MRState.REWORK, MRState.CONFLICT, MRState.REJECTED):
        assert refused is not None and "\n" not in refused and "gt-mr1" in refused and "c" * 12 in refused
        assert "make test exited 1 FAILED x" in refused and "ESCALATED" in refused
        assert ("sent back" in refused) is (state is not MRState.REJECTED)
        assert "new commit" in refused or "new work" in refused
    else:  # queued, in flight, failed (its backoff), merged: answering with that request is the truth
        assert refused is None


@pytest.fixture
def rig(town: Town, tmp_path: Path) -> MergeRig:
    return MergeRig(town, tmp_path)


def polecat_state(town: Town, work: Work) -> PolecatState:
    [info] = [p for p in polecat.list_polecats(town, "gt") if p.address == str(work.address)]
    return info.state


def escalations(town: Town) -> list[tuple[str, str, str | None]]:
    with town.db.read() as conn:
        return [(r[0], r[1], r[2]) for r in conn.execute("SELECT key, reason, agent FROM escalations")]


def alive(req: ledger.MergeRequestRow) -> bool:
    return True  # the polecat's session runs: the work comes back to its hook


def test_the_same_commit_after_a_send_back_is_refused_and_nothing_is_written(town: Town, rig: MergeRig) -> None:
    work = rig.work("add the feature", {"feature.txt": "BROKEN\n"})
    [step] = worker.drain(town, "gt", "w", max_steps=1, alive=alive)
    assert step.reworked == [work.mr]
    assert rig.bead_row(work.bead)["status"] == "hooked" and polecat_state(town, work) is PolecatState.STARTED
    mails = len(rig.mail_to("gt/witness", protocol.ProtocolKind.POLECAT_DONE))

    with pytest.raises(Conflict) as refused:
        polecat.done(town, work.address, "COMPLETED", "fixed (not really)")
    text = str(refused.value)
    assert f"commit {work.commit[:12]} was already sent back: merge request {work.mr} is rework" in text
    assert "grep" in text and "exited 1" in text and work.branch in text and "\n" not in text
    # Nothing written: the request, the bead, the slot and the witness's mail are as they were.
    assert ledger.get(town, work.mr).state is MRState.REWORK
    assert rig.bead_row(work.bead)["status"] == "hooked" and polecat_state(town, work) is PolecatState.STARTED
    assert len(rig.mail_to("gt/witness", protocol.ProtocolKind.POLECAT_DONE)) == mails

    # The polecat doing the rework sees the evidence: its hook, its SessionStart context, its mail.
    status = hooks.check(town, work.address)
    assert status.sent_back is not None and status.sent_back.merge_request == work.mr
    assert "exited 1" in status.sent_back.evidence and "polecat_done refuses the same commit" in status.instructions
    context = prime.prime(town, work.address)
    assert f"Sent back by the refinery: {work.mr} is rework" in context and "exited 1" in context
    [request] = rig.mail_to(str(work.address), protocol.ProtocolKind.REWORK_REQUEST)
    assert isinstance(request, ReworkRequest) and request.merge_request == work.mr and "exited 1" in request.text

    # A real fix is a new commit: queued (the answer says so), and it merges.
    fixed = rig.commit(work.bead, work.address, work.worktree, {"feature.txt": "works\n"}, "fix")
    assert ledger.get(town, fixed.mr).state is MRState.QUEUED
    assert hooks.check(town, work.address).sent_back is None  # the hook is empty again: nothing to rework
    worker.drain(town, "gt", "w", alive=alive)
    assert ledger.get(town, fixed.mr).state is MRState.MERGED and git(rig.bare, "show", "main:feature.txt") == "works"


def test_the_queue_answers_a_resent_commit_with_the_requests_real_state(town: Town, rig: MergeRig) -> None:
    work = rig.work("add b", {"b.txt": "b\n"})

    def resend() -> ledger.Enqueued:
        return ledger.enqueue(town, rig="gt", bead=work.bead, polecat=str(work.address), branch=work.branch,
                              commit=work.commit)

    assert (resend().id, resend().state, resend().created) == (work.mr, MRState.QUEUED, False)
    assert ledger.acquire(town, "gt", "w", 1e12) and ledger.claim(town, work.mr, "w", 1e12)
    assert resend().state is MRState.CLAIMED  # in flight: not "queued"
    ledger.transition(town, work.mr, MRState.CONFLICT, "gt/refinery", {"reason": "rebase conflicts in b.txt"})
    with pytest.raises(Conflict, match=r"sent back: merge request .* is conflict \(rebase conflicts in b.txt\)"):
        resend()
    assert ledger.list_requests(town, bead=work.bead)[0].state is MRState.CONFLICT and \
        len(ledger.list_requests(town, bead=work.bead)) == 1


def test_every_attempt_counts_and_the_last_is_exactly_one_recorded_escalation(town: Town, rig: MergeRig) -> None:
    max_attempts = town.config.rigs["gt"].merge.max_attempts
    assert max_attempts == 3
    work = rig.work("add the feature", {"feature.txt": "BROKEN\n"})
    requests = [work]
    for attempt in range(1, max_attempts + 1):
        [step] = worker.drain(town, "gt", "w", max_steps=1, alive=alive)
        row = ledger.get(town, requests[-1].mr)
        assert row.state is MRState.REWORK and row.attempts == attempt
        if attempt < max_attempts:
            assert step.escalated == [] and escalations(town) == []
            assert rig.bead_row(work.bead)["status"] == "hooked"  # back on its hook, with the evidence
            # Still broken, but a new commit: a new attempt, counted.
            requests.append(rig.commit(work.bead, work.address, work.worktree,
                                       {"feature.txt": f"BROKEN {attempt}\n"}, f"try {attempt}"))
            assert ledger.get(town, requests[-1].mr).attempts == attempt
        else:
            assert step.escalated == [row.id]
    last = requests[-1].mr
    # Exactly one escalation, mailed and recorded (status --problems shows it on the request's row).
    assert escalations(town) == [(ledger.mr_escalation_key(last, MRState.REWORK), "attempts-exhausted",
                                  str(work.address))]
    mayor = rig.mail_to("mayor", protocol.ProtocolKind.ESCALATION)
    assert len(mayor) == 1 and f"sent back {max_attempts} times" in mayor[0].text
    with town.db.read() as conn:
        [standing] = patrol_log.standing(conn).values()
        assert problems.escalation_about(standing) == (problems.ProblemKind.MERGE_REQUEST, last)
        unread = mail.unread_count(conn, "mayor")
    # The loop has ended: nothing goes back to a polecat (its hook is empty), and further steps
    # (and an idempotent re-run of the escalation) add nothing.
    assert rig.bead_row(work.bead)["status"] == "in_progress"
    with pytest.raises(Conflict, match="no hooked work"):
        polecat.done(town, work.address, "COMPLETED", "again")
    worker.drain(town, "gt", "w", alive=alive)
    assert len(escalations(town)) == 1 and len(rig.mail_to("mayor", protocol.ProtocolKind.ESCALATION)) == 1
    with town.db.read() as conn:
        assert mail.unread_count(conn, "mayor") == unread


# ---- a real Claude Code polecat on the stand-in model ---------------------------------------------------

SAME_FIX = ("Add the feature",
            "Add feature.txt.\nstandin: write feature.txt = BROKEN\nstandin: fix feature.txt = BROKEN")


@pytest.fixture
def standin(tmp_path: Path) -> Iterator[QueueTown]:
    """tests/test_refinery_e2e.py's town on the stand-in model (Claude Code polecats, its queue driver)."""
    town, _ = Town.init(tmp_path / "town")
    with StandinModelServer(demo.standin_policy()) as server:
        demo.use_standin(town, server.base_url, tmp_path / "claude-home")
        handle = QueueTown(town, MergeRig(town, tmp_path), server)
        try:
            yield handle
        finally:
            handle.stop()
            handle.sessions.kill_server()
            town.close()


def refusals(qt: QueueTown) -> list[str]:
    """What the polecat's model was answered when it called polecat_done and was refused."""
    assert qt.server is not None
    seen: dict[str, str] = {}
    for req in qt.server.main_requests():
        for call in req.tool_calls():
            if call.name.endswith("polecat_done") and call.is_error:
                seen[call.id] = call.text
    return list(seen.values())


@e2e
def test_a_claude_polecat_resending_the_sent_back_commit_is_told_why_and_what_to_do(standin: QueueTown) -> None:
    """Its "fix" changes nothing (the same content: no new commit), so its polecat_done names the
    commit the refinery sent back. The model gets the refusal as the tool's error; nothing is queued
    as if it were new, the bead stays on its hook with the evidence."""
    qt = standin
    [bead] = sling_all(qt, SAME_FIX)
    process_queue_until(qt, lambda: bool(refusals(qt)), "the resent commit's polecat_done to be refused")
    qt.stop()
    [req] = qt.requests(bead)
    said = refusals(qt)[0]
    assert f"was already sent back: merge request {req.id} is rework" in said and "fix it on" in said, said
    assert req.state is MRState.REWORK and req.attempts == 1, qt.diagnostics()
    assert qt.bead_status(bead) == "hooked"
    status = hooks.check(qt.town, parse_address(req.polecat))
    assert status.sent_back is not None and status.sent_back.merge_request == req.id
