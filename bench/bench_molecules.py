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
from vermas.testing.formulas import install
from vermas.town import Town
from common import evaluate, pct  # bench/common.py (this script's folder)

MAYOR = parse_address("mayor")
WALKER = "rig/crew/bench"  # the crew profile has mol_status and mol_step_done; it holds the molecules
PREFIX = "hq"
POUR_STEPS = 50
WALK_STEPS = 10
WISP_TABLES = ("issues", "labels", "dependencies", "comments", "wisps", "hook_log")  # what a wisp writes
WISP_MAX_AGE_S = 3600.0
SWEEP_EVERY = 10  # cycles between sweeps (the deacon's round)
PAGES_AT = 100  # used pages are read after this many cycles, and after the last

TARGETS: list[tuple[str, float, str, str, str]] = [
    ("pour_p50_ms", 50.0, "<=", "ms", f"pour, {POUR_STEPS} steps (p50)"),
    ("pour_p95_ms", 50.0, "<=", "ms", f"pour, {POUR_STEPS} steps (p95)"),
    ("mol_status_p50_ms", 2.0, "<=", "ms", "mol_status over stdio (p50)"),
    ("mol_step_done_p50_ms", 2.0, "<=", "ms", "mol_step_done over stdio (p50)"),
    ("wisp_rows_left", 0.0, "<=", "rows", "rows left by the wisp cycles (digests apart)"),
    ("nodigest_rows_left", 0.0, "<=", "rows", "rows left by the burn/sweep cycles"),
    ("nodigest_used_pages_growth", 0.0, "<=", "pages", f"used pages, cycle {PAGES_AT} to the last (burn/sweep)"),
]


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


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


# --- 3. wisp cycles --------------------------------------------------------------------------



def used_pages(town: Town) -> int:
    with town.db.read() as conn:
        return int(conn.execute("PRAGMA page_count").fetchone()[0]) - int(
            conn.execute("PRAGMA freelist_count").fetchone()[0])


def wisp_rows(town: Town, digests: list[str]) -> dict[str, int]:
    """Rows in each table a wisp writes, the permanent digests' own rows excluded."""
    column = {"issues": "id", "wisps": "root", "hook_log": "bead_id"}
    with town.db.read() as conn:
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS bench_digests(id TEXT PRIMARY KEY)")
        conn.execute("DELETE FROM bench_digests")
        conn.executemany("INSERT INTO bench_digests VALUES (?)", [(d,) for d in digests])
        rows = {t: int(conn.execute(f"SELECT count(*) FROM {t} WHERE {column.get(t, 'issue_id')} NOT IN "
                                    "(SELECT id FROM bench_digests)").fetchone()[0]) for t in WISP_TABLES}
        rows["digest_rows"] = sum(int(conn.execute(
            f"SELECT count(*) FROM {t} WHERE {column.get(t, 'issue_id')} IN (SELECT id FROM bench_digests)"
        ).fetchone()[0]) for t in WISP_TABLES)
        rows["digest_bytes"] = int(conn.execute(
            "SELECT COALESCE(sum(length(id) + length(title) + length(description) + length(notes) + "
            "length(close_reason)), 0) FROM issues WHERE id IN (SELECT id FROM bench_digests)").fetchone()[0])
    return rows


def wisp_cycle(town: Town, proto: formulas.Proto, holder: Address, end: str) -> str | None:
    """Pour a wisp on `holder`'s hook, walk every step, then squash (the digest's id), burn,
    or leave it walked for the sweep."""
    state = molecule.pour(town, MAYOR, proto, hook=str(holder), wisp=True)
    while state.current is not None:
        state = molecule.step_done(town, holder, state.current.step, "ok", root=state.root).molecule
    if end == "squash":
        return molecule.squash(town, holder, state.root, "walked").id
    if end == "burn":
        molecule.burn(town, holder, state.root)
    return None


