"""Queue holds: the town (not a request, not a red target) stops merging. Pure gate decisions;
the ledger places a hold once with one recorded escalation and releases it with the escalation
resolved; the real worker (real git, real store) does nothing while held and is released by
its kind's probe when the cause changes, with no attempt counted against the requests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.refinery_rig import MergeRig
from vermas import patrol_log
from vermas.protocol import ProtocolKind
from vermas.refinery import decide, ledger, worker
from vermas.refinery.types import HoldKind, MRState, QueueHold
from vermas.town import Town

OWNER = "runner-1"
HELD = QueueHold(kind=HoldKind.PUSH_REFUSED, reason="push refused: no", key="k1", since=1.0)


# ---- the pure gate ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("hold", "current", "resumed", "expected"), [
    (None, None, False, decide.Proceed),
    (None, "k1", True, decide.Proceed),
    (HELD, "k1", False, decide.StayHeld),
    (HELD, None, False, decide.StayHeld),  # the cause could not be probed: never loop
    (HELD, "k2", False, decide.ReleaseHold),
    (HELD, "k1", True, decide.ReleaseHold),  # a person resumed it
    (HELD, None, True, decide.ReleaseHold),
])
def test_hold_gate(hold: QueueHold | None, current: str | None, resumed: bool, expected: type) -> None:
    action = decide.hold_gate(hold, current, resumed)
    assert isinstance(action, expected)
    if isinstance(action, decide.StayHeld):
        assert HELD.reason in action.reason and "push_refused" in action.reason


# ---- the ledger ------------------------------------------------------------------------------------


def escalations(town: Town) -> dict[str, object]:
    with town.db.read() as conn:
        return dict(patrol_log.standing(conn))


def escalation_mails(town: Town) -> int:
    with town.db.read() as conn:
        return int(conn.execute("SELECT COUNT(*) FROM messages WHERE kind = 'ESCALATION'").fetchone()[0])


def test_a_hold_escalates_once_per_cause_and_its_release_resolves_it(town: Town) -> None:
    assert ledger.hold(town, "gt", HoldKind.UPSTREAM_DIRTY, "work tree dirty: a.txt", "d1", 10.0, "gt/refinery")
    assert not ledger.hold(town, "gt", HoldKind.UPSTREAM_DIRTY, "work tree dirty: a.txt", "d1", 11.0, "gt/refinery")
    state = ledger.queue_state(town, "gt")
    assert state.hold == QueueHold(kind=HoldKind.UPSTREAM_DIRTY, reason="work tree dirty: a.txt", key="d1",
                                   since=10.0)
    assert list(escalations(town)) == [ledger.hold_key("gt")] and escalation_mails(town) == 1
    assert "gt" in ledger.rigs_with_work(town)
    # another cause replaces it: one standing escalation, a second mail for the new cause
    assert ledger.hold(town, "gt", HoldKind.PUSH_REFUSED, "push refused: hook declined", "p1", 12.0, "gt/refinery")
    assert list(escalations(town)) == [ledger.hold_key("gt")] and escalation_mails(town) == 2
    assert ledger.release_hold(town, "gt", "clean again", "gt/refinery", 13.0)
    assert not ledger.release_hold(town, "gt", "clean again", "gt/refinery", 14.0)
    assert ledger.queue_state(town, "gt").hold is None and escalations(town) == {}
    assert "gt" not in ledger.rigs_with_work(town)


# ---- the worker, for real ------------------------------------------------------------------------------


@pytest.fixture
def mr(town: Town, tmp_path: Path) -> MergeRig:
    return MergeRig(town, tmp_path)


@pytest.fixture
def probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A probe for PUSH_REFUSED that reads its fingerprint from a file the test writes (the
    worker's own probe is put back afterwards)."""
    cause = tmp_path / "cause"
    cause.write_text("k1")
    monkeypatch.setitem(worker.HOLD_PROBES, HoldKind.PUSH_REFUSED, lambda step: cause.read_text())
    yield cause


def test_a_held_queue_tests_nothing_until_its_cause_changes(town: Town, mr: MergeRig, probe: Path) -> None:
    w = mr.work("add a", {"a.txt": "a\n"})
    before = mr.upstream_main()
    ledger.hold(town, "gt", HoldKind.PUSH_REFUSED, "push refused: pre-receive hook declined", "k1", 1.0,
                "gt/refinery")
    for _ in range(3):
        report = worker.process_rig(town, "gt", OWNER, 2.0)
        assert report.paused is not None and "pre-receive hook declined" in report.paused
        assert report.test_runs == 0 and not report.merged
    assert ledger.get(town, w.mr).state is MRState.QUEUED and mr.upstream_main() == before
    assert len(mr.mail_to("mayor", ProtocolKind.ESCALATION)) == 1
    probe.write_text("k2")  # something changed: released, tried again, merged
    reports = worker.drain(town, "gt", OWNER)
    assert [r.error for r in reports if r.error] == []
    row = ledger.get(town, w.mr)
    assert row.state is MRState.MERGED and row.attempts == 0 and row.failures == 0
    assert ledger.queue_state(town, "gt").hold is None and escalations(town) == {}


def test_mq_resume_releases_a_hold_whose_cause_cannot_be_probed(town: Town, mr: MergeRig,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(worker.HOLD_PROBES, HoldKind.VERIFY_UNAVAILABLE, raising=False)  # no probe: stays held
    w = mr.work("add a", {"a.txt": "a\n"})
    ledger.hold(town, "gt", HoldKind.VERIFY_UNAVAILABLE, "no probe registered in this test", "x", 1.0,
                "gt/refinery")
    assert worker.process_rig(town, "gt", OWNER, 2.0).paused is not None
    ledger.request_resume(town, "gt")
    worker.drain(town, "gt", OWNER)
    assert ledger.get(town, w.mr).state is MRState.MERGED
    state = ledger.queue_state(town, "gt")
    assert state.hold is None and not state.resume_requested
