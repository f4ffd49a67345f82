"""The queue's pure rules: order, dedup, lease, batch selection.

Order. A request's rank is `priority - waited / AGE_STEP_S` (lower goes first), then its
queued_at (older first), then its id. Waiting one AGE_STEP_S is worth one priority level, so a
request of priority p that has waited p * AGE_STEP_S longer than another goes first whatever
the other's priority: with priorities 0..4, nothing waits more than 4 * AGE_STEP_S behind work
queued after it. Among equal priorities the order is oldest first (never newest-first).

Dedup. (bead, commit) names one request: a re-sent polecat_done for the same commit is the
existing request; a new commit for the bead replaces its older open requests.

Lease. One worker per rig holds the queue's lease. The store applies a write only when the
lease row still equals what the writer observed (compare-and-set); these functions decide what
to write from the observed lease and the clock, and `compare_and_set` is the rule the SQL
`UPDATE ... WHERE owner IS ? AND expires_at IS ?` implements.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from vermas.refinery.types import (
    AGE_STEP_S, FINAL_STATES, IN_FLIGHT_STATES, LEASE_TTL_S, Lease, MRState, QueuedRequest,
)

# ---- order -----------------------------------------------------------------------------------


def rank(req: QueuedRequest, now: float, age_step: float = AGE_STEP_S) -> tuple[float, float, str]:
    """Sort key (lower first): priority lowered by one level per `age_step` waited, then age."""
    waited = max(0.0, now - req.queued_at)
    return (req.priority - waited / age_step, req.queued_at, req.id)


def eligible(req: QueuedRequest, now: float) -> bool:
    """Queued and past any retry backoff."""
    return req.state is MRState.QUEUED and (req.not_before is None or now >= req.not_before)


def order(requests: Iterable[QueuedRequest], now: float, age_step: float = AGE_STEP_S) -> list[QueuedRequest]:
    """The eligible requests in the order the worker takes them."""
    return sorted((r for r in requests if eligible(r, now)), key=lambda r: rank(r, now, age_step))


def max_wait_behind_later(priority: int, age_step: float = AGE_STEP_S) -> float:
    """The bound on starvation: a request of this priority goes before every request queued
    more than this many seconds after it (whatever their priority)."""
    return priority * age_step


def select_batch(requests: Iterable[QueuedRequest], now: float, batch_size: int,
                 age_step: float = AGE_STEP_S) -> list[QueuedRequest]:
    """The next stack to test: the first `batch_size` in order, one per bead (a bead's newer
    request replaces its older ones, so two for one bead would be a bookkeeping lag)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    batch: list[QueuedRequest] = []
    beads: set[str] = set()
    for req in order(requests, now, age_step):
        if req.bead in beads:
            continue
        beads.add(req.bead)
        batch.append(req)
        if len(batch) == batch_size:
            break
    return batch


# ---- dedup -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Duplicate:
    """The same (bead, commit) is already a request: no new row; answer with this one."""

    existing: str
    state: MRState


@dataclass(frozen=True)
class Enqueue:
    """A new request. `replaces` move to rejected ("superseded by <new id>"); `stale_in_flight`
    are being processed now: the worker must not merge them (see `superseded`)."""

    replaces: tuple[str, ...] = ()
    stale_in_flight: tuple[str, ...] = ()


REPLACEABLE_STATES = frozenset({MRState.QUEUED, MRState.REWORK, MRState.CONFLICT, MRState.FAILED})


def admit(existing: Sequence[QueuedRequest], bead: str, commit: str) -> Duplicate | Enqueue:
    """What a polecat_done for (bead, commit) does to the queue, given the bead's requests."""
    mine = [r for r in existing if r.bead == bead]
    same = [r for r in mine if r.commit == commit]
    if same:
        latest = max(same, key=lambda r: (r.queued_at, r.id))
        return Duplicate(existing=latest.id, state=latest.state)
    return Enqueue(
        replaces=tuple(r.id for r in mine if r.state in REPLACEABLE_STATES),
        stale_in_flight=tuple(r.id for r in mine if r.state in IN_FLIGHT_STATES),
    )


SENT_BACK_STATES = frozenset({MRState.REWORK, MRState.CONFLICT})


