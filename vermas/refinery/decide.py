"""The per-request pipeline's decisions: pure functions from observed facts to typed actions.

The effect layer observes (git, the store, the clock), calls one of these, and carries out the
action it gets, recording the transition with its evidence in one transaction. Order of use:

    check_source -> on_rebase -> plan_checks -> on_test (-> on_target_run) -> on_verify
    -> before_advance -> on_advance -> (MERGED bookkeeping) -> cleanup
    on_resume after a restart, for a request found claimed/testing; queue_gate before a batch.

Who gets mail: REWORK_REQUEST goes to the polecat that takes the work back (the same one when
its session is alive, else a new one on the same branch); ESCALATION to the mayor; MERGED to
the rig's witness and the polecat.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from vermas.protocol import Escalation, Merged, ReworkRequest
from vermas.refinery.types import (
    CANNOT_RUN_TRIES, RETRY_BACKOFF_CAP_S, RETRY_BACKOFF_S, HoldKind, MergeConfig, MRState, QueuedRequest,
    QueueHold, RunKind, RunOutcome, RunStatus,
)

MAYOR = "mayor"
LINE_MAX = 300  # protocol header values are one line of at most this many characters


def _line(text: str) -> str:
    """A protocol header value: one line, clipped."""
    flat = " ".join(text.split()) or "-"
    return flat if len(flat) <= LINE_MAX else flat[:LINE_MAX - 3] + "..."


def witness_of(rig: str) -> str:
    return f"{rig}/witness"


# ---- actions ---------------------------------------------------------------------------------


class Step(StrEnum):
    REBASE = "rebase"
    TEST = "test"
    VERIFY = "verify"
    ADVANCE = "advance"


@dataclass(frozen=True)
class Proceed:
    """Nothing to record: go on to `step`."""

    step: Step


@dataclass(frozen=True)
class SendBack:
    """conflict or rework: the bead goes back to a polecat with this REWORK_REQUEST, and the
    comment goes on the bead. `polecat` is who takes it: the same one when alive, else None
    (allocate a new polecat on the same branch). Its next polecat_done makes a new request."""

    state: MRState
    message: ReworkRequest
    comment: str
    polecat: str | None


@dataclass(frozen=True)
class Escalate:
    """ESCALATION to the mayor; the request takes `state`; the branch is kept."""

    state: MRState
    message: Escalation
    comment: str
    to: str = MAYOR
    keep_branch: bool = True


@dataclass(frozen=True)
class Retry:
    """Could not check it: `failed` now, back to queued at `not_before` (the backoff)."""

    state: MRState
    not_before: float
    failures: int
    reason: str


@dataclass(frozen=True)
class TestTarget:
    """No cached run of the target at this sha: test the target alone, then `on_target_run`."""

    sha: str
    __test__ = False


@dataclass(frozen=True)
class BugBead:
    """A bug bead to file for a red target; `key` dedups it (never twice for one cause)."""

    key: str
    title: str
    description: str


@dataclass(frozen=True)
class PauseQueue:
    """The target itself is red: nothing merges onto it. The request goes back to queued
    (not its fault); file `bug` and send `escalation` unless this cause was already reported."""

    requeue: str
    sha: str
    bug: BugBead | None
    escalation: Escalation | None


@dataclass(frozen=True)
class Restart:
    """Start again from fetch (the target moved, or a crash left it unfinished)."""

    reason: str


@dataclass(frozen=True)
class Advance:
    """Move the target from `old` to `new` by compare-and-set; `untested` is carried to MERGED."""

    old: str
    new: str
    untested: bool


@dataclass(frozen=True)
class Finish:
    """The target has the work at `merged_sha`: record merged, close the bead, mail MERGED.
    Never merges again (crash recovery lands here too)."""

    merged_sha: str
    close_reason: str
    mails: tuple[tuple[str, Merged], ...]
    recovered: bool = False


@dataclass(frozen=True)
class Cleanup:
    """Every polecat commit is on the target: remove its worktree, delete its branch, free its slot."""

    branch: str


@dataclass(frozen=True)
class Keep:
    """Some polecat commits are not on the target: keep worktree and branch."""

    missing: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class Resume:
    """The queue was paused for a red target that is now green (or the overseer resumed it)."""

    sha: str


@dataclass(frozen=True)
class StayPaused:
    sha: str
    reason: str


@dataclass(frozen=True)
class StayHeld:
    """The queue's hold stands: its cause (as the probe sees it) has not changed."""

    reason: str


