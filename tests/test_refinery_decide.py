"""The refinery pipeline's decisions (pure): every branch, from observed facts to the typed
action, and every message they produce is valid protocol mail (format/parse round trip)."""

from __future__ import annotations

from typing import Any

import pytest

from vermas import protocol
from vermas.refinery import decide
from vermas.refinery.decide import (
    Advance, Checks, Cleanup, Escalate, Finish, Keep, PauseQueue, Presence, Proceed, QueueFacts, RebaseResult,
    Restart, Resume, Retry, SendBack, StayPaused, Step, TestTarget,
)
from vermas.refinery.types import (
    CANNOT_RUN_TRIES, RETRY_BACKOFF_CAP_S, RETRY_BACKOFF_S, MergeConfig, MRState, QueuedRequest, RunKind,
    RunOutcome, RunStatus,
)

CFG = MergeConfig()
NOW = 1000.0
POLECAT = "gt/polecats/nux"
CHECKS = Checks(run_tests=True, verify=True)
OPEN_QUEUE = QueueFacts()


def req(**kw: Any) -> QueuedRequest:
    base: dict[str, Any] = dict(id="gt-mr1", rig="gt", bead="gt-a1", branch="polecat/nux/gt-a1", commit="c0ffee",
                                polecat=POLECAT, queued_at=0.0)
    return QueuedRequest(**{**base, **kw})


def run(status: RunStatus, *, kind: RunKind = RunKind.TEST, target: str = "t1", candidate: str = "k1",
        exit_status: int | None = 1, tail: str = "FAILED test_add", criterion: str | None = None) -> RunOutcome:
    return RunOutcome(kind=kind, status=status, command="pytest -q" if kind is RunKind.TEST else "shell",
                      exit_status=0 if status is RunStatus.PASSED else exit_status, duration_s=1.5,
                      output_tail=tail, target_sha=target, candidate_sha=candidate, criterion=criterion)


def target_alone(status: RunStatus, sha: str = "t1") -> RunOutcome:
    return run(status, target=sha, candidate=sha, tail="target log")


def assert_wire(msg: protocol.ProtocolMessage) -> None:
    assert protocol.parse(*protocol.format(msg)) == msg


# ---- the source ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("branch", "commit", "gone"), [(False, True, "branch"), (True, False, "commit"),
                                                        (False, False, "branch and commit")])
def test_a_gone_source_is_rejected_with_an_escalation(branch: bool, commit: bool, gone: str) -> None:
    action = decide.check_source(req(), branch, commit)
    assert isinstance(action, Escalate) and action.state is MRState.REJECTED and action.to == "mayor"
    assert f"its {gone} (" in action.message.text and action.message.reason == "source-gone"
    assert action.comment  # never silently closed: the bead says why
    assert_wire(action.message)


def test_a_present_source_goes_on_to_the_rebase() -> None:
    assert decide.check_source(req(), True, True) == Proceed(Step.REBASE)


# ---- rebase --------------------------------------------------------------------------------------


def test_a_clean_rebase_goes_on_to_the_tests() -> None:
    assert decide.on_rebase(req(), RebaseResult("t1", rebased_sha="k1"), True, CFG) == Proceed(Step.TEST)


@pytest.mark.parametrize(("alive", "taker"), [(True, POLECAT), (False, None)])
def test_a_conflict_goes_back_naming_files_and_target_sha(alive: bool, taker: str | None) -> None:
    action = decide.on_rebase(req(), RebaseResult("t1", conflict_files=("calc.py", "README.md")), alive, CFG)
    assert isinstance(action, SendBack) and action.state is MRState.CONFLICT
    assert action.polecat == taker  # the same polecat if alive, else a new one on the branch
    msg = action.message
    assert (msg.reason, msg.files, msg.target_sha, msg.branch, msg.attempt) == (
        "conflict", "calc.py, README.md", "t1", "polecat/nux/gt-a1", "1")
    assert "calc.py" in action.comment and "t1" in action.comment
    assert_wire(msg)


