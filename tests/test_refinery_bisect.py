"""The batch/bisection planner (pure): its steps for each branch as tables, and its bounds on
test runs as hypothesis properties over queues of up to 64 requests and any set of bad ones."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vermas.refinery import bisect
from vermas.refinery.bisect import Resolve, TestPrefix

ROOT = Path(__file__).resolve().parent.parent


def ids(n: int) -> list[str]:
    return [f"r{i}" for i in range(n)]


def drive(n: int, answers: list[bool], retry_flaky: bool = False) -> tuple[list[bisect.Action], bisect.Action]:
    """Feed `answers` in order; return the test actions asked for and the final action."""
    s = bisect.start(ids(n), retry_flaky)
    asked: list[bisect.Action] = []
    for passed in answers:
        action = bisect.next_action(s)
        assert isinstance(action, TestPrefix), f"planner resolved early: {action}"
        asked.append(action)
        s = bisect.record(s, action.k, passed)
    final = bisect.next_action(s)
    assert isinstance(final, Resolve), f"planner still wants {final}"
    assert s.runs == len(answers)
    return asked, final


@pytest.mark.parametrize(("n", "answers", "retry", "tests", "final"), [
    # green tip: everything merges in one run
    (4, [True], False, [TestPrefix(4)], Resolve(("r0", "r1", "r2", "r3"), None, ())),
    # red tip, bisect: 2 red, 1 green -> r1 is the culprit, r0 merges, r2 r3 re-queued
    (4, [False, False, True], False, [TestPrefix(4), TestPrefix(2), TestPrefix(1)],
     Resolve(("r0",), "r1", ("r2", "r3"))),
    # the first request is the culprit: nothing merges
    (4, [False, False, False], False, [TestPrefix(4), TestPrefix(2), TestPrefix(1)],
     Resolve((), "r0", ("r1", "r2", "r3"))),
    # the last one: 2 green, 3 green
    (4, [False, True, True], False, [TestPrefix(4), TestPrefix(2), TestPrefix(3)],
     Resolve(("r0", "r1", "r2"), "r3", ())),
    # a single request needs no bisection
    (1, [False], False, [TestPrefix(1)], Resolve((), "r0", ())),
    (1, [True], False, [TestPrefix(1)], Resolve(("r0",), None, ())),
    # retry_flaky: red then green on the retry -> flaky, all merge
    (4, [False, True], True, [TestPrefix(4), TestPrefix(4, retry=True)],
     Resolve(("r0", "r1", "r2", "r3"), None, (), flaky=True)),
    # retry_flaky: red twice -> bisect as usual (one run more)
    (4, [False, False, True, False], True,
     [TestPrefix(4), TestPrefix(4, retry=True), TestPrefix(2), TestPrefix(3)],
     Resolve(("r0", "r1"), "r2", ("r3",))),
    # the retry is for the tip only: a red mid-bisection is not retried
    (3, [False, False, False], True, [TestPrefix(3), TestPrefix(3, retry=True), TestPrefix(1)],
     Resolve((), "r0", ("r1", "r2"))),
])
def test_planner_steps(n: int, answers: list[bool], retry: bool, tests: list[TestPrefix], final: Resolve) -> None:
    asked, resolved = drive(n, answers, retry)
    assert asked == tests
    assert resolved == final


def test_outcomes_come_one_at_a_time_for_the_prefix_asked() -> None:
    s = bisect.start(ids(4))
    with pytest.raises(ValueError, match="outcome for prefix 2 but the planner asked for TestPrefix\\(k=4"):
        bisect.record(s, 2, True)
    s = bisect.record(s, 4, True)
    with pytest.raises(ValueError, match="asked for Resolve"):
        bisect.record(s, 4, True)
    with pytest.raises(ValueError, match="at least one request"):
        bisect.start([])
    with pytest.raises(ValueError, match="each request once"):
        bisect.start(["a", "a"])
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        bisect.run_queue(["a"], lambda prefix: True, 0)


def test_bound_formulas() -> None:
    assert [bisect.clog2(n) for n in (1, 2, 3, 4, 5, 8, 9, 64)] == [0, 1, 2, 2, 3, 3, 4, 6]
    assert bisect.max_runs(8, 0, 4) == 2 and bisect.max_runs(8, 1, 4) == 2 + 3 and bisect.max_runs(0, 0, 4) == 0
    assert bisect.max_runs(8, 1, 8) == 1 + 1 + 3 <= bisect.issue_bound_one_bad(8) == 7
    assert bisect.max_runs(8, 1, 1) == 8 == bisect.serial_runs(8)  # batch size 1 is the serial queue
    assert bisect.issue_bound_one_bad(8, retry_flaky=True) == 8


# ---- bounds, as properties -----------------------------------------------------------------------

BATCH_SIZES = st.sampled_from([1, 2, 3, 4, 5, 8, 16, 64])


@st.composite
def queues(draw: st.DrawFn, max_bad: int | None = None) -> tuple[int, frozenset[int]]:
    n = draw(st.integers(1, 64))
    bad = draw(st.sets(st.integers(0, n - 1), max_size=n if max_bad is None else max_bad))
    return n, frozenset(bad)


def deterministic(bad: frozenset[int]) -> bisect.Tester:
    """A prefix is green iff none of its requests is bad (merged ones never are)."""
    return lambda prefix: not any(int(r[1:]) in bad for r in prefix)


@settings(max_examples=400, deadline=None)
@given(queues(), BATCH_SIZES, st.booleans())
def test_every_bad_request_is_found_and_every_good_one_merged_within_the_bound(
        q: tuple[int, frozenset[int]], batch_size: int, retry_flaky: bool) -> None:
    n, bad = q
    run = bisect.run_queue(ids(n), deterministic(bad), batch_size, retry_flaky)
    assert run.merged == tuple(f"r{i}" for i in range(n) if i not in bad)  # in queue order
    assert sorted(run.culprits) == sorted(f"r{i}" for i in bad)
    assert run.runs <= bisect.max_runs(n, len(bad), batch_size, retry_flaky)
    # each culprit costs at most one red tip, ceil(log2 b) bisection runs (and the retry)
    for size, runs, culprit in run.per_stack:
        if culprit is None:
            assert runs == 1
        else:
            assert runs <= 1 + bisect.clog2(size) + retry_flaky <= 1 + bisect.clog2(min(batch_size, n)) + retry_flaky


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 64), BATCH_SIZES, st.booleans())
def test_all_good_takes_ceil_n_over_batch_size_runs(n: int, batch_size: int, retry_flaky: bool) -> None:
    run = bisect.run_queue(ids(n), lambda prefix: True, batch_size, retry_flaky)
    assert run.runs == math.ceil(n / batch_size) == run.stacks
    assert run.merged == tuple(ids(n)) and run.culprits == ()


@settings(max_examples=300, deadline=None)
@given(queues(max_bad=1).filter(lambda q: len(q[1]) == 1), st.booleans())
def test_one_bad_in_a_stack_meets_the_issues_bound(q: tuple[int, frozenset[int]], retry_flaky: bool) -> None:
    """For N requests with one bad: at most 1 + 2 * ceil(log2 N) runs (+1 retry), when they are
    stacked together (batch_size >= N). Smaller batches add the green batches the good need."""
    n, bad = q
    run = bisect.run_queue(ids(n), deterministic(bad), 64, retry_flaky)
    assert run.runs <= bisect.issue_bound_one_bad(n, retry_flaky)
    assert run.culprits == (f"r{next(iter(bad))}",)


@settings(max_examples=300, deadline=None)
@given(queues().filter(lambda q: len(q[1]) >= 2), BATCH_SIZES)
def test_two_or_more_bad_each_culprit_costs_at_most_1_plus_ceil_log2_runs_more(
        q: tuple[int, frozenset[int]], batch_size: int) -> None:
    """With m >= 2 bad: runs <= ceil((N - m) / b) + m * (1 + ceil(log2 min(b, N))); in one stack
    (b >= N) that is at most m * (1 + ceil(log2 N)) + 1."""
    n, bad = q
    run = bisect.run_queue(ids(n), deterministic(bad), batch_size)
    m = len(bad)
    assert run.runs <= math.ceil((n - m) / batch_size) + m * (1 + bisect.clog2(min(batch_size, n)))
    if batch_size >= n:
        assert run.runs <= m * (1 + bisect.clog2(n)) + 1


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 64), st.booleans(), st.data())
def test_any_outcomes_even_inconsistent_ones_end_in_a_partition_of_the_stack(
        n: int, retry_flaky: bool, data: st.DataObject) -> None:
    """Flaky tests may answer anything: the planner still ends within 1 + ceil(log2 N) (+1) runs,
    and its verdict splits the stack in order into merged, at most one culprit, re-queued; a
    culprit's prefix below was seen green and its own prefix red."""
    s = bisect.start(ids(n), retry_flaky)
    seen: dict[int, bool] = {0: True}
    action = bisect.next_action(s)
    while isinstance(action, TestPrefix):
        passed = data.draw(st.booleans())
        seen[action.k] = passed  # the retry's answer overrides the first
        s = bisect.record(s, action.k, passed)
        action = bisect.next_action(s)
    assert s.runs <= 1 + bisect.clog2(n) + retry_flaky
    culprit = () if action.culprit is None else (action.culprit,)
    assert (*action.merge, *culprit, *action.requeue) == tuple(ids(n))
    if action.culprit is not None:
        assert seen[len(action.merge)] is True and seen[len(action.merge) + 1] is False
        assert not action.flaky
    else:
        assert action.requeue == () and (seen[n] is True)