@dataclass(frozen=True)
class ReleaseHold:
    """The hold's cause changed (or a person resumed the queue): release it and go on."""

    reason: str


# ---- facts -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RebaseResult:
    """The rebase of the candidate onto `target_sha`: clean (onto `rebased_sha`) or conflicting."""

    target_sha: str
    rebased_sha: str | None = None
    conflict_files: tuple[str, ...] = ()

    @property
    def clean(self) -> bool:
        return self.rebased_sha is not None and not self.conflict_files


@dataclass(frozen=True)
class QueueFacts:
    """The rig queue's state the target-red rule needs."""

    paused: bool = False
    open_bug_keys: frozenset[str] = frozenset()


class Presence(StrEnum):
    """Where a polecat commit is, seen from the target."""

    REACHABLE = "reachable"  # an ancestor of the target
    EQUIVALENT = "equivalent"  # its patch is on the target (git cherry '-': rebased)
    SQUASHED = "squashed"  # inside the bead's squash commit, which is on the target (proven by patch)
    MISSING = "missing"


# ---- decisions -------------------------------------------------------------------------------


def check_source(req: QueuedRequest, branch_exists: bool, commit_exists: bool) -> Proceed | Escalate:
    """The candidate's branch or commit is gone: rejected with ESCALATION, never silently closed."""
    if branch_exists and commit_exists:
        return Proceed(Step.REBASE)
    what = "branch and commit" if not branch_exists and not commit_exists else (
        "branch" if not branch_exists else "commit")
    gone = f"{req.branch}" if not branch_exists else req.commit
    text = (f"merge request {req.id} for {req.bead}: its {what} ({gone}) no longer exists, so it cannot be "
            f"merged. Re-sling the bead or restore the branch; the request is rejected.")
    return Escalate(state=MRState.REJECTED, comment=text, message=Escalation(
        bead=req.bead, polecat=req.polecat or None, merge_request=req.id, reason="source-gone", rig=req.rig,
        branch=req.branch, text=text))


def _attempts_exhausted(req: QueuedRequest, cfg: MergeConfig) -> bool:
    """This send-back would be attempt number attempts + 1; max_attempts of them escalate."""
    return req.attempts + 1 >= cfg.max_attempts


def _exhausted(req: QueuedRequest, state: MRState, why: str, target_sha: str, history: str) -> Escalate:
    text = (f"{req.bead} ({req.branch}) was sent back {req.attempts + 1} times; last: {why}. The branch is "
            f"kept for a person to judge.\n\n{history}").rstrip()
    return Escalate(state=state, comment=text, message=Escalation(
        bead=req.bead, polecat=req.polecat or None, merge_request=req.id, reason="attempts-exhausted",
        rig=req.rig, branch=req.branch, target_sha=target_sha, text=text))


def on_rebase(req: QueuedRequest, result: RebaseResult, polecat_alive: bool, cfg: MergeConfig,
              history: str = "") -> Proceed | SendBack | Escalate:
    """A conflict goes back to a polecat with the files and the target sha; after max_attempts
    send-backs it is escalated instead (the branch kept)."""
    if result.clean:
        return Proceed(Step.TEST)
    files = ", ".join(result.conflict_files) or "(git named none)"
    why = f"rebase onto {result.target_sha} conflicts in {files}"
    if _attempts_exhausted(req, cfg):
        return _exhausted(req, MRState.CONFLICT, why, result.target_sha, history)
    text = (f"Your branch {req.branch} does not rebase onto the target at {result.target_sha}: conflicts in "
            f"{files}. Rebase onto it, resolve them, commit, and call polecat_done again.")
    return SendBack(state=MRState.CONFLICT, comment=why, polecat=req.polecat if polecat_alive and req.polecat
                    else None, message=ReworkRequest(
                        bead=req.bead, merge_request=req.id, polecat=req.polecat or None, branch=req.branch,
                        reason="conflict", target_sha=result.target_sha, files=_line(files),
                        attempt=str(req.attempts + 1), text=text))


