"""The refinery's vocabulary: merge request states and their allowed transitions (as data),
the queue's view of a request, the queue lease, run outcomes with their evidence, and the
`[rigs.<name>.merge]` config. Every default the refinery uses is defined here, once.

Pure: no store, no git. The effect layer reads rows into these models and writes back only
transitions that `check_transition` allows.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, Field

from vermas.errors import Conflict

# ---------------------------------------------------------------------------------------------
# Defaults, all in one place. The first block is user-facing (`[rigs.<name>.merge]`, see
# MergeConfig); the second block is internal tuning the config does not expose.
# ---------------------------------------------------------------------------------------------
DEFAULT_BATCH_SIZE = 4  # requests stacked and tested together at the tip
DEFAULT_RETRY_FLAKY = False  # re-run a red tip once before bisecting
DEFAULT_TEST_TIMEOUT_S = 1800  # one run of the rig's test command, then it counts as failed
DEFAULT_MAX_ATTEMPTS = 3  # conflicts/reworks of one bead before ESCALATION to the mayor
DEFAULT_PUSH: Literal["auto", "never"] = "auto"  # push to the rig's upstream when it has one
DEFAULT_STRATEGY: Literal["squash", "rebase"] = "squash"  # one commit per bead on the target

AGE_STEP_S = 1800.0  # seconds of waiting that lift a request by one priority level (anti-starvation)
LEASE_TTL_S = 60.0  # a queue lease lasts this long unless renewed; a dead runner's lease then expires
RETRY_BACKOFF_S = 60.0  # first wait after "could not run"; doubles each time
RETRY_BACKOFF_CAP_S = 3600.0  # the longest wait between such retries
CANNOT_RUN_TRIES = 3  # "could not run" this many times -> ESCALATION (the request stays failed)
OUTPUT_TAIL_CHARS = 2000  # evidence kept from a run's output (its end, where the failure is)
PRIORITY_MIN, PRIORITY_MAX = 0, 4  # bd priorities: 0 is the most urgent


class MRState(StrEnum):
    """A merge request's state; the merge request table is the queue of record."""

    QUEUED = "queued"  # waiting for the rig's worker
    CLAIMED = "claimed"  # the lease holder took it; rebasing onto the target
    TESTING = "testing"  # tests and verification running on the rebased stack
    MERGED = "merged"  # the target points at (a descendant of) its merged sha
    REWORK = "rework"  # tests or verification failed because of it; back to a polecat
    CONFLICT = "conflict"  # did not rebase onto the target; back to a polecat
    REJECTED = "rejected"  # will never merge: source gone, superseded, or rejected by hand
    FAILED = "failed"  # could not be checked (tool missing, model down); retried with backoff


S = MRState
# Allowed transitions. Why each edge exists:
#   queued -> claimed: the worker takes it under its lease; -> rejected: superseded or mq_reject.
#   claimed -> testing: rebased cleanly; -> conflict: did not; -> rejected: branch/commit gone;
#     -> queued: lease lost / target moved / queue paused; -> merged: crash recovery found it
#     already on the target; -> failed: could not even start.
#   testing -> merged | rework | failed: the run's verdict; -> queued: requeued behind a culprit,
#     target moved, or the target itself was red; -> claimed: restart from fetch under the lease.
#   rework/conflict -> rejected: superseded by the polecat's next commit; -> queued: mq_retry.
#   failed -> queued: the backoff elapsed (or mq_retry); -> rejected: mq_reject.
#   merged and rejected are final.
TRANSITIONS: Mapping[MRState, frozenset[MRState]] = {
    S.QUEUED: frozenset({S.CLAIMED, S.REJECTED}),
    S.CLAIMED: frozenset({S.TESTING, S.CONFLICT, S.REJECTED, S.QUEUED, S.MERGED, S.FAILED}),
    S.TESTING: frozenset({S.MERGED, S.REWORK, S.FAILED, S.QUEUED, S.CLAIMED, S.REJECTED}),
    S.REWORK: frozenset({S.REJECTED, S.QUEUED}),
    S.CONFLICT: frozenset({S.REJECTED, S.QUEUED}),
    S.FAILED: frozenset({S.QUEUED, S.REJECTED}),
    S.MERGED: frozenset(),
    S.REJECTED: frozenset(),
}
FINAL_STATES = frozenset(s for s, nxt in TRANSITIONS.items() if not nxt)
IN_FLIGHT_STATES = frozenset({S.CLAIMED, S.TESTING})  # someone holding the lease is working on it


def can_transition(old: MRState, new: MRState) -> bool:
    return new in TRANSITIONS[old]


def check_transition(old: MRState, new: MRState) -> None:
    """Raise Conflict naming the allowed next states when `old -> new` is not an edge."""
    if not can_transition(old, new):
        allowed = ", ".join(sorted(TRANSITIONS[old])) or "none (it is final)"
        raise Conflict(f"merge request cannot go from {old} to {new}; from {old} it may go to: {allowed}")


class QueuedRequest(BaseModel, frozen=True):
    """A merge request as the queue sees it (one row of the merge request table)."""

    id: str = Field(min_length=1)
    rig: str = Field(min_length=1)
    bead: str = Field(min_length=1)
    branch: str = Field(min_length=1)
    commit: str = Field(min_length=1, description="the polecat's commit sha the request is for")
    polecat: str = ""  # the polecat's address (gt/polecats/nux); empty when unknown
    priority: int = Field(2, ge=PRIORITY_MIN, le=PRIORITY_MAX)
    queued_at: float = Field(ge=0, description="epoch seconds when it was queued")
    attempts: int = Field(0, ge=0, description="times this bead's work was already sent back (conflict/rework)")
    failures: int = Field(0, ge=0, description="times its checks could not run (drives backoff)")
    not_before: float | None = Field(None, description="epoch seconds before which it is not retried")
    state: MRState = MRState.QUEUED


