"""The witness's decisions for one rig: from the polecats' evidence, its inbox, the rig's
branches and what earlier rounds did, to typed actions. Pure: no tmux, git or store.

Per polecat, by its state (vermas/witness/classify.py):
- done: stop the Claude session (the worktree stays for the refinery).
- starting beyond `grace` with no SessionStart: restart. SessionStart seen but its GUPP nudge
  never confirmed (the runner's kick owns it, but that runner may have died, and the next one
  finds the session already running): nudged again like an idle polecat (gupp_wait backoff, at
  most gupp_max_nudges), escalated only after the last nudge's wait.
- working: never restarted or nudged, however long a tool runs; no event for `stuck_after`:
  escalate with the evidence.
- idle with hooked work: GUPP nudges with backoff (PatrolConfig.gupp_wait), at most
  `gupp_max_nudges` per session, then a restart. A session whose turns all ended without a
  tool call (its MCP tools were not connected yet) gets its first nudge `toolless_renudge`
  after that Stop instead of after `gupp_first`, once.
- waiting: escalate with the pane excerpt; no keystrokes.
- exited or dead with hooked work: restart.
- A restart is refused beyond `max_restarts` per bead (per hooking): the bead goes back to open
  with a note naming its branch and commits, and ESCALATION to the mayor.
- Anything that ends a session is preceded by SaveRescue unless the worktree is known clean.
- Only a DEFERRED slot that is known clean and has nothing beyond the target is nuked.
Mail: POLECAT_DONE is checked against the store's current hooking (bead, branch, since) and
merge request, never the name alone; valid COMPLETED -> MERGE_READY to the refinery; always
acknowledged (after the forward, so a crash between re-sends, idempotently, and loses nothing).
HELP -> a bead hooked to the witness's own Claude session. Orphan branches (commits beyond the
target, no merge request, slot gone) are re-slung or escalated, never deleted.
Escalations carry a dedup key and are never repeated while one stands; the condition ones
(waiting, stuck, gupp-undelivered) are resolved once their condition is gone.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from vermas.patrol_types import (
    MAYOR, AgentState, Escalate, Evidence, PatrolConfig, ResolveEscalation, SendMail, StandingEscalation, line,
)
from vermas.protocol import Escalation, Help, MergeReady, Merged, PolecatDone, PolecatState, ReworkRequest
from vermas.witness.classify import Classification, classify, toolless_turn
from vermas.witness.types import (
    AckMail, BranchSeen, GuppNudge, HookJudgment, InboxMail, NukePolecat, ReopenBead, Resling, RestartSession,
    ReworkRespawn, RigHistory, RigSeen, SaveRescue, StopSession, WitnessAction,
)

S = AgentState
RESCUE_PREFIX = "refs/vermas/rescue"
CONDITION_KINDS = ("waiting", "stuck", "gupp-undelivered")  # escalations that clear with their condition
EXCERPT_CHARS = 2000  # pane text kept as evidence (its end, where the prompt is)
OPEN_MR_STATES = frozenset({"queued", "claimed", "testing"})


def rescue_ref(bead: str | None, agent: str, now: float) -> str:
    """refs/vermas/rescue/<bead>/<UTC time>; the agent's name stands in when no bead is hooked."""
    owner = bead or agent.rsplit("/", 1)[-1]
    return f"{RESCUE_PREFIX}/{owner}/{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(now))}"


def refinery_of(rig: str) -> str:
    return f"{rig}/refinery"


def witness_of(rig: str) -> str:
    return f"{rig}/witness"


def _excerpt(text: str) -> str:
    return text if len(text) <= EXCERPT_CHARS else "...\n" + text[-(EXCERPT_CHARS - 4):]


def _ago(now: float, at: float | None) -> str:
    return "unknown" if at is None else f"{now - at:.0f}s ago"


def condition_key(kind: str, agent: str, bead: str | None) -> str:
    return f"{kind}:{agent}:{bead or '-'}"


