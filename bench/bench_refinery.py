#!/usr/bin/env python
"""Benchmark of the refinery's merge queue on real git with a real test command.

Queues from issue 9: 8 requests all good; 8 with one bad; 32 with two bad. Each queue is
built for real (a bare upstream, `rig add`, one polecat per request with its own worktree, a
commit and the real `polecat_done`) and processed by the real worker (`worker.drain`: rebase
in the refinery worktree, the rig's test command run contained, verification at level
`shell`, push to the upstream, bookkeeping, cleanup), once at batch_size 4 and once at
batch_size 1 (what a serial, one-at-a-time refinery does), in the same run.

A request is bad when it adds a file `BAD_<i>`; the test command is `! ls BAD_* ...`, so a
stack is red exactly when it holds a bad request. Figures per queue and batch size:

- test runs made, against the issue's bounds (ceil(N / b) all good; 1 + 2 * ceil(log2 N) for
  one bad) and the planner's proved bound (bisect.max_runs);
- culprits found (requests sent to rework) and whether they are exactly the bad ones, and
  whether every good one merged onto the upstream's main;
- wall time, the time inside the contained test runs (the rig's test command, gitops.run_command,
  and the verification criterion's test, verifier.run_command, each timed by a wrapper in this
  script), and vermas's own time per request: (wall - both) / N, target <= 0.3 s (also given
  with the verification tests counted as vermas's time);
- model calls made by verification at merge time (counted from the reports verify_for_merge
  returns), target 0 at level `shell`. Each bead is specified and planned once before it is
  queued (the Designer and Strategist, two model calls per bead, answered here by a scripted
  in-process model: one objective criterion, "the request's file exists", checked by
  `test -f <file>`); they are counted apart as design calls. The merge reuses that stored spec
  and plan, so at level shell it runs the criterion's test and asks no model;
- batched vs serial: test runs and wall time, as ratios.

Prints a JSON document (also --json-out FILE) and a markdown table.

    python bench/bench_refinery.py [--json-out bench/results/bench_refinery.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import evaluate  # noqa: E402
from vermas import beads, polecat, rig  # noqa: E402
from vermas.addresses import Address, Role, parse_address  # noqa: E402
from vermas.inspector import pipeline, verifier  # noqa: E402
from vermas.inspector.backend import RoleCall  # noqa: E402
from vermas.inspector.models import AcceptanceCriterion, ModelCall, Specification, TestPlan, TestSpec  # noqa: E402
from vermas.refinery import bisect, gitops, ledger, worker  # noqa: E402
from vermas.refinery.types import MRState  # noqa: E402
from vermas.town import Town  # noqa: E402

SCENARIOS: dict[str, tuple[int, tuple[int, ...]]] = {
    "8 all good": (8, ()),
    "8, one bad": (8, (5,)),
    "32, two bad": (32, (7, 20)),
}
BATCH_SIZES = (4, 1)  # the default, then the serial refinery
TEST_COMMAND = "! ls BAD_* >/dev/null 2>&1"
LEVEL = "shell"
OWNER = "bench-runner"
MAYOR = parse_address("mayor")


class Meter:
    """Time spent inside the contained test runs, and model calls made by verification."""

    def __init__(self) -> None:
        self.test_s = 0.0
        self.test_calls = 0
        self.verify_test_s = 0.0
        self.model_calls = 0
        self.verifications = 0

    def install(self) -> None:
        run_command, verify_for_merge = gitops.run_command, pipeline.verify_for_merge

        def timed_run(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return run_command(*args, **kwargs)
            finally:
                self.test_s += time.perf_counter() - start
                self.test_calls += 1

        def counted_verify(*args: Any, **kwargs: Any) -> Any:
            report = verify_for_merge(*args, **kwargs)
            self.model_calls += report.model_calls
            self.verifications += 1
            return report

        def timed_verify_run(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return verifier_run(*args, **kwargs)
            finally:
                self.verify_test_s += time.perf_counter() - start

        verifier_run = verifier.run_command
        gitops.run_command = timed_run  # type: ignore[assignment]
        verifier.run_command = timed_verify_run  # type: ignore[assignment]
        pipeline.verify_for_merge = counted_verify  # type: ignore[assignment]

    def reset(self) -> None:
        self.test_s, self.test_calls, self.model_calls, self.verifications = 0.0, 0, 0, 0
        self.verify_test_s = 0.0


METER = Meter()


class ScriptedDesign:
    """The model's double for the two design roles: one objective criterion per bead."""

    def __init__(self, filename: str) -> None:
        self.filename = filename

    async def ask(self, call: RoleCall[Any]) -> tuple[Any, list[ModelCall]]:
        made = [ModelCall(role=call.role, model="scripted", ok=True)]
        if call.role == "designer":
            criterion = AcceptanceCriterion(id="AC-1", description=f"{self.filename} exists",
                                            test_hint=f"test -f {self.filename}", kind="objective")
            return Specification(title="bench request", acceptance_criteria=[criterion]), made
        if call.role == "strategist":
            return TestPlan.model_validate({"tests": [TestSpec(criterion_id="AC-1", command=f"test -f {self.filename}",
                                                               timeout=30)]}, context=call.context), made
        raise AssertionError(f"no script for role {call.role}")


