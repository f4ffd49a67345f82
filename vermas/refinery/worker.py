"""The refinery worker: one step of one rig's merge queue. Observe (ledger + git), ask the pure
planner and decisions (queue.py, bisect.py, decide.py), act (ledger, gitops, mail, beads).

`process_rig(town, rig, owner, now)` under the rig's queue lease:
  1. failed requests past their backoff go back to queued; merged ones whose cleanup did not
     finish (a crash) are cleaned up;
  2. the target is synced (fetch, fast-forward by compare-and-set);
  3. in-flight requests left by a dead worker are adopted: one whose work the target already
     has finishes its bookkeeping (never merged again), the others go back to queued;
  4. the queue gate (a queue paused for a red target resumes only on a green target sha);
  5. one batch: claim, check the sources, rebase each onto the previous in the refinery
     worktree (strategy "squash": each folded into one commit naming its bead), test at the tip
     and bisect when red (bisect.py), verify, then advance the target (push, confirmed with
     ls-remote, and update-ref, both compare-and-set; a refused push holds the queue once with
     git's reason, see HOLD_PROBES) and only then, per request, in one transaction: merged with
     its sha, the bead closed ("merged in <sha>", which lands its convoys), MERGED mail to the
     witness and the polecat; then the polecat's worktree and branch are removed (only when all
     its commits are on the target, or its proven squash is) and its slot freed.

Crash safety comes from the order: the recorded state never claims more than git shows, and
every step after the advance is idempotent (mail has idempotency keys, cleanup re-checks git).

For crash tests, VERMAS_REFINERY_PAUSE_AT=<point> makes the worker stop at a named point
(PAUSE_POINTS), write `<point>.reached` in VERMAS_REFINERY_PAUSE_DIR and wait for `<point>.go`.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from vermas import beads, git, ids, mail, patrol_log, polecat, protocol, timeutil
from vermas.addresses import Role, parse_address
from vermas.errors import InvalidInput, NotFound, VermasError
from vermas.inspector import readiness
from vermas.inspector.models import CriterionOutcome, VerificationReport
from vermas.inspector.verifier import town_private_paths
from vermas.protocol import PolecatState
from vermas.refinery import bisect, decide, gitops, ledger, queue
from vermas.refinery.decide import Checks, Escalate, Finish, PauseQueue, Retry, SendBack
from vermas.refinery.ledger import MergeRequestRow
from vermas.refinery.types import (
    IN_FLIGHT_STATES, LEASE_TTL_S, HoldKind, MergeConfig, MRState, RunKind, RunOutcome, RunStatus, tail,
)
from vermas.town import RigConfig, Town

PAUSE_ENV = "VERMAS_REFINERY_PAUSE_AT"
PAUSE_DIR_ENV = "VERMAS_REFINERY_PAUSE_DIR"
PAUSE_MAX_S = 600.0
# test: just before a test run; advanced: the target moved (pushed, update-ref), no bookkeeping
# yet; cleanup: the polecat's worktree removed, its branch not yet deleted nor its slot freed.
PAUSE_POINTS = ("test", "advanced", "cleanup")

Alive = Callable[[MergeRequestRow], bool]
# How each kind of hold fingerprints its cause now (None: could not tell, so the hold stays).
# A held queue is released the first round its probe answers a different fingerprint.
HoldProbe = Callable[["_Step"], "str | None"]
HOLD_PROBES: dict[HoldKind, HoldProbe] = {}
Verify = Callable[[Town, MergeRequestRow, Path, str, str], RunOutcome]  # (town, req, tree, level, target sha)
KillSession = Callable[[str], None]  # polecat address


class StepReport(BaseModel):
    """What one step did to a rig's queue (the patrol logs it; `status` can show it)."""

    rig: str
    owner: str
    lease: bool = False
    target_sha: str | None = None
    merged: list[str] = Field(default_factory=list)
    merged_sha: str | None = None
    recovered: list[str] = Field(default_factory=list)  # finished after a crash, not merged again
    conflicts: list[str] = Field(default_factory=list)
    reworked: list[str] = Field(default_factory=list)
    rejected: list[str] = Field(default_factory=list)
    failed: list[str] = Field(default_factory=list)
    escalated: list[str] = Field(default_factory=list)
    requeued: list[str] = Field(default_factory=list)
    cleaned: list[str] = Field(default_factory=list)
    kept: list[str] = Field(default_factory=list)  # worktree/branch kept: commits not on the target
    test_runs: int = 0
    untested: bool = False
    paused: str | None = None
    restarted: str | None = None
    error: str | None = None
    idle: bool = False

    @property
    def progressed(self) -> bool:
        return bool(self.merged or self.recovered or self.conflicts or self.reworked or self.rejected
                    or self.failed or self.requeued or self.cleaned or self.kept or self.restarted)


# ---- pause points (crash tests) ---------------------------------------------------------------------


def pause_at(point: str) -> None:
    """Stop here when VERMAS_REFINERY_PAUSE_AT names this point (see the module docstring)."""
    if os.environ.get(PAUSE_ENV) != point:
        return
    folder = Path(os.environ.get(PAUSE_DIR_ENV) or ".")
    (folder / f"{point}.reached").write_text(str(os.getpid()))
    deadline = time.monotonic() + PAUSE_MAX_S
    while not (folder / f"{point}.go").exists() and time.monotonic() < deadline:
        time.sleep(0.02)


# ---- the lease, kept alive during long test runs --------------------------------------------------------


