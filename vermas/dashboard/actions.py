"""What a person does from the dashboard: nudge an agent, sling a ready bead to a rig, retry or
reject a merge request, ack an escalation. Each goes through the tool's own core function
(tools.TOOLS) as the overseer, so the permission rules and validation are the tools' exactly.

The per-town secret (.runtime/dashboard.secret, 0600) is what the web layer demands on every
POST; it lives here so the CLI and the tests read it the same way.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
from typing import Any

from pydantic import BaseModel

from vermas import mail
from vermas.addresses import Address, Role
from vermas.errors import InvalidInput, NotFound
from vermas.tools import TOOLS, Call
from vermas.town import Town

OVERSEER = Address(role=Role.OVERSEER)
SECRET_FILE = "dashboard.secret"
ACTIONS = ("nudge", "sling", "mq_retry", "mq_reject", "escalation_ack")


class ActionResult(BaseModel):
    action: str
    ok: bool
    detail: str


def secret(town: Town) -> str:
    """The town's dashboard secret, made (owner-only) on first use."""
    path = town.layout.runtime_dir / SECRET_FILE
    path.parent.mkdir(mode=0o700, exist_ok=True)
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        value = secrets.token_urlsafe(24)
        fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(value + "\n")
        return value


def authorized(town: Town, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(str(given).encode(), secret(town).encode())


def _escalation_message(town: Town, actor: Address, key: str) -> str:
    """The escalation's mail addressed to `actor` (the original, or the deacon's re-escalation);
    else the original, so mail.ack refuses it with the permission rule's own reason."""
    with town.db.read() as conn:
        row = conn.execute("SELECT message_id, recipient FROM escalations WHERE key = ? AND resolved_at IS NULL",
                           (key,)).fetchone()
        if row is None or not row[0]:
            raise NotFound(f"no open escalation {key[:80]!r}")
        if row[1] == str(actor):
            return str(row[0])
        for (evidence,) in conn.execute("SELECT evidence FROM patrol_events WHERE action = 'reescalate' AND key = ? "
                                        "ORDER BY seq DESC", (key,)):
            seen = json.loads(evidence or "{}")
            if seen.get("to") == str(actor) and seen.get("message"):
                return str(seen["message"])
    return str(row[0])


def run(town: Town, action: str, params: dict[str, Any], actor: Address = OVERSEER) -> Any:
    """Run one dashboard action as `actor` through the tool's core; its result model."""
    call = Call(town=town, actor=actor, nudge_wait=10.0)
    if action == "escalation_ack":
        return mail.ack(town, actor, _escalation_message(town, actor, str(params.get("key", ""))))
    if action not in ACTIONS:
        raise NotFound(f"unknown action {action[:40]!r}; actions: {', '.join(ACTIONS)}")
    if action == "sling":
        params = {"bead_id": params.get("bead_id"), "target": params.get("target")}
    spec = TOOLS[action]
    allowed = {p.name for p in spec.params}
    unknown = set(params) - allowed
    if unknown:
        raise InvalidInput(f"unknown parameter(s) {sorted(unknown)} for {action}; allowed: {sorted(allowed)}")
    return spec.fn(call, **{k: v for k, v in params.items() if v is not None})
