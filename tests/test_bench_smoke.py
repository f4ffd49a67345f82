"""Smoke test of the MCP benchmark: `bench/bench_mcp.py --quick` runs end to end against real
`vermas-mcp` subprocesses and reports every figure. Timing targets are shown by the
benchmark itself, never asserted here (they depend on the machine)."""

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ("hook_check", "mail_send", "mail_inbox", "bead_ready", "bead_create")
PROFILES = ("polecat", "witness", "refinery", "crew", "mayor", "overseer")

EXPECTED_KEYS = [
    *[f"{tool}_{stat}" for tool in TOOLS for stat in (
        "p50_ms", "p99_ms", "max_ms", "errors", "novalidate_p50_ms", "novalidate_p99_ms",
        "core_p50_ms", "inproc_p50_ms")],
    "ready_big_core_p50_ms", "ready_big_core_p99_ms", "ready_big_stdio_p50_ms", "ready_big_stdio_p99_ms",
    "cold_start_median_ms", "cold_start_min_ms", "cold_start_max_ms",
    "startup_python_ms", "startup_import_mcp_ms", "startup_import_vermas_mcp_ms",
    *[f"tools_list_bytes_{profile}" for profile in PROFILES],
    "mail_throughput_msgs_per_s", "mail_sent", "mail_stored", "mail_lost", "mail_duplicated",
    "mail_errors", "mail_elapsed_s", "mail_driver_cpu_s",
    "export_issues_ms", "export_messages_ms", "seed_beads_s", "seed_messages_s", "total_s",
]


def test_bench_quick_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_mcp.py"), "--quick", "--json-out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(out.read_text())
    # stdout starts with the same JSON document (the table follows it)
    assert proc.stdout.lstrip().startswith("{")

    figures = result["figures"]
    missing = [key for key in EXPECTED_KEYS if key not in figures]
    assert not missing, f"figures missing: {missing}"
    for key, value in figures.items():
        assert isinstance(value, (int, float)) and not isinstance(value, bool), (key, value)
        assert math.isfinite(value), (key, value)

    # every call succeeded, and the concurrent mail run lost and duplicated nothing
    for tool in TOOLS:
        assert figures[f"{tool}_errors"] == 0, tool
    assert figures["mail_errors"] == 0
    assert figures["mail_sent"] > 0
    assert figures["mail_lost"] == 0
    assert figures["mail_duplicated"] == 0
    assert figures["mail_stored"] == figures["mail_sent"]

    # tools/list grows with the profile: polecat sees a strict subset of overseer's tools
    assert 0 < figures["tools_list_bytes_polecat"] < figures["tools_list_bytes_overseer"]

    # the targets table covers the figures the benchmark promises, each with a verdict
    labels = {row["key"] for row in result["targets"]}
    assert {"cold_start_median_ms", "tools_list_bytes_polecat", "mail_throughput_msgs_per_s",
            "ready_big_core_p50_ms", "mail_lost"} <= labels
    assert all(isinstance(row["pass"], bool) for row in result["targets"])