def test_conflicts_escalate_after_max_attempts_keeping_the_branch() -> None:
    conflict = RebaseResult("t9", conflict_files=("calc.py",))
    assert isinstance(decide.on_rebase(req(attempts=1), conflict, True, CFG), SendBack)  # 2nd of 3
    action = decide.on_rebase(req(attempts=2), conflict, True, CFG, history=decide.rework_history(
        ["conflict in calc.py at t7", "conflict in calc.py at t8"]))
    assert isinstance(action, Escalate) and action.state is MRState.CONFLICT and action.keep_branch
    assert action.message.reason == "attempts-exhausted" and action.message.target_sha == "t9"
    assert "1. conflict in calc.py at t7\n2. conflict in calc.py at t8" in action.message.text
    assert_wire(action.message)
    one = MergeConfig(max_attempts=1)
    assert isinstance(decide.on_rebase(req(), conflict, True, one), Escalate)


# ---- checks --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("command", "level", "run_tests", "verify"), [
    ("pytest -q", "shell", True, True), ("", "shell", False, True), ("  ", "off", False, False),
    ("make test", "off", True, False), ("make test", "", True, True),  # only an explicit off skips verification
])
def test_plan_checks(command: str, level: str, run_tests: bool, verify: bool) -> None:
    checks = decide.plan_checks(command, level)
    assert (checks.run_tests, checks.verify, checks.untested) == (run_tests, verify, not run_tests)


# ---- tests ---------------------------------------------------------------------------------------


def on_test(outcome: RunOutcome, target_run: RunOutcome | None = None, *, r: QueuedRequest | None = None,
            checks: Checks = CHECKS, queue: QueueFacts = OPEN_QUEUE, alive: bool = True) -> object:
    return decide.on_test(r or req(), outcome, target_run, checks, alive, CFG, "main", queue, NOW)


def test_green_tests_go_on_to_verification_or_straight_to_the_advance() -> None:
    assert on_test(run(RunStatus.PASSED)) == Proceed(Step.VERIFY)
    assert on_test(run(RunStatus.PASSED), checks=Checks(run_tests=True, verify=False)) == Proceed(Step.ADVANCE)


@pytest.mark.parametrize("cached", [None, target_alone(RunStatus.PASSED, sha="t0")])
def test_red_without_a_cached_target_run_at_that_sha_tests_the_target(cached: RunOutcome | None) -> None:
    assert on_test(run(RunStatus.FAILED), cached) == TestTarget("t1")


@pytest.mark.parametrize(("status", "how"), [(RunStatus.FAILED, "exited 1"), (RunStatus.TIMED_OUT, "timed out")])
def test_red_candidate_on_a_green_target_goes_to_rework_with_evidence(status: RunStatus, how: str) -> None:
    action = on_test(run(status, exit_status=None if status is RunStatus.TIMED_OUT else 1),
                     target_alone(RunStatus.PASSED))
    assert isinstance(action, SendBack) and action.state is MRState.REWORK and action.polecat == POLECAT
    msg = action.message
    assert (msg.reason, msg.command, msg.target_sha) == ("tests", "pytest -q", "t1")
    assert msg.exit_status == (None if status is RunStatus.TIMED_OUT else "1")
    assert f"`pytest -q` {how} on k1 (target t1 is green)" in msg.text
    assert "FAILED test_add" in msg.text and "FAILED test_add" in action.comment  # the tail, in mail and bead
    assert_wire(msg)


def test_rework_escalates_after_max_attempts() -> None:
    action = on_test(run(RunStatus.FAILED), target_alone(RunStatus.PASSED), r=req(attempts=2))
    assert isinstance(action, Escalate) and action.state is MRState.REWORK and action.keep_branch
    assert "FAILED test_add" in action.message.text
    assert_wire(action.message)


def test_a_red_target_pauses_the_queue_files_one_bug_and_escalates_once() -> None:
    action = on_test(run(RunStatus.FAILED), target_alone(RunStatus.FAILED))
    assert isinstance(action, PauseQueue) and action.requeue == "gt-mr1" and action.sha == "t1"
    assert action.bug is not None and action.bug.title == "main fails its tests at t1"
    assert action.bug.key == decide.target_red_key("gt", "main", "t1", "pytest -q")
    assert action.escalation is not None and action.escalation.reason == "target-red"
    assert_wire(action.escalation)
    # the next request meets the same red target: no second bug, no second escalation
    again = on_test(run(RunStatus.FAILED), target_alone(RunStatus.FAILED), r=req(id="gt-mr2"),
                    queue=QueueFacts(paused=True, open_bug_keys=frozenset({action.bug.key})))
    assert again == PauseQueue(requeue="gt-mr2", sha="t1", bug=None, escalation=None)