class LeaseKeeper:
    """Renews the rig lease every ttl/3 from a thread while a step runs (a test run may take
    much longer than the lease). `lost` is set when a renewal failed: the step must not advance."""

    def __init__(self, town: Town, rig: str, owner: str, clock: Callable[[], float], ttl: float) -> None:
        self.town, self.rig, self.owner, self.clock, self.ttl = town, rig, owner, clock, ttl
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"mq-lease-{rig}", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                if ledger.renew(self.town, self.rig, self.owner, self.clock(), self.ttl) is None:
                    self.lost = True
                    return
            except VermasError:
                self.lost = True
                return


# ---- defaults for the outside world ----------------------------------------------------------------------


def slot_alive(town: Town, req: MergeRequestRow) -> bool:
    """The polecat still holds a slot for this bead (the patrol may pass a tmux-aware check)."""
    try:
        address = parse_address(req.polecat)
    except InvalidInput:
        return False
    if address.role is not Role.POLECAT:
        return False
    with town.db.read() as conn:
        row = conn.execute("SELECT bead_id FROM polecats WHERE rig = ? AND name = ?",
                           (address.rig, address.name)).fetchone()
    return row is not None and row[0] == req.bead


def verify_with_inspector(town: Town, req: MergeRequestRow, tree: Path, level: str, target_sha: str) -> RunOutcome:
    """Verification at the rig's level on the rebased tree (vermas.inspector); only PASS passes."""
    from vermas.inspector.pipeline import verify_for_merge  # deferred: the model backends load only to verify

    candidate = git.resolve(tree, "HEAD") or "-"
    start = time.monotonic()
    try:
        report = verify_for_merge(town, req.bead, tree, actor=f"{req.rig}/refinery", level=level)
    except VermasError as exc:
        _town_can_verify(town, req.rig)
        return RunOutcome(kind=RunKind.VERIFY, status=RunStatus.COULD_NOT_RUN, command=f"verify level {level}",
                          duration_s=time.monotonic() - start, output_tail=tail(str(exc)), target_sha=target_sha,
                          candidate_sha=candidate)
    status, failing = verification_status(report)
    if status is RunStatus.COULD_NOT_RUN:  # a role's model call failed: the town's doing, or this request's?
        _town_can_verify(town, req.rig)
    return RunOutcome(kind=RunKind.VERIFY, status=status,
                      command=f"verify level {level}", duration_s=report.duration_s,
                      output_tail=tail(report.summary + _evidence(failing)),
                      target_sha=target_sha, candidate_sha=candidate,
                      criterion=failing.criterion_id if failing else None)


def _town_can_verify(town: Town, rig: str) -> None:
    """After a verification that could not run: raise TownCannotVerify when the cause is the
    town's (the inspector's command does not resolve, its settings are invalid), so the queue is
    held instead of the request failed; a model timeout or an invalid answer stays the request's
    retry."""
    config = town.config.rigs.get(rig)
    if config is not None:
        readiness.require(town, config)


def _evidence(failing: CriterionOutcome | None) -> str:
    """The deciding criterion, why, and its test output: what the polecat needs to fix it."""
    if failing is None:
        return ""
    error = f"\nerror: {failing.error}" if failing.error and failing.error not in failing.reason else ""
    tests = "".join(f"\n$ {t.evidence.command}\n{t.evidence.output}" for t in failing.tests)
    return f"\n{failing.criterion_id}: {failing.reason}{error}{tests}"


def verification_status(report: VerificationReport) -> tuple[RunStatus, CriterionOutcome | None]:
    """What a verification report means for the merge queue, and the criterion that decided it.

    Why errors are separate: a criterion the Auditor or panel could not answer (the model was
    unavailable, its output invalid) comes back FAIL with `error` set. That says nothing about
    the code, so it must not send the work back: when no criterion failed on its merits but one
    failed with an error, the run COULD_NOT_RUN (retried with backoff, escalated, never merged).
    A real FAIL wins over an errored one; a PASS report passes."""
    if report.overall == "PASS":
        return RunStatus.PASSED, None
    failed = [c for c in report.criteria if c.outcome == "FAIL"]
    merits = next((c for c in failed if not c.error), None)
    if merits is not None:
        return RunStatus.FAILED, merits
    errored = next((c for c in failed if c.error), None)
    if errored is not None:
        return RunStatus.COULD_NOT_RUN, errored
    # nothing failed yet the report is not PASS (everything SKIPPED): not verified, the candidate's to fix
    return RunStatus.FAILED, next((c for c in report.criteria if c.outcome != "PASS"), None)


# ---- one step ------------------------------------------------------------------------------------------


@dataclass
class _Step:
    town: Town
    rig: str
    owner: str
    config: RigConfig
    report: StepReport
    clock: Callable[[], float]
    keeper: LeaseKeeper
    alive: Alive
    verify: Verify
    kill_session: KillSession | None
    ttl: float
    clone: Path = field(init=False)
    worktree: Path = field(init=False)

    def __post_init__(self) -> None:
        self.clone = self.town.layout.canonical_clone(self.rig)
        self.worktree = self.town.layout.refinery_worktree(self.rig)

    @property
    def cfg(self) -> MergeConfig:
        return self.config.merge

    @property
    def target(self) -> str:
        return self.cfg.target(self.config.default_branch)

    @property
    def actor(self) -> str:
        return f"{self.rig}/refinery"

    @property
    def pushing(self) -> bool:
        return self.cfg.push == "auto" and gitops.has_upstream(self.clone)

    def sync(self) -> gitops.TargetTip:
        with gitops.locked(self.town.layout.rig_sync_lock(self.rig)):
            return gitops.sync_target(self.clone, self.target, fetch=gitops.has_upstream(self.clone))

    def history(self, req: MergeRequestRow) -> str:
        return decide.rework_history(ledger.history_lines(self.town, req.bead))

    def queue_facts(self) -> decide.QueueFacts:
        state = ledger.queue_state(self.town, self.rig)
        return decide.QueueFacts(paused=state.paused_sha is not None,
                                 open_bug_keys=ledger.open_bug_keys(self.town, self.rig))


