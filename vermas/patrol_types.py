"""What the witness and deacon patrols decide from: an agent's state (an enum), the evidence
that state is computed from, the standing escalations both patrols respect, and the `[patrol]`
config with every threshold, its default, its bounds and why, in one place.

Pure data: no store, no tmux, no git. The effect layer fills these models from the store's
hook events, `tmux list-panes`, `git status`/`rev-list`, and hands them to the pure decisions
in vermas/witness and vermas/deacon. All times are epoch seconds (floats).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Self

from pydantic import BaseModel, Field, model_validator

from vermas.protocol import Escalation, PolecatState, ProtocolMessage

MAYOR = "mayor"
OVERSEER = "overseer"
LINE_MAX = 300  # a protocol header value is one line of at most this many characters


class AgentState(StrEnum):
    """What an agent is doing, as `status` shows it, each value from direct evidence."""

    STARTING = "starting"  # session made; Claude Code has not reported SessionStart (or its GUPP nudge is pending)
    WORKING = "working"  # a turn or a tool is running (a prompt was submitted, a tool started or finished)
    IDLE = "idle"  # its turn ended (Stop, or the idle notification) and no prompt followed
    WAITING = "waiting"  # a permission prompt or dialog is on screen (Notification: permission)
    EXITED = "exited"  # Claude Code ended on its own: SessionEnd, or the pane's process exited with status 0
    DEAD = "dead"  # the tmux session is gone, or the pane's process died (non-zero status or a signal)
    DONE = "done"  # polecat_done COMPLETED: its merge request is queued; the session is no longer needed


class HookKind(StrEnum):
    """Claude Code hook events recorded in the store (the names Claude Code gives them)."""

    SESSION_START = "SessionStart"
    USER_PROMPT_SUBMIT = "UserPromptSubmit"
    PRE_TOOL_USE = "PreToolUse"
    POST_TOOL_USE = "PostToolUse"
    STOP = "Stop"
    NOTIFICATION = "Notification"
    SESSION_END = "SessionEnd"


class NotificationKind(StrEnum):
    """The two Notification matchers the generated settings install."""

    PERMISSION = "permission"  # a permission prompt or dialog waits for an answer
    IDLE = "idle"  # the prompt has been idle (Claude Code sends it after about 60 s)


class HookEvent(BaseModel, frozen=True):
    """One recorded hook event. `seq` is the store's row order and breaks ties of equal times."""

    kind: HookKind
    at: float = Field(ge=0)
    seq: int = 0
    tool: str | None = None  # PreToolUse/PostToolUse: the tool's name (Bash, mcp__vermas__...)
    notification: NotificationKind | None = None  # Notification only
    session: str | None = None  # Claude Code's session_id, when the hook input carried one

    @model_validator(mode="after")
    def _notification_has_a_kind(self) -> Self:
        if (self.kind is HookKind.NOTIFICATION) != (self.notification is not None):
            raise ValueError("notification (permission|idle) is given for Notification events and only for them")
        return self


class TmuxEvidence(BaseModel, frozen=True):
    """The agent's tmux session as last seen. `started_at` is the session's creation time
    (tmux reports whole seconds, rounded down, so it is never later than the real start):
    events older than it belong to an earlier session and are ignored."""

    session: bool  # the session exists
    pane_alive: bool = True  # its pane's process runs (False: the pane is dead, remain-on-exit)
    exit_status: int | None = None  # a dead pane's exit status; None when killed by a signal or unknown
    started_at: float | None = None
    excerpt: str = ""  # the pane's last lines (evidence for a waiting agent's escalation)


class GitEvidence(BaseModel, frozen=True):
    """The agent's worktree: what a restart or a stop must not lose."""

    head: str | None = None  # HEAD's sha; None for an unborn or unreadable HEAD
    branch: str | None = None
    ahead: int = Field(0, ge=0)  # commits beyond the target branch (unmerged work)
    uncommitted: int = Field(0, ge=0)  # changed or untracked files (saved to a rescue ref before a restart)


class Hooking(BaseModel, frozen=True):
    """A polecat slot's current hooking as the store has it: which bead, on which branch, since
    when. Mail about a polecat is checked against this, never against the name alone, because
    a name is reused: stale mail for an earlier hooking must not touch a newer session."""

    bead: str = Field(min_length=1)
    branch: str | None = None
    since: float = Field(ge=0)


class Evidence(BaseModel, frozen=True):
    """Everything an agent's state is computed from. `events` may be the latest event of each
    kind or a longer tail; the classification looks only at the current session's."""

    agent: str = Field(min_length=1)  # the address (gt/polecats/nux, mayor, gt/witness)
    tmux: TmuxEvidence
    events: tuple[HookEvent, ...] = ()
    last_mcp_call: float | None = None  # the actor's latest vermas MCP tool call: activity within a turn
    git: GitEvidence | None = None  # None when the worktree could not be read (then nothing is ever nuked)
    hooked_bead: str | None = None  # the bead on the agent's hook (status hooked): work still to do
    hooking: Hooking | None = None  # polecats: the slot's bead, branch and since when (any bead status)
    polecat_state: PolecatState | None = None  # polecats only: the slot's stored state
    state_since: float | None = None  # when the slot entered `polecat_state` (spawning/done since ...)


