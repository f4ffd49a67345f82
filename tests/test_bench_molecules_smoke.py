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
KEYS = [*[f"{t}_{s}" for t in TIMED for s in ("p50_ms", "p95_ms", "max_ms")],
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
    assert proc.stdout.lstrip().startswith("{") and "| target |" in proc.stdout
    assert {r["key"] for r in result["targets"]} >= {"pour_p50_ms", "mol_status_p50_ms", "mol_step_done_p50_ms"}