@dataclass(frozen=True)
class Checks:
    """What the pipeline runs for a rig: tests unless it has no test command (then the merge is
    marked untested, loudly), verification unless its level is explicitly `off`."""

    run_tests: bool
    verify: bool

    @property
    def untested(self) -> bool:
        return not self.run_tests


def plan_checks(test_command: str, verify_level: str) -> Checks:
    return Checks(run_tests=bool(test_command.strip()), verify=verify_level.strip() != "off")


def _cannot_run(req: QueuedRequest, outcome: RunOutcome, now: float) -> Retry | Escalate:
    """Checks could not run (tool missing, model unavailable): failed with backoff; after
    CANNOT_RUN_TRIES, ESCALATION. Never a merge without the check."""
    failures = req.failures + 1
    why = f"{outcome.kind} could not run ({outcome.command}): {outcome.output_tail[-200:]}".strip()
    if failures >= CANNOT_RUN_TRIES:
        text = (f"{req.bead} ({req.branch}): {outcome.kind} could not run {failures} times; the request stays "
                f"failed until someone fixes the cause and retries it (mq retry {req.id}).\n\n{why}")
        return Escalate(state=MRState.FAILED, comment=text, message=Escalation(
            bead=req.bead, polecat=req.polecat or None, merge_request=req.id, reason="cannot-verify", rig=req.rig,
            branch=req.branch, target_sha=outcome.target_sha, text=text))
    return Retry(state=MRState.FAILED, not_before=now + backoff(failures), failures=failures, reason=why)


def backoff(failures: int) -> float:
    """Seconds to wait after the n-th "could not run": RETRY_BACKOFF_S doubling, capped."""
    return float(min(RETRY_BACKOFF_CAP_S, RETRY_BACKOFF_S * 2 ** max(0, failures - 1)))


def _rework(req: QueuedRequest, outcome: RunOutcome, polecat_alive: bool, cfg: MergeConfig,
            history: str) -> SendBack | Escalate:
    what = (f"verification criterion {outcome.criterion}" if outcome.kind is RunKind.VERIFY and outcome.criterion
            else f"`{outcome.command}`")
    how = "timed out" if outcome.status is RunStatus.TIMED_OUT else f"exited {outcome.exit_status}"
    if outcome.kind is RunKind.VERIFY:  # a verdict on the candidate, not a test of the target
        why = f"{what} failed on {outcome.candidate_sha} (rebased onto {outcome.target_sha})"
    else:
        why = f"{what} {how} on {outcome.candidate_sha} (target {outcome.target_sha} is green)"
    if _attempts_exhausted(req, cfg):
        return _exhausted(req, MRState.REWORK, why, outcome.target_sha, f"{history}\n\n{outcome.output_tail}")
    text = f"{why}. Fix it on {req.branch}, commit, and call polecat_done again.\n\n{outcome.output_tail}".rstrip()
    return SendBack(state=MRState.REWORK, comment=f"{why}\n\n{outcome.output_tail}".rstrip(),
                    polecat=req.polecat if polecat_alive and req.polecat else None, message=ReworkRequest(
                        bead=req.bead, merge_request=req.id, polecat=req.polecat or None, branch=req.branch,
                        reason="tests" if outcome.kind is RunKind.TEST else "verification",
                        target_sha=outcome.target_sha, command=_line(outcome.criterion or outcome.command),
                        exit_status=None if outcome.exit_status is None else str(outcome.exit_status),
                        attempt=str(req.attempts + 1), text=text))