def process_rig(town: Town, rig: str, owner: str, now: float, *, alive: Alive | None = None,
                verify: Verify | None = None, kill_session: KillSession | None = None,
                ttl: float = LEASE_TTL_S) -> StepReport:
    """One step of `rig`'s merge queue as `owner` (see the module docstring). Returns what it
    did; waits (does nothing) when another live worker holds the rig's lease. `now` is the
    clock of this step (epoch seconds); it advances with the wall clock while the step runs."""
    config = town.config.rigs.get(rig)
    if config is None:
        raise NotFound(f"unknown rig {str(rig)[:40]!r}; rigs in this town: {', '.join(sorted(town.config.rigs))}")
    started = time.monotonic()

    def clock() -> float:
        return now + (time.monotonic() - started)

    report = StepReport(rig=rig, owner=owner)
    if ledger.acquire(town, rig, owner, now, ttl) is None:
        report.idle = True
        return report
    report.lease = True
    with LeaseKeeper(town, rig, owner, clock, ttl) as keeper:
        step = _Step(town=town, rig=rig, owner=owner, config=config, report=report, clock=clock, keeper=keeper,
                     alive=alive or (lambda req: slot_alive(town, req)), verify=verify or verify_with_inspector,
                     kill_session=kill_session, ttl=ttl)
        try:
            _run(step)
        except (VermasError, git.GitError) as exc:
            report.error = str(exc)
    return report


def drain(town: Town, rig: str, owner: str, clock: Callable[[], float] = time.time, max_steps: int = 50,
          **kwargs: Any) -> list[StepReport]:
    """Steps until the queue has nothing to do (or an error, or max_steps): for tests and `mq run`."""
    reports = []
    for _ in range(max_steps):
        report = process_rig(town, rig, owner, clock(), **kwargs)
        reports.append(report)
        if report.error or not report.lease or report.paused or (report.idle and not report.progressed):
            break
    return reports


def _run(s: _Step) -> None:
    for mr_id in ledger.requeue_due(s.town, s.rig, s.actor, s.clock()):
        s.report.requeued.append(mr_id)
    for req in ledger.list_requests(s.town, rig=s.rig, states=[MRState.MERGED]):
        if req.cleaned_at is None:
            _cleanup(s, req)
    if not _hold_gate(s):
        return
    gitops.ensure_worktree(s.clone, s.worktree, s.target)
    target = s.sync()
    s.report.target_sha = target.sha
    _recover(s, target.sha)
    if not _gate(s, target.sha):
        return
    batch = queue.select_batch([r.queued() for r in ledger.list_requests(s.town, rig=s.rig, states=[MRState.QUEUED])],
                               s.clock(), s.cfg.batch_size)
    dirty = _upstream_dirty(s) if batch else None
    if dirty is not None:
        _hold_queue(s, dirty)
        return
    claimed = [ledger.get(s.town, r.id) for r in batch if ledger.claim(s.town, r.id, s.owner, s.clock(), s.ttl)]
    if not claimed:
        s.report.idle = True
        return
    _batch(s, claimed, target.sha)


# ---- recovery -----------------------------------------------------------------------------------------


def _recover(s: _Step, tip: str) -> None:
    """In-flight requests of a worker that died: finish the ones the target already has."""
    for req in ledger.list_requests(s.town, rig=s.rig, states=IN_FLIGHT_STATES):
        if not ledger.adopt(s.town, req.id, s.owner, s.clock(), s.ttl):
            continue
        req = ledger.get(s.town, req.id)
        on_target = req.candidate_sha is not None and gitops.commit_exists(s.clone, req.candidate_sha) and \
            git.is_ancestor(s.clone, req.candidate_sha, tip)
        patch = None
        if not on_target and req.target_sha and gitops.commit_exists(s.clone, req.commit):
            commits = gitops.commits_between(s.clone, req.target_sha, req.commit)
            found = gitops.presence(s.clone, commits, tip, req.target_sha)
            if commits and all(p is not decide.Presence.MISSING for p in found.values()):
                patch = tip
        action = decide.on_resume(req.queued(), tip, req.candidate_sha, on_target, patch, s.target, req.untested)
        if isinstance(action, Finish):
            _finish(s, req, action, {"reason": "recovered after a restart: the target already has it",
                                     "target_sha": tip})
            s.report.recovered.append(req.id)
            _cleanup(s, ledger.get(s.town, req.id))
        else:
            _requeue(s, req, action.reason)


# ---- holds (the town stops merging) -----------------------------------------------------------------------


def _hold_gate(s: _Step) -> bool:
    """False while the queue stays held: its cause, as its kind's probe fingerprints it now, is
    the one it was held for. Nothing is claimed, rebased or tested meanwhile (no loop)."""
    state = ledger.queue_state(s.town, s.rig)
    if state.hold is None:
        return True
    probe = HOLD_PROBES.get(state.hold.kind)
    current = probe(s) if probe is not None else None
    action = decide.hold_gate(state.hold, current, state.resume_requested)
    if isinstance(action, decide.StayHeld):
        s.report.paused = action.reason
        return False
    if isinstance(action, decide.Proceed):
        return True
    ledger.release_hold(s.town, s.rig, action.reason, s.actor, s.clock())
    if state.resume_requested and state.paused_sha is None:
        ledger.unpause(s.town, s.rig)  # the resume was for the hold; a red-target pause keeps its own
    return True


