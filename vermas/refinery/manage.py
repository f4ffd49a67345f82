"""The merge queue by hand: what the refinery's Claude session, the mayor and the overseer
do when judgment says so (retry a request, reject one, resume a paused queue).

Each call checks the permission rule first (vermas/permissions.py: the rig's refinery or a
coordinator), then changes the ledger in one transaction with the actor as evidence; the
MCP tools mq_* and their shell twins `vermas-runner mq ...` are thin calls of these.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from vermas.addresses import Address
from vermas.errors import InvalidInput, NotFound
from vermas.permissions import Action, Target, require
from vermas.refinery import ledger
from vermas.refinery.types import FINAL_STATES, MRState
from vermas.town import Town


class QueueView(BaseModel):
    """A rig's queue (or every rig's): its requests and each queue's lease and pause."""

    requests: list[ledger.MergeRequestRow]
    queues: list[ledger.RigQueue] = Field(default_factory=list)


def _known_rig(town: Town, rig: str) -> str:
    if rig not in town.config.rigs:
        known = ", ".join(sorted(town.config.rigs)) or "none yet"
        raise NotFound(f"unknown rig {rig[:40]!r}; rigs: {known} (`vermas-runner rig add` adds one)")
    return rig


def states_from(state: str | None) -> list[MRState] | None:
    """`state` as the filter list_requests takes; `open` means every non-final state."""
    if state is None:
        return None
    if state == "open":
        return [s for s in MRState if s not in FINAL_STATES]
    try:
        return [MRState(state)]
    except ValueError:
        allowed = ", ".join(["open", *(s.value for s in MRState)])
        raise InvalidInput(f"invalid state {state[:40]!r}; allowed: {allowed}") from None


def view(town: Town, rig: str | None = None, state: str | None = None, limit: int = 50) -> QueueView:
    """Requests in queue order of record (oldest first), newest `limit` kept."""
    if rig is not None:
        _known_rig(town, rig)
    rows = ledger.list_requests(town, rig=rig, states=states_from(state))
    rigs = [rig] if rig is not None else sorted(town.config.rigs)
    return QueueView(requests=rows[-limit:], queues=[ledger.queue_state(town, r) for r in rigs])


def _rig_of(town: Town, mr_id: str) -> str:
    return ledger.get(town, mr_id).rig


def retry(town: Town, actor: Address, mr_id: str) -> ledger.MergeRequestRow:
    require(actor, Action.MQ_MANAGE, Target(rig=_rig_of(town, mr_id)))
    return ledger.retry(town, mr_id, str(actor))


def reject(town: Town, actor: Address, mr_id: str, reason: str) -> ledger.MergeRequestRow:
    require(actor, Action.MQ_MANAGE, Target(rig=_rig_of(town, mr_id)))
    return ledger.reject(town, mr_id, str(actor), reason)


def resume(town: Town, actor: Address, rig: str) -> ledger.RigQueue:
    require(actor, Action.MQ_MANAGE, Target(rig=_known_rig(town, rig)))
    return ledger.request_resume(town, rig)