def target_red_key(rig: str, target_branch: str, sha: str, command: str) -> str:
    """One cause of a red target: this rig's branch failing this command at this sha."""
    return f"target-red\x00{rig}\x00{target_branch}\x00{sha}\x00{command}"


def _pause(req: QueuedRequest, target_run: RunOutcome, target_branch: str, queue: QueueFacts) -> PauseQueue:
    sha = target_run.candidate_sha
    key = target_red_key(req.rig, target_branch, sha, target_run.command)
    title = f"{target_branch} fails its tests at {sha}"
    description = (f"rig {req.rig}: `{target_run.command}` "
                   f"{'timed out' if target_run.status is RunStatus.TIMED_OUT else f'exited {target_run.exit_status}'}"
                   f" on {target_branch} at {sha} alone; the merge queue is paused until it tests green "
                   f"(or the overseer resumes it).\n\n{target_run.output_tail}").rstrip()
    bug = None if key in queue.open_bug_keys else BugBead(key=key, title=title, description=description)
    escalation = None if queue.paused else Escalation(
        bead=None, merge_request=req.id, reason="target-red", rig=req.rig, branch=target_branch, target_sha=sha,
        text=description)
    return PauseQueue(requeue=req.id, sha=sha, bug=bug, escalation=escalation)


def on_test(req: QueuedRequest, outcome: RunOutcome, target_run: RunOutcome | None, checks: Checks,
            polecat_alive: bool, cfg: MergeConfig, target_branch: str, queue: QueueFacts, now: float,
            history: str = "") -> Proceed | TestTarget | SendBack | Escalate | PauseQueue | Retry:
    """The candidate's test run. Green: verify (or advance). Red: the candidate is at fault only
    if the target alone is green at the sha it was rebased onto (a cached run; ask for one when
    there is none); a red target pauses the queue. In a stack, the "target" is the prefix below."""
    if outcome.kind is not RunKind.TEST:
        raise ValueError(f"on_test got a {outcome.kind} run")
    if outcome.passed:
        return Proceed(Step.VERIFY if checks.verify else Step.ADVANCE)
    if outcome.status is RunStatus.COULD_NOT_RUN:
        return _cannot_run(req, outcome, now)
    if target_run is None or target_run.candidate_sha != outcome.target_sha or target_run.kind is not RunKind.TEST:
        return TestTarget(outcome.target_sha)
    return on_target_run(req, outcome, target_run, polecat_alive, cfg, target_branch, queue, now, history)


def on_target_run(req: QueuedRequest, outcome: RunOutcome, target_run: RunOutcome, polecat_alive: bool,
                  cfg: MergeConfig, target_branch: str, queue: QueueFacts, now: float,
                  history: str = "") -> SendBack | Escalate | PauseQueue | Retry:
    """The candidate was red; `target_run` is the target alone at the sha it was rebased onto."""
    if target_run.candidate_sha != outcome.target_sha:
        raise ValueError(f"target run is for {target_run.candidate_sha}, the candidate was on {outcome.target_sha}")
    if target_run.passed:
        return _rework(req, outcome, polecat_alive, cfg, history)
    if target_run.status is RunStatus.COULD_NOT_RUN:
        return _cannot_run(req, target_run, now)
    return _pause(req, target_run, target_branch, queue)


def on_verify(req: QueuedRequest, outcome: RunOutcome, polecat_alive: bool, cfg: MergeConfig, now: float,
              history: str = "") -> Proceed | SendBack | Escalate | Retry:
    """Verification on the rebased tree: only a PASS advances; FAIL is the candidate's (rework);
    could-not-run is failed with backoff."""
    if outcome.kind is not RunKind.VERIFY:
        raise ValueError(f"on_verify got a {outcome.kind} run")
    if outcome.passed:
        return Proceed(Step.ADVANCE)
    if outcome.status is RunStatus.COULD_NOT_RUN:
        return _cannot_run(req, outcome, now)
    return _rework(req, outcome, polecat_alive, cfg, history)


