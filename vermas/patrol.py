"""The runner's patrol loop: observe the town, decide actions (pure), act.

This first patrol keeps exports current, rolls back or finishes polecat spawns whose
process died part way, and owns every started polecat's GUPP nudge: a caller (an MCP
`sling` in a one-shot `claude -p`) may try first, but the runner, which outlives every
caller, delivers whatever nobody is delivering. The witness, refinery and deacon patrols
build on the same shape.
"""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass

from vermas import export, polecat
from vermas.deacon import patrol as deacon_patrol
from vermas.addresses import Address, Role
from vermas.patrol_log import PatrolEvent
from vermas.protocol import PolecatState
from vermas.sessions import TownSessions
from vermas.town import Town

INTERVAL = 2.0
log = logging.getLogger("vermas.patrol")


@dataclass(frozen=True)
class StartedPolecat:
    rig: str
    name: str
    alive: bool  # its session runs
    nudging: bool  # someone holds its GUPP lock (delivering the nudge right now)


@dataclass(frozen=True)
class Observed:
    stale_exports: tuple[str, ...]
    started_polecats: tuple[StartedPolecat, ...] = ()
    abandoned_spawns: tuple[tuple[str, str], ...] = ()  # (rig, name): `spawning`, spawn lock free


@dataclass(frozen=True)
class Action:
    kind: str  # "export" | "kick" | "repair"
    target: str = ""


def decide(seen: Observed) -> list[Action]:
    actions = [Action("export")] if seen.stale_exports else []
    actions += [Action("repair", f"{rig}/polecats/{name}") for rig, name in seen.abandoned_spawns]
    actions += [Action("kick", f"{p.rig}/polecats/{p.name}") for p in seen.started_polecats
                if p.alive and not p.nudging]
    return actions


def observe(town: Town, sessions: TownSessions) -> Observed:
    started, abandoned = [], []
    for p in polecat.list_polecats(town):
        if p.state is PolecatState.STARTED:
            started.append(StartedPolecat(
                p.rig, p.name, sessions.alive(Address(role=Role.POLECAT, rig=p.rig, name=p.name)),
                polecat.lock_held(polecat.gupp_lock(town, p.rig, p.name))))
        elif p.state is PolecatState.SPAWNING and not polecat.lock_held(polecat.spawn_lock(town, p.rig, p.name)):
            abandoned.append((p.rig, p.name))
    return Observed(stale_exports=tuple(export.stale_kinds(town)), started_polecats=tuple(started),
                    abandoned_spawns=tuple(abandoned))


def act(town: Town, sessions: TownSessions, actions: list[Action]) -> None:
    for action in actions:
        if action.kind == "export":
            export.export_town(town)
        elif action.kind == "repair":
            rig, _, name = action.target.split("/")
            report = polecat.repair(town, sessions, rig, name, only_spawning=True)
            if report is not None:
                log.warning("repaired %s (%s): %s%s", report.address, report.why,
                            ", ".join(report.steps), f"; error: {report.error}" if report.error else "")
        elif action.kind == "kick":
            rig, _, name = action.target.split("/")
            # gupp takes the GUPP lock without waiting, so a later round never nudges twice.
            threading.Thread(target=polecat.gupp, args=(town, sessions, rig, name), daemon=True).start()


def patrol_once(town: Town, sessions: TownSessions) -> list[Action]:
    actions = decide(observe(town, sessions))
    act(town, sessions, actions)
    return actions


def config_notice(before: str | None, now: str | None) -> str | None:
    """What to log about town.toml this round: once per change of state, never every 2 s.

    `before`/`now` are the load problem of the previous and this round (None: the file is good)."""
    if now == before:
        return None
    if now is None:
        return "town.toml is valid again; config reloaded"
    return f"{now}; keeping the last good config until the file is fixed"


def run_forever(town: Town, sessions: TownSessions, interval: float = INTERVAL) -> None:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    problem: str | None = None
    while not stop.is_set():
        error = town.refresh_config()
        notice = config_notice(problem, str(error) if error else None)
        if notice:
            print(f"patrol: {notice}", flush=True)
        problem = str(error) if error else None
        patrol_once(town, sessions)
        for event in deacon_patrol.patrols(town, sessions):  # the witness of every rig, then the deacon
            log_event(event)
        stop.wait(interval)


def log_event(event: PatrolEvent) -> None:
    """One runner-log line per recorded patrol action (the store keeps it with its evidence)."""
    who = f" {event.agent}" if event.agent else ""
    outcome = "" if event.ok else " (failed)"
    print(f"patrol: {event.patrol}: {event.action}{who}{outcome}: {event.reason}", flush=True)