class _Plan:
    """The round's actions, with escalation dedup (standing keys and this round's) and the
    condition keys still present (so the others can be resolved)."""

    def __init__(self, rig: str, standing: Mapping[str, StandingEscalation], now: float) -> None:
        self.rig, self.standing, self.now = rig, standing, now
        self.actions: list[WitnessAction] = []
        self.keys: set[str] = set()
        self.present: set[str] = set()

    def add(self, action: WitnessAction) -> None:
        self.actions.append(action)

    def escalate(self, key: str, message: Escalation, reason: str, agent: str | None = None,
                 condition: bool = False) -> None:
        if condition:
            self.present.add(key)
        if key in self.standing or key in self.keys:
            return
        self.keys.add(key)
        self.add(Escalate(key=key, to=MAYOR, message=message.model_copy(update={"key": line(key)}),
                          reason=reason, agent=agent))

    def save(self, ev: Evidence, bead: str | None, before: str) -> str | None:
        """SaveRescue unless the worktree is known clean; returns the ref it names."""
        if ev.git is not None and ev.git.uncommitted == 0:
            return None
        ref = rescue_ref(bead, ev.agent, self.now)
        files = ev.git.uncommitted if ev.git is not None else None
        count = "unknown number of" if files is None else str(files)
        self.add(SaveRescue(agent=ev.agent, bead=bead, ref=ref, files=files,
                            note=f"uncommitted changes ({count} files) of {ev.agent} saved to {ref} before {before}",
                            reason=f"save before {before}"))
        return ref

    def resolve_cleared(self) -> None:
        prefixes = tuple(f"{kind}:{self.rig}/" for kind in CONDITION_KINDS)
        for key in sorted(self.standing):
            if key.startswith(prefixes) and key not in self.present:
                self.add(ResolveEscalation(key=key, reason="its condition is gone"))


def decide_rig(seen: RigSeen, history: RigHistory, cfg: PatrolConfig, now: float) -> list[WitnessAction]:
    """All of one round's witness actions for `seen.rig`, in the order to carry them out."""
    plan = _Plan(seen.rig, history.standing, now)
    by_agent = {ev.agent: ev for ev in seen.polecats}
    for ev in seen.polecats:
        _polecat(plan, ev, classify(ev), history, cfg)
    for mail in seen.inbox:
        _mail(plan, mail, by_agent, seen, history)
    for branch in seen.branches:
        _orphan(plan, branch, history, cfg)
    plan.resolve_cleared()
    return plan.actions


# ---- polecats --------------------------------------------------------------------------------


def _escalation(plan: _Plan, ev: Evidence, reason: str, text: str) -> Escalation:
    bead = ev.hooked_bead or (ev.hooking.bead if ev.hooking else None)
    branch = ev.git.branch if ev.git and ev.git.branch else (ev.hooking.branch if ev.hooking else None)
    return Escalation(bead=bead, polecat=ev.agent, agent=ev.agent, rig=plan.rig, reason=reason,
                      branch=line(branch) if branch else None, text=text)


def _evidence_text(ev: Evidence, c: Classification, now: float, excerpt: bool = False) -> str:
    git = ev.git
    lines = [f"state: {c.state} ({c.reason}), since {_ago(now, c.since)}",
             f"last activity: {_ago(now, c.last_activity)}" + (f"; tool running: {c.tool}" if c.tool else ""),
             "git: unknown" if git is None else
             f"git: branch {git.branch}, head {git.head}, {git.ahead} commits ahead, {git.uncommitted} uncommitted"]
    if excerpt and ev.tmux.excerpt:
        lines += ["pane:", _excerpt(ev.tmux.excerpt)]
    return "\n".join(lines)


