#!/usr/bin/env python
"""Benchmark of a real town: Claude Code sessions (the real CLI) in tmux on the town's private
socket, each with its own vermas-mcp, driven by the stand-in model on 127.0.0.1 with a private
HOME (`vermas_runner.demo.use_standin`). Real git, real tmux, real MCP; only the model is a double.

Measures:
  1. sling to session-ready latency (the town's MCP zygote started first, as `up` does):
     N polecats spawned one after another with
     `polecat.spawn(..., kick="none")`; per polecat the time to (a) spawn's return (slot, worktree,
     tmux session: vermas's own share), (b) the agent's MCP ready marker, (c) `launch.wait_ready`
     (prompt idle + marker; includes wait_ready's fixed 0.5 s settle). Agent start-up = (c) - (a).
     Each polecat's session is killed once measured (and its Claude Code process waited for),
     so the next one boots on a quiet machine. A session that never gets ready is reported with
     the reason (e.g. stuck at Claude Code's folder-trust dialog).
  2. `up` of a town of R rigs (1 + 2R sessions): `up.up(wait=False)` on a fresh town (MCP
     zygote and sessions started), `up.up(wait=True)` on another fresh town (all sessions ready and GUPP-nudged, the
     nudge checked on the model side), and a second `up` on that town (must start nothing).
  3. nudge delivery: M nudges, each with a unique token, round robin over the idle mayor /
     witness / refinery sessions of that town, waiting for the target to be idle again before
     each. A nudge counts as submitted exactly once only if, in the stand-in's recorded requests,
     the latest conversation turn containing its token comes from the target's own Claude Code
     session and holds the token exactly once (typed but never submitted, or submitted twice,
     or in the wrong session = failure). Also reports nudge() latency p50/p95 and "false
     submitted" (nudge() said submitted, the model did not get it exactly once).

Prints the figures as JSON (stdout, and --json-out FILE), then a short table with targets.

    python bench/bench_town.py             # full run: 5 polecats, 3 rigs, 50 nudges (~4-6 min)
    python bench/bench_town.py --quick     # 2 polecats, 1 rig, 9 nudges (~1-2 min)

Every session (up.down + TownSessions.kill_server), the stand-in server and the temp dir are
cleaned up at the end, also on failure or SIGTERM (unless --keep).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vermas import agents, beads, polecat, rig, up
from vermas.sessions import launch, nudge
from vermas.addresses import Address, parse_address
from vermas.sessions import TownSessions
from vermas.testing.standin import ModelRequest, StandinModelServer, find_claude_binary
from vermas.town import Town
from vermas_runner import demo
from common import evaluate as judge, pct  # bench/common.py (this script's folder)

RIG_NAMES = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta")
IDENTITY_RE = re.compile(r"# vermas: you are `([^`]+)`")  # first line of `vermas-runner prime`
OVERSEER = parse_address("overseer")

# (figure key, target, comparison, unit, label)
TARGETS: list[tuple[str, float, str, str, str]] = [
    ("nudge_submitted_once_pct", 100.0, ">=", "%", "nudges submitted exactly once"),
    ("nudge_false_submitted", 0.0, "<=", "", "nudge() said submitted, model disagrees"),
    ("nudge_p50_s", 1.5, "<=", "s", "nudge() latency p50"),
    ("sling_ready_pct", 100.0, ">=", "%", "polecats ready (wait_ready true)"),
    ("up_wait_kicked_pct", 100.0, ">=", "%", "up(wait) sessions ready + GUPP-nudged"),
    ("up_gupp_delivered_once_pct", 100.0, ">=", "%", "GUPP nudge reached the model once"),
    ("up_again_started", 0.0, "<=", "", "second up starts nothing"),
]


def log(msg: str) -> None:
    print(f"[bench-town] {msg}", file=sys.stderr, flush=True)




def r3(x: float) -> float:
    return round(x, 3) if math.isfinite(x) else x


# --------------------------------------------------------------------------------------------
# Towns
# --------------------------------------------------------------------------------------------


@dataclass
class BenchTown:
    town: Town
    sessions: TownSessions
    rigs: list[str]


@dataclass
class Context:
    work: Path
    server: StandinModelServer
    towns: list[BenchTown] = field(default_factory=list)

    def make_town(self, name: str, rig_count: int, max_polecats: int = 4) -> BenchTown:
        base = self.work / name
        base.mkdir(parents=True)
        town, _ = Town.init(base / "town")
        # Register before anything can fail, so cleanup always sees this town.
        handle = BenchTown(town, TownSessions(town.root), [])
        self.towns.append(handle)
        demo.use_standin(town, self.server.base_url, base / "claude-home")
        for i in range(rig_count):
            rig_name = RIG_NAMES[i]
            repo = demo.sample_repo(base / f"src-{rig_name}")
            rig.add(town, rig_name, str(repo), prefix=rig_name[:2], max_polecats=max_polecats)
            handle.rigs.append(rig_name)
        return handle

    def cleanup(self) -> list[str]:
        problems = []
        for t in self.towns:
            try:
                up.down(t.town, t.sessions)
            except Exception as exc:  # noqa: BLE001 - keep cleaning up
                problems.append(f"down {t.town.root}: {exc!r}")
            try:
                t.sessions.kill_server()
            except Exception as exc:  # noqa: BLE001
                problems.append(f"kill_server {t.sessions.socket}: {exc!r}")
            stop_zygote = getattr(up, "stop_zygote", None)  # down stops it too; make sure
            if stop_zygote is not None:
                try:
                    stop_zygote(t.town)
                except Exception as exc:  # noqa: BLE001
                    problems.append(f"stop_zygote {t.town.root}: {exc!r}")
            # tmux leaves its socket file behind after kill-server; remove ours (only ours).
            sock = Path(os.environ.get("TMUX_TMPDIR", "/tmp")) / f"tmux-{os.getuid()}" / t.sessions.socket
            try:
                deadline = time.monotonic() + 3
                while t.sessions.server.is_alive() and time.monotonic() < deadline:
                    time.sleep(0.1)  # kill-server returns before the server has exited
                if sock.is_socket() and not t.sessions.server.is_alive():
                    sock.unlink()
            except Exception as exc:  # noqa: BLE001
                problems.append(f"socket {sock}: {exc!r}")
            try:
                t.town.close()
            except Exception:  # noqa: BLE001
                pass
        return problems


# --------------------------------------------------------------------------------------------
# Reading the stand-in's records
# --------------------------------------------------------------------------------------------


def main_turns(server: StandinModelServer) -> list[ModelRequest]:
    """Conversation turns (no side requests, no count_tokens), in arrival order."""
    return [r for r in server.requests if r.route.rstrip("/") == "/v1/messages" and not r.is_auxiliary()]


def identity(req: ModelRequest) -> str | None:
    """The vermas address of the session that sent this request (from its SessionStart context)."""
    m = IDENTITY_RE.search(json.dumps(req.messages, ensure_ascii=False))
    return m.group(1) if m else None


@dataclass
class Delivery:
    seen: bool  # some turn carried the token
    count: int  # occurrences in the latest turn's history
    sessions: list[str]  # addresses of every session whose turns carried it
    once: bool  # seen exactly once, only in the target's session


def delivery(turns: list[ModelRequest], token: str, target: str) -> Delivery:
    containing = [(r, text) for r in turns if token in (text := json.dumps(r.messages, ensure_ascii=False))]
    if not containing:
        return Delivery(False, 0, [], False)
    latest, text = containing[-1]
    count = text.count(token)
    who = sorted({identity(r) or f"session:{r.session_id}" for r, _ in containing})
    return Delivery(True, count, who, count == 1 and who == [target])


def why_not_ready(t: BenchTown, address: Address) -> dict[str, Any]:
    """What a session that never became ready shows: Claude Code's folder-trust dialog (its
    trust entry in $HOME/.claude.json was lost), no MCP marker, or a prompt that is not idle."""
    screen = t.sessions.capture(address)
    marker = agents.ready_marker(t.town, address).exists()
    if "trust this folder" in screen:
        reason = "folder trust dialog"
    elif not marker:
        reason = "no MCP ready marker"
    else:
        reason = "prompt not idle"
    return {"reason": reason, "marker": marker, "screen_tail": [x for x in screen.splitlines() if x.strip()][-10:]}


def kill_and_wait(t: BenchTown, address: Address, timeout: float = 10.0) -> None:
    """Kill a session and wait until its Claude Code process has exited (it rewrites
    $HOME/.claude.json on the way out, which can drop a trust entry written meanwhile)."""
    pid = t.sessions.info(address).pid
    t.sessions.kill(address)
    deadline = time.monotonic() + timeout
    while pid and time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        try:
            if Path(f"/proc/{pid}/stat").read_text().split(") ")[-1].startswith("Z"):
                break  # exited, not yet reaped by its parent
        except OSError:
            break
        time.sleep(0.05)


def token_seen(server: StandinModelServer, token: str) -> bool:
    return any(token in json.dumps(r.messages, ensure_ascii=False) for r in main_turns(server))


# --------------------------------------------------------------------------------------------
# 1. Sling to session ready
# --------------------------------------------------------------------------------------------


def bench_sling(ctx: Context, n: int, timeout: float) -> dict[str, Any]:
    log(f"figure 1: spawning {n} polecats one by one (kick=none)")
    t = ctx.make_town("sling", 1, max_polecats=max(1, n))
    town, sessions, rig_name = t.town, t.sessions, t.rigs[0]
    # In a running town `up` has started the MCP zygote before anything is slung; do the same.
    zygote_s, zygote_pid = math.nan, None
    start_zygote = getattr(up, "start_zygote", None)
    if start_zygote is not None:
        t0 = time.perf_counter()
        zygote_pid = start_zygote(town)
        zygote_s = time.perf_counter() - t0
        log(f"  MCP zygote: pid {zygote_pid} in {zygote_s:.2f} s")
    rows = []
    for i in range(n):
        bead = beads.create(town, OVERSEER, f"bench sling {i + 1}", rig=rig_name,
                            description="benchmark bead; nothing to do")
        t0 = time.perf_counter()
        info = polecat.spawn(town, OVERSEER, bead.id, rig_name, sessions, kick="none")
        t_spawn = time.perf_counter() - t0
        address = parse_address(info.address)
        session_exists = sessions.alive(address)
        marker = agents.ready_marker(town, address)
        t_marker: list[float] = []
        stop = threading.Event()

        def watch(marker: Path = marker, t0: float = t0, out: list[float] = t_marker,
                  stop: threading.Event = stop) -> None:
            while not stop.is_set():
                if marker.exists():
                    out.append(time.perf_counter() - t0)
                    return
                time.sleep(0.02)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        ready = launch.wait_ready(town, sessions, address, timeout=timeout)
        t_ready = time.perf_counter() - t0
        stop.set()
        watcher.join(timeout=2)
        row = {"address": str(address), "session_exists_at_return": session_exists,
               "spawn_s": r3(t_spawn), "marker_s": r3(t_marker[0]) if t_marker else None,
               "ready_s": r3(t_ready) if ready else None, "ready": ready,
               "agent_startup_s": r3(t_ready - t_spawn) if ready else None}
        if not ready:
            row.update(why_not_ready(t, address))
        rows.append(row)
        log(f"  {address}: spawn {t_spawn:.2f} s, marker {row['marker_s']} s, ready {row['ready_s']} s"
            + ("" if ready else f" NOT READY: {row['reason']}"))
        kill_and_wait(t, address)  # measure the next polecat on a machine without this one
    up.down(town, sessions)

    def stat(key: str) -> tuple[float, float]:
        vals = [float(r[key]) for r in rows if r[key] is not None]
        return (r3(statistics.median(vals)), r3(max(vals))) if vals else (math.nan, math.nan)

    figures: dict[str, float] = {"sling_polecats": n,
                                 "sling_ready_count": sum(1 for r in rows if r["ready"]),
                                 "sling_trust_dialog": sum(1 for r in rows if r.get("reason") == "folder trust dialog"),
                                 "sling_zygote": 1 if zygote_pid else 0, "zygote_start_s": r3(zygote_s),
                                 "sling_session_exists_at_return":
                                     sum(1 for r in rows if r["session_exists_at_return"])}
    figures["sling_ready_pct"] = round(100 * figures["sling_ready_count"] / n, 1) if n else 0.0
    for key in ("spawn_s", "marker_s", "ready_s", "agent_startup_s"):
        p50, mx = stat(key)
        figures[f"sling_{key[:-2]}_p50_s"] = p50
        figures[f"sling_{key[:-2]}_max_s"] = mx
    return {"figures": figures, "polecats": rows}


# --------------------------------------------------------------------------------------------
# 2. up
# --------------------------------------------------------------------------------------------


def gupp_deliveries(server: StandinModelServer, addresses: list[str]) -> dict[str, int]:
    """Per address: how often the GUPP nudge text sits in that session's latest turn."""
    latest: dict[str, ModelRequest] = {}
    for r in main_turns(server):
        who = identity(r)
        if who in addresses and launch.GUPP_NUDGE in json.dumps(r.messages, ensure_ascii=False):
            latest[who] = r
    return {a: json.dumps(latest[a].messages, ensure_ascii=False).count(launch.GUPP_NUDGE) if a in latest else 0
            for a in addresses}