def before_advance(tested_on: str, target_now: str, candidate: str, checks: Checks,
                   superseded: bool = False) -> Advance | Restart:
    """The target must still be where the candidate was tested; else start again from fetch."""
    if superseded:
        return Restart("a newer commit for this bead is queued; this one is stale")
    if target_now != tested_on:
        return Restart(f"target moved from {tested_on} to {target_now} during the run")
    return Advance(old=tested_on, new=candidate, untested=checks.untested)


def merged_mails(req: QueuedRequest, merged_sha: str, target_branch: str, untested: bool) -> tuple[
        tuple[str, Merged], ...]:
    msg = Merged(bead=req.bead, merge_request=req.id, commit=req.commit, polecat=req.polecat or None,
                 merged_sha=merged_sha, target=target_branch, tests="untested" if untested else "passed",
                 text=f"merged in {merged_sha}" + (" (untested: the rig has no test command)" if untested else ""))
    to = [witness_of(req.rig)] + ([req.polecat] if req.polecat else [])
    return tuple((addr, msg) for addr in to)


def _finish(req: QueuedRequest, merged_sha: str, target_branch: str, untested: bool, recovered: bool) -> Finish:
    return Finish(merged_sha=merged_sha, close_reason=f"merged in {merged_sha}",
                  mails=merged_mails(req, merged_sha, target_branch, untested), recovered=recovered)


def on_advance(req: QueuedRequest, advance: Advance, cas_applied: bool, upstream_sha: str | None,
               target_branch: str) -> Finish | Restart:
    """After update-ref (and the push, when the rig has an upstream): announce only when the
    target (and the upstream) equals the new sha."""
    if not cas_applied:
        return Restart(f"target is no longer {advance.old}; update-ref refused")
    if upstream_sha is not None and upstream_sha != advance.new:
        return Restart(f"upstream is at {upstream_sha}, not {advance.new}; the push did not land")
    return _finish(req, advance.new, target_branch, advance.untested, recovered=False)


@dataclass(frozen=True)
class HoldQueue:
    """Hold the rig's queue: what stops it would stop the next try the same way (a refused
    push, a person's uncommitted change in the upstream's checkout). Nothing is claimed or
    tested again until the cause's fingerprint changes (worker.HOLD_PROBES)."""

    kind: HoldKind
    reason: str


def upstream_dirty_reason(checkout: str, target_branch: str, status: str) -> str:
    """Why a queue holds for a person's uncommitted change in the upstream's checkout."""
    files = [line[3:] for line in status.splitlines() if line.strip()]
    shown = ", ".join(files[:5]) + (f" and {len(files) - 5} more" if len(files) > 5 else "")
    return _line(f"the upstream {checkout} has {target_branch} checked out with uncommitted changes ({shown}); "
                 f"merges wait so they never overwrite them: commit or stash them and the queue resumes")


def on_push_refused(rig: str, target_branch: str, url: str, message: str, tested_on: str,
                    upstream_now: str | None, checkout: str | None, dirty: str) -> Restart | HoldQueue:
    """A refused push. If the upstream's branch moved since the candidate was tested (a person
    pushed), start again from fetch: something changed, a new test is due. Anything else (the
    upstream's checkout has changes, a hook or a permission said no) would be refused the same
    way again: hold the queue once with git's own words, and test nothing until it changes."""
    if checkout is not None and dirty.strip():
        return HoldQueue(HoldKind.UPSTREAM_DIRTY, upstream_dirty_reason(checkout, target_branch, dirty))
    if upstream_now is not None and upstream_now != tested_on:
        return Restart(_line(f"push refused: the upstream's {target_branch} moved to {upstream_now[:12]} since "
                             f"{tested_on[:12]} was tested; starting again from fetch ({message})"))
    return HoldQueue(HoldKind.PUSH_REFUSED, _line(
        f"push of {target_branch} to {url} refused: {message}; nothing is tested again until the upstream's "
        f"{target_branch}, its work tree or [rigs.{rig}.merge] changes"))