def bench_wisps(town: Town, cycles: int, ends: tuple[str, ...], label: str) -> dict[str, float]:
    """`cycles` wisp cycles ending in turn as `ends`; a sweep every SWEEP_EVERY cycles with its
    clock WISP_MAX_AGE_S ahead (the walked wisps have aged out), and one after the last."""
    proto = install(town, "walk10", WALK_STEPS)
    before = wisp_rows(town, [])
    holders = [parse_address(f"rig/crew/w{i}") for i in range(2 * SWEEP_EVERY)]  # a swept wisp frees its hook
    digests: list[str] = []
    cycle_s: list[float] = []
    sweep_s: list[float] = []
    swept = 0
    pages: dict[str, float] = {}
    t_all = time.perf_counter()
    for k in range(cycles):
        t0 = time.perf_counter()
        digest = wisp_cycle(town, proto, holders[k % len(holders)], ends[k % len(ends)])
        if digest is not None:
            digests.append(digest)
        if (k + 1) % SWEEP_EVERY == 0 or k + 1 == cycles:
            t1 = time.perf_counter()
            swept += len(molecule.sweep_wisps(town, WISP_MAX_AGE_S, now=time.time() + WISP_MAX_AGE_S + 1))
            sweep_s.append(time.perf_counter() - t1)
        cycle_s.append(time.perf_counter() - t0)
        if k + 1 == PAGES_AT:
            pages[f"{label}_used_pages_{PAGES_AT}"] = used_pages(town)
            pages[f"{label}_digests_{PAGES_AT}"] = len(digests)
    total = time.perf_counter() - t_all
    pages[f"{label}_used_pages_end"] = used_pages(town)
    pages[f"{label}_used_pages_growth"] = pages[f"{label}_used_pages_end"] - pages.get(
        f"{label}_used_pages_{PAGES_AT}", pages[f"{label}_used_pages_end"])
    after = wisp_rows(town, digests)
    with town.db.read() as conn:
        page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
    figures = {f"{label}_cycles": float(cycles), f"{label}_digests": float(len(digests)),
               f"{label}_swept": float(swept), f"{label}_burned": float(sum(ends[k % len(ends)] == "burn"
                                                                              for k in range(cycles))),
               **{f"{label}_rows_left_{t}": float(after[t] - before[t]) for t in WISP_TABLES},
               f"{label}_digest_rows": float(after["digest_rows"]),
               f"{label}_digest_bytes": float(after["digest_bytes"]),
               f"{label}_page_size": float(page_size), **pages, **stats(f"{label}_cycle", cycle_s),
               f"{label}_cycle_mean_ms": round(total / cycles * 1000, 3), **stats(f"{label}_sweep", sweep_s)}
    figures[f"{label}_rows_left"] = sum(figures[f"{label}_rows_left_{t}"] for t in WISP_TABLES)
    new_digests = len(digests) - pages.get(f"{label}_digests_{PAGES_AT}", len(digests))
    # the growth that is there, per digest added since the first reading (the digests are the record)
    figures[f"{label}_growth_bytes_per_new_digest"] = round(
        pages[f"{label}_used_pages_growth"] * page_size / new_digests, 1) if new_digests else 0.0
    log(f"{label}: {cycles} cycles, {len(digests)} digests, {swept} swept, rows left {figures[label + '_rows_left']}, "
        f"used pages {pages.get(f'{label}_used_pages_{PAGES_AT}')} -> {pages[f'{label}_used_pages_end']}, "
        f"cycle p50 {figures[label + '_cycle_p50_ms']} ms")
    return figures


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
                       ("wisp_cycle", f"wisp cycle ({WALK_STEPS} steps: pour, walk, squash/burn/sweep)"),
                       ("wisp_sweep", f"sweep_wisps (every {SWEEP_EVERY} cycles)"),
                       ("nodigest_cycle", f"wisp cycle ({WALK_STEPS} steps: pour, walk, burn/sweep)")):
        if f"{key}_p50_ms" in f:
            lines.append(f"| {label} | {f[key + '_p50_ms']} | {f[key + '_p95_ms']} | {f[key + '_max_ms']} |")
    lines += ["", f"naive / one-transaction pour (p50): {f['naive_over_pour_p50_ratio']}x"]
    for label, what in (("wisp", "squash / burn / sweep in turn"), ("nodigest", "burn / sweep in turn")):
        if f"{label}_cycles" in f:
            lines += ["", f"| {int(f[label + '_cycles'])} wisp cycles, {what} | value |", "|---|---|"]
            keys = [k.removeprefix(label + "_") for k in sorted(f) if k.startswith(label + "_")]
            lines += [f"| {k} | {f[label + '_' + k]:g} |" for k in keys
                      if k.startswith(("rows", "used_pages", "digest", "swept", "burned", "growth"))]
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
        for label, ends in (("wisp", ("squash", "burn", "sweep")), ("nodigest", ("burn", "sweep"))):
            town, _ = Town.init(Path(tmp) / label, prefix=PREFIX)
            try:
                figures.update(bench_wisps(town, args.wisps, ends, label))
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