def _hold(s: _Step, reqs: Sequence[MergeRequestRow], kind: HoldKind, reason: str, key: str) -> None:
    """The town itself stops these requests (not their fault): each goes back to queued with no
    attempt or failure counted, and the queue is held once for the cause (one escalation)."""
    for req in reqs:
        _requeue(s, req, f"queue held: {reason}")
    ledger.hold(s.town, s.rig, kind, reason, key, s.clock(), s.actor)
    s.report.paused = f"held ({kind.value}): {reason}"


# ---- the queue gate (red target) ------------------------------------------------------------------------


def _gate(s: _Step, tip: str) -> bool:
    """False when the queue stays paused (nothing merges onto a red target)."""
    state = ledger.queue_state(s.town, s.rig)
    command = s.config.test_command
    for _ in range(2):
        cached = ledger.cached_run(s.town, s.rig, tip, command) if command.strip() else None
        action = decide.queue_gate(state.paused_sha, tip, cached, state.resume_requested)
        if isinstance(action, decide.Proceed):
            return True
        if isinstance(action, decide.Resume):
            ledger.unpause(s.town, s.rig)
            return True
        if isinstance(action, decide.StayPaused):
            s.report.paused = action.reason
            return False
        _test_target(s, action.sha)  # TestTarget: run the target alone, then decide again
    s.report.paused = f"target at {tip} could not be tested"
    return False


def _test_target(s: _Step, sha: str) -> RunOutcome:
    pause_at("test")
    out = gitops.run_tests(s.worktree, sha, s.config.test_command, s.cfg.test_timeout, target_sha=sha,
                           hidden=town_private_paths(s.town.root), keep_env=_pass_env(s),
                           network=s.config.test_network)
    s.report.test_runs += 1
    ledger.cache_run(s.town, s.rig, out, s.clock())
    return out


def _pass_env(s: _Step) -> tuple[str, ...]:
    """The rig's `pass_env`: the variables its test runs keep (README: the rig's `pass_env`)."""
    from vermas.inspector.pipeline import rig_pass_env  # deferred: the inspector's stack loads only to test

    return rig_pass_env(s.town, s.rig)


# ---- one batch ----------------------------------------------------------------------------------------


def _batch(s: _Step, claimed: Sequence[MergeRequestRow], tip: str) -> None:
    checks = decide.plan_checks(s.config.test_command, s.config.verify_level)
    s.report.untested = checks.untested
    members: list[tuple[MergeRequestRow, str]] = []
    onto = tip
    for req in claimed:
        source = decide.check_source(req.queued(), gitops.branch_exists(s.clone, req.branch),
                                     gitops.commit_exists(s.clone, req.commit))
        if isinstance(source, Escalate):
            _escalate(s, req, source, {"reason": source.comment})
            continue
        message = _squash_message(s, req, tip)
        rebased = gitops.rebase(s.worktree, onto, tip, req.commit, message)
        if not rebased.clean and onto != tip:
            alone = gitops.rebase(s.worktree, tip, tip, req.commit, message)
            if alone.clean:  # it conflicts with a request ahead of it, not with the target: next batch
                files = ", ".join(rebased.conflict_files)
                _requeue(s, req, f"conflicts with a request ahead of it in the batch ({files}); next batch")
                continue
            rebased = alone
        if not rebased.clean:
            result = decide.RebaseResult(target_sha=tip, conflict_files=rebased.conflict_files)
            action = decide.on_rebase(req.queued(), result, s.alive(req), s.cfg, s.history(req))
            evidence = {"target_sha": tip, "files": list(rebased.conflict_files), "git": rebased.error}
            if isinstance(action, SendBack):
                _send_back(s, req, action, evidence)
            elif isinstance(action, Escalate):
                _escalate(s, req, action, evidence)
            continue
        assert rebased.sha is not None
        row = ledger.transition(s.town, req.id, MRState.TESTING, s.actor,
                                {"target_sha": tip, "onto": onto, "candidate_sha": rebased.sha,
                                 "strategy": s.cfg.strategy, "checks": "untested" if checks.untested else "tests"},
                                owner=s.owner, target_sha=tip, candidate_sha=rebased.sha, untested=checks.untested)
        members.append((row, rebased.sha))
        onto = rebased.sha
    if members:
        _test_stack(s, members, tip, checks)


def _squash_message(s: _Step, req: MergeRequestRow, tip: str) -> str | None:
    """The squash commit's message under strategy "squash" (None: rebase keeps each commit)."""
    if s.cfg.strategy != "squash":
        return None
    with s.town.db.read() as conn:
        row = conn.execute("SELECT title FROM issues WHERE id = ?", (req.bead,)).fetchone()
    return decide.squash_message(req.queued(), row[0] if row else "", gitops.commit_subjects(s.clone, tip, req.commit))


