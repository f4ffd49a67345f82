"""The deacon's hands: restart the mayor, a witness or a refinery session (the same start
path `up` uses), record backoff resets and stale heartbeats, escalate and re-escalate, and
send CONVOY_LANDED mail under its idempotency key. Each action is a patrol event."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from vermas import mail, patrol_log, protocol
from vermas.addresses import parse_address
from vermas.addresses import Address
from vermas.deacon.decide import DeaconAction, NudgeAgent, Reescalate, ResetBackoff, RestartAgent, StaleHeartbeat
from vermas.patrol_log import PatrolEvent
from vermas.patrol_types import Escalate, ResolveEscalation, SendMail
from vermas.sessions import launch, nudge
from vermas.town import Town
from vermas.witness.act import action_name

if TYPE_CHECKING:  # tmux is imported only where a session is touched
    from vermas.sessions import TownSessions

log = logging.getLogger("vermas.patrol")
PATROL = "deacon"
SENDER = "deacon"


def _background(name: str, work: Any, *args: Any) -> None:
    """Typing into a session waits for its prompt (seconds): never inside the round."""

    def run() -> None:
        try:
            work(*args)
        except Exception as exc:  # noqa: BLE001 - a thread's failure is logged, never raised
            log.warning("deacon: %s failed: %s", name, exc)

    threading.Thread(target=run, daemon=True, name=name).start()


def _restart(town: Town, sessions: TownSessions, a: RestartAgent) -> dict[str, Any]:
    address = parse_address(a.agent)
    killed = sessions.kill(address)  # a dead pane (remain-on-exit) or a hung start
    started = launch.start_agent(town, sessions, address)
    if started:  # as `up` does: once its prompt is ready, the GUPP nudge (it checks its hook and mail)
        _background(f"kick-{address.session_name}", launch.kick, town, sessions, address)
    return {"killed_old": killed, "started": started, "attempt": a.attempt}


def _nudge(town: Town, sessions: TownSessions, address: Address) -> None:
    nudge.nudge(town, sessions, address, launch.GUPP_NUDGE, sender=SENDER)


def _one(town: Town, sessions: TownSessions, a: DeaconAction, now: float) -> PatrolEvent | None:
    if isinstance(a, Escalate):
        return patrol_log.raise_escalation(town, PATROL, SENDER, a.key, a.to, a.message, a.reason, now, a.agent)
    if isinstance(a, ResolveEscalation):
        return patrol_log.resolve(town, PATROL, a.key, a.reason, now)
    if isinstance(a, Reescalate):
        return patrol_log.reescalate(town, PATROL, SENDER, a.key, a.to, a.message, a.reason, now)
    agent: str | None = None
    key: str | None = None
    evidence: dict[str, Any] = {}
    if isinstance(a, RestartAgent):
        agent, evidence = a.agent, _restart(town, sessions, a)
    elif isinstance(a, NudgeAgent):
        address = parse_address(a.agent)
        agent = a.agent
        _background(f"renudge-{address.session_name}", _nudge, town, sessions, address)
    elif isinstance(a, ResetBackoff):
        agent = a.agent
    elif isinstance(a, StaleHeartbeat):
        log.warning("deacon: %s", a.reason)
        evidence = {"loop": a.loop, "age": a.age}
    elif isinstance(a, SendMail):
        subject, body = protocol.format(a.message)
        sent = mail.send(town, parse_address(SENDER), a.to, subject, body, idempotency_key=a.idempotency_key)
        key, evidence = a.idempotency_key, {"to": a.to, "message": sent.id, "subject": subject}
    return patrol_log.record(town, PATROL, action_name(a), a.reason, now, agent=agent, key=key, evidence=evidence)


def act_town(town: Town, sessions: TownSessions, actions: list[DeaconAction], now: float) -> list[PatrolEvent]:
    """Carry out every action; a failed one is recorded (ok=False) and the rest go on."""
    out: list[PatrolEvent] = []
    for a in actions:
        try:
            event = _one(town, sessions, a, now)
        except Exception as exc:  # noqa: BLE001 - one failed effect must not stop the others
            log.warning("deacon: %s failed: %s", action_name(a), exc)
            try:
                event = patrol_log.record(town, PATROL, action_name(a), f"{a.reason} [failed: {str(exc)[:200]}]",
                                          now, agent=getattr(a, "agent", None), key=getattr(a, "key", None),
                                          evidence={"error": str(exc)[:1000]}, ok=False)
            except Exception:  # noqa: BLE001 - the store itself failed; the log line above stands
                continue
        if event is not None:
            out.append(event)
    return out