@pytest.mark.parametrize("where", ["candidate", "target"])
def test_checks_that_cannot_run_fail_with_backoff_then_escalate(where: str) -> None:
    cannot = run(RunStatus.COULD_NOT_RUN, exit_status=127, tail="pytest: not found")

    def act(failures: int) -> object:
        r = req(failures=failures)
        if where == "candidate":
            return on_test(cannot, r=r)
        return on_test(run(RunStatus.FAILED), target_alone(RunStatus.COULD_NOT_RUN), r=r)

    first = act(0)
    assert first == Retry(state=MRState.FAILED, not_before=NOW + RETRY_BACKOFF_S, failures=1,
                          reason=first.reason if isinstance(first, Retry) else "")
    second = act(1)
    assert isinstance(second, Retry) and second.not_before == NOW + 2 * RETRY_BACKOFF_S
    last = act(CANNOT_RUN_TRIES - 1)
    assert isinstance(last, Escalate) and last.state is MRState.FAILED
    assert last.message.reason == "cannot-verify" and "mq retry gt-mr1" in last.message.text
    assert_wire(last.message)


def test_backoff_doubles_and_is_capped() -> None:
    assert [decide.backoff(n) for n in (1, 2, 3)] == [RETRY_BACKOFF_S, 2 * RETRY_BACKOFF_S, 4 * RETRY_BACKOFF_S]
    assert decide.backoff(30) == RETRY_BACKOFF_CAP_S


def test_runs_of_the_wrong_kind_or_sha_are_refused() -> None:
    with pytest.raises(ValueError, match="on_test got a verify run"):
        on_test(run(RunStatus.PASSED, kind=RunKind.VERIFY))
    with pytest.raises(ValueError, match="on_verify got a test run"):
        decide.on_verify(req(), run(RunStatus.PASSED), True, CFG, NOW)
    with pytest.raises(ValueError, match="target run is for t0, the candidate was on t1"):
        decide.on_target_run(req(), run(RunStatus.FAILED), target_alone(RunStatus.PASSED, "t0"), True, CFG, "main",
                             QueueFacts(), NOW)


# ---- verification --------------------------------------------------------------------------------


def test_verification_pass_fail_and_cannot_run() -> None:
    verify = RunKind.VERIFY
    assert decide.on_verify(req(), run(RunStatus.PASSED, kind=verify), True, CFG, NOW) == Proceed(Step.ADVANCE)
    fail = decide.on_verify(req(), run(RunStatus.FAILED, kind=verify, criterion="AC-2", tail="README lacks usage"),
                            False, CFG, NOW)
    assert isinstance(fail, SendBack) and fail.state is MRState.REWORK and fail.polecat is None
    assert (fail.message.reason, fail.message.command) == ("verification", "AC-2")
    assert "verification criterion AC-2 failed" in fail.message.text and "README lacks usage" in fail.message.text
    assert "is green" not in fail.message.text  # worded for a verdict, not for a test run
    assert_wire(fail.message)
    down = decide.on_verify(req(), run(RunStatus.COULD_NOT_RUN, kind=verify, tail="model unavailable"), True, CFG,
                            NOW)
    assert isinstance(down, Retry) and "model unavailable" in down.reason  # never a merge without a PASS


# ---- advance, bookkeeping, recovery, cleanup ----------------------------------------------------


@pytest.mark.parametrize(("tested_on", "now_at", "superseded", "expected"), [
    ("t1", "t1", False, Advance(old="t1", new="k1", untested=False)),
    ("t1", "t2", False, Restart("target moved from t1 to t2 during the run")),
    ("t1", "t1", True, Restart("a newer commit for this bead is queued; this one is stale")),
])
def test_before_advance(tested_on: str, now_at: str, superseded: bool, expected: object) -> None:
    assert decide.before_advance(tested_on, now_at, "k1", CHECKS, superseded) == expected


def test_an_untested_merge_says_so_in_its_mail() -> None:
    adv = decide.before_advance("t1", "t1", "k1", decide.plan_checks("", "off"))
    assert isinstance(adv, Advance) and adv.untested
    done = decide.on_advance(req(), adv, True, None, "main")
    assert isinstance(done, Finish)
    assert all(m.tests == "untested" and "untested" in m.text for _, m in done.mails)


