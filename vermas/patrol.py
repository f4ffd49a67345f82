"""The runner's patrol loop: observe the town, decide actions (pure), act.

This first patrol keeps exports current and makes sure every started polecat got its
GUPP nudge; the witness, refinery and deacon patrols build on the same shape.
"""

from __future__ import annotations

import signal
import threading
from dataclasses import dataclass

from vermas import export, polecat
from vermas.addresses import Address, Role
from vermas.sessions import TownSessions, launch
from vermas.town import Town

INTERVAL = 2.0


@dataclass(frozen=True)
class Observed:
    stale_exports: tuple[str, ...]
    started_polecats: tuple[tuple[str, str, bool], ...]  # (rig, name, session alive)


@dataclass(frozen=True)
class Action:
    kind: str  # "export" | "kick"
    target: str = ""


def decide(seen: Observed) -> list[Action]:
    actions = [Action("export")] if seen.stale_exports else []
    actions += [Action("kick", f"{rig}/polecats/{name}") for rig, name, alive in seen.started_polecats if alive]
    return actions


def observe(town: Town, sessions: TownSessions) -> Observed:
    started = tuple(
        (p.rig, p.name, sessions.alive(Address(role=Role.POLECAT, rig=p.rig, name=p.name)))
        for p in polecat.list_polecats(town) if p.state == "started"
    )
    return Observed(stale_exports=tuple(export.stale_kinds(town)), started_polecats=started)


def act(town: Town, sessions: TownSessions, actions: list[Action]) -> None:
    for action in actions:
        if action.kind == "export":
            export.export_town(town)
        elif action.kind == "kick":
            rig, _, name = action.target.split("/")
            polecat.set_state(town, rig, name, "working")
            address = Address(role=Role.POLECAT, rig=rig, name=name)
            threading.Thread(target=launch.kick, args=(town, sessions, address), daemon=True).start()


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
        act(town, sessions, decide(observe(town, sessions)))
        stop.wait(interval)
