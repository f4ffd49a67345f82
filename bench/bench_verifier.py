#!/usr/bin/env python
"""Benchmark of the VerMAS inspector.

1. Verifier wall time for 20 criteria (one shell test each) at parallelism 1 (serial), 2, 4 and 8,
   for an I/O-bound test (a 0.5 s wait, like a test waiting on a subprocess or a server) and a
   CPU-bound one (0.3 s of Python arithmetic). Real subprocesses, real process groups.
2. Model calls per bead at each pipeline level (shell, audit, full) on a fixed set of scripted
   beads, with the REAL `claude -p` answering each role from the stand-in model server
   (vermas/testing/standin_model.py), plus the calls a cached re-run of the same commit makes.

Prints a JSON document (also --json-out FILE) and markdown tables for README.md.

    python bench/bench_verifier.py            # full run (about a minute on 2 cores)
    python bench/bench_verifier.py --quick    # 8 criteria, two parallelism settings, 2 beads
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.inspector_standin import (  # noqa: E402 - the scripted model lives with the tests
    AC_ADD, AC_DOCS, AC_README, ADD_TEST, BAD_CALC, DOCS_EVIDENCE, GOOD_CALC, README_TEST, criterion,
    make_candidate, spec, standin, tspec,
)
from vermas import beads  # noqa: E402
from vermas.addresses import parse_address  # noqa: E402
from vermas.inspector.models import TestSpec  # noqa: E402
from vermas.inspector.pipeline import Inspector  # noqa: E402
from vermas.inspector.verifier import run_tests  # noqa: E402
from vermas.town import Town  # noqa: E402

WORKLOADS = {
    "io": "sleep 0.5",
    "cpu": "python3 -c \"n = 0\nfor i in range(3_000_000): n += i\"",
}

USAGE = "Usage: `from calc import add; add(2, 3)` returns 5."
CONFIDENT_PASS = {"passed": True, "reasoning": "The README shows the call and its result.", "quotes": [USAGE],
                  "confidence": 0.9}
UNSURE_PASS = {"passed": True, "reasoning": "Short, maybe enough.", "quotes": [], "confidence": 0.4}
CONFIDENT_FAIL = {"passed": False, "reasoning": "The command does not exist.", "quotes": [], "confidence": 0.9}
PANEL = {
    "advocate": {"argument": "A runnable example is documented.", "quotes": [USAGE]},
    "critic": {"argument": "One line explains nothing about errors.", "quotes": ["# calc"]},
    "judge": {"passed": False, "prevailing": "critic", "reasoning": "Too thin for a newcomer.", "quotes": [USAGE]},
}
AC_CLI = criterion("AC-4", "calc-cli add 2 3 prints 5")

# name -> (calc.py, criteria, tests, auditor answers by criterion, panel used)
BEADS: dict[str, tuple[str, list[dict[str, Any]], list[dict[str, Any]], dict[str, dict[str, Any]], bool]] = {
    "objective, all pass": (GOOD_CALC, [AC_ADD, AC_README], [tspec("AC-1", ADD_TEST), tspec("AC-2", README_TEST)],
                            {}, False),
    "objective, planted bug": (BAD_CALC, [AC_ADD, AC_README], [tspec("AC-1", ADD_TEST), tspec("AC-2", README_TEST)],
                               {}, False),
    "subjective, confident auditor": (GOOD_CALC, [AC_ADD, AC_DOCS],
                                      [tspec("AC-1", ADD_TEST), tspec("AC-3", DOCS_EVIDENCE)],
                                      {"AC-3": CONFIDENT_PASS}, False),
    "subjective, unsure auditor": (GOOD_CALC, [AC_ADD, AC_DOCS],
                                   [tspec("AC-1", ADD_TEST), tspec("AC-3", DOCS_EVIDENCE)],
                                   {"AC-3": UNSURE_PASS}, True),
    "ambiguous failure (127)": (GOOD_CALC, [AC_ADD, AC_CLI],
                                [tspec("AC-1", ADD_TEST), tspec("AC-4", "calc-cli add 2 3")],
                                {"AC-4": CONFIDENT_FAIL}, False),
}


def bench_verifier(criteria: int, parallelisms: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="vermas-bench-") as tmp:
        for name, command in WORKLOADS.items():
            tests = [TestSpec(criterion_id=f"AC-{i}", command=command, timeout=60) for i in range(criteria)]
            for p in parallelisms:
                start = time.monotonic()
                results = asyncio.run(run_tests(tests, Path(tmp), parallelism=p))
                elapsed = time.monotonic() - start
                assert all(r.passed for r in results), [r.evidence.failure for r in results if not r.passed]
                out[f"{name}_p{p}_s"] = round(elapsed, 3)
            serial = out[f"{name}_p1_s"]
            for p in parallelisms[1:]:
                out[f"{name}_p{p}_speedup"] = round(serial / out[f"{name}_p{p}_s"], 2)
    return out


def scripts_for(criteria: list[dict[str, Any]], tests: list[dict[str, Any]], audits: dict[str, dict[str, Any]],
                panel: bool, rounds: int) -> dict[str, Any]:
    """Enough scripted answers for `rounds` fresh verifications of one bead."""
    scripts: dict[str, Any] = {
        "designer": [spec(*criteria) for _ in range(rounds)],
        "strategist": [{"tests": tests} for _ in range(rounds)],
        "auditor": {cid: [answer] * rounds for cid, answer in audits.items()},
    }
    if panel:
        cid = next(iter(audits))
        for role, answer in PANEL.items():
            scripts[role] = {cid: [answer] * rounds}
    return scripts


def bench_calls(bead_names: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"beads": {}}
    with tempfile.TemporaryDirectory(prefix="vermas-bench-calls-") as tmp_dir:
        tmp = Path(tmp_dir)
        with standin(tmp / "claude-home") as sm:
            for name in bead_names:
                calc, criteria, tests, audits, panel = BEADS[name]
                sm.model.scripts.clear()
                sm.script(**scripts_for(criteria, tests, audits, panel, rounds=3))
                row: dict[str, Any] = {}
                for level in ("shell", "audit", "full"):
                    slug = f"{abs(hash((name, level))):x}"
                    town, _ = Town.init(tmp / f"town-{slug}")
                    try:
                        town.config.inspector.command = str(sm.claude)
                        town.config.inspector.level = level
                        repo = make_candidate(tmp / f"repo-{slug}", calc=calc)
                        bead_id = beads.create(town, parse_address("overseer"), name, "scripted bead").id
                        inspector = Inspector(town, "overseer", env=sm.env)
                        first = asyncio.run(inspector.verify(bead_id, str(repo)))
                        again = asyncio.run(inspector.verify(bead_id, str(repo)))
                        row[level] = {"overall": first.overall, "model_calls": first.model_calls,
                                      "roles": [c.role for c in first.calls], "cost_usd": first.model_cost_usd,
                                      "cached_rerun_calls": again.model_calls, "cached_rerun_tests": again.tests_run}
                    finally:
                        town.close()
                out["beads"][name] = row
    for level in ("shell", "audit", "full"):
        calls = [row[level]["model_calls"] for row in out["beads"].values()]
        out[f"{level}_mean_calls"] = round(statistics.mean(calls), 2)
        out[f"{level}_beyond_design_mean"] = round(statistics.mean(c - 2 for c in calls), 2)
    return out


def tables(result: dict[str, Any]) -> str:
    v = result["verifier"]
    ps = result["parallelisms"]
    lines = [f"Verifier, {result['criteria']} criteria, one test each ({os.cpu_count()} CPUs):", "",
             "| workload | " + " | ".join(f"parallelism {p}" for p in ps) + " |",
             "|---|" + "---|" * len(ps)]
    for name in WORKLOADS:
        cells = [f"{v[f'{name}_p{p}_s']:.2f} s" + (f" ({v[f'{name}_p{p}_speedup']}x)" if p != 1 else "")
                 for p in ps]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    calls = result["calls"]
    lines += ["", "Model calls per bead (first run; a cached re-run of the same commit makes 0):", "",
              "| bead | shell | audit | full |", "|---|---|---|---|"]
    for name, row in calls["beads"].items():
        lines.append(f"| {name} | " + " | ".join(f"{row[lvl]['model_calls']} ({row[lvl]['overall']})"
                                                 for lvl in ("shell", "audit", "full")) + " |")
    lines.append("| **mean** | " + " | ".join(str(calls[f"{lvl}_mean_calls"]) for lvl in ("shell", "audit", "full"))
                 + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json-out")
    args = parser.parse_args()
    criteria = 8 if args.quick else 20
    parallelisms = [1, 4] if args.quick else [1, 2, 4, 8]
    names = list(BEADS)[:2] if args.quick else list(BEADS)
    start = time.monotonic()
    result = {"criteria": criteria, "parallelisms": parallelisms, "cpus": os.cpu_count(),
              "verifier": bench_verifier(criteria, parallelisms), "calls": bench_calls(names)}
    result["total_s"] = round(time.monotonic() - start, 1)
    for row in result["calls"]["beads"].values():
        for level in row.values():
            assert level["cached_rerun_calls"] == 0 and level["cached_rerun_tests"] == 0, level
    text = json.dumps(result, indent=2)
    print(text)
    if args.json_out:
        Path(args.json_out).write_text(text)
    print()
    print(tables(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
