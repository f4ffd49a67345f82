"""The deacon patrol: one town-wide round = observe -> decide (pure) -> act, spending no
tokens; and `patrols`, the one call the runner's loop makes each interval (heartbeat, every
rig's witness round, then the deacon's)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from vermas import patrol_log
from vermas.deacon.act import act_town
from vermas.deacon.decide import decide_town
from vermas.deacon.observe import observe_town
from vermas.molecules import molecule
from vermas.patrol_log import PatrolEvent
from vermas.town import Town
from vermas.witness import patrol as witness_patrol

if TYPE_CHECKING:  # tmux is imported only where a session is touched
    from vermas.sessions import TownSessions

LOOP = "patrol"  # the runner's patrol loop, as its heartbeat names it
SWEEP_WISPS = "sweep_wisps"


def round(town: Town, sessions: TownSessions, now: float | None = None) -> list[PatrolEvent]:  # noqa: A001
    """One deacon round; the recorded actions. Never raises (a failure is recorded and logged)."""
    now = time.time() if now is None else now
    try:
        seen = observe_town(town, sessions)
        events = act_town(town, sessions, decide_town(seen, town.config.patrol, now), now)
    except Exception as exc:  # noqa: BLE001 - a patrol round never raises
        return witness_patrol.failed(town, "deacon", exc, now)
    try:
        return events + sweep(town, now)
    except Exception as exc:  # noqa: BLE001
        return events + witness_patrol.failed(town, "deacon", exc, now)


def sweep(town: Town, now: float) -> list[PatrolEvent]:
    """Delete the wisps closed longer than `[patrol] wisp_max_age` ago (molecule.expired_wisps
    decides); one event per round that removed any, naming them."""
    gone = molecule.sweep_wisps(town, town.config.patrol.wisp_max_age, now)
    if not gone:
        return []
    reason = f"{len(gone)} closed wisp(s) older than {town.config.patrol.wisp_max_age:g}s deleted"
    return [patrol_log.record(town, "deacon", SWEEP_WISPS, reason, now, evidence={"wisps": gone[:100]})]


def patrols(town: Town, sessions: TownSessions, now: float | None = None) -> list[PatrolEvent]:
    """The runner's one call per interval: its heartbeat, the witness round of every rig, then
    the deacon's. Never raises; returns every recorded action."""
    now = time.time() if now is None else now
    try:
        patrol_log.beat(town, LOOP, now)
    except Exception as exc:  # noqa: BLE001
        witness_patrol.failed(town, "deacon", exc, now)
    return witness_patrol.round(town, sessions, now) + round(town, sessions, now)