def _test_stack(s: _Step, members: list[tuple[MergeRequestRow, str]], tip: str, checks: Checks) -> None:
    reqs = [m[0] for m in members]
    tips = [m[1] for m in members]
    outcomes: dict[int, RunOutcome] = {}
    if checks.run_tests:
        plan = bisect.start([r.id for r in reqs], s.cfg.retry_flaky)
        action = bisect.next_action(plan)
        while isinstance(action, bisect.TestPrefix):
            k = action.k
            pause_at("test")
            out = gitops.run_tests(s.worktree, tips[k - 1], s.config.test_command, s.cfg.test_timeout,
                                   target_sha=tips[k - 2] if k > 1 else tip, hidden=town_private_paths(s.town.root),
                                   keep_env=_pass_env(s), network=s.config.test_network)
            s.report.test_runs += 1
            ledger.cache_run(s.town, s.rig, out, s.clock())
            if out.status is RunStatus.COULD_NOT_RUN:
                for req in reqs:
                    _apply_check(s, req, decide.on_test(req.queued(), out, None, checks, False, s.cfg, s.target,
                                                        s.queue_facts(), s.clock()), out)
                return
            outcomes[k] = out
            plan = bisect.record(plan, k, out.passed)
            action = bisect.next_action(plan)
        verdict = action
    else:
        verdict = bisect.Resolve(merge=tuple(r.id for r in reqs), culprit=None, requeue=())
    by_id = {r.id: i for i, r in enumerate(reqs)}
    if verdict.culprit is not None:
        i = by_id[verdict.culprit]
        _culprit(s, reqs[i], outcomes[i + 1], outcomes.get(i), tip, checks)
    for mr_id in verdict.requeue:
        _requeue(s, reqs[by_id[mr_id]], f"re-queued behind {verdict.culprit}, which failed the tests")
    if not verdict.merge:
        return
    merging = [reqs[by_id[m]] for m in verdict.merge]
    new = tips[len(merging) - 1]
    green = outcomes.get(len(merging))
    if checks.verify and not _verify(s, merging, new, tip):
        return
    _advance(s, merging, tip, new, checks, green, flaky=verdict.flaky)


def _culprit(s: _Step, req: MergeRequestRow, red: RunOutcome, below: RunOutcome | None, tip: str,
             checks: Checks) -> None:
    """The first failing request: its fault only when the tree below it is green (the green
    prefix from the bisection, or the target alone from a cached or fresh run)."""
    target_run = below if below is not None and below.passed else ledger.cached_run(
        s.town, s.rig, red.target_sha, red.command)
    action = decide.on_test(req.queued(), red, target_run, checks, s.alive(req), s.cfg, s.target, s.queue_facts(),
                            s.clock(), s.history(req))
    if isinstance(action, decide.TestTarget):
        target_run = _test_target(s, action.sha)
        action = decide.on_target_run(req.queued(), red, target_run, s.alive(req), s.cfg, s.target, s.queue_facts(),
                                      s.clock(), s.history(req))
    _apply_check(s, req, action, red)


def _verify(s: _Step, merging: Sequence[MergeRequestRow], new: str, tip: str) -> bool:
    """Each request verified on the tree that would land; any but PASS merges nothing this step."""
    for req in merging:
        gitops.reset_worktree(s.worktree, new)
        try:
            out = s.verify(s.town, req, s.worktree, s.config.verify_level, tip)
        except readiness.TownCannotVerify as exc:  # not the request's fault: the queue waits for the town
            _hold(s, merging, HoldKind.VERIFY_UNAVAILABLE, exc.reason, exc.key)
            return False
        action = decide.on_verify(req.queued(), out, s.alive(req), s.cfg, s.clock(), s.history(req))
        if isinstance(action, decide.Proceed):  # recorded too: the history shows what let it merge
            ledger.note(s.town, req.id, s.actor, {"check": "verify", "outcome": out.status.value,
                                                  "command": out.command, "candidate_sha": out.candidate_sha,
                                                  "target_sha": out.target_sha, "duration_s": out.duration_s})
            continue
        _apply_check(s, req, action, out)
        for other in merging:
            if other.id != req.id:
                _requeue(s, other, f"re-queued: {req.id} in the same batch did not pass verification")
        return False
    return True


def _advance(s: _Step, merging: Sequence[MergeRequestRow], tip: str, new: str, checks: Checks,
             green: RunOutcome | None, flaky: bool) -> None:
    """Move the target to `new` (push confirmed, update-ref), then the bookkeeping per request."""
    now_tip = s.sync().sha
    bead_rows = {r.bead: [x.queued() for x in ledger.list_requests(s.town, bead=r.bead)] for r in merging}
    stale = [r for r in merging if queue.superseded(r.queued(), bead_rows[r.bead])]
    for req in stale:
        ledger.transition(s.town, req.id, MRState.REJECTED, s.actor,
                          {"reason": "superseded: a newer commit for this bead is queued"}, owner=s.owner)
        s.report.rejected.append(req.id)
    if stale:
        for req in merging:
            if req not in stale:
                _requeue(s, req, "re-queued: a request in its batch was superseded")
        return
    first = merging[0].queued()
    plan = decide.before_advance(tip, now_tip, new, checks)
    if isinstance(plan, decide.Restart):
        _restart(s, merging, plan.reason)
        return
    if s.keeper.lost:
        s.report.error = "the rig's queue lease was lost before the advance; nothing was merged"
        return
    upstream: str | None = None
    refused: str | None = None
    with gitops.locked(s.town.layout.rig_sync_lock(s.rig)):
        applied = True
        if s.pushing:  # the upstream's non-force push is the first compare-and-set
            pushed, message = gitops.push(s.clone, s.target, new)
            applied = pushed
            if pushed:
                upstream = gitops.upstream_tip(s.clone, s.target)
            else:
                refused = message or "git gave no reason"
        if applied:
            local = gitops.advance(s.clone, s.target, new, plan.old)
            # refused but already there: `rig sync` fast-forwarded the clone to the upstream we pushed
            applied = local or gitops.tip(s.clone, s.target) == new
            blocked = None if applied else gitops.checkout_blocked(s.clone, s.target, plan.old, new)
            if blocked is not None:  # the clone's own files would be overwritten: say so, not "moved"
                _restart(s, merging, f"{s.target} in {s.clone} was not moved to {new[:12]}: {blocked}")
                return
    if refused is not None:
        _push_refused(s, merging, plan.old, refused)
        return
    result = decide.on_advance(first, plan, applied, upstream if s.pushing else None, s.target)
    if isinstance(result, decide.Restart):
        _restart(s, merging, result.reason)
        return
    pause_at("advanced")
    evidence: dict[str, Any] = {"target_sha": tip, "merged_sha": new, "target": s.target, "pushed": s.pushing,
                                "upstream_sha": upstream, "untested": checks.untested, "flaky": flaky}
    if green is not None:
        evidence.update(_run_evidence(green))
    s.report.merged_sha = new
    for req in merging:
        finish = decide.Finish(merged_sha=new, close_reason=result.close_reason,
                               mails=decide.merged_mails(req.queued(), new, s.target, checks.untested))
        _finish(s, req, finish, evidence)
        s.report.merged.append(req.id)
    for req in merging:
        _cleanup(s, ledger.get(s.town, req.id))