def test_after_update_ref_only_a_confirmed_target_is_announced() -> None:
    adv = Advance(old="t1", new="k1", untested=False)
    assert isinstance(decide.on_advance(req(), adv, False, None, "main"), Restart)  # CAS refused: target moved
    assert decide.on_advance(req(), adv, True, "t1", "main") == Restart(
        "upstream is at t1, not k1; the push did not land")
    done = decide.on_advance(req(), adv, True, "k1", "main")
    assert isinstance(done, Finish) and done.merged_sha == "k1" and done.close_reason == "merged in k1"
    assert not done.recovered
    assert [to for to, _ in done.mails] == ["gt/witness", POLECAT]
    msg = done.mails[0][1]
    assert (msg.bead, msg.merge_request, msg.commit, msg.merged_sha, msg.target, msg.tests) == (
        "gt-a1", "gt-mr1", "c0ffee", "k1", "main", "passed")
    assert_wire(msg)
    no_polecat = decide.on_advance(req(polecat=""), adv, True, None, "main")
    assert isinstance(no_polecat, Finish) and [to for to, _ in no_polecat.mails] == ["gt/witness"]


@pytest.mark.parametrize(("tip", "recorded", "ancestor", "patch", "expected_sha"), [
    ("k1", "k1", True, None, "k1"),  # killed between update-ref and the bookkeeping
    ("k5", "k1", True, None, "k1"),  # and others merged on top since
    ("t1", None, False, "k7", "k7"),  # killed before recording: its patch is on the target anyway
    ("t1", None, False, None, None),  # killed during the test run: start again
    ("t2", "k1", False, None, None),  # a recorded sha the target does not contain (never pushed): again
])
def test_crash_recovery_never_merges_twice(tip: str, recorded: str | None, ancestor: bool, patch: str | None,
                                           expected_sha: str | None) -> None:
    action = decide.on_resume(req(state=MRState.TESTING), tip, recorded, ancestor, patch, "main")
    if expected_sha is None:
        assert isinstance(action, Restart)
    else:
        assert isinstance(action, Finish) and action.recovered and action.merged_sha == expected_sha
        assert action.close_reason == f"merged in {expected_sha}"


@pytest.mark.parametrize(("commits", "expected"), [
    ({"a": Presence.REACHABLE, "b": Presence.EQUIVALENT}, Cleanup("polecat/nux/gt-a1")),
    ({"a": Presence.REACHABLE, "b": Presence.MISSING}, Keep(("b",), "1 commit(s) of polecat/nux/gt-a1 are not on "
                                                                     "the target")),
    ({}, Keep((), "no commits listed for polecat/nux/gt-a1; nothing proves it is merged")),
])
def test_cleanup_only_when_every_commit_is_on_the_target(commits: dict[str, Presence], expected: object) -> None:
    assert decide.cleanup("polecat/nux/gt-a1", commits) == expected


# ---- the paused queue ----------------------------------------------------------------------------


@pytest.mark.parametrize(("paused", "sha", "target_run", "resumed", "expected"), [
    (None, "t1", None, False, Proceed(Step.REBASE)),
    ("t1", "t1", None, False, StayPaused("t1", "target still at t1, which failed its tests")),
    ("t1", "t1", None, True, Resume("t1")),  # the overseer resumed it
    ("t1", "t2", None, False, TestTarget("t2")),
    ("t1", "t2", target_alone(RunStatus.PASSED, "t2"), False, Resume("t2")),
    ("t1", "t2", target_alone(RunStatus.FAILED, "t2"), False, StayPaused("t2", "target at t2 is failed")),
    ("t1", "t2", target_alone(RunStatus.PASSED, "t1"), False, TestTarget("t2")),  # a run of another sha
])
def test_queue_gate(paused: str | None, sha: str, target_run: RunOutcome | None, resumed: bool,
                    expected: object) -> None:
    assert decide.queue_gate(paused, sha, target_run, resumed) == expected


def test_long_file_lists_stay_one_protocol_line() -> None:
    files = tuple(f"src/module_{i}/very/long/path/file_{i}.py" for i in range(40))
    action = decide.on_rebase(req(), RebaseResult("t1", conflict_files=files), True, CFG)
    assert isinstance(action, SendBack) and action.message.files is not None
    assert len(action.message.files) <= 300 and action.message.files.endswith("...")
    assert_wire(action.message)