class StandingEscalation(BaseModel, frozen=True):
    """An escalation that was sent and stands under its dedup key until resolved. While it
    stands, no patrol sends another for the same key; the deacon re-escalates it to the
    overseer once when it is not acknowledged within `reescalate_after`."""

    key: str = Field(min_length=1)
    to: str = Field(min_length=1)
    raised_at: float = Field(ge=0)
    acked_at: float | None = None
    reescalated_at: float | None = None
    subject: str = ""  # the original subject, quoted in the re-escalation
    bead: str | None = None
    agent: str | None = None
    reason: str | None = None


# ---------------------------------------------------------------------------------------------
# The [patrol] table: every threshold both patrols use. Defaults here, bounds on the fields.
# ---------------------------------------------------------------------------------------------
DEFAULT_INTERVAL_S = 2.0
DEFAULT_GRACE_S = 120.0
DEFAULT_GUPP_FIRST_S = 60.0
DEFAULT_GUPP_FACTOR = 2.0
DEFAULT_GUPP_MAX_NUDGES = 3
DEFAULT_STUCK_AFTER_S = 1800.0
DEFAULT_MAX_RESTARTS = 3
DEFAULT_DEACON_BACKOFF_S = 30.0
DEFAULT_DEACON_BACKOFF_CAP_S = 600.0
DEFAULT_CRASH_LOOP_RESTARTS = 5
DEFAULT_CRASH_LOOP_WINDOW_S = 900.0
DEFAULT_STABLE_RESET_S = 1800.0
DEFAULT_REESCALATE_AFTER_S = 3600.0
DEFAULT_WISP_MAX_AGE_S = 3600.0
DEFAULT_HEARTBEAT_STALE_S = 30.0
DEFAULT_TOOLLESS_RENUDGE_S = 3.0


