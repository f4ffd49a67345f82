"""Smoke test of the MCP benchmark: `bench/bench_mcp.py --quick` runs end to end against real
`vermas-mcp` subprocesses (served by the town's zygote, and in-process for the cold start
without it), driven by the SDK client and by the benchmark's raw JSON-RPC client, and
reports every figure. Timing targets are shown by the benchmark itself, never asserted
here (they depend on the machine)."""

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ("hook_check", "mail_send", "mail_inbox", "bead_ready", "bead_create")
PROFILES = ("polecat", "witness", "refinery", "crew", "mayor", "overseer")
THROUGHPUT_RUNS = ("mail_", "mail_sdk_client_")  # raw clients, SDK clients

EXPECTED_KEYS = [
    *[f"{tool}_{stat}" for tool in TOOLS for stat in (
        "p50_ms", "p99_ms", "max_ms", "errors", "novalidate_p50_ms", "novalidate_p99_ms",
        "core_p50_ms", "inproc_p50_ms")],
    *[f"raw_{tool}_{stat}" for tool in TOOLS for stat in ("p50_ms", "p99_ms", "max_ms", "errors")],
    "ready_big_core_p50_ms", "ready_big_core_p99_ms", "ready_big_stdio_p50_ms", "ready_big_stdio_p99_ms",
    *[f"cold_start_{path}_{stat}_ms" for path in ("zygote", "inprocess") for stat in ("median", "min", "max")],
    "zygote_start_s", "tools_list_zygote_mismatches",
    "startup_python_ms", "startup_import_mcp_ms", "startup_import_vermas_mcp_ms",
    *[f"tools_list_bytes_{profile}" for profile in PROFILES],
    "mail_throughput_msgs_per_s", "mail_throughput_sdk_client_msgs_per_s",
    *[f"{run}{stat}" for run in THROUGHPUT_RUNS for stat in (
        "sent", "stored", "lost", "duplicated", "errors", "elapsed_s", "spawn_s", "driver_cpu_s",
        "zygote_children")],
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

    # every call succeeded, through either client
    for tool in TOOLS:
        assert figures[f"{tool}_errors"] == 0, tool
        assert figures[f"raw_{tool}_errors"] == 0, tool

    # both concurrent mail runs (raw clients, SDK clients) lost and duplicated nothing, and
    # every server of each run was a child of the town's zygote
    workers = result["config"]["workers"]
    for run in THROUGHPUT_RUNS:
        assert figures[f"{run}errors"] == 0, run
        assert figures[f"{run}sent"] == result["config"]["sends"], run
        assert figures[f"{run}lost"] == 0, run
        assert figures[f"{run}duplicated"] == 0, run
        assert figures[f"{run}stored"] == figures[f"{run}sent"], run
        assert figures[f"{run}zygote_children"] == workers, run

    # the zygote and the in-process path list the same tools for every profile
    assert figures["tools_list_zygote_mismatches"] == 0

    # tools/list grows with the profile: polecat sees a strict subset of overseer's tools
    assert 0 < figures["tools_list_bytes_polecat"] < figures["tools_list_bytes_overseer"]

    # the targets table covers the figures the benchmark promises, each with a verdict
    labels = {row["key"] for row in result["targets"]}
    assert {"cold_start_zygote_median_ms", "tools_list_bytes_polecat", "mail_throughput_msgs_per_s",
            "ready_big_core_p50_ms", "mail_lost", "mail_duplicated", "mail_sdk_client_lost",
            "mail_sdk_client_duplicated"} <= labels
    assert all(isinstance(row["pass"], bool) for row in result["targets"])

    # the table prints the raw-client latency and the other cold start and throughput beside
    # the judged figures
    assert "raw client" in proc.stdout and "in-process" in proc.stdout and "SDK clients" in proc.stdout