def _polecat(plan: _Plan, ev: Evidence, c: Classification, history: RigHistory, cfg: PatrolConfig) -> None:
    now, bead = plan.now, ev.hooked_bead
    if c.state is S.DONE:
        if ev.tmux.session:
            plan.save(ev, ev.hooking.bead if ev.hooking else None, "stopping its session")
            plan.add(StopSession(agent=ev.agent, reason="done: merge request queued; the worktree stays"))
        return
    if c.state is S.STARTING:
        if ev.polecat_state is PolecatState.SPAWNING or c.since is None:
            return
        waited = now - c.since
        if not c.session_started:
            if bead is not None and waited > cfg.grace:
                why = f"no SessionStart {waited:.0f}s after start (grace {cfg.grace:g}s)"
                _restart(plan, ev, bead, history, cfg, why)
        else:
            _unconfirmed_start(plan, ev, c, bead, history, cfg)
        return
    if c.state is S.WORKING:
        quiet = None if c.last_activity is None else now - c.last_activity
        if quiet is not None and quiet > cfg.stuck_after:
            what = f"tool {c.tool} running" if c.tool else "turn running"
            plan.escalate(condition_key("stuck", ev.agent, bead),
                          _escalation(plan, ev, "stuck", _evidence_text(ev, c, now, excerpt=True)),
                          f"{what}, no event for {quiet:.0f}s (stuck_after {cfg.stuck_after:g}s); never restarted "
                          "for that alone", ev.agent, True)
        return
    if c.state is S.WAITING:
        plan.escalate(condition_key("waiting", ev.agent, bead),
                      _escalation(plan, ev, "waiting", _evidence_text(ev, c, now, excerpt=True)),
                      f"{c.reason}; no keystrokes sent", ev.agent, True)
        return
    if bead is None:
        _maybe_nuke(plan, ev, c)
        return
    if c.state is S.IDLE:
        _idle(plan, ev, c, bead, history, cfg)
        return
    _restart(plan, ev, bead, history, cfg, f"{c.state}: {c.reason}")  # exited or dead with hooked work


def _idle(plan: _Plan, ev: Evidence, c: Classification, bead: str, history: RigHistory, cfg: PatrolConfig) -> None:
    if c.since is None:
        return
    start = ev.tmux.started_at
    nudges = sorted(t for t in history.nudges.get(bead, ()) if start is None or t >= start)
    ref = max([c.since, *nudges])
    wait = cfg.gupp_wait(len(nudges))
    idle_for = plan.now - ref
    stopped = toolless_turn(ev) if not nudges and cfg.gupp_max_nudges > 0 else None
    if stopped is not None and plan.now - stopped > cfg.toolless_renudge:
        plan.add(GuppNudge(agent=ev.agent, bead=bead, attempt=1,
                           reason=f"its turn ended {plan.now - stopped:.0f}s ago without any tool call (its MCP "
                                  "tools may not have connected yet): re-nudged once, without the GUPP backoff"))
        return
    if idle_for <= wait:
        return
    if len(nudges) < cfg.gupp_max_nudges:
        plan.add(GuppNudge(agent=ev.agent, bead=bead, attempt=len(nudges) + 1,
                           reason=f"idle with hooked work for {idle_for:.0f}s (> {wait:g}s); nudge "
                                  f"{len(nudges) + 1} of {cfg.gupp_max_nudges}"))
    else:
        _restart(plan, ev, bead, history, cfg, f"still idle {idle_for:.0f}s after {len(nudges)} GUPP nudges")