def test_a_flaky_red_tip_retried_merges_the_stack_with_one_run_more() -> None:
    calls: list[int] = []

    def flaky_once(prefix: tuple[str, ...]) -> bool:
        calls.append(len(prefix))
        return len(calls) != 1  # the first run is red for no reason

    run = bisect.run_queue(ids(8), flaky_once, 4, retry_flaky=True)
    assert run.runs == 3 and run.flaky == 1 and run.culprits == () and run.merged == tuple(ids(8))
    calls.clear()
    without = bisect.run_queue(ids(8), flaky_once, 4, retry_flaky=False)
    assert without.culprits == ("r3",)  # without the retry, the flake lands on a good request


def test_the_planner_benchmark_runs_and_stays_within_its_bounds(tmp_path: Path) -> None:
    out = tmp_path / "plan.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_refinery_plan.py"), "--json-out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    rows = {(r["name"], r["batch_size"]): r for r in result["scenarios"]}
    assert set(rows) == {(name, b) for name in ("8 all good", "8, one bad", "32, two bad") for b in (1, 4)}
    assert result["all_within_bound"]
    assert rows[("8 all good", 4)]["runs"] == 2 and rows[("8, one bad", 4)]["within_issue_bound"]
    assert all(r["serial_runs"] == r["n"] for r in rows.values())
