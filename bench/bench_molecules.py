#!/usr/bin/env python
"""Benchmark of molecules (issue 11) on a real store in a temp town.

  1. pour: a generated 50-step formula (each step needs the one before, every third also the
     first) poured by the core, p50/p95 (target <= 50 ms); beside it the naive pour, one write
     transaction per bead and per dependency, and the ratio; and the same pour through
     `mol_pour` over stdio (formula load and cook included).
  2. walk over stdio: `mol_status` and `mol_step_done` through a real `vermas-mcp` subprocess
     driven by the MCP SDK client (as bench_mcp does), p50/p95 (target <= 2 ms), walking
     10-step molecules poured for the server's actor.
  3. wisps: 1,000 wisp cycles (pour a wisp, walk every step, then squash, burn, or leave it
     closed for sweep_wisps), then the rows left in every table a wisp touches (0 expected;
     one digest bead per squash is the record, counted apart), the store's used pages
     (page_count - freelist_count) after 100 cycles and after all of them, and the time per cycle.

Prints the figures as JSON (stdout, and --json-out FILE), then a short table with targets.

    python bench/bench_molecules.py            # full run
    python bench/bench_molecules.py --quick    # small run for the smoke test
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mcp import Client, StdioServerParameters

from vermas import beads, ids
from vermas.addresses import Address, parse_address
from vermas.export import export_town
from vermas.molecules import formula as formulas
from vermas.molecules import molecule
from vermas.town import Town
from common import evaluate, pct  # bench/common.py (this script's folder)

MAYOR = parse_address("mayor")
WALKER = "rig/crew/bench"  # the crew profile has mol_status and mol_step_done; it holds the molecules
PREFIX = "hq"
POUR_STEPS = 50
WALK_STEPS = 10

TARGETS: list[tuple[str, float, str, str, str]] = [
    ("pour_p50_ms", 50.0, "<=", "ms", f"pour, {POUR_STEPS} steps (p50)"),
    ("pour_p95_ms", 50.0, "<=", "ms", f"pour, {POUR_STEPS} steps (p95)"),
    ("mol_status_p50_ms", 2.0, "<=", "ms", "mol_status over stdio (p50)"),
    ("mol_step_done_p50_ms", 2.0, "<=", "ms", "mol_step_done over stdio (p50)"),
]


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def chain_formula(name: str, steps: int) -> str:
    """A formula of `steps` steps: each needs the one before, every third also the first."""
    lines = [f'formula = "{name}"', f'description = "{steps} chained steps for {{{{who}}}}"',
             "[vars.who]", 'default = "bench"']
    for i in range(1, steps + 1):
        needs = ([f"s{i - 1}"] if i > 1 else []) + (["s1"] if i % 3 == 0 and i > 2 else [])
        lines += ["[[steps]]", f'id = "s{i}"', f'title = "step {i} for {{{{who}}}}"',
                  f'description = "do step {i} of the chain"', f"needs = {json.dumps(needs)}",
                  f'acceptance = "step {i} is done"']
    return "\n".join(lines) + "\n"


def install(town: Town, name: str, steps: int) -> formulas.Proto:
    """Write the formula into the town's .beads/formulas/ (where mol_pour finds it); its proto."""
    folder = town.root / ".beads" / "formulas"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}{formulas.SUFFIX}").write_text(chain_formula(name, steps))
    return formulas.cook(formulas.load(name, town.root))


def stats(prefix: str, samples_s: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in samples_s]
    return {f"{prefix}_p50_ms": round(pct(ms, 50), 3), f"{prefix}_p95_ms": round(pct(ms, 95), 3),
            f"{prefix}_max_ms": round(max(ms), 3)}


