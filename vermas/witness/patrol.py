"""The witness patrol: one round per rig = observe -> decide (pure) -> act, spending no tokens.

`round` never raises: a rig whose round fails is recorded as a patrol event (`round_failed`,
with the error) and logged with its traceback, and the other rigs still get their round.
"""

from __future__ import annotations

import logging
import time
import traceback
from typing import TYPE_CHECKING

from vermas import patrol_log
from vermas.patrol_log import PatrolEvent
from vermas.town import Town
from vermas.witness.act import act_rig
from vermas.witness.decide import decide_rig
from vermas.witness.observe import TmuxView, observe_rig

if TYPE_CHECKING:  # tmux is imported only where a session is touched
    from vermas.sessions import TownSessions

log = logging.getLogger("vermas.patrol")


def failed(town: Town, patrol: str, exc: BaseException, now: float) -> list[PatrolEvent]:
    """Log a round's failure with its traceback and record it; never raises."""
    text = "".join(traceback.format_exception(exc))
    log.error("%s round failed:\n%s", patrol, text)
    try:
        return [patrol_log.record(town, patrol, "round_failed", f"{type(exc).__name__}: {str(exc)[:300]}", now,
                                  evidence={"traceback": text[-4000:]}, ok=False)]
    except Exception:  # noqa: BLE001 - the store failed too; the log line above stands
        return []


def rig_round(town: Town, sessions: TownSessions, rig: str, now: float,
              view: TmuxView | None = None) -> list[PatrolEvent]:
    try:
        seen, history = observe_rig(town, sessions, rig, view)
        actions = decide_rig(seen, history, town.config.patrol, now)
        return act_rig(town, sessions, seen, actions, now)
    except Exception as exc:  # noqa: BLE001 - a patrol round never raises
        return failed(town, f"witness:{rig}", exc, now)


def round(town: Town, sessions: TownSessions, now: float | None = None) -> list[PatrolEvent]:  # noqa: A001
    """One witness round for every rig of the town; the recorded actions."""
    now = time.time() if now is None else now
    out: list[PatrolEvent] = []
    try:
        view = TmuxView.take(sessions)
    except Exception as exc:  # noqa: BLE001
        return failed(town, "witness", exc, now)
    for rig in sorted(town.config.rigs):
        out += rig_round(town, sessions, rig, now, view)
    return out