def design(town: Town, bead: str, filename: str) -> int:
    """Specify and plan the bead once (as when its work is specified); the model calls it took."""
    inspector = pipeline.Inspector(town, "overseer", backend_factory=lambda _settings: ScriptedDesign(filename))
    spec = asyncio.run(inspector.spec(bead))
    plan = asyncio.run(inspector.plan(bead))
    return len(spec.calls) + len(plan.calls)


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def build(root: Path, n: int, bad: tuple[int, ...], batch_size: int) -> tuple[Town, Path, list[str], set[str], int]:
    """A town whose rig `gt` has n queued merge requests made by n real polecats."""
    seed = root / "seed"
    seed.mkdir(parents=True)
    git(seed, "init", "-q", "-b", "main")
    (seed / "README.md").write_text("bench\n")
    git(seed, "add", "README.md")
    git(seed, "-c", "user.email=b@vermas.invalid", "-c", "user.name=bench", "commit", "-q", "-m", "initial")
    bare = root / "upstream.git"
    git(root, "clone", "-q", "--bare", str(seed), str(bare))
    town, _ = Town.init(root / "town")
    rig.add(town, "gt", str(bare), prefix="gt", max_polecats=n, test_command=TEST_COMMAND)
    config = town.config.rigs["gt"]
    town.config.rigs["gt"] = config.model_copy(update={
        "verify_level": LEVEL, "merge": config.merge.model_copy(update={"batch_size": batch_size})})
    town.save_config()
    town.reload_config()
    mrs, bad_mrs, design_calls = [], set(), 0
    for i in range(n):
        bead = beads.create(town, MAYOR, title=f"request {i}").id
        name = f"BAD_{i}" if i in bad else f"r{i}.txt"
        design_calls += design(town, bead, name)
        info = polecat.allocate(town, MAYOR, bead, "gt")
        polecat.create_worktree(town, info)
        tree = Path(str(info.worktree))
        (tree / name).write_text(f"{i}\n")
        git(tree, "add", name)
        git(tree, "-c", "user.email=pc@vermas.invalid", "-c", "user.name=polecat", "commit", "-q", "-m", f"add {name}")
        done = polecat.done(town, Address(role=Role.POLECAT, rig="gt", name=info.name), "COMPLETED", f"added {name}")
        assert done.id is not None
        mrs.append(done.id)
        if i in bad:
            bad_mrs.add(done.id)
    return town, bare, mrs, bad_mrs, design_calls


def process(town: Town) -> tuple[list[worker.StepReport], float]:
    start = time.perf_counter()
    reports: list[worker.StepReport] = []
    while True:
        step = worker.drain(town, "gt", OWNER, max_steps=500)
        reports += step
        errors = [r.error for r in step if r.error]
        if errors:
            raise RuntimeError(f"the worker failed: {errors}")
        if not ledger.list_requests(town, rig="gt", states=[MRState.QUEUED, MRState.CLAIMED, MRState.TESTING]):
            return reports, time.perf_counter() - start


def issue_bound(n: int, m: int, batch_size: int) -> int | None:
    if m == 0:
        return math.ceil(n / batch_size)
    if m == 1 and batch_size > 1:
        return bisect.issue_bound_one_bad(n)
    return None