class PatrolConfig(BaseModel):
    """`[patrol]` in town.toml. Every threshold is "beyond": a rule fires when more than the
    threshold has passed (at exactly the threshold it waits one more round). Seconds throughout.

    - interval = 2: seconds between patrol rounds. 0.2..60.
    - grace = 120: a session that reports no SessionStart within this is restarted (a hung
      start, a first-run screen nobody answers). Also the wait before re-slinging an orphan
      branch again. 10..3600.
    - gupp_first = 60, gupp_factor = 2, gupp_max_nudges = 3: an idle polecat with hooked work is
      nudged after 1 min idle, again 2 min after that, again 4 min after that; after the last
      nudge and one more such wait (4 min) its session is restarted. Nudges count per session.
      A session whose start nudge was never confirmed (its nudger died) is nudged on the same
      schedule from its SessionStart, and escalated (not restarted) after the last wait.
      gupp_first 10..3600, gupp_factor 1..4, gupp_max_nudges 0..10.
    - stuck_after = 1800: a working agent (a turn or a tool running) is never restarted or
      nudged; with no event at all for this long it is escalated with evidence. 60..86400.
    - max_restarts = 3: witness restarts of one bead's session (per hooking); one more need ->
      the bead goes back to open with a note naming its branch and commits, ESCALATION to
      the mayor. 0..20.
    - deacon_backoff = 30, deacon_backoff_cap = 600: the deacon restarts a dead mayor, witness
      or refinery at once, then waits 30 s, 60 s, ... up to 10 min after its previous restart.
      deacon_backoff 1..600, cap deacon_backoff..86400.
    - crash_loop_restarts = 5, crash_loop_window = 900: that many deacon restarts within that
      window is a crash loop: no more restarts, one ESCALATION to the overseer, until it is
      acknowledged. restarts 2..100, window 60..86400.
    - stable_reset = 1800: a session alive this long after its last restart resets its backoff
      and crash-loop count. 60..86400.
    - reescalate_after = 3600: an ESCALATION not acknowledged within this is sent again, once,
      to the overseer. 60..604800.
    - toolless_renudge = 3: an agent whose session prompted the model and stopped without a
      single tool call (its MCP tools had not connected yet) is re-nudged once this long after
      that Stop, not after the GUPP backoff: polecats with hooked work by the witness, the
      mayor, witnesses and refineries by the deacon. 0..600.
    - heartbeat_stale_after = 30: a patrol loop whose heartbeat is older than this is reported
      (and escalated once to the overseer). At least 2 intervals, at most 3600.
    - wisp_max_age = 3600: a wisp (an ephemeral molecule) closed this long ago (every step
      done, or its root closed) and neither squashed nor burned is deleted whole by the deacon,
      so wisps never pile up. 0..2592000 (30 days).
    """

    model_config = {"extra": "forbid", "frozen": True}

    interval: float = Field(DEFAULT_INTERVAL_S, ge=0.2, le=60, description="seconds between patrol rounds")
    grace: float = Field(DEFAULT_GRACE_S, ge=10, le=3600, description="seconds to SessionStart before a restart")
    gupp_first: float = Field(DEFAULT_GUPP_FIRST_S, ge=10, le=3600, description="idle seconds before the 1st nudge")
    gupp_factor: float = Field(DEFAULT_GUPP_FACTOR, ge=1, le=4, description="wait growth per nudge")
    gupp_max_nudges: int = Field(DEFAULT_GUPP_MAX_NUDGES, ge=0, le=10, description="nudges per session")
    stuck_after: float = Field(DEFAULT_STUCK_AFTER_S, ge=60, le=86400, description="quiet seconds to escalate")
    max_restarts: int = Field(DEFAULT_MAX_RESTARTS, ge=0, le=20, description="witness restarts per bead")
    deacon_backoff: float = Field(DEFAULT_DEACON_BACKOFF_S, ge=1, le=600, description="first deacon restart wait")
    deacon_backoff_cap: float = Field(DEFAULT_DEACON_BACKOFF_CAP_S, ge=1, le=86400, description="longest deacon wait")
    crash_loop_restarts: int = Field(DEFAULT_CRASH_LOOP_RESTARTS, ge=2, le=100, description="restarts that make a loop")
    crash_loop_window: float = Field(DEFAULT_CRASH_LOOP_WINDOW_S, ge=60, le=86400, description="within these seconds")
    stable_reset: float = Field(DEFAULT_STABLE_RESET_S, ge=60, le=86400, description="alive seconds that reset backoff")
    reescalate_after: float = Field(DEFAULT_REESCALATE_AFTER_S, ge=60, le=604800,
                                    description="unacknowledged seconds before the overseer is told")
    toolless_renudge: float = Field(DEFAULT_TOOLLESS_RENUDGE_S, ge=0, le=600,
                                    description="seconds after a tool-less first turn before its one re-nudge")
    heartbeat_stale_after: float = Field(DEFAULT_HEARTBEAT_STALE_S, ge=0.4, le=3600,
                                         description="heartbeat age that reports a patrol loop as hung")
    wisp_max_age: float = Field(DEFAULT_WISP_MAX_AGE_S, ge=0, le=2_592_000,
                                description="seconds a closed wisp is kept before the deacon deletes it")

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.deacon_backoff_cap < self.deacon_backoff:
            raise ValueError(f"deacon_backoff_cap ({self.deacon_backoff_cap:g}) must be at least "
                             f"deacon_backoff ({self.deacon_backoff:g})")
        if self.heartbeat_stale_after < 2 * self.interval:
            raise ValueError(f"heartbeat_stale_after ({self.heartbeat_stale_after:g}) must be at least two "
                             f"intervals ({2 * self.interval:g}), or every slow round looks hung")
        return self

    def gupp_wait(self, sent: int) -> float:
        """Seconds to wait, after the later of idle-since and the previous nudge, before the
        next step when `sent` nudges went out this session: the next nudge, or (once all
        were sent) the restart, which waits as long as the last nudge did."""
        step = min(max(sent, 0), max(self.gupp_max_nudges - 1, 0))
        return float(self.gupp_first * self.gupp_factor ** step)

    def deacon_wait(self, streak: int) -> float:
        """Seconds after the previous restart before the next, after `streak` restarts since
        the last reset: at once for the first, then deacon_backoff doubling, capped."""
        if streak <= 0:
            return 0.0
        return float(min(self.deacon_backoff * 2.0 ** min(streak - 1, 60), self.deacon_backoff_cap))


# ---------------------------------------------------------------------------------------------
# Actions both patrols produce. Each says why (`reason`), which the effect layer records as the
# patrol event, with the evidence.
# ---------------------------------------------------------------------------------------------


def line(text: str) -> str:
    """A protocol header value: one line, clipped to LINE_MAX."""
    flat = " ".join(text.split()) or "-"
    return flat if len(flat) <= LINE_MAX else flat[:LINE_MAX - 3] + "..."


@dataclass(frozen=True)
class Escalate:
    """ESCALATION mail to `to`, recorded as standing under `key`: never sent again while it stands."""

    key: str
    to: str
    message: Escalation
    reason: str
    agent: str | None = None


@dataclass(frozen=True)
class ResolveEscalation:
    """The cause under `key` is gone: the escalation no longer stands (a new occurrence may escalate)."""

    key: str
    reason: str


@dataclass(frozen=True)
class SendMail:
    """Protocol mail; `idempotency_key` makes a retried send (after a crash) deliver it once."""

    to: str
    message: ProtocolMessage
    idempotency_key: str
    reason: str
