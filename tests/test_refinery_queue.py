"""The refinery's queue rules (pure): states and transitions, config defaults and bounds, order
with an age bonus (no starvation, never newest-first), dedup by (bead, commit), the lease's
compare-and-set decisions, and batch selection."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from vermas.errors import Conflict
from vermas.refinery import queue
from vermas.refinery.queue import Duplicate, Enqueue, LeaseAction
from vermas.refinery.types import (
    AGE_STEP_S, FINAL_STATES, LEASE_TTL_S, OUTPUT_TAIL_CHARS, TRANSITIONS, Lease, MergeConfig, MRState,
    QueuedRequest, RunKind, RunOutcome, RunStatus, can_transition, check_transition, tail,
)

S = MRState


def req(id_: str, *, bead: str | None = None, commit: str = "c1", priority: int = 2, at: float = 0.0,
        state: MRState = S.QUEUED, not_before: float | None = None) -> QueuedRequest:
    return QueuedRequest(id=id_, rig="gt", bead=bead or f"b-{id_}", branch=f"polecat/{id_}", commit=commit,
                         priority=priority, queued_at=at, state=state, not_before=not_before)


# ---- states --------------------------------------------------------------------------------------

EDGES = {
    (S.QUEUED, S.CLAIMED), (S.QUEUED, S.REJECTED),
    (S.CLAIMED, S.TESTING), (S.CLAIMED, S.CONFLICT), (S.CLAIMED, S.REJECTED), (S.CLAIMED, S.QUEUED),
    (S.CLAIMED, S.MERGED), (S.CLAIMED, S.FAILED),
    (S.TESTING, S.MERGED), (S.TESTING, S.REWORK), (S.TESTING, S.FAILED), (S.TESTING, S.QUEUED),
    (S.TESTING, S.CLAIMED), (S.TESTING, S.REJECTED),
    (S.REWORK, S.REJECTED), (S.REWORK, S.QUEUED), (S.CONFLICT, S.REJECTED), (S.CONFLICT, S.QUEUED),
    (S.FAILED, S.QUEUED), (S.FAILED, S.REJECTED),
}


def test_the_states_are_the_issues_eight() -> None:
    assert [s.value for s in MRState] == ["queued", "claimed", "testing", "merged", "rework", "conflict",
                                          "rejected", "failed"]
    assert set(TRANSITIONS) == set(MRState)
    assert FINAL_STATES == {S.MERGED, S.REJECTED}


@pytest.mark.parametrize("old", list(MRState))
@pytest.mark.parametrize("new", list(MRState))
def test_every_transition_is_checked_against_the_table(old: MRState, new: MRState) -> None:
    allowed = (old, new) in EDGES
    assert can_transition(old, new) is allowed
    if allowed:
        check_transition(old, new)
    else:
        with pytest.raises(Conflict, match=f"from {old} to {new}; from {old} it may go to: "):
            check_transition(old, new)


def test_nothing_leaves_merged_and_nothing_merges_without_being_worked() -> None:
    with pytest.raises(Conflict, match="none \\(it is final\\)"):
        check_transition(S.MERGED, S.QUEUED)
    assert not can_transition(S.QUEUED, S.MERGED)  # never merged without a claim under the lease
    assert not can_transition(S.REWORK, S.MERGED) and not can_transition(S.FAILED, S.MERGED)


# ---- models --------------------------------------------------------------------------------------


def test_merge_config_defaults_and_bounds() -> None:
    cfg = MergeConfig()
    assert (cfg.target_branch, cfg.batch_size, cfg.retry_flaky, cfg.test_timeout, cfg.max_attempts, cfg.push) == (
        "", 4, False, 1800, 3, "auto")
    assert cfg.target("main") == "main" and MergeConfig(target_branch="trunk").target("main") == "trunk"
    for field in MergeConfig.model_fields:  # every default is documented in the one docstring
        assert f"- {field}" in (MergeConfig.__doc__ or "")
    for bad in ({"batch_size": 0}, {"batch_size": 65}, {"test_timeout": 0}, {"max_attempts": 0},
                {"push": "force"}, {"target_branch": "a b"}, {"batch": 4}):
        with pytest.raises(ValidationError):
            MergeConfig(**bad)


def test_request_and_outcome_models_refuse_bad_values() -> None:
    with pytest.raises(ValidationError):
        req("x", priority=5)
    with pytest.raises(ValidationError):
        QueuedRequest(id="", rig="gt", bead="b", branch="br", commit="c", queued_at=0)
    with pytest.raises(ValidationError):
        RunOutcome(kind=RunKind.TEST, status=RunStatus.FAILED, command="make", target_sha="t",
                   candidate_sha="c", output_tail="x" * (OUTPUT_TAIL_CHARS + 1))
    out = RunOutcome(kind=RunKind.TEST, status=RunStatus.TIMED_OUT, command="make", target_sha="t",
                     candidate_sha="c")
    assert out.red and not out.passed


def test_tail_keeps_the_end_where_failures_are() -> None:
    assert tail("short") == "short"
    long = "a" * 5000 + "FAILED test_x"
    cut = tail(long)
    assert len(cut) == OUTPUT_TAIL_CHARS and cut.endswith("FAILED test_x") and cut.startswith("...\n")


# ---- order ---------------------------------------------------------------------------------------


def test_priority_first_then_age() -> None:
    now = 100.0
    reqs = [req("new-p2", priority=2, at=90), req("old-p2", priority=2, at=10), req("p0", priority=0, at=95),
            req("p4", priority=4, at=0)]
    assert [r.id for r in queue.order(reqs, now)] == ["p0", "old-p2", "new-p2", "p4"]


def test_only_queued_past_backoff_are_eligible() -> None:
    reqs = [req("a", state=S.FAILED), req("b", state=S.TESTING), req("c", not_before=50.0), req("d")]
    assert [r.id for r in queue.order(reqs, 10.0)] == ["d"]
    assert [r.id for r in queue.order(reqs, 50.0)] == ["c", "d"]


def test_a_long_waiting_low_priority_request_beats_fresh_urgent_ones() -> None:
    old = req("old", priority=4, at=0.0)
    bound = queue.max_wait_behind_later(4)
    assert bound == 4 * AGE_STEP_S
    early = req("early", priority=0, at=bound - 60)
    late = req("late", priority=0, at=bound + 1)
    now = bound + 2
    assert [r.id for r in queue.order([late, early, old], now)] == ["early", "old", "late"]
    # before the bound an urgent fresh request still goes first
    assert queue.order([old, req("fresh", priority=0, at=10.0)], 20.0)[0].id == "fresh"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 10_000)), min_size=2, max_size=30))
def test_never_newest_first_among_equal_priorities(specs: list[tuple[int, int]]) -> None:
    reqs = [req(f"r{i}", priority=p, at=float(t)) for i, (p, t) in enumerate(specs)]
    now = 20_000.0
    ordered = queue.order(reqs, now)
    for i, a in enumerate(ordered):
        for b in ordered[i + 1:]:
            if a.priority == b.priority:
                assert a.queued_at <= b.queued_at
            if a.queued_at == b.queued_at:
                assert a.priority <= b.priority


@settings(max_examples=150, deadline=None)
@given(priority=st.integers(1, 4),
       arrivals=st.lists(st.tuples(st.integers(1, 900), st.lists(st.integers(0, 4), min_size=1, max_size=3)),
                         max_size=40))
def test_starvation_is_bounded_under_a_stream_of_fresh_work(priority: int,
                                                             arrivals: list[tuple[int, list[int]]]) -> None:
    """One request is served per tick while 1-3 new ones arrive each tick (the queue only grows);
    after the drawn ticks, urgent (priority 0) work keeps arriving every 10 minutes. The old
    low-priority request is still served, right after the requests queued within its bound."""
    pending = [req("old", priority=priority, at=0.0)]
    bound = queue.max_wait_behind_later(priority)
    endless = [(600, [0, 0])] * (int(bound // 600) + 2 + 3 * len(arrivals) + 3 * int(bound // 600))
    now = 0.0
    within_bound = 0
    served_at_tick = None
    for tick, (dt, prios) in enumerate([*arrivals, *endless], 1):
        now += dt
        for j, p in enumerate(prios):
            pending.append(req(f"t{tick}-{j}", priority=p, at=now))
            within_bound += now <= bound
        first = queue.order(pending, now)[0]
        pending.remove(first)
        if first.id == "old":
            served_at_tick = tick
            break
    assert served_at_tick is not None and served_at_tick <= within_bound + 1


# ---- dedup ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("existing", "commit", "expected"), [
    ([], "c1", Enqueue()),
    ([req("m1", bead="B", commit="c1")], "c1", Duplicate("m1", S.QUEUED)),  # re-sent done: one request
    ([req("m1", bead="B", commit="c1", state=S.MERGED)], "c1", Duplicate("m1", S.MERGED)),  # never twice
    ([req("m1", bead="B", commit="c1", state=S.REWORK)], "c2", Enqueue(replaces=("m1",))),  # new commit
    ([req("m1", bead="B", commit="c1", state=S.CONFLICT), req("m2", bead="B", commit="c2", state=S.QUEUED,
                                                              at=5)], "c3", Enqueue(replaces=("m1", "m2"))),
    ([req("m1", bead="B", commit="c1", state=S.TESTING)], "c2", Enqueue(stale_in_flight=("m1",))),
    ([req("m1", bead="B", commit="c1", state=S.MERGED), req("m2", bead="B", commit="c2", state=S.REJECTED)],
     "c3", Enqueue()),  # final ones stay as they are
    ([req("m1", bead="OTHER", commit="c1")], "c1", Enqueue()),  # another bead's same sha is another request
    ([req("m1", bead="B", commit="c1", state=S.REJECTED), req("m2", bead="B", commit="c1", at=9)], "c1",
     Duplicate("m2", S.QUEUED)),  # the latest of several for the same commit
])
def test_dedup_by_bead_and_commit(existing: list[QueuedRequest], commit: str, expected: object) -> None:
    assert queue.admit(existing, "B", commit) == expected


def test_a_stale_request_is_superseded_by_a_newer_commit() -> None:
    old = req("m1", bead="B", commit="c1", state=S.TESTING, at=1)
    newer = req("m2", bead="B", commit="c2", at=2)
    assert queue.superseded(old, [old, newer])
    assert not queue.superseded(newer, [old, newer])
    assert not queue.superseded(old, [old, newer.model_copy(update={"state": S.REJECTED})])


# ---- lease ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("observed", "me", "now", "action"), [
    (None, "A", 0.0, LeaseAction.TAKE),
    (Lease(owner="A", expires_at=10), "A", 5.0, LeaseAction.RENEW),
    (Lease(owner="B", expires_at=10), "A", 5.0, LeaseAction.WAIT),
    (Lease(owner="B", expires_at=10), "A", 10.0, LeaseAction.TAKE),  # a dead runner's lease expired
    (Lease(owner="A", expires_at=10), "A", 11.0, LeaseAction.TAKE),  # mine lapsed: taken afresh, resume
])
def test_lease_decisions(observed: Lease | None, me: str, now: float, action: LeaseAction) -> None:
    assert queue.lease_action(observed, me, now) is action


def test_compare_and_set_applies_only_over_what_was_observed() -> None:
    a = queue.new_lease("A", 0.0)
    assert a.expires_at == LEASE_TTL_S
    row, ok = queue.compare_and_set(None, None, a)
    assert ok and row == a
    b = queue.new_lease("B", 100.0)
    row, ok = queue.compare_and_set(row, None, b)  # B observed "no lease" before A wrote: refused
    assert not ok and row == a
    row, ok = queue.compare_and_set(row, a, b)  # B observed A's (expired) lease: applies
    assert ok and row == b
    assert queue.holds(b, "B", 100.0) and not queue.holds(b, "A", 100.0) and not queue.holds(None, "B", 0.0)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("AB"), st.floats(0, 40), st.booleans()), min_size=1, max_size=60))
def test_two_runners_never_both_hold_the_lease(steps: list[tuple[str, float, bool]]) -> None:
    """Runners read the row, decide, and write by CAS, interleaved any way (a stale read is a
    read made steps earlier); each acts only under the last lease it wrote. At no instant do
    both believe they hold it."""
    row: Lease | None = None
    now = 0.0
    mine: dict[str, Lease | None] = {"A": None, "B": None}
    seen: dict[str, Lease | None] = {"A": None, "B": None}
    for who, dt, reread in steps:
        now += dt
        if reread:
            seen[who] = row
        action = queue.lease_action(seen[who], who, now)
        if action is not LeaseAction.WAIT:
            row, ok = queue.compare_and_set(row, seen[who], queue.new_lease(who, now, ttl=30.0))
            if ok:
                mine[who] = row
            seen[who] = row
        assert not (queue.holds(mine["A"], "A", now) and queue.holds(mine["B"], "B", now))


# ---- batches -------------------------------------------------------------------------------------


def test_batch_selection_takes_up_to_batch_size_in_order_one_per_bead() -> None:
    reqs = [req(f"r{i}", at=float(i)) for i in range(6)] + [req("dup", bead="b-r0", commit="c9", at=0.5)]
    assert [r.id for r in queue.select_batch(reqs, 10.0, 4)] == ["r0", "r1", "r2", "r3"]
    assert [r.id for r in queue.select_batch(reqs, 10.0, 1)] == ["r0"]
    assert [r.id for r in queue.select_batch(reqs[:2], 10.0, 4)] == ["r0", "r1"]
    assert queue.select_batch([], 10.0, 4) == []
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        queue.select_batch(reqs, 10.0, 0)