def timed(fn: Callable[[], Any], n: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return samples


# --- 1. pour ---------------------------------------------------------------------------------


def naive_pour(town: Town, actor: Address, proto: formulas.Proto) -> str:
    """The same beads as molecule.pour, written the naive way: one transaction per bead and one
    per dependency (so a crash between them leaves a half-poured molecule, too)."""
    with town.db.write() as conn:
        root = ids.new_bead_id(conn, PREFIX, f"{proto.formula}\x00{actor}")
        beads.insert(conn, town.db, bead_id=root, title=proto.formula, actor=str(actor),
                     issue_type=molecule.MOLECULE_TYPE, labels=[molecule.FORMULA_LABEL + proto.formula])
    step_ids = {}
    for n, step in enumerate(proto.steps, 1):
        step_ids[step.id] = f"{root}.{n}"
        with town.db.write() as conn:
            beads.insert(conn, town.db, bead_id=step_ids[step.id], title=step.title, actor=str(actor),
                         description=step.description, labels=[molecule.STEP_LABEL + step.id],
                         acceptance_criteria=step.acceptance)
        with town.db.write() as conn:
            beads.add_dependency(conn, town.db, step_ids[step.id], root, "parent-child", str(actor))
    for step in proto.steps:
        for need in step.needs:
            with town.db.write() as conn:
                beads.add_dependency(conn, town.db, step_ids[step.id], step_ids[need], "blocks", str(actor))
    return root


def bench_pour(town: Town, pours: int) -> dict[str, float]:
    proto = install(town, "chain50", POUR_STEPS)
    one = timed(lambda: molecule.pour(town, MAYOR, proto), pours)
    naive = timed(lambda: naive_pour(town, MAYOR, proto), max(5, pours // 4))
    figures = {**stats("pour", one), **stats("naive_pour", naive)}
    figures["naive_over_pour_p50_ratio"] = round(figures["naive_pour_p50_ms"] / figures["pour_p50_ms"], 2)
    log(f"pour {POUR_STEPS} steps: p50 {figures['pour_p50_ms']} ms; naive {figures['naive_pour_p50_ms']} ms "
        f"({figures['naive_over_pour_p50_ratio']}x)")
    return figures


# --- 2. mol_status and mol_step_done over stdio ----------------------------------------------


def server_params(town: Town) -> StdioServerParameters:
    here = Path(sys.executable).parent / "vermas-mcp"
    command = str(here) if here.exists() else shutil.which("vermas-mcp")
    if not command:
        raise SystemExit("vermas-mcp not found next to this python nor on PATH (pip install -e .)")
    return StdioServerParameters(command=command, args=["--town", str(town.root), "--actor", WALKER,
                                                        "--profile", "crew"])


async def bench_stdio(town: Town, molecules: int, pour_calls: int) -> dict[str, float]:
    walk = install(town, "walk10", WALK_STEPS)
    install(town, "chain50", POUR_STEPS)
    walker = parse_address(WALKER)
    status_s: list[float] = []
    done_s: list[float] = []
    pour_s: list[float] = []
    errors = 0
    async with Client(server_params(town), mode="legacy") as client:
        async def call(name: str, **args: Any) -> tuple[float, dict[str, Any]]:
            nonlocal errors
            t0 = time.perf_counter()
            result = await client.call_tool(name, args)
            elapsed = time.perf_counter() - t0
            errors += bool(result.is_error)
            return elapsed, result.structured_content or {}

        for k in range(molecules + 1):  # the first molecule warms the server up, untimed
            root = molecule.pour(town, MAYOR, walk, hook=WALKER).root
            while True:
                t_status, status = await call("mol_status")
                if status.get("current") is None:
                    break
                t_done, _ = await call("mol_step_done", step_id=status["current"]["step"], summary="done")
                if k:
                    status_s.append(t_status)
                    done_s.append(t_done)
            molecule.squash(town, walker, root, "walked")
        for k in range(pour_calls + 1):
            t_pour, poured = await call("mol_pour", formula="chain50")
            if k:
                pour_s.append(t_pour)
            molecule.burn(town, MAYOR, poured["root"])
    figures = {**stats("mol_status", status_s), **stats("mol_step_done", done_s), **stats("mol_pour_stdio", pour_s),
               "stdio_errors": float(errors), "stdio_calls": float(len(status_s) + len(done_s) + len(pour_s)),
               **core_walk(town, walk, molecules)}
    log(f"stdio: mol_status p50 {figures['mol_status_p50_ms']} ms, mol_step_done p50 "
        f"{figures['mol_step_done_p50_ms']} ms, mol_pour ({POUR_STEPS} steps) p50 {figures['mol_pour_stdio_p50_ms']} "
        f"ms, errors {errors}")
    return figures


def core_walk(town: Town, proto: formulas.Proto, molecules: int) -> dict[str, float]:
    """The same walk as bench_stdio, on the core in this process: the server's and pipe's share
    is the difference."""
    holder = parse_address("rig/crew/core")
    status_s: list[float] = []
    done_s: list[float] = []
    for _ in range(molecules):
        root = molecule.pour(town, MAYOR, proto, hook=str(holder)).root
        while True:
            t0 = time.perf_counter()
            current = molecule.status(town, holder).current
            t1 = time.perf_counter()
            if current is None:
                break
            molecule.step_done(town, holder, current.step, "done")
            done_s.append(time.perf_counter() - t1)
            status_s.append(t1 - t0)
        molecule.squash(town, holder, root, "walked")
    return {**stats("core_mol_status", status_s), **stats("core_mol_step_done", done_s)}


# --- report ----------------------------------------------------------------------------------


def table(result: dict[str, Any]) -> str:
    f = result["figures"]
    lines = ["| measure | p50 ms | p95 ms | max ms |", "|---|---|---|---|"]
    for key, label in (("pour", f"pour, {POUR_STEPS} steps, one transaction (core)"),
                       ("naive_pour", f"pour, {POUR_STEPS} steps, a transaction per bead/dependency"),
                       ("mol_pour_stdio", f"mol_pour, {POUR_STEPS} steps, over stdio"),
                       ("mol_status", f"mol_status over stdio ({WALK_STEPS}-step molecule)"),
                       ("mol_step_done", f"mol_step_done over stdio ({WALK_STEPS}-step molecule)"),
                       ("core_mol_status", "molecule.status, core call"),
                       ("core_mol_step_done", "molecule.step_done, core call"),
                       ("wisp_cycle", f"wisp cycle ({WALK_STEPS} steps: pour, walk, squash/burn/sweep)")):
        if f"{key}_p50_ms" in f:
            lines.append(f"| {label} | {f[key + '_p50_ms']} | {f[key + '_p95_ms']} | {f[key + '_max_ms']} |")
    lines += ["", f"naive / one-transaction pour (p50): {f['naive_over_pour_p50_ratio']}x"]
    if "wisp_cycles" in f:
        lines += ["", "| wisps after the cycles | value |", "|---|---|"]
        lines += [f"| {k.removeprefix('wisp_')} | {f[k]:g} |" for k in sorted(f)
                  if k.startswith(("wisp_rows_", "wisp_used_pages", "wisp_digests", "wisp_swept", "wisp_cycles"))]
    lines += ["", "| target | value | | |", "|---|---|---|---|"]
    lines += [f"| {r['label']} | {r['value']:g} | {r['target']} | {'PASS' if r['pass'] else 'FAIL'} |"
              for r in result["targets"]]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a small run, for the smoke test")
    ap.add_argument("--pours", type=int, help="timed 50-step pours (default 200; quick 20)")
    ap.add_argument("--molecules", type=int, help=f"{WALK_STEPS}-step molecules walked over stdio "
                                                  "(default 50; quick 5)")
    ap.add_argument("--wisps", type=int, help="wisp cycles (default 1000; quick 150)")
    ap.add_argument("--json-out", type=Path, help="also write the JSON here")
    args = ap.parse_args(argv)
    for key, full, quick in (("pours", 200, 20), ("molecules", 50, 5), ("wisps", 1000, 150)):
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    load_start = os.getloadavg()[0]
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-mol-") as tmp:
        town, _ = Town.init(Path(tmp) / "pour", prefix=PREFIX)
        try:
            figures.update(bench_pour(town, args.pours))
        finally:
            town.close()
        town, _ = Town.init(Path(tmp) / "walk", prefix=PREFIX)
        try:
            export_town(town)
            figures.update(asyncio.run(bench_stdio(town, args.molecules, max(5, args.pours // 4))))
        finally:
            town.close()
    figures["total_s"] = round(time.perf_counter() - start, 2)
    result: dict[str, Any] = {"config": {"quick": args.quick, "pours": args.pours, "molecules": args.molecules,
                         "wisps": args.wisps, "pour_steps": POUR_STEPS, "walk_steps": WALK_STEPS,
                         "python": sys.version.split()[0], "sqlite": sqlite3.sqlite_version,
                         "cpus": os.cpu_count(), "loadavg_1m_start": round(load_start, 2),
                         "loadavg_1m_end": round(os.getloadavg()[0], 2)},
              "figures": figures, "targets": evaluate(figures, TARGETS)}
    result["all_pass"] = all(r["pass"] for r in result["targets"])
    text = json.dumps(result, indent=2)
    print(text)
    if args.json_out:
        args.json_out.write_text(text)
    print()
    print(table(result))
    return 0 if result["all_pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