def resend_refusal(existing: str, state: MRState, commit: str, branch: str, why: str) -> str | None:
    """Why a polecat_done for a commit that already has request `existing` in `state` must be
    refused (None: answering with that request is the truth). The refinery sent it back (rework,
    conflict) or it was rejected: queueing it again would test the same commit to the same end,
    and answering "queued" would leave the bead with nothing queued. One line: why, what to do."""
    why = " ".join(why.split())[:200] or "no reason recorded"
    short = commit[:12]
    if state in SENT_BACK_STATES:
        return (f"commit {short} was already sent back: merge request {existing} is {state} ({why}); fix it on "
                f"{branch}, commit (a new commit), then call polecat_done again, or use ESCALATED if you cannot")
    if state is MRState.REJECTED:
        return (f"commit {short} was already rejected: merge request {existing} ({why}); commit new work on "
                f"{branch} and call polecat_done again, or use ESCALATED")
    return None


def superseded(req: QueuedRequest, existing: Iterable[QueuedRequest]) -> bool:
    """A newer request (another commit) for the same bead exists and is not final: merging
    `req` would land stale work."""
    return any(r.bead == req.bead and r.commit != req.commit and r.queued_at > req.queued_at
               and r.state not in FINAL_STATES for r in existing)


# ---- lease -----------------------------------------------------------------------------------


class LeaseAction(StrEnum):
    TAKE = "take"  # no lease, or it expired: write a new one (CAS against what was observed)
    RENEW = "renew"  # mine and live: extend it (CAS against what was observed)
    WAIT = "wait"  # someone else's live lease: do nothing


def expired(lease: Lease, now: float) -> bool:
    return now >= lease.expires_at


def lease_action(observed: Lease | None, me: str, now: float) -> LeaseAction:
    """What a worker does given the lease it just read. An expired lease of mine is taken
    afresh, not renewed: the worker then resumes from the recorded states, as any successor would."""
    if observed is None or expired(observed, now):
        return LeaseAction.TAKE
    return LeaseAction.RENEW if observed.owner == me else LeaseAction.WAIT


def new_lease(me: str, now: float, ttl: float = LEASE_TTL_S) -> Lease:
    return Lease(owner=me, expires_at=now + ttl)


def holds(lease: Lease | None, me: str, now: float) -> bool:
    """May `me` act on the queue now? Only under its own live lease."""
    return lease is not None and lease.owner == me and not expired(lease, now)


RUNNER_PREFIX = "runner"


@dataclass(frozen=True)
class RunnerId:
    """Who a `runner:<host>:<pid>[:<start>]` lease owner is: a process of `host`, told apart
    from a later process with the same pid by its start time (clock ticks since boot)."""

    host: str
    pid: int
    start: int | None = None


def runner_owner_name(host: str, pid: int, start: int | None) -> str:
    """The lease owner a runner process writes (parse_owner reads it back)."""
    return f"{RUNNER_PREFIX}:{host}:{pid}" + (f":{start}" if start is not None else "")


def parse_owner(owner: str) -> RunnerId | None:
    """The runner process an owner string names, or None for any other owner (a test's or
    an `mq run`'s name: nothing is known about its process, so only expiry frees it)."""
    parts = owner.split(":")
    if len(parts) not in (3, 4) or parts[0] != RUNNER_PREFIX or not parts[1] or not parts[2].isdigit():
        return None
    if len(parts) == 4 and not parts[3].isdigit():
        return None
    return RunnerId(host=parts[1], pid=int(parts[2]), start=int(parts[3]) if len(parts) == 4 else None)


def owner_dead(owner: RunnerId | None, this_host: str, observed_start: int | None) -> bool:
    """Is the process that holds a lease certainly gone? Only a runner of THIS host can be
    checked: `observed_start` is the start time of the process now at its pid (None: no such
    process). A different start time is a reused pid, so the owner is dead. An owner written
    without a start time counts as dead only when its pid is free. Anything unknown (another
    host, another kind of owner) is alive: its lease is left to expire."""
    if owner is None or owner.host != this_host:
        return False
    if observed_start is None:
        return True
    return owner.start is not None and owner.start != observed_start


def compare_and_set(current: Lease | None, observed: Lease | None, new: Lease) -> tuple[Lease | None, bool]:
    """The store's rule: the write applies only when the row still equals what the writer
    observed. Returns (the row after, whether the write applied)."""
    if current == observed:
        return new, True
    return current, False