def _push_refused(s: _Step, merging: Sequence[MergeRequestRow], tested_on: str, message: str) -> None:
    """The upstream refused the push. Git's reason is recorded on every request (back to
    queued, no attempt counted: not their fault); then either a restart (the upstream moved:
    something changed, test again) or ONE hold of the queue with that reason (decide)."""
    checkout = gitops.upstream_checkout(s.clone, s.target)
    action = decide.on_push_refused(s.rig, s.target, git.remote_url(s.clone, gitops.REMOTE), message, tested_on,
                                    gitops.upstream_tip(s.clone, s.target), str(checkout) if checkout else None,
                                    gitops.checkout_changes(checkout) if checkout else "")
    for req in merging:
        ledger.transition(s.town, req.id, MRState.QUEUED, s.actor,
                          {"reason": action.reason, "push_refused": message, "tested_sha": req.candidate_sha},
                          owner=s.owner)
        s.report.requeued.append(req.id)
    if isinstance(action, decide.Restart):
        s.report.restarted = action.reason
    else:
        _hold_queue(s, action)


def _upstream_dirty(s: _Step) -> decide.HoldQueue | None:
    """Before claiming: the upstream is a person's checkout of the target with uncommitted
    changes, so a push would be refused; hold instead of testing for nothing."""
    checkout = gitops.upstream_checkout(s.clone, s.target) if s.pushing else None
    changes = gitops.checkout_changes(checkout) if checkout is not None else ""
    if checkout is None or not changes.strip():
        return None
    return decide.HoldQueue(HoldKind.UPSTREAM_DIRTY, decide.upstream_dirty_reason(str(checkout), s.target, changes))


def _hold_queue(s: _Step, action: decide.HoldQueue) -> None:
    """Hold the rig's queue for a refused push or a dirty upstream checkout (ledger.hold writes
    nothing, so escalates nothing, when the same hold stands); its key is the cause's
    fingerprint now, as HOLD_PROBES sees it."""
    probe = HOLD_PROBES.get(action.kind)
    key = (probe(s) if probe is not None else None) or action.kind.value
    ledger.hold(s.town, s.rig, action.kind, action.reason, key, s.clock(), s.actor)
    s.report.paused = f"held ({action.kind.value}): {action.reason}"


def _probe_push(s: _Step) -> str | None:
    """PUSH_REFUSED's fingerprint: what would make the same push go differently - the upstream
    (its URL, its target's tip by ls-remote), its checkout's state, and the push settings."""
    checkout = gitops.upstream_checkout(s.clone, s.target)
    changes = gitops.checkout_changes(checkout, untracked=True) if checkout is not None else ""
    digest = hashlib.sha256(changes.encode()).hexdigest()[:16]
    return "\x00".join(("push", git.remote_url(s.clone, gitops.REMOTE), s.cfg.push, s.target,
                        gitops.upstream_tip(s.clone, s.target) or "-", str(checkout), digest))


def _probe_upstream_dirty(s: _Step) -> str | None:
    """UPSTREAM_DIRTY's fingerprint: the same while the upstream's checkout of the target has
    uncommitted changes (one hold, one escalation, however the changes evolve); another once it
    is clean, no longer checked out, or nothing is pushed (the hold is then released)."""
    checkout = gitops.upstream_checkout(s.clone, s.target) if s.pushing else None
    if checkout is None or not gitops.checkout_changes(checkout).strip():
        return "upstream-clean"
    return f"upstream-dirty\x00{checkout}\x00{s.target}"


def _probe_verify(s: _Step) -> str | None:
    """VERIFY_UNAVAILABLE's fingerprint: the rig's level, its inspector settings (or why they are
    invalid) and what the command resolves to (readiness.fingerprint); it changes once town.toml
    is edited or the command appears, and the held work is verified again."""
    return readiness.fingerprint(s.town, s.config)


HOLD_PROBES[HoldKind.VERIFY_UNAVAILABLE] = _probe_verify
HOLD_PROBES[HoldKind.PUSH_REFUSED] = _probe_push
HOLD_PROBES[HoldKind.UPSTREAM_DIRTY] = _probe_upstream_dirty


