"""Smoke test of the town benchmark: `bench/bench_town.py --quick` boots real Claude Code
sessions in tmux against the stand-in model, slings polecats, runs `up` and nudges idle
sessions, and reports every figure (about half a minute). Timing targets are shown by the
benchmark itself, never asserted here, except that every nudge must reach the model
exactly once."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vermas.testing.standin import find_claude_binary

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.skipif(find_claude_binary() is None, reason="Claude Code CLI not installed (scripts/setup.sh)"),
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux not installed"),
]

EXPECTED_KEYS = [
    "sling_polecats", "sling_ready_count", "sling_ready_pct", "sling_session_exists_at_return",
    *[f"sling_{part}_{stat}_s" for part in ("spawn", "marker", "ready", "agent_startup") for stat in ("p50", "max")],
    "up_rigs", "up_sessions", "up_nowait_s", "up_nowait_started", "up_wait_s", "up_wait_started",
    "up_wait_kicked", "up_gupp_delivered_once", "up_again_s", "up_again_started",
    "sling_trust_dialog", "up_trust_dialog", "zygote_start_s",
    "nudges_total", "nudges_submitted_once", "nudge_submitted_once_pct", "nudges_reported_submitted",
    "nudge_false_submitted", "nudge_not_seen", "nudge_duplicated", "nudge_wrong_session",
    "nudge_p50_s", "nudge_p95_s", "total_s",
]


def test_bench_town_quick_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "bench-town.json"
    env = {k: v for k, v in os.environ.items() if k not in ("CLAUDECODE", "VERMAS_TOWN", "BD_ACTOR")}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_town.py"), "--quick", "--json-out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=240, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-4000:] + proc.stdout[-2000:]
    assert proc.stdout.lstrip().startswith("{")  # the JSON first, then the table
    result = json.loads(out.read_text())

    figures = result["figures"]
    missing = [key for key in EXPECTED_KEYS if key not in figures]
    assert not missing, f"figures missing: {missing}"
    for key, value in figures.items():
        assert isinstance(value, (int, float)) and not isinstance(value, bool), (key, value)
        assert math.isfinite(value), (key, value)

    assert figures["nudges_total"] > 0
    assert figures["nudges_submitted_once"] == figures["nudges_total"], [
        n for n in result["details"]["nudges"] if not n["once"]]
    assert figures["nudge_false_submitted"] == 0
    assert figures["sling_ready_count"] > 0 and figures["up_wait_kicked"] > 0
    assert figures["up_again_started"] == 0
    assert {row["key"] for row in result["targets"]} >= {"nudge_submitted_once_pct", "nudge_p50_s"}
    assert all(isinstance(row["pass"], bool) for row in result["targets"])