def on_resume(req: QueuedRequest, target_tip: str, recorded_merged_sha: str | None, merged_sha_on_target: bool,
              patch_on_target: str | None, target_branch: str, untested: bool = False) -> Finish | Restart:
    """A request found claimed or testing after a restart. If the target already has it (the
    recorded merged sha is the tip or its ancestor, or the candidate's patch is on the target),
    finish the bookkeeping: never merge it again. Else start again from fetch."""
    if recorded_merged_sha is not None and (target_tip == recorded_merged_sha or merged_sha_on_target):
        return _finish(req, recorded_merged_sha, target_branch, untested, recovered=True)
    if patch_on_target is not None:
        return _finish(req, patch_on_target, target_branch, untested, recovered=True)
    return Restart("interrupted before the target had it")


def cleanup(branch: str, commits: Mapping[str, Presence]) -> Cleanup | Keep:
    """The polecat's worktree and branch go only when every one of its commits is on the target
    (an ancestor, its patch after the rebase, or folded into the bead's squash commit, which
    gitops.squash_landed proved is on the target and carries the branch's whole change)."""
    missing = tuple(sha for sha, where in commits.items() if where is Presence.MISSING)
    if not commits:
        return Keep(missing=(), reason=f"no commits listed for {branch}; nothing proves it is merged")
    if missing:
        return Keep(missing=missing, reason=f"{len(missing)} commit(s) of {branch} are not on the target")
    return Cleanup(branch=branch)


def squash_message(req: QueuedRequest, title: str, subjects: Sequence[str]) -> str:
    """The one commit a bead lands as under strategy "squash": its subject names the bead (id
    and title), its body the polecat, the branch and commit it came from, and the commits it
    folds (they stay on the branch until the squash is proven on the target)."""
    name = _line(title) if title.strip() else req.bead
    body = [f"Bead: {req.bead} ({name})", f"Polecat: {req.polecat or 'unknown'}",
            f"Branch: {req.branch} at {req.commit}", f"Merge-Request: {req.id}",
            f"Squashed {len(subjects)} commit(s):", *(f"  {_line(line)}" for line in subjects)]
    return f"{req.bead}: {name}"[:LINE_MAX] + "\n\n" + "\n".join(body) + "\n"


def queue_gate(paused_sha: str | None, target_sha: str, target_run: RunOutcome | None,
               overseer_resumed: bool = False) -> Proceed | Resume | StayPaused | TestTarget:
    """Before a batch: a queue paused for a red target resumes when a new target sha tests green
    (or the overseer resumes it). Nothing is merged onto a red target."""
    if paused_sha is None:
        return Proceed(Step.REBASE)
    if overseer_resumed:
        return Resume(target_sha)
    if target_sha == paused_sha:
        return StayPaused(target_sha, f"target still at {paused_sha}, which failed its tests")
    if target_run is None or target_run.candidate_sha != target_sha:
        return TestTarget(target_sha)
    if target_run.passed:
        return Resume(target_sha)
    return StayPaused(target_sha, f"target at {target_sha} is {target_run.status.value}")


def hold_gate(hold: QueueHold | None, current_key: str | None,
              overseer_resumed: bool = False) -> Proceed | StayHeld | ReleaseHold:
    """Before anything else in a step: a held queue stays held while a probe of its cause sees
    the fingerprint it was held with. A different fingerprint means something changed (the
    command now resolves, the work tree is clean, the upstream moved, the config changed), so
    the queue is released and the work is tried again; the next failure holds it again, once.
    `current_key` None means the cause could not be probed: stay held rather than loop."""
    if hold is None:
        return Proceed(Step.REBASE)
    if overseer_resumed:
        return ReleaseHold("resumed by a person")
    if current_key is None or current_key == hold.key:
        return StayHeld(f"held ({hold.kind.value}): {hold.reason}")
    return ReleaseHold(f"the cause changed ({hold.kind.value}): released to try again")


def rework_history(attempts: Sequence[str]) -> str:
    """The history text an ESCALATION carries: one line per earlier send-back."""
    return "\n".join(f"{i}. {line}" for i, line in enumerate(attempts, 1))