def bench_up(ctx: Context, rigs: int) -> tuple[dict[str, Any], BenchTown]:
    expected = 1 + 2 * rigs
    log(f"figure 2: up of a town with {rigs} rig(s), {expected} sessions")
    a = ctx.make_town("up-nowait", rigs)
    t0 = time.perf_counter()
    rep_a = up.up(a.town, a.sessions, wait=False)
    up_nowait = time.perf_counter() - t0
    alive_a = sum(1 for n in a.sessions.names() if n.startswith("vermas-"))
    log(f"  up(wait=False): {up_nowait:.2f} s, started {len(rep_a.started)}, alive {alive_a}")
    up.down(a.town, a.sessions)  # free the CPU for the next town

    b = ctx.make_town("up-wait", rigs)
    t0 = time.perf_counter()
    rep_b = up.up(b.town, b.sessions, wait=True)
    up_wait = time.perf_counter() - t0
    log(f"  up(wait=True): {up_wait:.2f} s, started {len(rep_b.started)}, kicked {len(rep_b.kicked)}")
    core = [str(x) for x in up.core_agents(b.town)]
    not_ready = {a: why_not_ready(b, parse_address(a)) for a in core if a not in rep_b.kicked}
    for a, why in not_ready.items():
        log(f"  {a} not kicked: {why['reason']}")
    # The GUPP nudge was reported submitted; check the model got it (give the last turn a moment).
    deadline = time.monotonic() + 15
    gupp = gupp_deliveries(ctx.server, core)
    while time.monotonic() < deadline and any(v != 1 for v in gupp.values()):
        time.sleep(0.5)
        gupp = gupp_deliveries(ctx.server, core)
    t0 = time.perf_counter()
    rep_again = up.up(b.town, b.sessions, wait=True)
    up_again = time.perf_counter() - t0
    log(f"  second up: {up_again:.2f} s, started {len(rep_again.started)}")
    figures = {
        "up_rigs": rigs, "up_sessions": expected,
        "up_nowait_s": r3(up_nowait), "up_nowait_started": len(rep_a.started), "up_nowait_alive": alive_a,
        "up_wait_s": r3(up_wait), "up_wait_started": len(rep_b.started), "up_wait_kicked": len(rep_b.kicked),
        "up_wait_kicked_pct": round(100 * len(rep_b.kicked) / expected, 1),
        "up_trust_dialog": sum(1 for w in not_ready.values() if w["reason"] == "folder trust dialog"),
        "up_gupp_delivered_once": sum(1 for v in gupp.values() if v == 1),
        "up_gupp_delivered_once_pct": round(100 * sum(1 for v in gupp.values() if v == 1) / expected, 1),
        "up_again_s": r3(up_again), "up_again_started": len(rep_again.started),
        "up_again_already_running": len(rep_again.already_running),
    }
    detail = {"figures": figures, "nowait_started": rep_a.started, "wait_kicked": rep_b.kicked,
              "wait_not_kicked": not_ready, "gupp_count": gupp}
    return detail, b


