#!/usr/bin/env python
"""Benchmark of the agent-event hooks: what one Claude Code hook run costs.

Claude Code runs an event hook on every prompt, tool call and turn end of every agent, so
its cost is the process: start, read the JSON on stdin, one write to the town store, exit.
On a real town made with the core library, this runs the exact argv our generated
settings.json gives Claude Code (exec form, JSON on stdin, the agent's environment) for
`--events` events, cycling PreToolUse / PostToolUse / Stop / UserPromptSubmit inputs shaped
like Claude Code's, and times each from spawn to exit (p50/p99). Then it times the naive
hook for comparison: a plain `python -c` that imports vermas fully (the runner's CLI, as a
`vermas-runner` subcommand would) and records through the core, and reports the ratio.
Every run is checked: exit 0, nothing on stdout, one row per event, no failure counted.

Prints the figures as JSON (stdout, and --json-out FILE), then a short table with targets.

    python bench/bench_hooks.py               # 200 events, 40 naive ones
    python bench/bench_hooks.py --quick       # smoke test size
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from vermas import agents, events
from vermas.addresses import parse_address
from vermas.town import Town
from common import evaluate, pct  # bench/common.py (this script's folder)

ACTOR = "rig/polecats/nux"
TARGETS = [
    ("hook_p50_ms", 15.0, "<=", "ms", "hook event p50"),
    ("hook_p99_ms", 50.0, "<=", "ms", "hook event p99"),
    ("hook_failures", 0.0, "<=", "", "hook runs that failed"),
    ("naive_over_hook_p50_ratio", 5.0, ">=", "x", "naive hook p50 / ours"),
]
NAIVE = """
import sys, json
import vermas_runner.cli  # what a `vermas-runner` subcommand loads before it runs
from vermas import events
from vermas.town import Town
data = json.loads(sys.stdin.read() or "{}")
town = Town.open(sys.argv[1])
events.record(town, sys.argv[3], sys.argv[2], data.get("tool_name"))
"""


def inputs(cwd: str) -> list[tuple[str, dict[str, Any]]]:
    """Hook inputs shaped like Claude Code 2.1's (common fields plus each event's own)."""
    common = {"session_id": "0b8f6c1e-5f2a-4c1e-9d3b-2b7f1f0e9a11", "transcript_path": f"{cwd}/t.jsonl",
              "cwd": cwd, "permission_mode": "acceptEdits"}
    bash = {"command": "python -m pytest -q tests/test_notes.py", "description": "Run the tests"}
    return [
        ("PreToolUse", {**common, "hook_event_name": "PreToolUse", "tool_name": "Bash", "tool_input": bash,
                        "tool_use_id": "toolu_01"}),
        ("PostToolUse", {**common, "hook_event_name": "PostToolUse", "tool_name": "Bash", "tool_input": bash,
                         "tool_response": {"stdout": "." * 2000 + "\n1 passed", "stderr": "", "interrupted": False},
                         "tool_use_id": "toolu_01"}),
        ("Stop", {**common, "hook_event_name": "Stop", "stop_hook_active": False,
                  "last_assistant_message": "Done: the note is written and committed."}),
        ("UserPromptSubmit", {**common, "hook_event_name": "UserPromptSubmit",
                              "prompt": "vermas: call hook_check now; if your hook has work, run it (GUPP)."}),
    ]


def time_runs(argv_for: Any, cases: list[tuple[str, dict[str, Any]]], n: int, env: dict[str, str]) -> list[float]:
    times: list[float] = []
    for i in range(n):
        kind, data = cases[i % len(cases)]
        payload = json.dumps(data).encode()
        start = time.perf_counter()
        proc = subprocess.run(argv_for(kind), input=payload, capture_output=True, env=env, timeout=60)
        times.append((time.perf_counter() - start) * 1000)
        if proc.returncode != 0 or proc.stdout:
            raise SystemExit(f"hook run {i} ({kind}) exit {proc.returncode}, stdout {proc.stdout[:200]!r}, "
                             f"stderr {proc.stderr[-500:]!r}")
    return times


def settings_argv(town: Town) -> dict[str, list[str]]:
    """Each event kind's argv exactly as the generated settings.json gives it to Claude Code,
    written where a launch writes it (the hook records only agents the town launched)."""
    address = parse_address(ACTOR)
    settings = agents.settings_for(town, address)
    folder = town.layout.agent_runtime_dir(address.session_name)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "settings.json").write_text(json.dumps(settings))
    found: dict[str, list[str]] = {}
    for kind, groups in settings["hooks"].items():  # type: ignore[attr-defined]
        for group in groups:
            for hook in group["hooks"]:
                if "args" in hook and kind not in found:
                    found[kind] = [hook["command"], *hook["args"]]
    return found


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    town, _ = Town.init(work / "town")
    cwd = str(work / "town")
    cases = inputs(cwd)
    env = {**os.environ, **agents.identity_env(town, parse_address(ACTOR))}
    argv = settings_argv(town)
    warm = time_runs(lambda k: argv[k], cases, 10, env)  # page cache, pyc
    ours = time_runs(lambda k: argv[k], cases, args.events, env)
    naive_cmd = [sys.executable, "-c", NAIVE, str(town.root)]
    time_runs(lambda k: [*naive_cmd, k, ACTOR], cases, 2, env)
    naive = time_runs(lambda k: [*naive_cmd, k, ACTOR], cases, args.naive_events, env)
    rows = events.list_events(town, agent=ACTOR, limit=100_000)
    expected = len(warm) + len(ours) + 2 + len(naive)
    failures = events.hook_failures(town)
    if len(rows) != expected:
        raise SystemExit(f"{len(rows)} events stored, {expected} expected")
    figures = {
        "hook_events": float(len(ours)), "hook_p50_ms": round(pct(ours, 50), 3),
        "hook_p99_ms": round(pct(ours, 99), 3), "hook_max_ms": round(max(ours), 3),
        "hook_failures": float(failures), "events_stored": float(len(rows)),
        "naive_events": float(len(naive)), "naive_p50_ms": round(pct(naive, 50), 3),
        "naive_p99_ms": round(pct(naive, 99), 3),
        "python_bare_p50_ms": round(pct(time_runs(lambda k: [sys.executable, "-I", "-S", "-c", "pass"],
                                                  cases, 50, env), 50), 3),
    }
    figures["naive_over_hook_p50_ratio"] = round(figures["naive_p50_ms"] / figures["hook_p50_ms"], 2)
    town.close()
    return {"bench": "hooks", "python": sys.version.split()[0], "cpus": os.cpu_count(),
            "load_avg_1m": round(os.getloadavg()[0], 2), "figures": figures,
            "targets": evaluate(figures, TARGETS)}


def print_table(result: dict[str, Any]) -> None:
    fig = result["figures"]
    print(f"\nhook events: {int(fig['hook_events'])} ours, {int(fig['naive_events'])} naive; "
          f"bare `python -I -S -c pass` p50 {fig['python_bare_p50_ms']:g} ms; load {result['load_avg_1m']}")
    print(f"{'figure':<26} {'value':>10}  {'target':<12} ok")
    for row in result["targets"]:
        print(f"{row['label']:<26} {row['value']:>10g}  {row['target']:<12} {'yes' if row['pass'] else 'NO'}")
    print(f"{'naive hook p50 / p99':<26} {fig['naive_p50_ms']:>10g}  p99 {fig['naive_p99_ms']:g} ms")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="small run for the smoke test")
    ap.add_argument("--events", type=int, help="timed hook runs (default 200; quick 40)")
    ap.add_argument("--naive-events", type=int, help="timed naive hook runs (default 40; quick 4)")
    ap.add_argument("--json-out", type=Path, help="also write the JSON here")
    args = ap.parse_args(argv)
    args.events = args.events or (40 if args.quick else 200)
    args.naive_events = args.naive_events or (4 if args.quick else 40)
    work = Path(tempfile.mkdtemp(prefix="vermas-bench-hooks-"))
    try:
        result = run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(result, indent=2)
    print(text, flush=True)
    if args.json_out:
        args.json_out.write_text(text + "\n")
    print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