class Lease(BaseModel, frozen=True):
    """Who processes a rig's queue until when. Taken and renewed by compare-and-set."""

    owner: str = Field(min_length=1)
    expires_at: float


class HoldKind(StrEnum):
    """Why a rig's queue is held: the TOWN stops merging, not a request and not a red target.

    A hold is not the requests' fault, so it counts no attempt or failure against them; it is
    placed once (one escalation), and released by itself when a probe of its cause sees a
    different fingerprint (the cause changed), or by `mq resume`."""

    VERIFY_UNAVAILABLE = "verify_unavailable"  # the inspector's model command or config cannot run
    PUSH_REFUSED = "push_refused"  # the upstream refused the push (the reason git gave is kept)
    UPSTREAM_DIRTY = "upstream_dirty"  # the user's checked-out upstream has uncommitted changes


class QueueHold(BaseModel, frozen=True):
    """A standing hold on a rig's queue: its kind, the reason people see, the fingerprint of the
    cause when it was placed (`key`; the hold lasts while a probe keeps seeing it), and since when."""

    kind: HoldKind
    reason: str = Field(min_length=1)
    key: str
    since: float


class RunKind(StrEnum):
    TEST = "test"
    VERIFY = "verify"


class RunStatus(StrEnum):
    PASSED = "passed"
    FAILED = "failed"  # ran and said no (non-zero exit, or a verification criterion failed)
    TIMED_OUT = "timed_out"  # killed at the timeout: counts as failed, evidence says so
    COULD_NOT_RUN = "could_not_run"  # command missing, model unavailable: says nothing about the code


class RunOutcome(BaseModel, frozen=True):
    """One test or verification run and its evidence, as recorded in the request's events."""

    kind: RunKind
    status: RunStatus
    command: str = Field(description="the command run, or the verification level/criterion")
    exit_status: int | None = None  # None when killed or never started
    duration_s: float = Field(0.0, ge=0)
    output_tail: str = Field("", max_length=OUTPUT_TAIL_CHARS)
    target_sha: str = Field(min_length=1, description="the target tip the candidate was rebased onto")
    candidate_sha: str = Field(min_length=1, description="the tree tested (rebased tip, or the target alone)")
    criterion: str | None = None  # the failing verification criterion, when there is one

    @property
    def passed(self) -> bool:
        return self.status is RunStatus.PASSED

    @property
    def red(self) -> bool:
        """It ran and the code is at fault (failed or timed out)."""
        return self.status in (RunStatus.FAILED, RunStatus.TIMED_OUT)


def tail(output: str, limit: int = OUTPUT_TAIL_CHARS) -> str:
    """The end of a run's output, where failures are reported; marks the cut."""
    if len(output) <= limit:
        return output
    marker = "...\n"
    return marker + output[-(limit - len(marker)):]


class MergeConfig(BaseModel):
    """`[rigs.<name>.merge]` in town.toml. Every field's default and why:

    - target_branch: "" = the rig's `default_branch` (where polecats' work lands).
    - batch_size = 4: requests stacked and tested at once; green lands all in one update-ref.
      1 means a serial queue. Bounded 1..64.
    - retry_flaky = false: a red tip is bisected at once; true re-runs it once first (costs one run).
    - test_timeout = 1800 s: a run longer than this is killed and counts as failed. 1..86400.
    - max_attempts = 3: conflicts/reworks of one bead before ESCALATION to the mayor (branch kept). 1..20.
    - push = "auto": push the target to the rig's upstream when it has one (never forced);
      "never" keeps merges in the canonical clone.
    - strategy = "squash": each bead lands as ONE commit on the target (its message names the bead
      and the polecat), so a red commit followed by its fix never reaches the target's history and
      every commit of the target is one that was tested; the polecat's own commits stay on its
      branch until the squash is proven on the target. "rebase" replays each commit as it is.
    Internal tuning (AGE_STEP_S, LEASE_TTL_S, RETRY_BACKOFF_S, ...) is in the module's defaults block.
    """

    model_config = {"extra": "forbid"}

    target_branch: str = Field("", pattern=r"^$|^[A-Za-z0-9._/-]{1,200}$",
                               description="branch the queue lands on; empty = the rig's default_branch")
    batch_size: int = Field(DEFAULT_BATCH_SIZE, ge=1, le=64, description="requests tested together")
    retry_flaky: bool = Field(DEFAULT_RETRY_FLAKY, description="re-run a red tip once before bisecting")
    test_timeout: int = Field(DEFAULT_TEST_TIMEOUT_S, ge=1, le=86400, description="seconds per test run")
    max_attempts: int = Field(DEFAULT_MAX_ATTEMPTS, ge=1, le=20, description="send-backs before ESCALATION")
    push: Literal["auto", "never"] = Field(DEFAULT_PUSH, description="push to the upstream when there is one")
    strategy: Literal["squash", "rebase"] = Field(DEFAULT_STRATEGY,
                                                  description="squash: one commit per bead; rebase: each commit")

    def target(self, default_branch: str) -> str:
        """The branch merges land on."""
        return self.target_branch or default_branch
