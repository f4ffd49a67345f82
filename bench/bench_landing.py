#!/usr/bin/env python
"""Benchmark of the town's main job: work slung to polecats until it is MERGED on main.

Runs `vermas-runner demo --beads N` exactly as a user does (a throwaway town on the stand-in
model: real Claude Code sessions in tmux, real git with a non-bare sample repository whose main
is checked out, the runner's patrol, the refinery's merge queue with the sample's tests and
verification at level `shell`, the inspector's `claude -p` answered by the stand-in), once
for 3 beads and once for 8, and reads the demo's own lines: each bead's time from sling to
POLECAT_DONE and from sling to MERGED (the demo prints MERGED only once the merge request is
merged and the bead closed, and exits 0 only when git shows every merged commit on the sample
repository's main and its checkout equal to it).

Prints the figures as JSON (stdout, and --json-out FILE), then a short table with the target
(sling to merged p50 <= 20 s for 3 beads on this machine).

    python bench/bench_landing.py              # 3 and 8 beads (~2-4 min)
    python bench/bench_landing.py --beads 3    # one size only
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TARGET_P50_3 = 20.0
DONE_RE = re.compile(r"^POLECAT_DONE \S+ on (\S+) \((\d+\.\d) s after sling\)", re.M)
MERGED_RE = re.compile(r"^MERGED (\S+) in ([0-9a-f]{12}) \((\d+\.\d) s after sling\)", re.M)
COMMITS_RE = re.compile(r"^main of the sample repository \(.*\), (\d+) commits:", re.M)


def runner() -> list[str]:
    script = Path(sys.executable).parent / "vermas-runner"
    return [str(script)] if script.exists() else [sys.executable, "-m", "vermas_runner.cli"]


def run(beads: int, timeout: float) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k not in ("CLAUDECODE", "VERMAS_TOWN", "BD_ACTOR")}
    start = time.monotonic()
    proc = subprocess.run([*runner(), "demo", "--beads", str(beads), "--timeout", str(timeout)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout + 300)
    wall = time.monotonic() - start
    done = {b: float(t) for b, t in DONE_RE.findall(proc.stdout)}
    merged = {b: float(t) for b, _sha, t in MERGED_RE.findall(proc.stdout)}
    commits = COMMITS_RE.search(proc.stdout)
    gaps = [merged[b] - done[b] for b in merged if b in done]
    figures: dict[str, Any] = {
        "beads": beads, "exit_code": proc.returncode, "merged": len(merged), "polecat_done": len(done),
        "commits_on_main": int(commits.group(1)) if commits else None, "demo_wall_s": round(wall, 2),
    }
    for name, values in (("sling_to_done", list(done.values())), ("sling_to_merged", list(merged.values())),
                         ("done_to_merged", gaps)):
        figures[f"{name}_p50_s"] = round(statistics.median(values), 2) if values else None
        figures[f"{name}_max_s"] = round(max(values), 2) if values else None
    if proc.returncode != 0:
        figures["output_tail"] = (proc.stdout + proc.stderr)[-3000:]
    return figures


def table(results: list[dict[str, Any]]) -> str:
    rows = ["| beads | merged | sling -> polecat_done p50 / max | sling -> merged p50 / max | "
            "polecat_done -> merged p50 | commits on main | demo wall | target |",
            "|---|---|---|---|---|---|---|---|"]
    for r in results:
        target = f"p50 <= {TARGET_P50_3:g} s" if r["beads"] == 3 else ""
        if target and r["sling_to_merged_p50_s"] is not None:
            target += " (met)" if r["sling_to_merged_p50_s"] <= TARGET_P50_3 else " (missed)"
        rows.append(f"| {r['beads']} | {r['merged']}/{r['beads']} | {r['sling_to_done_p50_s']} / "
                    f"{r['sling_to_done_max_s']} s | {r['sling_to_merged_p50_s']} / {r['sling_to_merged_max_s']} s | "
                    f"{r['done_to_merged_p50_s']} s | {r['commits_on_main']} | {r['demo_wall_s']} s | {target} |")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--beads", type=int, action="append", help="bead counts to run (default: 3 and 8)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per demo run to wait for merges")
    parser.add_argument("--json-out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    results = [run(n, args.timeout) for n in (args.beads or [3, 8])]
    payload = {"bench": "landing", "load_avg": os.getloadavg()[0], "runs": results}
    text = json.dumps(payload, indent=1)
    print(text)
    if args.json_out:
        args.json_out.write_text(text + "\n")
    print()
    print(table(results))
    return 0 if all(r["exit_code"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
