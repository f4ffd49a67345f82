"""The witness's eyes: one rig's observed state and history, from the store, tmux and git.

Cheap by construction, so a round with 50 polecats stays within milliseconds of its work:
one `list-panes` and one `list-sessions` call for every session of the town, one index lookup
of recent agent events per agent, two git commands per worktree (`status`, `rev-list`), and
a pane capture only for an agent whose last event says a permission prompt is on screen.
Whatever cannot be read is left unknown (git None), and the decisions never end a session
whose worktree they cannot see.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vermas import git, patrol_log, timeutil
from vermas.addresses import Address, Role
from vermas.events import EventKind
from vermas.patrol_types import (
    Evidence, GitEvidence, HookEvent, HookKind, Hooking, NotificationKind, TmuxEvidence,
)
from vermas.protocol import PolecatState, ReworkRequest, parse
from vermas.sessions.tmux import PaneState
from vermas.town import Town
from vermas.witness.types import BeadSeen, BranchSeen, InboxMail, MergeRequestSeen, RigHistory, RigSeen

if TYPE_CHECKING:  # tmux is imported only where a session is touched
    from vermas.sessions import TownSessions

EVENT_TAIL = 40  # recent events per agent: enough to find the current state and its start
INBOX_LIMIT = 200

_KINDS: Mapping[str, HookKind] = {
    EventKind.SESSION_START: HookKind.SESSION_START,
    EventKind.USER_PROMPT_SUBMIT: HookKind.USER_PROMPT_SUBMIT,
    EventKind.PRE_TOOL_USE: HookKind.PRE_TOOL_USE,
    EventKind.POST_TOOL_USE: HookKind.POST_TOOL_USE,
    EventKind.POST_TOOL_USE_FAILURE: HookKind.POST_TOOL_USE,  # a failed tool has ended too
    EventKind.STOP: HookKind.STOP,
    EventKind.STOP_FAILURE: HookKind.STOP,  # a turn ended by an API error is an ended turn
    EventKind.NOTIFICATION: HookKind.NOTIFICATION,
    EventKind.SESSION_END: HookKind.SESSION_END,
}
_NOTIFICATIONS = {"permission_prompt": NotificationKind.PERMISSION, "elicitation_dialog": NotificationKind.PERMISSION,
                  "idle_prompt": NotificationKind.IDLE, "permission": NotificationKind.PERMISSION,
                  "idle": NotificationKind.IDLE}


@dataclass(frozen=True)
class TmuxView:
    """One look at the town's tmux server: every session's pane and creation time."""

    panes: Mapping[str, PaneState]
    created: Mapping[str, float]

    @classmethod
    def take(cls, sessions: TownSessions) -> TmuxView:
        return cls(sessions.panes(), sessions.created())


def hook_events(conn: sqlite3.Connection, agent: str, limit: int = EVENT_TAIL) -> tuple[tuple[HookEvent, ...],
                                                                                    float | None]:
    """The agent's recent hook events as the classifier's typed ones, and its latest vermas MCP
    tool call (activity). Kinds the classifier does not know, and notifications of another
    type, are left out."""
    rows = conn.execute("SELECT id, kind, at, tool, detail, session FROM agent_events WHERE agent = ? "
                        "ORDER BY at DESC, id DESC LIMIT ?", (agent, limit)).fetchall()
    out: list[HookEvent] = []
    mcp: float | None = None
    for seq, kind, at, tool, detail, session in reversed(rows):
        if kind == EventKind.TOOL:
            mcp = at if mcp is None else max(mcp, at)
            continue
        hook = _KINDS.get(kind)
        if hook is None:
            continue
        note = None
        if hook is HookKind.NOTIFICATION:
            note = _NOTIFICATIONS.get((detail or "").strip())
            if note is None:
                continue
        out.append(HookEvent(kind=hook, at=max(float(at), 0.0), seq=int(seq), tool=tool, notification=note,
                             session=session))
    return tuple(out), mcp


def process_alive(pid: int | None) -> bool | None:
    """The pane's process exists and is not a zombie (/proc/PID/stat); None when not known
    (no pid, or no /proc: then the pane's own liveness speaks for it)."""
    if pid is None or pid <= 0:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False if Path("/proc/self/stat").exists() else None
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    return not (fields and fields[0] in ("Z", "X"))


def tmux_evidence(view: TmuxView, sessions: TownSessions, address: Address,
                  events: tuple[HookEvent, ...]) -> TmuxEvidence:
    """The session's pane as tmux and the kernel show it; its last output only where a decision
    needs it as evidence: a permission prompt (what it asks). (An ignored SessionEnd's pane is
    captured by the act that logs it, once per event, not every round.)"""
    name = address.session_name
    pane = view.panes.get(name)
    if pane is None:
        return TmuxEvidence(session=False)
    exit_status = pane.exit_status if pane.dead and pane.signal is None else None
    running = process_alive(pane.pid) if not pane.dead else False
    excerpt = ""
    if not pane.dead and events and events[-1].notification is NotificationKind.PERMISSION:
        excerpt = sessions.capture(address)
    return TmuxEvidence(session=True, pane_alive=not pane.dead, exit_status=exit_status, process_alive=running,
                        started_at=view.created.get(name), excerpt=excerpt)


def git_evidence(worktree: Path, target: str) -> GitEvidence | None:
    """HEAD, branch, commits beyond `target`, and changed or untracked files; None when the
    worktree cannot be read (then nothing that ends its session is ever decided blindly)."""
    if not git.is_worktree(worktree):
        return None
    try:
        head = git.resolve(worktree, "HEAD")
        branch = git.current_branch(worktree)
        ahead = git.count(worktree, target, "HEAD") if head and git.has_ref(worktree, target) else 0
        status = git.run(worktree, "status", "--porcelain", "--untracked-files=all")
    except (git.GitError, OSError, ValueError):
        return None
    return GitEvidence(head=head, branch=branch, ahead=ahead,
                       uncommitted=sum(1 for line in status.splitlines() if line.strip()))


def agent_evidence(conn: sqlite3.Connection, view: TmuxView, sessions: TownSessions, address: Address,
                   **extra: object) -> Evidence:
    """An agent's evidence from tmux and its hook events (the deacon's whole view of a session;
    the witness adds git and the slot's facts through `extra`)."""
    events, mcp = hook_events(conn, str(address))
    return Evidence(agent=str(address), tmux=tmux_evidence(view, sessions, address, events), events=events,
                    last_mcp_call=mcp, **extra)


def _ts(stamp: str | None) -> float:
    try:
        return timeutil.parse(stamp) if stamp else 0.0
    except (ValueError, TypeError):
        return 0.0


def worktree_of(town: Town, row: sqlite3.Row) -> Path:
    return Path(row["worktree"]) if row["worktree"] else town.layout.polecat_worktree(row["rig"], row["name"])


def polecat_evidence(town: Town, conn: sqlite3.Connection, view: TmuxView, sessions: TownSessions,
                     row: sqlite3.Row, git_seen: GitEvidence | None) -> Evidence:
    rig, name = row["rig"], row["name"]
    address = Address(role=Role.POLECAT, rig=rig, name=name)
    hooked = conn.execute("SELECT id FROM issues WHERE assignee = ? AND status = 'hooked' ORDER BY updated_ts "
                          "LIMIT 1", (str(address),)).fetchone()
    since = _ts(row["created_at"])
    hooking = Hooking(bead=row["bead_id"], branch=row["branch"], since=since) if row["bead_id"] else None
    try:
        state: PolecatState | None = PolecatState(row["state"])
    except ValueError:
        state = None
    return agent_evidence(conn, view, sessions, address, git=git_seen, hooked_bead=hooked[0] if hooked else None,
                          hooking=hooking, polecat_state=state, state_since=since)


def inbox(conn: sqlite3.Connection, rig: str) -> tuple[InboxMail, ...]:
    rows = conn.execute("SELECT id, sender, subject, body, created_ts FROM messages WHERE recipient = ? "
                        "AND acked_at IS NULL ORDER BY created_ts, id LIMIT ?",
                        (f"{rig}/witness", INBOX_LIMIT)).fetchall()
    return tuple(InboxMail(id=r["id"], sender=r["sender"], sent_at=float(r["created_ts"]), subject=r["subject"],
                           message=parse(r["subject"], r["body"])) for r in rows)


def merge_requests(conn: sqlite3.Connection, rig: str) -> dict[str, MergeRequestSeen]:
    rows = conn.execute("SELECT id, bead_id, polecat, branch, created_at, queued_ts, state FROM merge_requests "
                        "WHERE rig = ?", (rig,)).fetchall()
    return {r["id"]: MergeRequestSeen(id=r["id"], bead=r["bead_id"], polecat=r["polecat"], branch=r["branch"],
                                      created_at=float(r["queued_ts"]) if r["queued_ts"] else _ts(r["created_at"]),
                                      state=r["state"]) for r in rows}


def reslung(conn: sqlite3.Connection, rig: str) -> dict[str, float]:
    """branch -> when the witness of `rig` last re-slung it, done or failed (a failed spawn
    counts too: the branch is then escalated after `grace`, not retried every round)."""
    rows = conn.execute("SELECT key, MAX(at) FROM patrol_events WHERE patrol = ? AND action = 'resling' "
                        "AND key LIKE 'resling:%' GROUP BY key", (f"witness:{rig}",)).fetchall()
    return {str(k).removeprefix("resling:"): float(at) for k, at in rows}


def rework_beads(conn: sqlite3.Connection, mails: tuple[InboxMail, ...]) -> dict[str, BeadSeen]:
    """Status and assignee of each bead a REWORK_REQUEST in the inbox is about."""
    wanted = {m.message.bead for m in mails if isinstance(m.message, ReworkRequest)}
    out = {}
    for bead in sorted(wanted):
        row = conn.execute("SELECT status, assignee FROM issues WHERE id = ?", (bead,)).fetchone()
        if row is not None:
            out[bead] = BeadSeen(status=row["status"], assignee=row["assignee"])
    return out


def history(conn: sqlite3.Connection, beads: list[str], rig: str) -> RigHistory:
    return RigHistory(nudges=patrol_log.times(conn, "gupp_nudge", "bead", beads),
                      restarts=patrol_log.times(conn, "restart_session", "bead", beads),
                      standing=patrol_log.standing(conn), reslung=reslung(conn, rig),
                      judgment_keys=patrol_log.keys(conn, "hook_judgment"),
                      ignored_keys=ignored_keys(conn, rig))


def ignored_keys(conn: sqlite3.Connection, rig: str) -> frozenset[str]:
    """The IgnoreEvent keys the witness of `rig` has logged (each contradicted event once)."""
    return frozenset(r[0] for r in conn.execute(
        "SELECT DISTINCT key FROM patrol_events WHERE patrol = ? AND action = 'ignore_event' AND key IS NOT NULL",
        (f"witness:{rig}",)))


POLECAT_BRANCHES = "refs/heads/polecat/"


def polecat_branches(clone: Path, target: str) -> dict[str, int]:
    """Every polecat/<name>/<bead> branch of the rig's canonical clone and its commits beyond
    `target` (one for-each-ref, one rev-list per branch); {} when the clone cannot be read."""
    try:
        if not git.has_ref(clone, target):
            return {}
        names = git.run(clone, "for-each-ref", "--format=%(refname:short)", POLECAT_BRANCHES).split()
        return {name: git.count(clone, target, f"refs/heads/{name}") for name in names}
    except (git.GitError, OSError, ValueError):
        return {}


def orphan_candidates(conn: sqlite3.Connection, rig: str, ahead: Mapping[str, int]) -> tuple[BranchSeen, ...]:
    """The branches with commits beyond the target, each with what the orphan rule needs: a
    slot holding it, a merge request for it (any but rejected), its bead's status and holder."""
    held = {r[0] for r in conn.execute("SELECT branch FROM polecats WHERE rig = ? AND branch IS NOT NULL", (rig,))}
    requested = {r[0] for r in conn.execute("SELECT DISTINCT branch FROM merge_requests WHERE rig = ? AND "
                                            "state != 'rejected' AND branch IS NOT NULL", (rig,))}
    out = []
    for branch, count in sorted(ahead.items()):
        if count == 0:
            continue
        parts = branch.split("/")
        bead = parts[2] if len(parts) == 3 else None
        row = conn.execute("SELECT status, assignee FROM issues WHERE id = ?", (bead,)).fetchone() if bead else None
        out.append(BranchSeen(branch=branch, bead=bead if row is not None else None, ahead=count,
                              merge_request=branch in requested, polecat_present=branch in held,
                              bead_status=row["status"] if row is not None else None,
                              bead_assignee=row["assignee"] if row is not None else None))
    return tuple(out)


def observe_rig(town: Town, sessions: TownSessions, rig: str,
                view: TmuxView | None = None) -> tuple[RigSeen, RigHistory]:
    """The rig's polecats (evidence), the witness's unacknowledged mail, the rig's merge
    requests, its polecat branches with commits beyond the target, and what earlier rounds did."""
    with town.db.read() as conn:
        rows = conn.execute("SELECT rig, name, bead_id, branch, worktree, state, created_at FROM polecats "
                            "WHERE rig = ? ORDER BY created_at, name", (rig,)).fetchall()
    target = f"refs/heads/{town.config.rigs[rig].default_branch}" if rig in town.config.rigs else "refs/heads/main"
    gits = [git_evidence(worktree_of(town, r), target) for r in rows]  # outside the store's lock
    ahead = polecat_branches(town.layout.canonical_clone(rig), target) if rig in town.config.rigs else {}
    view = view or TmuxView.take(sessions)
    with town.db.read() as conn:
        polecats = tuple(polecat_evidence(town, conn, view, sessions, r, g) for r, g in zip(rows, gits))
        mails = inbox(conn, rig)
        seen = RigSeen(rig=rig, polecats=polecats, inbox=mails, merge_requests=merge_requests(conn, rig),
                       branches=orphan_candidates(conn, rig, ahead), rework_beads=rework_beads(conn, mails))
        beads = sorted({b for ev in polecats for b in (ev.hooked_bead, ev.hooking.bead if ev.hooking else None) if b})
        return seen, history(conn, beads, rig)
