"""Smoke test of `bench/bench_patrol.py --quick`: it runs end to end (real store, real tmux on
its own socket, the real patrol rounds) and reports every figure. Timing targets are the
benchmark's to show, never asserted here; the counts (kills detected, false actions) are."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
KEYS = ["patrol_cycle_p50_ms", "patrol_cycle_p95_ms", "model_calls", "detect_kills", "detect_p50_ms",
        "detect_max_ms", "detect_max_intervals", "detect_missed", "soak_s", "soak_busy_polecats", "soak_rounds",
        "soak_false_actions", "hook_p50_ms", "hook_p99_ms", "total_s"]


@pytest.mark.tmux
def test_bench_patrol_quick_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_patrol.py"), "--quick", "--json-out",
                           str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(out.read_text())["figures"]
    for key in KEYS:
        assert key in figures and math.isfinite(figures[key]), key
    assert figures["detect_kills"] == 2 and figures["detect_missed"] == 0
    assert figures["soak_rounds"] >= 1 and figures["soak_false_actions"] == 0
    assert "| target |" in proc.stdout
