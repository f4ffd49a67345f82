"""The witness's vocabulary: what it observes of one rig (agents' evidence, its inbox, merge
requests, orphan branches), what it remembers (nudges and restarts per bead with their times,
standing escalations), and the typed actions it decides. Pure data.

Shared pieces (AgentState, Evidence, PatrolConfig, Escalate, ResolveEscalation, SendMail)
are in vermas/patrol_types.py, which the deacon uses too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from vermas.patrol_types import Escalate, Evidence, ResolveEscalation, SendMail, StandingEscalation
from vermas.protocol import ProtocolMessage

# ---- observed --------------------------------------------------------------------------------


@dataclass(frozen=True)
class InboxMail:
    """One unacknowledged message in the witness's inbox; `message` is its parsed protocol
    form (None for plain mail, which the witness's Claude session reads itself)."""

    id: str
    sender: str
    sent_at: float
    subject: str
    message: ProtocolMessage | None


@dataclass(frozen=True)
class MergeRequestSeen:
    """A merge request row, as POLECAT_DONE mail is checked against it."""

    id: str
    bead: str
    polecat: str
    branch: str | None
    created_at: float
    state: str = "queued"


@dataclass(frozen=True)
class BranchSeen:
    """A polecat branch in the rig's canonical clone, whose slot may be gone."""

    branch: str
    bead: str | None  # the bead the branch name carries (polecat/<name>/<bead>)
    ahead: int  # commits beyond the target
    merge_request: bool  # an open (not final) merge request exists for it
    polecat_present: bool  # a slot still holds this branch
    bead_status: str | None = None  # None when the bead is unknown to the store
    bead_assignee: str | None = None


@dataclass(frozen=True)
class BeadSeen:
    """A bead that REWORK_REQUEST mail in the inbox is about: where it is now."""

    status: str
    assignee: str | None = None


@dataclass(frozen=True)
class RigSeen:
    rig: str
    polecats: tuple[Evidence, ...] = ()
    inbox: tuple[InboxMail, ...] = ()
    merge_requests: Mapping[str, MergeRequestSeen] = field(default_factory=dict)
    branches: tuple[BranchSeen, ...] = ()
    rework_beads: Mapping[str, BeadSeen] = field(default_factory=dict)  # beads of inbox REWORK_REQUESTs


@dataclass(frozen=True)
class RigHistory:
    """What earlier rounds did, from the store's patrol events. Nudges count per bead within
    the current session (those before its start are ignored); restarts per bead within the
    current hooking. `standing` holds every escalation not yet resolved, acknowledged or not."""

    nudges: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    restarts: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    standing: Mapping[str, StandingEscalation] = field(default_factory=dict)
    reslung: Mapping[str, float] = field(default_factory=dict)  # branch -> when it was re-slung (tried, ok or not)
    judgment_keys: frozenset[str] = frozenset()  # HookJudgment keys already made into beads


# ---- actions ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SaveRescue:
    """Save the worktree's uncommitted changes (`files` of them; None = not known, save what is
    there) to `ref` without touching the worktree or the branch, and name it in the bead's notes.
    Always right before anything that ends the agent's session."""

    agent: str
    bead: str | None
    ref: str
    files: int | None
    note: str
    reason: str


@dataclass(frozen=True)
class RestartSession:
    """Kill the Claude session and start a new one in the same worktree (the hook resumes the
    work). `attempt` is this bead's restart number in the current hooking."""

    agent: str
    bead: str
    attempt: int
    reason: str


@dataclass(frozen=True)
class GuppNudge:
    """The GUPP nudge ("your hook has work: run it"), the `attempt`-th this session.
    `start`: the session's start nudge was never confirmed; a nudge someone else is delivering
    right now (its GUPP lock held: a runner's kick) counts as this attempt, so the attempts stay
    bounded and end in an escalation even when that delivery keeps failing."""

    agent: str
    bead: str
    attempt: int
    reason: str
    start: bool = False


@dataclass(frozen=True)
class StopSession:
    """End the Claude session only; the worktree and branch stay."""

    agent: str
    reason: str


@dataclass(frozen=True)
class ReopenBead:
    """The bead goes back to `open` (the slot is released; branch, worktree and rescue refs are
    kept) with `note` naming the branch and its commits, so the next polecat continues there."""

    agent: str
    bead: str
    branch: str | None
    head: str | None
    commits: int
    note: str
    reason: str


@dataclass(frozen=True)
class AckMail:
    id: str
    reason: str


@dataclass(frozen=True)
class Resling:
    """Sling the bead to a new polecat on the existing `branch` (its commits are the start)."""

    bead: str
    branch: str
    reason: str

    @property
    def key(self) -> str:
        """The patrol event's key: a branch is re-slung once (RigHistory.reslung)."""
        return f"resling:{self.branch}"


@dataclass(frozen=True)
class HookJudgment:
    """A bead hooked to the witness's own Claude session with the evidence: judgment is its job,
    never the patrol's. `key` dedups it (one bead per cause)."""

    key: str
    to: str
    title: str
    description: str
    reason: str


@dataclass(frozen=True)
class NukePolecat:
    """Free a slot that holds nothing: no hooked work, nothing ahead of the target, no
    uncommitted file (all three known). Never chosen for a worktree with unmerged commits."""

    agent: str
    reason: str


@dataclass(frozen=True)
class ReworkRespawn:
    """Work the refinery sent back while its polecat's session was dead or gone: save whatever
    is uncommitted in the branch's old worktree (to a rescue ref), free that worktree and slot,
    and hook the bead to a NEW polecat on the SAME `branch` (its commits kept), with the
    REWORK_REQUEST (`message`, as the refinery wrote it) in its inbox before its session starts.
    The mail `mail_id` is acknowledged only once all of that is done."""

    bead: str
    branch: str
    mail_id: str
    message: ProtocolMessage
    rescue_ref: str
    reason: str


WitnessAction = (ReworkRespawn | SaveRescue | RestartSession | GuppNudge | StopSession | ReopenBead | AckMail | Resling
                 | HookJudgment | NukePolecat | Escalate | ResolveEscalation | SendMail)