# --------------------------------------------------------------------------------------------
# 3. Nudges
# --------------------------------------------------------------------------------------------


def wait_idle(t: BenchTown, server: StandinModelServer, address: Address, prev_token: str | None,
              timeout: float = 60.0) -> bool:
    """Until the previous nudge's turn reached the model and the prompt is idle and empty
    on three looks in a row."""
    deadline = time.monotonic() + timeout
    streak = 0
    while time.monotonic() < deadline:
        if prev_token is None or token_seen(server, prev_token):
            screen = nudge.read_screen(t.sessions.capture(address))
            streak = streak + 1 if (screen.ready and not screen.busy and not screen.input_text) else 0
            if streak >= 3:
                return True
        time.sleep(0.2)
    return False


def bench_nudges(ctx: Context, t: BenchTown, count: int, ready: list[str]) -> dict[str, Any]:
    """Nudges go to the core sessions `up` found ready (a session stuck at start-up is an
    `up` failure, reported there, not a nudge failure)."""
    core = up.core_agents(t.town)
    targets = [a for a in core if str(a) in ready] or core
    log(f"figure 3: {count} nudges round robin over {len(targets)} idle sessions")
    last_token: dict[str, str] = {}
    rows = []
    idle_timeouts = 0
    for i in range(count):
        target = targets[i % len(targets)]
        if not wait_idle(t, ctx.server, target, last_token.get(str(target))):
            idle_timeouts += 1
        token = f"BNT{i:03d}x{secrets.token_hex(4)}"
        message = f"vermas bench nudge {token}: nothing to do, just acknowledge."
        t0 = time.perf_counter()
        result = nudge.nudge(t.town, t.sessions, target, message, sender="deacon")
        elapsed = time.perf_counter() - t0
        last_token[str(target)] = token
        rows.append({"i": i, "target": str(target), "token": token, "submitted": result.submitted,
                     "enter_presses": result.enter_presses, "seconds": r3(elapsed),
                     "reason": result.reason, "queued_message_id": result.queued_message_id})
        if not result.submitted:
            log(f"  nudge {i} to {target} NOT submitted: {result.reason}")
    # Let the last turns reach the model before judging.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not all(token_seen(ctx.server, r["token"]) for r in rows):
        time.sleep(0.5)
    time.sleep(1.0)  # a duplicate Enter would show up as a second turn shortly after
    turns = main_turns(ctx.server)
    for row in rows:
        d = delivery(turns, row["token"], row["target"])
        row.update(seen=d.seen, count_in_latest=d.count, seen_in=d.sessions, once=d.once)
        if not d.once:
            log(f"  nudge {row['i']} to {row['target']}: seen={d.seen} count={d.count} in {d.sessions} "
                f"(nudge() said submitted={row['submitted']}, {row['enter_presses']} Enter)")
    lat = [float(r["seconds"]) for r in rows]
    once = sum(1 for r in rows if r["once"])
    figures = {
        "nudges_total": count,
        "nudges_submitted_once": once,
        "nudge_submitted_once_pct": round(100 * once / count, 1) if count else 0.0,
        "nudges_reported_submitted": sum(1 for r in rows if r["submitted"]),
        "nudge_false_submitted": sum(1 for r in rows if r["submitted"] and not r["once"]),
        "nudge_not_seen": sum(1 for r in rows if not r["seen"]),
        "nudge_duplicated": sum(1 for r in rows if r["count_in_latest"] > 1),
        "nudge_wrong_session": sum(1 for r in rows if r["seen"] and r["seen_in"] != [r["target"]]),
        "nudge_queued_as_mail": sum(1 for r in rows if r["queued_message_id"]),
        "nudge_multi_enter": sum(1 for r in rows if r["enter_presses"] > 1),
        "nudge_idle_wait_timeouts": idle_timeouts,
        "nudge_target_sessions": len(targets),
        "nudge_p50_s": r3(pct(lat, 50)), "nudge_p95_s": r3(pct(lat, 95)), "nudge_max_s": r3(max(lat, default=math.nan)),
    }
    return {"figures": figures, "nudges": rows}


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------