def _unconfirmed_start(plan: _Plan, ev: Evidence, c: Classification, bead: str | None, history: RigHistory,
                       cfg: PatrolConfig) -> None:
    """SessionStart seen, its GUPP nudge never confirmed (the slot is still `started`): the nudge
    that owned it may have died with its runner, and a later runner finds the session already
    running. With hooked work it is nudged again with the idle backoff (gupp_wait, at most
    gupp_max_nudges this session), whichever runner's witness finds it; only after the last one
    and its wait is it escalated. Without hooked work there is nothing to nudge it to."""
    assert c.since is not None
    now, waited = plan.now, plan.now - c.since
    key = condition_key("gupp-undelivered", ev.agent, bead)
    if bead is None:
        if waited > cfg.stuck_after:
            plan.escalate(key, _escalation(plan, ev, "gupp-undelivered", _evidence_text(ev, c, now)),
                          f"SessionStart {waited:.0f}s ago and its GUPP nudge never confirmed", ev.agent, True)
        return
    start = ev.tmux.started_at
    nudges = sorted(t for t in history.nudges.get(bead, ()) if start is None or t >= start)
    since_last = now - max([c.since, *nudges])
    wait = cfg.gupp_wait(len(nudges))
    if since_last <= wait:
        if key in plan.standing:
            plan.present.add(key)  # still unconfirmed: an escalation raised for it stands
        return
    if len(nudges) < cfg.gupp_max_nudges:
        plan.add(GuppNudge(agent=ev.agent, bead=bead, attempt=len(nudges) + 1, start=True,
                           reason=f"SessionStart {waited:.0f}s ago and its GUPP nudge never confirmed; nudge "
                                  f"{len(nudges) + 1} of {cfg.gupp_max_nudges} (> {wait:g}s since the last)"))
        return
    plan.escalate(key, _escalation(plan, ev, "gupp-undelivered", _evidence_text(ev, c, now)),
                  f"SessionStart {waited:.0f}s ago and its GUPP nudge never confirmed after {len(nudges)} "
                  "nudges", ev.agent, True)


def _restart(plan: _Plan, ev: Evidence, bead: str, history: RigHistory, cfg: PatrolConfig, why: str) -> None:
    since = ev.hooking.since if ev.hooking is not None else None
    done = [t for t in history.restarts.get(bead, ()) if since is None or t >= since]
    if len(done) < cfg.max_restarts:
        plan.save(ev, bead, "restarting its session")
        plan.add(RestartSession(agent=ev.agent, bead=bead, attempt=len(done) + 1,
                                reason=f"{why}; restart {len(done) + 1} of {cfg.max_restarts} in the same worktree"))
        return
    ref = plan.save(ev, bead, "reopening its bead")
    if ev.tmux.session:
        plan.add(StopSession(agent=ev.agent, reason="restarts exhausted; the worktree and branch stay"))
    git = ev.git
    branch = git.branch if git and git.branch else (ev.hooking.branch if ev.hooking else None)
    commits, head = (git.ahead, git.head) if git else (0, None)
    note = (f"back to open after {len(done)} restarts of {ev.agent} ({why}); continue from branch {branch} "
            f"({commits} commits beyond the target, head {head})"
            + (f"; uncommitted work saved in {ref}" if ref else ""))
    plan.add(ReopenBead(agent=ev.agent, bead=bead, branch=branch, head=head, commits=commits, note=note,
                        reason=f"max_restarts ({cfg.max_restarts}) reached"))
    key = f"restarts-exhausted:{bead}:{int(since or 0)}"
    plan.escalate(key, _escalation(plan, ev, "restarts-exhausted", note), note, ev.agent)


def _maybe_nuke(plan: _Plan, ev: Evidence, c: Classification) -> None:
    git = ev.git
    if (ev.polecat_state is PolecatState.DEFERRED and c.state in (S.IDLE, S.EXITED, S.DEAD)
            and git is not None and git.ahead == 0 and git.uncommitted == 0):
        plan.add(NukePolecat(agent=ev.agent, reason="deferred; nothing beyond the target, nothing uncommitted"))


# ---- mail ------------------------------------------------------------------------------------


def _mail(plan: _Plan, mail: InboxMail, by_agent: Mapping[str, Evidence], seen: RigSeen,
          history: RigHistory) -> None:
    msg = mail.message
    if isinstance(msg, PolecatDone):
        _polecat_done(plan, mail, msg, by_agent, seen)
    elif isinstance(msg, Help):
        _help(plan, mail, msg, by_agent, history)
    elif isinstance(msg, Merged):
        plan.add(AckMail(id=mail.id, reason=f"MERGED {msg.bead} noted; the refinery cleans up"))
    elif isinstance(msg, ReworkRequest):
        _rework(plan, mail, msg, seen)
    # Plain mail and other kinds stay for the witness's Claude session to read.


