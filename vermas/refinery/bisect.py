"""The batch planner: a pure state machine over one stack of requests, and a driver that runs
it over a whole queue.

A stack is up to batch_size requests, each rebased onto the previous; "prefix k" is the tree
at the k-th request's rebased tip (prefix 0 is the target itself, which the pipeline knows to
be green, else the queue would be paused). The planner starts by testing the whole stack:

- green: merge all (one update-ref to the tip);
- red: retry the tip once when retry_flaky (green then means flaky: merge all), else bisect:
  keep `good` (largest prefix known green, starts at 0) and `bad` (smallest prefix known red);
  test the middle until bad == good + 1. Then request `bad` is the culprit: prefix `good` is
  merged, the culprit goes to rework, the requests above it are re-queued (in their order, at
  the head of the queue).

Bounds (test runs), proved by tests/test_refinery_bisect.py for N <= 64 and any bad set:
- N good, batch size b: ceil(N / b).
- m bad (m >= 1), batch size b: at most ceil((N - m) / b) + m * (1 + ceil(log2 min(b, N))),
  plus m when retry_flaky: each culprit costs one red tip and at most ceil(log2 b) bisection
  runs more than the green batches the good requests need anyway.
- one bad in one stack (b >= N): at most 2 + ceil(log2 N) (1 for N = 1), within the issue's
  1 + 2 * ceil(log2 N): one red tip, ceil(log2 N) to find the culprit, one green run for the rest.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class TestPrefix:
    """Run the tests at the tip of the first k requests of the stack."""

    k: int
    retry: bool = False  # the flaky re-run of a red tip

    __test__ = False  # not a pytest class


@dataclass(frozen=True)
class Resolve:
    """The stack's verdict: merge the first `merge` requests (update-ref to prefix `merge`),
    send `culprit` to rework (None when all are green), re-queue `requeue` ahead of the rest."""

    merge: tuple[str, ...]
    culprit: str | None
    requeue: tuple[str, ...]
    flaky: bool = False  # the tip was red once and green on the retry


Action = TestPrefix | Resolve


@dataclass(frozen=True)
class Stack:
    """The planner's state for one stack. Build with `start`, advance with `record`."""

    ids: tuple[str, ...]
    retry_flaky: bool = False
    good: int = 0  # largest prefix known green (0: the target)
    bad: int | None = None  # smallest prefix known red
    retried: bool = False
    flaky: bool = False
    runs: int = 0


def start(ids: Sequence[str], retry_flaky: bool = False) -> Stack:
    if not ids:
        raise ValueError("a stack needs at least one request")
    if len(set(ids)) != len(ids):
        raise ValueError(f"a stack lists each request once, got {list(ids)}")
    return Stack(ids=tuple(ids), retry_flaky=retry_flaky)


def next_action(s: Stack) -> Action:
    """What to do next: a test run, or the verdict."""
    n = len(s.ids)
    if s.bad is None:
        if s.good == n:
            return Resolve(merge=s.ids, culprit=None, requeue=(), flaky=s.flaky)
        return TestPrefix(n)
    if s.bad == n and s.good == 0 and s.retry_flaky and not s.retried:
        return TestPrefix(n, retry=True)
    if s.bad == s.good + 1:
        return Resolve(merge=s.ids[:s.good], culprit=s.ids[s.bad - 1], requeue=s.ids[s.bad:])
    return TestPrefix((s.good + s.bad) // 2)


def record(s: Stack, k: int, passed: bool) -> Stack:
    """Feed back the outcome of the action `next_action(s)` asked for. A result for another
    prefix is refused: outcomes arrive one at a time, in order."""
    action = next_action(s)
    if not isinstance(action, TestPrefix) or action.k != k:
        raise ValueError(f"outcome for prefix {k} but the planner asked for {action}")
    s = replace(s, runs=s.runs + 1)
    if action.retry:
        if passed:  # red then green: flaky; the whole stack is green
            return replace(s, retried=True, flaky=True, good=len(s.ids), bad=None)
        return replace(s, retried=True)
    if passed:
        return replace(s, good=k)
    return replace(s, bad=k)


# ---- a whole queue ----------------------------------------------------------------------------

Tester = Callable[[tuple[str, ...]], bool]  # (requests on top of the target, in order) -> green?


@dataclass(frozen=True)
class QueueRun:
    merged: tuple[str, ...]
    culprits: tuple[str, ...]
    runs: int
    stacks: int
    flaky: int  # stacks merged on a flaky retry
    per_stack: tuple[tuple[int, int, str | None], ...] = ()  # (stack size, runs, culprit) in order


def run_queue(ids: Sequence[str], test: Tester, batch_size: int, retry_flaky: bool = False) -> QueueRun:
    """Process a queue to the end: stacks of batch_size from the head, re-queued requests first.
    `test` sees the stack prefix on top of the (already merged) target."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    queue = list(ids)
    merged: list[str] = []
    culprits: list[str] = []
    runs = stacks = flaky = 0
    per_stack: list[tuple[int, int, str | None]] = []
    while queue:
        s = start(queue[:batch_size], retry_flaky)
        rest = queue[batch_size:]
        action = next_action(s)
        while isinstance(action, TestPrefix):
            s = record(s, action.k, test(s.ids[:action.k]))
            action = next_action(s)
        runs += s.runs
        per_stack.append((len(s.ids), s.runs, action.culprit))
        stacks += 1
        flaky += action.flaky
        merged.extend(action.merge)
        if action.culprit is not None:
            culprits.append(action.culprit)
        queue = [*action.requeue, *rest]
    return QueueRun(merged=tuple(merged), culprits=tuple(culprits), runs=runs, stacks=stacks, flaky=flaky,
                    per_stack=tuple(per_stack))


def clog2(n: int) -> int:
    """ceil(log2 n) for n >= 1."""
    return (n - 1).bit_length()


def max_runs(n: int, bad: int, batch_size: int, retry_flaky: bool = False) -> int:
    """The bound on test runs for a queue of n requests of which `bad` fail (see the module doc)."""
    if n == 0:
        return 0
    good_runs = math.ceil((n - bad) / batch_size)
    per_culprit = 1 + clog2(min(batch_size, n)) + (1 if retry_flaky else 0)
    return good_runs + bad * per_culprit


def issue_bound_one_bad(n: int, retry_flaky: bool = False) -> int:
    """The issue's bound for one bad request in a stack of n: 1 + 2 * ceil(log2 n) (+1 retry)."""
    return 1 + 2 * clog2(n) + (1 if retry_flaky else 0)


def serial_runs(n: int) -> int:
    """A one-at-a-time refinery tests every request once: n runs whatever fails."""
    return n
