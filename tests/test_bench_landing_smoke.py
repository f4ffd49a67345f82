"""Smoke test of the landing benchmark: `bench/bench_landing.py --beads 1` runs the demo as a
user does and reports every figure for a bead that really merged (about 20 s). Timing targets
are the benchmark's to show, never asserted here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vermas.testing.standin import find_claude_binary

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [
    pytest.mark.tmux, pytest.mark.claude, pytest.mark.slow,
    pytest.mark.skipif(find_claude_binary() is None, reason="Claude Code CLI not installed (scripts/setup.sh)"),
]


def test_bench_landing_reports_a_merged_bead(tmp_path: Path) -> None:
    out = tmp_path / "landing.json"
    env = {k: v for k, v in os.environ.items() if k not in ("CLAUDECODE", "VERMAS_TOWN", "BD_ACTOR")}
    env["TMPDIR"] = str(tmp_path)  # the demo's town goes here (and is removed by it)
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_landing.py"), "--beads", "1",
                           "--timeout", "300", "--json-out", str(out)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [run] = json.loads(out.read_text())["runs"]
    assert (run["beads"], run["merged"], run["polecat_done"], run["commits_on_main"]) == (1, 1, 1, 2)
    assert 0 < run["sling_to_done_p50_s"] <= run["sling_to_merged_p50_s"] < 300
    assert run["done_to_merged_p50_s"] > 0
    assert "| 1 | 1/1 |" in proc.stdout
    assert list(tmp_path.glob("vermas-demo-*")) == []
