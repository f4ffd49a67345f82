#!/usr/bin/env python
"""Benchmark of the refinery's batch/bisection planner on simulated queues (no git, no tests run).

Queues from issue 9: 8 requests all good; 8 with one bad; 32 with two bad; at batch sizes 1
(the serial queue) and 4 (the default). A request is "bad" when every stack containing it is
red; a stack of good ones is green. For each, the test runs the planner asks for at fixed bad
positions and over every placement of the bad ones (worst and mean), against:

- the proved bound: ceil((N - m) / b) + m * (1 + ceil(log2 min(b, N))) for m bad (b = batch size);
- the issue's bound where it states one: ceil(N / b) for all good, 1 + 2 * ceil(log2 N) for one
  bad in a stack of N (it assumes the N are stacked, so at b = 1 it does not apply);
- a serial one-at-a-time refinery (N runs), as the ratio serial / batched.

Also the planner's own time per request (pure Python, the tests themselves excluded).
Prints a JSON document (also --json-out FILE) and a markdown table.

    python bench/bench_refinery_plan.py
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vermas.refinery import bisect  # noqa: E402

# name -> (N, fixed bad positions); the sweep places as many bad ones in every possible way
SCENARIOS: dict[str, tuple[int, tuple[int, ...]]] = {
    "8 all good": (8, ()),
    "8, one bad": (8, (5,)),
    "32, two bad": (32, (7, 20)),
}
BATCH_SIZES = (1, 4)


def tester(bad: frozenset[int]) -> bisect.Tester:
    return lambda prefix: not any(int(r[1:]) in bad for r in prefix)


def simulate(n: int, bad: frozenset[int], batch_size: int, retry_flaky: bool = False) -> bisect.QueueRun:
    return bisect.run_queue([f"r{i}" for i in range(n)], tester(bad), batch_size, retry_flaky)


def issue_bound(n: int, m: int, batch_size: int) -> int | None:
    if m == 0:
        return math.ceil(n / batch_size)
    if m == 1 and batch_size > 1:
        return bisect.issue_bound_one_bad(n)
    return None


def bench_scenario(n: int, fixed: tuple[int, ...], batch_size: int) -> dict[str, Any]:
    m = len(fixed)
    run = simulate(n, frozenset(fixed), batch_size)
    assert sorted(run.culprits) == sorted(f"r{i}" for i in fixed), run
    placements = [frozenset(c) for c in itertools.combinations(range(n), m)]
    start = time.perf_counter()
    sweep = [simulate(n, bad, batch_size).runs for bad in placements]
    planner_s = time.perf_counter() - start
    flaky = simulate(n, frozenset(fixed), batch_size, retry_flaky=True)
    bound = bisect.max_runs(n, m, batch_size)
    serial = bisect.serial_runs(n)
    return {
        "n": n, "bad": list(fixed), "batch_size": batch_size,
        "runs": run.runs, "stacks": run.stacks, "culprits": list(run.culprits), "merged": len(run.merged),
        "placements": len(placements), "worst_runs": max(sweep), "mean_runs": round(statistics.mean(sweep), 2),
        "bound": bound, "within_bound": max(sweep) <= bound,
        "issue_bound": issue_bound(n, m, batch_size),
        "within_issue_bound": None if issue_bound(n, m, batch_size) is None
        else max(sweep) <= (issue_bound(n, m, batch_size) or 0),
        "runs_retry_flaky": flaky.runs, "bound_retry_flaky": bisect.max_runs(n, m, batch_size, True),
        "serial_runs": serial, "serial_ratio": round(serial / run.runs, 2),
        "worst_serial_ratio": round(serial / max(sweep), 2),
        "planner_us_per_request": round(planner_s / (len(placements) * n) * 1e6, 2),
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| queue | batch | runs | worst / mean over placements | bound | issue bound | serial | "
             "serial / batched | retry_flaky runs | planner us/request |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        issue = "n/a" if r["issue_bound"] is None else (
            f"{r['issue_bound']} ({'ok' if r['within_issue_bound'] else 'OVER'})")
        lines.append(
            f"| {r['name']} | {r['batch_size']} | {r['runs']} | {r['worst_runs']} / {r['mean_runs']} "
            f"({r['placements']}) | {r['bound']} ({'ok' if r['within_bound'] else 'OVER'}) | {issue} | "
            f"{r['serial_runs']} | {r['serial_ratio']}x (worst {r['worst_serial_ratio']}x) | "
            f"{r['runs_retry_flaky']} (<= {r['bound_retry_flaky']}) | {r['planner_us_per_request']} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--json-out")
    args = parser.parse_args()
    start = time.monotonic()
    rows = []
    for name, (n, fixed) in SCENARIOS.items():
        for b in BATCH_SIZES:
            rows.append({"name": name, **bench_scenario(n, fixed, b)})
    result = {"scenarios": rows, "all_within_bound": all(r["within_bound"] for r in rows),
              "total_s": round(time.monotonic() - start, 2)}
    text = json.dumps(result, indent=2)
    print(text)
    if args.json_out:
        Path(args.json_out).write_text(text)
    print()
    print(table(rows))
    return 0 if result["all_within_bound"] else 1


if __name__ == "__main__":
    sys.exit(main())
