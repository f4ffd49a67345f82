#!/usr/bin/env python
"""Benchmark of the patrols' pure decision core: time per decide cycle with 50 polecats' evidence.

One witness round for one rig is `classify` of every polecat plus `decide_rig` over them, its
inbox and its branches; one deacon round is `decide_town` over the mayor, witnesses and
refineries, their restart histories, the standing escalations and the convoys. The evidence is
a mix of every state (working with a long tool, idle being nudged, waiting on a prompt, dead,
exited, done, starting), each polecat with a tail of hook events as the store keeps them, plus
POLECAT_DONE and HELP mail, orphan branches and standing escalations. No tmux, git or store:
this is the cost the decisions add to a patrol round (target <= 20 ms at p95, 0 model calls).
Prints a JSON document (also --json-out FILE) and a markdown table.

    python bench/bench_patrol_decide.py [--polecats 50] [--cycles 500] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import evaluate, pct  # noqa: E402  bench/common.py

from vermas.deacon.decide import ConvoySeen, SupervisedHistory, TownSeen, decide_town  # noqa: E402
from vermas.patrol_types import (  # noqa: E402
    Evidence, GitEvidence, HookEvent, HookKind, Hooking, NotificationKind, PatrolConfig, StandingEscalation,
    TmuxEvidence,
)
from vermas.protocol import Help, PolecatDone, PolecatState  # noqa: E402
from vermas.witness.decide import decide_rig  # noqa: E402
from vermas.witness.types import BranchSeen, InboxMail, MergeRequestSeen, RigHistory, RigSeen  # noqa: E402

NOW = 1_800_000_000.0
CFG = PatrolConfig()
TAIL = 24  # hook events kept per polecat (a turn's worth: prompts, tool pairs, stops)
K = HookKind
TARGETS = [("witness_cycle_p95_ms", 20.0, "<=", "ms", "witness round, 50 polecats (p95)"),
           ("deacon_cycle_p95_ms", 20.0, "<=", "ms", "deacon round (p95)"),
           ("model_calls", 0.0, "<=", "", "model calls")]
SCENARIOS = ("working", "long_tool", "idle", "idle_nudged", "waiting", "dead", "exited", "done", "starting",
             "stuck")


def tail(start: float, end_kind: HookKind, end_at: float,
         note: NotificationKind | None = None) -> tuple[HookEvent, ...]:
    """A plausible event tail: SessionStart, prompt, tool pairs, then the event that sets the state."""
    events = [HookEvent(kind=K.SESSION_START, at=start + 1, seq=1),
              HookEvent(kind=K.USER_PROMPT_SUBMIT, at=start + 2, seq=2)]
    t, seq = start + 3, 3
    while len(events) < TAIL - 1 and t < end_at - 2:
        events.append(HookEvent(kind=K.PRE_TOOL_USE, at=t, seq=seq, tool="Bash"))
        events.append(HookEvent(kind=K.POST_TOOL_USE, at=t + 1, seq=seq + 1, tool="Bash"))
        t, seq = t + max((end_at - start) / TAIL, 2), seq + 2
    events.append(HookEvent(kind=end_kind, at=end_at, seq=seq, tool="Bash" if end_kind is K.PRE_TOOL_USE else None,
                            notification=note))
    return tuple(events)


def polecat(i: int) -> Evidence:
    name, kind = f"p{i:02d}", SCENARIOS[i % len(SCENARIOS)]
    start, bead = NOW - 3600, f"gt-b{i:02d}"
    state, session, pane_alive, exit_status = PolecatState.WORKING, True, True, None
    if kind == "working":
        events = tail(start, K.POST_TOOL_USE, NOW - 5)
    elif kind == "long_tool":
        events = tail(start, K.PRE_TOOL_USE, NOW - 1500)
    elif kind in ("idle", "idle_nudged"):
        events = tail(start, K.STOP, NOW - 400)
    elif kind == "waiting":
        events = tail(start, K.NOTIFICATION, NOW - 30, NotificationKind.PERMISSION)
    elif kind == "dead":
        events, session = tail(start, K.POST_TOOL_USE, NOW - 20), False
    elif kind == "exited":
        events, pane_alive, exit_status = tail(start, K.SESSION_END, NOW - 20), False, 0
    elif kind == "done":
        events, state = tail(start, K.STOP, NOW - 10), PolecatState.DONE
    elif kind == "starting":
        events, start, state = (), NOW - 200, PolecatState.STARTED
    else:  # stuck: a turn with no event for 40 minutes
        events = tail(start - 3600, K.POST_TOOL_USE, NOW - 2400)
        start -= 3600
    return Evidence(
        agent=f"gt/polecats/{name}", events=events, last_mcp_call=events[-1].at - 1 if events else None,
        tmux=TmuxEvidence(session=session, pane_alive=pane_alive, exit_status=exit_status, started_at=start,
                          excerpt="Do you want to proceed?\n> 1. Yes\n  2. No" if kind == "waiting" else ""),
        git=GitEvidence(head=f"{i:040x}", branch=f"polecat/{name}/{bead}", ahead=i % 3, uncommitted=i % 2),
        hooked_bead=None if kind == "done" else bead, hooking=Hooking(bead=bead, branch=f"polecat/{name}/{bead}",
                                                                     since=NOW - 7200),
        polecat_state=state, state_since=NOW - 10)


def rig_round(n: int) -> tuple[RigSeen, RigHistory]:
    polecats = tuple(polecat(i) for i in range(n))
    inbox, mrs = [], {}
    for i in range(0, n, 5):
        p = polecats[i]
        assert p.hooking is not None
        msg = PolecatDone(bead=p.hooking.bead, status="COMPLETED", polecat=p.agent, branch=p.hooking.branch,
                          commit="c0ffee", merge_request=f"gt-mr{i}")
        inbox.append(InboxMail(id=f"m{i}", sender=p.agent, sent_at=NOW - 5, subject=msg.subject(), message=msg))
        mrs[f"gt-mr{i}"] = MergeRequestSeen(id=f"gt-mr{i}", bead=p.hooking.bead, polecat=p.agent,
                                            branch=p.hooking.branch, created_at=NOW - 5)
    inbox.append(InboxMail(id="h1", sender=polecats[0].agent, sent_at=NOW - 5, subject="HELP: tests hang",
                           message=Help(bead="gt-b00", text="they hang")))
    branches = tuple(BranchSeen(branch=f"polecat/gone{i}/gt-o{i}", bead=f"gt-o{i}", ahead=1 + i % 2,
                                merge_request=False, polecat_present=False, bead_status=("open", "closed")[i % 2])
                     for i in range(10))
    nudged = {p.hooked_bead: (NOW - 300,) for i, p in enumerate(polecats)
              if SCENARIOS[i % len(SCENARIOS)] == "idle_nudged" and p.hooked_bead}
    standing = {f"waiting:gt/polecats/p{i:02d}:gt-b{i:02d}": StandingEscalation(
        key=f"waiting:gt/polecats/p{i:02d}:gt-b{i:02d}", to="mayor", raised_at=NOW - 100) for i in range(0, n, 7)}
    history = RigHistory(nudges=nudged, restarts={p.hooked_bead: (NOW - 900,) for p in polecats if p.hooked_bead},
                         standing=standing)
    return RigSeen(rig="gt", polecats=polecats, inbox=tuple(inbox), merge_requests=mrs, branches=branches), history


def town_round(rigs: int) -> TownSeen:
    agents = ["mayor", *[f"r{i}/{role}" for i in range(rigs) for role in ("witness", "refinery")]]
    supervised = tuple(Evidence(agent=a, tmux=TmuxEvidence(session=i % 4 != 1, started_at=NOW - 4000),
                                events=tail(NOW - 4000, K.STOP, NOW - 50)) for i, a in enumerate(agents))
    history = {a: SupervisedHistory(restarts=tuple(NOW - 3000 + 60 * j for j in range(i % 6)))
               for i, a in enumerate(agents)}
    standing = {f"k{i}": StandingEscalation(key=f"k{i}", to="mayor", raised_at=NOW - 1000 * i, agent="mayor")
                for i in range(20)}
    convoys = tuple(ConvoySeen(id=f"hq-cv{i}", creator="overseer", landed=i % 2 == 0, beads=3) for i in range(20))
    return TownSeen(supervised=supervised, history=history, heartbeats={"witness": NOW - 1, "refinery": NOW - 40},
                    standing=standing, convoys=convoys)


def time_cycles(fn: Any, cycles: int) -> tuple[list[float], Any]:
    result = fn()  # warm-up (imports, caches)
    samples = []
    for _ in range(cycles):
        t = time.perf_counter()
        result = fn()
        samples.append((time.perf_counter() - t) * 1000)
    return samples, result


def stats(prefix: str, samples: list[float]) -> dict[str, float]:
    return {f"{prefix}_p50_ms": round(pct(samples, 50), 3), f"{prefix}_p95_ms": round(pct(samples, 95), 3),
            f"{prefix}_p99_ms": round(pct(samples, 99), 3), f"{prefix}_max_ms": round(max(samples), 3)}


def table(result: dict[str, Any]) -> str:
    f = result["figures"]
    lines = ["| round | p50 ms | p95 ms | p99 ms | max ms | actions / round |", "|---|---|---|---|---|---|"]
    for key, label in (("witness_cycle", f"witness, {result['config']['polecats']} polecats"),
                       ("deacon_cycle", f"deacon, {result['config']['supervised']} sessions")):
        lines.append(f"| {label} | {f[key + '_p50_ms']} | {f[key + '_p95_ms']} | {f[key + '_p99_ms']} | "
                     f"{f[key + '_max_ms']} | {result['actions'][key.split('_')[0]]['total']} |")
    lines += ["", "| target | value | | |", "|---|---|---|---|"]
    lines += [f"| {r['label']} | {r['value']:g} | {r['target']} | {'PASS' if r['pass'] else 'FAIL'} |"
              for r in result["targets"]]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--polecats", type=int, default=50)
    parser.add_argument("--cycles", type=int)
    parser.add_argument("--rigs", type=int, default=5, help="rigs whose witness and refinery the deacon keeps")
    parser.add_argument("--quick", action="store_true", help="few cycles, for the smoke test")
    parser.add_argument("--json-out")
    args = parser.parse_args()
    cycles = args.cycles or (30 if args.quick else 500)
    start = time.monotonic()
    seen, history = rig_round(args.polecats)
    town = town_round(args.rigs)
    witness_ms, witness_actions = time_cycles(lambda: decide_rig(seen, history, CFG, NOW), cycles)
    deacon_ms, deacon_actions = time_cycles(lambda: decide_town(town, CFG, NOW), cycles)
    figures = {**stats("witness_cycle", witness_ms), **stats("deacon_cycle", deacon_ms), "model_calls": 0.0}
    figures["witness_per_polecat_us"] = round(pct(witness_ms, 50) * 1000 / args.polecats, 1)

    def count(actions: list[Any]) -> dict[str, int]:
        c = Counter(type(a).__name__ for a in actions)
        return {"total": len(actions), **dict(sorted(c.items()))}

    result = {
        "config": {"polecats": args.polecats, "cycles": cycles, "supervised": len(town.supervised),
                   "events_per_polecat": TAIL, "python": sys.version.split()[0], "cpus": os.cpu_count(),
                   "loadavg_1m": round(os.getloadavg()[0], 2)},
        "figures": figures, "actions": {"witness": count(witness_actions), "deacon": count(deacon_actions)},
        "targets": evaluate(figures, TARGETS), "total_s": round(time.monotonic() - start, 2)}
    result["all_pass"] = all(r["pass"] for r in result["targets"])
    text = json.dumps(result, indent=2)
    print(text)
    if args.json_out:
        Path(args.json_out).write_text(text)
    print()
    print(table(result))
    return 0 if result["all_pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
