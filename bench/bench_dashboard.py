"""The dashboard's own load on a town of 50 agents' records (real store; no sessions).

Starts `vermas-runner dashboard` as a process, one client watches its SSE stream; measures
the dashboard process's CPU per second over a quiet window and while the store changes once
a second (another connection writes a bead, as an agent's vermas-mcp would), and the time
from each commit to the SSE event carrying it. JSON, then a table.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import evaluate, pct  # noqa: E402

from vermas import beads, events  # noqa: E402
from vermas.addresses import parse_address  # noqa: E402
from vermas.town import Town  # noqa: E402

RUNNER = str(Path(sys.executable).with_name("vermas-runner"))
AGENTS = 50
TARGETS = [("cpu_watch_pct", 5.0, "<=", "% of a core", "CPU while one client watches (quiet)"),
           ("cpu_changing_pct", 5.0, "<=", "% of a core", "CPU while the store changes 1/s"),
           ("latency_p50_s", 1.0, "<=", "s", "store change to SSE event, p50"),
           ("latency_max_s", 1.0, "<=", "s", "store change to SSE event, max")]


def make_town(root: Path) -> Town:
    town, _ = Town.init(root / "town")
    with town.db.write() as conn:  # 49 polecat slots + the mayor = 50 agents, each with events and mail
        for i in range(AGENTS - 1):
            conn.execute("INSERT INTO polecats(rig, name, bead_id, branch, worktree, state, created_at) "
                         "VALUES ('sample', ?, NULL, NULL, NULL, 'working', '2026-01-01T00:00:00Z')", (f"p{i}",))
    for i in range(AGENTS - 1):
        for k in ("SessionStart", "UserPromptSubmit", "PreToolUse", "PostToolUse", "Stop"):
            events.record(town, f"sample/polecats/p{i}", k, tool="Bash" if "Tool" in k else None)
    for i in range(200):
        beads.create(town, parse_address("mayor"), f"bead {i}")
    return town


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    quick = "--quick" in sys.argv
    window = 5.0 if quick else 20.0
    with tempfile.TemporaryDirectory() as tmp:
        town = make_town(Path(tmp))
        proc = subprocess.Popen([RUNNER, "dashboard", "--town", str(town.root), "--port", "0"],
                                stdout=subprocess.PIPE, text=True)
        try:
            url = re.search(r"http://\S+", proc.stdout.readline() if proc.stdout else "").group(0)  # type: ignore[union-attr]
            base, key = url.split("/?key=")
            got: list[tuple[float, str]] = []

            def listen() -> None:
                with urllib.request.urlopen(f"{base}/events?key={key}", timeout=120) as resp:
                    for raw in resp:
                        if raw.startswith(b"data: "):
                            got.append((time.monotonic(), raw.decode()))

            threading.Thread(target=listen, daemon=True).start()
            while not got:
                time.sleep(0.05)
            time.sleep(1.0)
            c0, t0 = cpu_seconds(proc.pid), time.monotonic()
            time.sleep(window)
            quiet = (cpu_seconds(proc.pid) - c0) / (time.monotonic() - t0) * 100
            latencies = []
            other = Town.open(town.root)
            c0, t0 = cpu_seconds(proc.pid), time.monotonic()
            n = int(window)
            for i in range(n):
                seen = len(got)
                start = time.monotonic()
                bead = beads.create(other, parse_address("mayor"), f"change {i}", priority=0)
                while time.monotonic() - start < 5:
                    hit = next((at for at, text in got[seen:] if bead.id in text), None)
                    if hit is not None:
                        latencies.append(hit - start)
                        break
                    time.sleep(0.005)
                time.sleep(max(0.0, start + 1.0 - time.monotonic()))
            changing = (cpu_seconds(proc.pid) - c0) / (time.monotonic() - t0) * 100
            other.close()
        finally:
            proc.terminate()  # uvicorn waits for open streams to end; then kill it
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
    figures = {"agents": AGENTS, "cpu_watch_pct": quiet, "cpu_changing_pct": changing,
               "latency_p50_s": pct(latencies, 50), "latency_max_s": max(latencies) if len(latencies) == n else
               float("nan"), "changes": n, "changes_seen": len(latencies)}
    rows = evaluate(figures, TARGETS)
    print(json.dumps({"figures": figures, "targets": rows}, indent=2))
    for r in rows:
        print(f"{r['label']:<42} {r['value']:>8.3f}  {r['target']:<16} {'ok' if r['pass'] else 'MISS'}")


if __name__ == "__main__":
    main()