def evaluate(figures: dict[str, float]) -> list[dict[str, Any]]:
    return judge(figures, TARGETS)


def print_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    f, cfg = result["figures"], result["config"]
    table = Table(title=f"vermas town benchmark ({cfg['polecats']} polecats, {cfg['rigs']} rigs, "
                        f"{cfg['nudges']} nudges; load {cfg['loadavg_1m_start']}->{cfg['loadavg_1m_end']} "
                        f"on {cfg['cpus']} CPUs)")
    for col in ("figure", "value", "target", ""):
        table.add_column(col)
    for row in result["targets"]:
        table.add_row(row["label"], f"{row['value']:g}", row["target"],
                      "[green]PASS[/]" if row["pass"] else "[red]FAIL[/]")
    table.add_section()

    def pm(key: str) -> str:
        return f"p50 {f[f'{key}_p50_s']:g} / max {f[f'{key}_max_s']:g} s"

    table.add_row("sling: vermas share (spawn return)", pm("sling_spawn")
                  + ("" if f["sling_zygote"] else " (no MCP zygote)"), "", "")
    table.add_row("sling: MCP ready marker", pm("sling_marker"), "", "")
    table.add_row("sling: prompt ready (wait_ready)", pm("sling_ready"), "", "")
    table.add_row("sling: agent start-up (ready - spawn)", pm("sling_agent_startup"), "", "")
    table.add_row("stuck at folder-trust dialog", f"{f['sling_trust_dialog']:g} polecats, "
                  f"{f['up_trust_dialog']:g} up sessions", "", "")
    table.add_row(f"up(wait=False), {f['up_sessions']:g} sessions",
                  f"{f['up_nowait_s']:g} s ({f['up_nowait_started']:g} started; incl. MCP zygote start, "
                  f"alone {f['zygote_start_s']:g} s)", "", "")
    table.add_row("up(wait=True), fresh town", f"{f['up_wait_s']:g} s ({f['up_wait_kicked']:g} kicked)", "", "")
    table.add_row("second up", f"{f['up_again_s']:g} s ({f['up_again_started']:g} started)", "", "")
    table.add_row("nudges once / total", f"{f['nudges_submitted_once']:g} / {f['nudges_total']:g} "
                  f"(over {f['nudge_target_sessions']:g} sessions)", "", "")
    table.add_row("nudge() p95 / max", f"{f['nudge_p95_s']:g} / {f['nudge_max_s']:g} s", "", "")
    table.add_row("nudge failures", f"not seen {f['nudge_not_seen']:g}, dup {f['nudge_duplicated']:g}, "
                  f"wrong session {f['nudge_wrong_session']:g}, queued {f['nudge_queued_as_mail']:g}, "
                  f">1 Enter {f['nudge_multi_enter']:g}", "", "")
    table.add_row("total", f"{f['total_s']:g} s", "", "")
    Console(width=120).print(table)