def stale_reason(mail: InboxMail, msg: PolecatDone, by_agent: Mapping[str, Evidence]) -> str | None:
    """Why this POLECAT_DONE is not about the polecat's current hooking (None: it is)."""
    if mail.sender != msg.polecat:
        return f"sent by {mail.sender}, not by {msg.polecat}"
    ev = by_agent.get(msg.polecat)
    hooking = ev.hooking if ev is not None else None
    if hooking is None:
        return f"stale: {msg.polecat} holds no hooking now"
    if hooking.bead != msg.bead:
        return f"stale: about {msg.bead}, but {msg.polecat} now holds {hooking.bead} (since {hooking.since:.0f})"
    if mail.sent_at < hooking.since:
        return (f"stale: sent at {mail.sent_at:.0f}, before the current hooking of {hooking.bead} began "
                f"at {hooking.since:.0f}")
    if msg.branch and hooking.branch and msg.branch != hooking.branch:
        return f"stale: branch {msg.branch}, but the current hooking is on {hooking.branch}"
    return None


def _polecat_done(plan: _Plan, mail: InboxMail, msg: PolecatDone, by_agent: Mapping[str, Evidence],
                  seen: RigSeen) -> None:
    problem = stale_reason(mail, msg, by_agent)
    if problem is None and msg.status == "COMPLETED":
        hooking = by_agent[msg.polecat].hooking
        assert hooking is not None  # stale_reason checked it
        mr = seen.merge_requests.get(msg.merge_request or "")
        if mr is None:
            problem = f"merge request {msg.merge_request} is not in the store"
        elif (mr.bead, mr.polecat) != (msg.bead, msg.polecat) or mr.created_at < hooking.since:
            problem = f"merge request {mr.id} is for {mr.bead} by {mr.polecat}, not this hooking"
        elif mr.state not in OPEN_MR_STATES:
            problem = f"merge request {mr.id} is already {mr.state}"
        elif not (mr.branch or msg.branch):
            problem = f"merge request {mr.id} names no branch"
        else:
            branch = mr.branch or msg.branch
            assert branch is not None
            plan.add(SendMail(to=refinery_of(plan.rig), message=MergeReady(
                bead=msg.bead, branch=branch, merge_request=mr.id, commit=msg.commit, polecat=msg.polecat,
                text=msg.text), idempotency_key=f"merge_ready:{mr.id}",
                reason=f"POLECAT_DONE COMPLETED {msg.bead} by {msg.polecat}: forwarded to the refinery"))
            plan.add(AckMail(id=mail.id, reason="POLECAT_DONE COMPLETED: MERGE_READY forwarded"))
            return
    if problem is not None:
        plan.add(AckMail(id=mail.id, reason=f"POLECAT_DONE ignored: {problem}"))
        return
    if msg.status == "ESCALATED":
        plan.escalate(f"polecat-escalated:{msg.bead}:{mail.id}", Escalation(
            bead=msg.bead, polecat=msg.polecat, agent=msg.polecat, rig=plan.rig, reason="polecat-escalated",
            branch=msg.branch, text=msg.text or "(no summary given)"),
            f"{msg.polecat} escalated {msg.bead}", msg.polecat)
        plan.add(AckMail(id=mail.id, reason="POLECAT_DONE ESCALATED: passed to the mayor"))
    elif msg.status == "DEFERRED":
        plan.add(AckMail(id=mail.id, reason="POLECAT_DONE DEFERRED: the bead went back unassigned"))
    else:
        plan.add(AckMail(id=mail.id, reason=f"POLECAT_DONE with unknown status {msg.status!r} ignored"))


REWORK_MR_STATES = frozenset({"rework", "conflict"})