def _restart(s: _Step, reqs: Sequence[MergeRequestRow], reason: str) -> None:
    s.report.restarted = reason
    for req in reqs:
        _requeue(s, req, reason)


# ---- effects of the decisions ----------------------------------------------------------------------------


def _run_evidence(out: RunOutcome) -> dict[str, Any]:
    return {"run": out.kind.value, "status": out.status.value, "command": out.command,
            "exit_status": out.exit_status, "duration_s": out.duration_s, "output_tail": out.output_tail,
            "tested_sha": out.candidate_sha, "criterion": out.criterion}


def _requeue(s: _Step, req: MergeRequestRow, reason: str) -> None:
    ledger.transition(s.town, req.id, MRState.QUEUED, s.actor, {"reason": reason}, owner=s.owner)
    s.report.requeued.append(req.id)


def _mail(conn: Any, s: _Step, to: str, msg: protocol.ProtocolMessage, key: str) -> None:
    subject, body = protocol.format(msg)
    mail.send_in_txn(conn, s.town.db, s.actor, to, subject, body, idempotency_key=key)


def _finish(s: _Step, req: MergeRequestRow, finish: Finish, evidence: dict[str, Any]) -> None:
    """merged with its sha, the bead closed (its convoys land), MERGED mail: one transaction,
    so a crash leaves all of it or none (and none is redone from the recorded state)."""
    with s.town.db.write() as conn:
        row = ledger.fetch_in_txn(conn, req.id)
        if row.state is MRState.MERGED:
            return
        ledger.transition_in_txn(conn, req.id, MRState.MERGED, s.actor,
                                 {**evidence, "merged_sha": finish.merged_sha, "recovered": finish.recovered},
                                 owner=s.owner, merged_sha=finish.merged_sha, untested=row.untested)
        for bead_id in (req.bead, req.id):  # the source bead, and the merge-request bead of the same id
            bead = conn.execute("SELECT status FROM issues WHERE id = ?", (bead_id,)).fetchone()
            if bead is not None and bead[0] != "closed":
                beads.close_in_txn(conn, s.town.db, bead_id, finish.close_reason, s.actor)
        for to, msg in finish.mails:
            _mail(conn, s, to, msg, f"mq-merged:{req.id}:{to}")


def _send_back(s: _Step, req: MergeRequestRow, action: SendBack, evidence: dict[str, Any]) -> None:
    """conflict/rework: the bead back on the polecat's hook when it is alive (its next
    polecat_done makes a new request), else to the witness to re-dispatch; mail and comment."""
    with s.town.db.write() as conn:
        ledger.transition_in_txn(conn, req.id, action.state, s.actor, {**evidence, "reason": action.comment},
                                 owner=s.owner, attempts=req.attempts + 1)
        stamp, ts = timeutil.now()
        beads.add_comment(conn, req.bead, s.actor, f"merge request {req.id}: {action.comment}", stamp)
        to = action.polecat or decide.witness_of(s.rig)
        if action.polecat:
            hooked = conn.execute("UPDATE issues SET status = 'hooked', updated_at = ?, updated_ts = ? WHERE id = ? "
                                  "AND assignee = ? AND status = 'in_progress'", (stamp, ts, req.bead, action.polecat))
            name = action.polecat.rsplit("/", 1)[-1]
            if hooked.rowcount:  # `started`: the runner's patrol gives it the GUPP nudge for its hooked work
                conn.execute("UPDATE polecats SET state = ? WHERE rig = ? AND name = ? AND bead_id = ?",
                             (PolecatState.STARTED.value, s.rig, name, req.bead))
        s.town.db.touch("issues")
        _mail(conn, s, to, action.message, f"mq-rework:{req.id}")
    (s.report.reworked if action.state is MRState.REWORK else s.report.conflicts).append(req.id)


def _escalate(s: _Step, req: MergeRequestRow, action: Escalate, evidence: dict[str, Any]) -> None:
    with s.town.db.write() as conn:
        row = ledger.fetch_in_txn(conn, req.id)
        fields: dict[str, Any] = {"not_before": None}
        if action.state in (MRState.CONFLICT, MRState.REWORK):
            fields["attempts"] = row.attempts + 1
        if action.state is MRState.FAILED:
            fields["failures"] = row.failures + 1
        ledger.transition_in_txn(conn, req.id, action.state, s.actor, {**evidence, "reason": action.comment,
                                                                        "escalated_to": action.to},
                                 owner=s.owner, **fields)
        if conn.execute("SELECT 1 FROM issues WHERE id = ?", (req.bead,)).fetchone():
            beads.add_comment(conn, req.bead, s.actor, f"merge request {req.id}: {action.comment}",
                              timeutil.now()[0])
            s.town.db.touch("issues")
        # recorded with its mail: one standing escalation per (request, state), resolved when it leaves the state
        patrol_log.raise_escalation_in_txn(conn, s.town.db, ledger.refinery_patrol(s.rig), s.actor,
                                           ledger.mr_escalation_key(req.id, action.state), action.to,
                                           action.message, action.comment, s.clock(), agent=req.polecat or None)
    s.report.escalated.append(req.id)
    {MRState.REJECTED: s.report.rejected, MRState.FAILED: s.report.failed, MRState.REWORK: s.report.reworked,
     MRState.CONFLICT: s.report.conflicts}.get(action.state, []).append(req.id)