def bench_one(root: Path, name: str, n: int, bad: tuple[int, ...], batch_size: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    town, bare, mrs, bad_mrs, design_calls = build(root, n, bad, batch_size)
    setup_s = time.perf_counter() - t0
    METER.reset()
    try:
        reports, wall = process(town)
        rows = {r.id: r for r in ledger.list_requests(town, rig="gt")}
        culprits = {i for i, r in rows.items() if r.state is MRState.REWORK}
        merged = {i for i, r in rows.items() if r.state is MRState.MERGED}
        upstream = set(git(bare, "ls-tree", "--name-only", "main").split())
        runs = sum(r.test_runs for r in reports)
        bound = issue_bound(n, len(bad), batch_size)
        return {
            "name": name, "n": n, "bad": list(bad), "batch_size": batch_size, "steps": len(reports),
            "test_runs": runs, "issue_bound": bound, "within_issue_bound": None if bound is None else runs <= bound,
            "planner_bound": bisect.max_runs(n, len(bad), batch_size),
            "within_planner_bound": runs <= bisect.max_runs(n, len(bad), batch_size),
            "culprits": len(culprits), "culprits_exact": culprits == bad_mrs,
            "merged": len(merged), "all_good_merged": merged == set(mrs) - bad_mrs
            and all(f"r{i}.txt" in upstream for i in range(n) if i not in bad)
            and not any(f"BAD_{i}" in upstream for i in bad),
            "untested_merges": sum(1 for i in merged if rows[i].untested),
            "wall_s": round(wall, 3), "test_run_s": round(METER.test_s, 3), "contained_runs": METER.test_calls,
            "verify_test_run_s": round(METER.verify_test_s, 3),
            "vermas_s_per_request": round((wall - METER.test_s - METER.verify_test_s) / n, 4),
            "vermas_s_per_request_with_verify_tests": round((wall - METER.test_s) / n, 4),
            "verifications": METER.verifications, "model_calls": METER.model_calls,
            "design_model_calls_before_queue": design_calls,
            "setup_s": round(setup_s, 2),
        }
    finally:
        town.close()


TARGETS_PER_ROW = [("vermas_s_per_request", 0.3, "<=", "s", "vermas's own time per request"),
                   ("model_calls", 0, "<=", "", "model calls, clean merges at level shell")]


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| queue | batch | test runs | bound (issue / planner) | culprits | merged | wall | in tests "
             "(rig / verify) | vermas / request | model calls | serial / batched (runs, wall) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        issue = ("n/a" if r["issue_bound"] is None
                 else f"{r['issue_bound']} ({'ok' if r['within_issue_bound'] else 'OVER'})")
        planner = f"{r['planner_bound']} ({'ok' if r['within_planner_bound'] else 'OVER'})"
        ratio = (f"{r['serial_runs_ratio']}x, {r['serial_wall_ratio']}x" if "serial_runs_ratio" in r else "-")
        lines.append(
            f"| {r['name']} | {r['batch_size']} | {r['test_runs']} | {issue} / {planner} | "
            f"{r['culprits']}{'' if r['culprits_exact'] else ' (WRONG)'} | {r['merged']}"
            f"{'' if r['all_good_merged'] else ' (MISSING)'} | {r['wall_s']:.2f} s | "
            f"{r['test_run_s']:.2f} / {r['verify_test_run_s']:.2f} s | "
            f"{r['vermas_s_per_request']:.3f} s | {r['model_calls']} | {ratio} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--json-out")
    args = parser.parse_args()
    METER.install()
    start = time.monotonic()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="vermas-bench-refinery-") as tmp:
        for name, (n, bad) in SCENARIOS.items():
            by_batch = {}
            for b in BATCH_SIZES:
                folder = Path(tmp) / f"{n}-{len(bad)}-b{b}"
                by_batch[b] = bench_one(folder, name, n, bad, b)
                shutil.rmtree(folder, ignore_errors=True)
            batched, serial = by_batch[4], by_batch[1]
            batched["serial_runs_ratio"] = round(serial["test_runs"] / batched["test_runs"], 2)
            batched["serial_wall_ratio"] = round(serial["wall_s"] / batched["wall_s"], 2)
            rows += [batched, serial]
    checks = []
    for r in rows:
        if r["batch_size"] == 1:  # the serial refinery is the comparison, not what vermas runs
            continue
        for target in evaluate(r, TARGETS_PER_ROW):
            checks.append({"queue": r["name"], "batch_size": r["batch_size"], **target})
    ok = all(c["pass"] for c in checks) and all(
        r["culprits_exact"] and r["all_good_merged"] and r["within_planner_bound"]
        and r["within_issue_bound"] is not False for r in rows)
    result = {"scenarios": rows, "targets": checks, "all_pass": ok, "test_command": TEST_COMMAND,
              "verify_level": LEVEL, "total_s": round(time.monotonic() - start, 1)}
    text = json.dumps(result, indent=2)
    print(text)
    if args.json_out:
        Path(args.json_out).write_text(text)
    print()
    print(table(rows))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