def run(args: argparse.Namespace, ctx: Context) -> dict[str, Any]:
    t_start = time.perf_counter()
    load_start = os.getloadavg()
    figures: dict[str, float] = {}
    stages: dict[str, float] = {}
    details: dict[str, Any] = {}

    t = time.perf_counter()
    sling = bench_sling(ctx, args.polecats, args.ready_timeout)
    figures.update(sling["figures"])
    details["sling"] = sling["polecats"]
    stages["sling"] = round(time.perf_counter() - t, 1)

    t = time.perf_counter()
    up, town_b = bench_up(ctx, args.rigs)
    figures.update(up["figures"])
    details["up"] = {k: v for k, v in up.items() if k != "figures"}
    stages["up"] = round(time.perf_counter() - t, 1)

    t = time.perf_counter()
    nudges = bench_nudges(ctx, town_b, args.nudges, up["wait_kicked"])
    figures.update(nudges["figures"])
    details["nudges"] = nudges["nudges"]
    stages["nudges"] = round(time.perf_counter() - t, 1)

    figures["standin_requests"] = len(ctx.server.requests)
    figures["standin_policy_errors"] = len(ctx.server.errors)
    figures["total_s"] = round(time.perf_counter() - t_start, 1)
    load_end = os.getloadavg()
    config = {"quick": args.quick, "polecats": args.polecats, "rigs": args.rigs, "nudges": args.nudges,
              "cpus": os.cpu_count(), "python": sys.version.split()[0],
              "claude": str(find_claude_binary()),
              "loadavg_1m_start": round(load_start[0], 2), "loadavg_1m_end": round(load_end[0], 2),
              "loadavg_5m_end": round(load_end[1], 2)}
    targets = evaluate(figures)
    return {"config": config, "figures": figures, "stages_s": stages, "targets": targets,
            "all_pass": all(r["pass"] for r in targets), "details": details}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small run for the smoke test")
    ap.add_argument("--polecats", type=int, help="polecats slung one by one (default 5; quick 2)")
    ap.add_argument("--rigs", type=int, help="rigs in the up/nudge towns (default 3; quick 1)")
    ap.add_argument("--nudges", type=int, help="nudges to idle core sessions (default 50; quick 9)")
    ap.add_argument("--ready-timeout", type=float,
                    help="seconds a polecat may take to become ready (default 45; quick 30; "
                         f"launch.READY_TIMEOUT is {launch.READY_TIMEOUT:g})")
    ap.add_argument("--json-out", type=Path, help="also write the JSON here")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (sessions are still stopped)")
    args = ap.parse_args(argv)
    for key, full, quick in (("polecats", 5, 2), ("rigs", 3, 1), ("nudges", 50, 9), ("ready_timeout", 45.0, 30.0)):
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)
    if not 1 <= args.rigs <= len(RIG_NAMES):
        ap.error(f"--rigs must be 1 to {len(RIG_NAMES)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if find_claude_binary() is None:
        log("Claude Code CLI not found: run scripts/setup.sh (installs it into .tools/claude)")
        return 2
    # SIGTERM (e.g. a test timeout) must still run the cleanup below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = Path(tempfile.mkdtemp(prefix="vermas-bench-town-"))
    server = StandinModelServer(demo.standin_policy()).start()
    ctx = Context(work, server)
    try:
        result = run(args, ctx)
    finally:
        problems = ctx.cleanup()
        server.stop()
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
        for p in problems:
            log(f"cleanup: {p}")
    text = json.dumps(result, indent=2)
    print(text, flush=True)
    if args.json_out:
        args.json_out.write_text(text + "\n")
    print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
