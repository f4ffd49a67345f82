"""Smoke test of `bench/bench_molecules.py --quick`: it runs end to end (a real store in a temp
town, a real `vermas-mcp` subprocess driven by the SDK client) and reports every figure. Timing
targets are the benchmark's to show, never asserted here; the counts (errors, rows left) are."""

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TIMED = ("pour", "naive_pour", "mol_pour_stdio", "mol_status", "mol_step_done", "core_mol_status",
         "core_mol_step_done")
WISP_RUNS = ("wisp", "nodigest")  # squash / burn / sweep in turn; burn / sweep in turn
WISP_TABLES = ("issues", "labels", "dependencies", "comments", "wisps", "hook_log")
KEYS = [*[f"{t}_{s}" for t in (*TIMED, *[f"{r}_cycle" for r in WISP_RUNS], *[f"{r}_sweep" for r in WISP_RUNS])
          for s in ("p50_ms", "p95_ms", "max_ms")],
        *[f"{r}_{k}" for r in WISP_RUNS for k in (
            "cycles", "digests", "swept", "burned", "rows_left", *[f"rows_left_{t}" for t in WISP_TABLES],
            "digest_rows", "digest_bytes", "digests_100", "used_pages_100", "used_pages_end", "used_pages_growth",
            "growth_bytes_per_new_digest",
            "cycle_mean_ms")],
        "naive_over_pour_p50_ratio", "stdio_errors", "stdio_calls", "total_s"]


def test_bench_molecules_quick_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_molecules.py"), "--quick", "--json-out",
                           str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode in (0, 1), proc.stderr[-3000:]  # 1: a timing target missed on a loaded machine
    result = json.loads(out.read_text())
    figures = result["figures"]
    for key in KEYS:
        assert key in figures and math.isfinite(figures[key]), key
    assert figures["stdio_errors"] == 0 and figures["stdio_calls"] > 0
    # the wisp cycles leave no row behind in any table a wisp writes; a squash leaves its digest
    cycles = result["config"]["wisps"]
    assert figures["wisp_cycles"] == figures["nodigest_cycles"] == cycles > 100
    for run in WISP_RUNS:
        assert figures[f"{run}_rows_left"] == 0, {k: v for k, v in figures.items() if "rows_left" in k}
        assert figures[f"{run}_digests"] + figures[f"{run}_burned"] + figures[f"{run}_swept"] == cycles
    assert figures["wisp_digests"] == cycles // 3 and figures["nodigest_digests"] == 0
    assert figures["wisp_digest_rows"] > 0 and figures["nodigest_digest_rows"] == 0
    assert proc.stdout.lstrip().startswith("{") and "| target |" in proc.stdout
    assert {r["key"] for r in result["targets"]} >= {"pour_p50_ms", "mol_status_p50_ms", "mol_step_done_p50_ms"}