def _apply_check(s: _Step, req: MergeRequestRow, action: object, out: RunOutcome) -> None:
    """The verdict on a red (or could-not-run) run for one request."""
    evidence = _run_evidence(out)
    if isinstance(action, SendBack):
        _send_back(s, req, action, evidence)
    elif isinstance(action, Escalate):
        _escalate(s, req, action, evidence)
    elif isinstance(action, Retry):
        ledger.transition(s.town, req.id, MRState.FAILED, s.actor, {**evidence, "reason": action.reason},
                          owner=s.owner, failures=action.failures, not_before=action.not_before)
        s.report.failed.append(req.id)
    elif isinstance(action, PauseQueue):
        _pause(s, req, action, out)
    else:
        raise TypeError(f"no effect for {action!r}")


def _pause(s: _Step, req: MergeRequestRow, action: PauseQueue, out: RunOutcome) -> None:
    """The target itself is red: the request back to queued (not its fault), the queue paused,
    one bug bead per cause, one ESCALATION."""
    with s.town.db.write() as conn:
        ledger.transition_in_txn(conn, req.id, MRState.QUEUED, s.actor,
                                 {**_run_evidence(out), "reason": f"target {action.sha} is red; queue paused"},
                                 owner=s.owner)
        ledger.pause_in_txn(conn, s.rig, action.sha, f"{s.target} fails its tests at {action.sha}")
        if action.bug is not None:
            digest = hashlib.sha256(action.bug.key.encode()).hexdigest()[:16]
            bug_id = ids.new_bead_id(conn, s.town.prefix_for_rig(s.rig), f"mq-bug\x00{digest}")
            beads.insert(conn, s.town.db, bead_id=bug_id, title=action.bug.title[:400], actor=s.actor,
                         description=action.bug.description, issue_type="bug", priority=0)
            ledger.record_bug_in_txn(conn, action.bug.key, s.rig, bug_id)
            s.town.db.touch("issues")
        if action.escalation is not None:  # stands until the queue resumes (ledger.unpause resolves it)
            patrol_log.raise_escalation_in_txn(conn, s.town.db, ledger.refinery_patrol(s.rig), s.actor,
                                               ledger.target_red_key(s.rig, action.sha), decide.MAYOR,
                                               action.escalation,
                                               f"{s.target} fails its tests at {action.sha}; queue paused", s.clock())
    s.report.requeued.append(req.id)
    s.report.paused = f"{s.target} fails its tests at {action.sha}"


# ---- cleanup --------------------------------------------------------------------------------------------


def _cleanup(s: _Step, req: MergeRequestRow) -> None:
    """The polecat's worktree and branch go only when every one of its commits is on the target;
    its slot is freed. Idempotent: a crash in the middle is finished by the next step."""
    target_tip = gitops.tip(s.clone, s.target)
    since = req.target_sha
    if target_tip is None or since is None or not gitops.commit_exists(s.clone, since):
        _cleaned(s, req, {"cleanup": "kept", "reason": "no recorded base to prove the polecat's commits merged"})
        return
    branch_tip = gitops.tip(s.clone, req.branch) if gitops.branch_exists(s.clone, req.branch) else None
    head = branch_tip or (req.commit if gitops.commit_exists(s.clone, req.commit) else None)
    commits = gitops.commits_between(s.clone, since, head) if head else []
    found = gitops.presence(s.clone, commits, target_tip, since, squash=req.candidate_sha)
    action = decide.cleanup(req.branch, found)
    worktree, slot = _polecat_place(s, req)
    if isinstance(action, decide.Cleanup) and worktree is not None and gitops.worktree_dirty(worktree):
        action = decide.Keep(missing=(), reason=f"{worktree} has uncommitted changes")
    if not commits and branch_tip is None and (worktree is None or not worktree.exists()):
        action = decide.Cleanup(branch=req.branch)  # a crash after the branch went: only the slot is left
    if isinstance(action, decide.Keep):
        _cleaned(s, req, {"cleanup": "kept", "reason": action.reason, "missing": list(action.missing)})
        s.report.kept.append(req.id)
        return
    removed = gitops.remove_worktree(s.clone, worktree) if worktree is not None else False
    pause_at("cleanup")
    deleted = gitops.delete_branch(s.clone, req.branch)
    released = False
    if slot is not None:
        if s.kill_session is not None:
            s.kill_session(req.polecat)
        polecat.release(s.town, s.rig, slot, reopen_bead=False)
        released = True
    _cleaned(s, req, {"cleanup": "done", "worktree_removed": removed, "branch_deleted": deleted,
                      "slot_released": released, "commits": {k: v.value for k, v in found.items()}})
    s.report.cleaned.append(req.id)


def _polecat_place(s: _Step, req: MergeRequestRow) -> tuple[Path | None, str | None]:
    """(the polecat's worktree if it is on this request's branch, its slot name if it still
    holds this bead). A slot or worktree since reused for other work is not touched."""
    try:
        address = parse_address(req.polecat)
    except InvalidInput:
        return None, None
    if address.role is not Role.POLECAT or address.name is None:
        return None, None
    path = s.town.layout.polecat_worktree(s.rig, address.name)
    worktree = path if git.is_worktree(path) and git.current_branch(path) == req.branch else None
    with s.town.db.read() as conn:
        row = conn.execute("SELECT bead_id, branch FROM polecats WHERE rig = ? AND name = ?",
                           (s.rig, address.name)).fetchone()
    slot = address.name if row is not None and row[0] == req.bead else None
    return worktree, slot


def _cleaned(s: _Step, req: MergeRequestRow, evidence: dict[str, Any]) -> None:
    ledger.note(s.town, req.id, s.actor, evidence, cleaned_at=timeutil.now()[0])