def _rework(plan: _Plan, mail: InboxMail, msg: ReworkRequest, seen: RigSeen) -> None:
    """The refinery sends REWORK_REQUEST here only when the bead's polecat session was not alive
    (a live one gets the bead back on its hook directly). Its work goes to a new polecat on the
    same branch, unless it no longer needs one."""
    bead = seen.rework_beads.get(msg.bead)
    mr = seen.merge_requests.get(msg.merge_request or "")
    done = ("from whom it did not come" if mail.sender != refinery_of(plan.rig) else
            f"bead {msg.bead} is unknown" if bead is None else
            f"bead {msg.bead} is closed" if bead.status == "closed" else
            f"merge request {msg.merge_request} is {mr.state if mr else 'not in the store'}, not waiting for rework"
            if mr is None or mr.state not in REWORK_MR_STATES else
            "it names no branch" if not msg.branch else None)
    if done is not None:
        plan.add(AckMail(id=mail.id, reason=f"REWORK_REQUEST {msg.bead} ignored: {done}"))
        return
    assert bead is not None and msg.branch is not None
    if bead.status == "hooked" and bead.assignee:  # a polecat has it (a respawn that crashed before the ack)
        plan.add(SendMail(to=bead.assignee, message=msg, idempotency_key=f"rework:{mail.id}",
                          reason=f"REWORK_REQUEST {msg.bead}: {bead.assignee} holds it; forwarded"))
        plan.add(AckMail(id=mail.id, reason="REWORK_REQUEST forwarded to the bead's polecat"))
        return
    plan.add(ReworkRespawn(bead=msg.bead, branch=msg.branch, mail_id=mail.id, message=msg,
                           rescue_ref=rescue_ref(msg.bead, msg.polecat or "polecat", plan.now),
                           reason=f"REWORK_REQUEST ({msg.reason}) for {msg.bead} and its polecat "
                                  f"{msg.polecat or '-'} is not alive: a new polecat on {msg.branch}"))


def _help(plan: _Plan, mail: InboxMail, msg: Help, by_agent: Mapping[str, Evidence], history: RigHistory) -> None:
    key = f"help:{mail.id}"
    if key not in history.judgment_keys:
        lines = [f"HELP from {mail.sender} (mail {mail.id}, sent {_ago(plan.now, mail.sent_at)})",
                 f"bead: {msg.bead or '-'}", "", msg.text or "(no text)"]
        ev = by_agent.get(mail.sender)
        if ev is not None:
            lines += ["", "evidence:", _evidence_text(ev, classify(ev), plan.now, excerpt=True)]
        plan.add(HookJudgment(key=key, to=witness_of(plan.rig), title=line(f"HELP from {mail.sender}: {mail.subject}"),
                              description="\n".join(lines), reason="HELP needs judgment: hooked to the witness"))
    plan.add(AckMail(id=mail.id, reason="HELP handed to the witness's session"))


# ---- orphans ---------------------------------------------------------------------------------


def _orphan(plan: _Plan, b: BranchSeen, history: RigHistory, cfg: PatrolConfig) -> None:
    """Re-sling an orphan once (its bead open and free), wait `grace` for that polecat to take
    it, and escalate one that is orphaned again or whose bead is elsewhere; never delete it.
    A bead the witness reopened after its restarts ran out is escalated already (under its
    restarts-exhausted key, naming this branch): re-slinging it would only loop."""
    if b.polecat_present or b.merge_request or b.ahead == 0:
        return
    if b.bead is not None and any(k.startswith(f"restarts-exhausted:{b.bead}:") for k in history.standing):
        return
    last = history.reslung.get(b.branch)
    free = b.bead is not None and b.bead_status == "open" and not b.bead_assignee
    if free and last is None:
        assert b.bead is not None
        plan.add(Resling(bead=b.bead, branch=b.branch,
                         reason=f"orphan: {b.ahead} commits beyond the target, no merge request, slot gone"))
        return
    if last is not None and plan.now - last <= cfg.grace:
        return  # the re-slung polecat is being made
    again = f"re-slung {plan.now - last:.0f}s ago and orphaned again; " if last is not None else ""
    text = (f"branch {b.branch} has {b.ahead} commits beyond the target, no merge request, and its polecat is "
            f"gone; {again}bead {b.bead or 'unknown'} is {b.bead_status or 'unknown'}"
            + (f" (assigned to {b.bead_assignee})" if b.bead_assignee else "") + ". The branch is kept.")
    plan.escalate(f"orphan:{plan.rig}:{b.branch}", Escalation(
        bead=b.bead, rig=plan.rig, branch=line(b.branch), reason="orphan-branch", text=text), text)
