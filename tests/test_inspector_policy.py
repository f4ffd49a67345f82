"""The pipeline policy, exhaustively, as pure functions: no process, no model, no store."""

from __future__ import annotations

import itertools

import pytest

from vermas.inspector import policy
from vermas.inspector.models import Evidence, TestResult
from vermas.inspector.policy import TestsSummary


def ev(exit_code: int | None = 0, **kw: object) -> Evidence:
    return Evidence(command="c", output="", output_bytes=0, exit_code=exit_code, duration_s=0.1, **kw)


def result(evidence: Evidence) -> TestResult:
    return TestResult(criterion_id="AC-1", passed=evidence.failure is None, evidence=evidence)


@pytest.mark.parametrize(("evidence", "clear"), [
    (ev(1), True),
    (ev(2), True),
    (ev(255), True),
    (ev(0), False),                                   # a pass is no failure
    (ev(126), False),                                 # not executable: the test itself is broken
    (ev(127), False),                                 # command not found: same
    (ev(None, signal="SIGKILL", timed_out=True), False),
    (ev(None, signal="SIGSEGV"), False),
    (ev(None, signal="SIGKILL", flooded=True), False),
    (ev(None, error="FileNotFoundError: no such dir"), False),
])
def test_clear_failure_is_a_command_that_ran_to_the_end_and_said_no(evidence: Evidence, clear: bool) -> None:
    assert policy.is_clear_failure(evidence) is clear


def test_summarize_counts_each_kind_of_result() -> None:
    results = [result(ev(0)), result(ev(1)), result(ev(127)), result(ev(None, signal="SIGKILL", timed_out=True))]
    assert policy.summarize(results) == TestsSummary(total=4, passed=1, clear_failures=1, ambiguous_failures=2)
    assert policy.summarize([]) == TestsSummary(0, 0, 0, 0)


NONE = TestsSummary(0, 0, 0, 0)
ALL_PASS = TestsSummary(2, 2, 0, 0)
CLEAR_FAIL = TestsSummary(2, 1, 1, 0)
AMBIGUOUS = TestsSummary(2, 1, 0, 1)
MIXED = TestsSummary(3, 0, 1, 2)
SUMMARIES = {"none": NONE, "all_pass": ALL_PASS, "clear_fail": CLEAR_FAIL, "ambiguous": AMBIGUOUS, "mixed": MIXED}

# (kind, tests, level) -> (outcome, stage, next); every combination is listed.
AFTER_TESTS = {
    ("objective", "all_pass"): {lvl: ("PASS", "verifier", None) for lvl in ("shell", "audit", "full")},
    ("objective", "clear_fail"): {lvl: ("FAIL", "verifier", None) for lvl in ("shell", "audit", "full")},
    ("objective", "mixed"): {lvl: ("FAIL", "verifier", None) for lvl in ("shell", "audit", "full")},
    ("objective", "ambiguous"): {"shell": ("FAIL", "policy", None), "audit": (None, "verifier", "auditor"),
                                 "full": (None, "verifier", "auditor")},
    ("objective", "none"): {"shell": ("FAIL", "policy", None), "audit": (None, "verifier", "auditor"),
                            "full": (None, "verifier", "auditor")},
    **{("subjective", name): {"shell": ("SKIPPED", "policy", None), "audit": (None, "verifier", "auditor"),
                              "full": (None, "verifier", "auditor")} for name in SUMMARIES},
}


@pytest.mark.parametrize(("kind", "tests", "level"), list(itertools.product(
    ("objective", "subjective"), SUMMARIES, ("shell", "audit", "full"))))
def test_after_tests_every_combination(kind: str, tests: str, level: str) -> None:
    decision = policy.after_tests(kind, SUMMARIES[tests], level)  # type: ignore[arg-type]
    assert (decision.outcome, decision.stage, decision.next) == AFTER_TESTS[(kind, tests)][level]
    assert decision.reason
    # Invariant: a decision either has an outcome or names the next stage, never both.
    assert (decision.outcome is None) == (decision.next is not None)


def test_after_tests_reasons_say_what_happened() -> None:
    assert policy.after_tests("objective", CLEAR_FAIL, "full").reason == "1 of 2 test(s) failed"
    assert policy.after_tests("objective", ALL_PASS, "full").reason == "all 2 test(s) passed"
    assert "no test decides it" in policy.after_tests("objective", NONE, "audit").reason
    assert "level shell has no Auditor" in policy.after_tests("objective", AMBIGUOUS, "shell").reason


# (audit passed, confident, tests) -> what happens at level audit and at level full
AUDIT_CASES = list(itertools.product((True, False), (True, False), ("none", "all_pass", "clear_fail", "ambiguous")))


def expected_after_audit(passed: bool, confident: bool, tests: str, level: str) -> tuple[object, object, object]:
    summary = SUMMARIES[tests]
    contradicted = summary.total > 0 and passed != summary.all_passed
    if confident and not contradicted:
        return ("PASS" if passed else "FAIL", "auditor", None)
    if level == "full":
        return (None, "auditor", "panel")
    return ("FAIL", "auditor", None) if not passed else ("FAIL", "policy", None)


@pytest.mark.parametrize(("passed", "confident", "tests"), AUDIT_CASES)
@pytest.mark.parametrize("level", ["audit", "full"])
def test_after_audit_every_combination(passed: bool, confident: bool, tests: str, level: str) -> None:
    confidence = 0.9 if confident else 0.5
    decision = policy.after_audit(passed, confidence, SUMMARIES[tests], level, 0.7)  # type: ignore[arg-type]
    assert (decision.outcome, decision.stage, decision.next) == expected_after_audit(passed, confident, tests, level)


def test_after_audit_table_spot_checks() -> None:
    """The rules in words, so the table above is not only checked against itself."""
    # Confident PASS on a subjective criterion with passing evidence commands: stands.
    assert policy.after_audit(True, 0.9, ALL_PASS, "full", 0.7).outcome == "PASS"
    # Confident PASS while a test failed: contradiction, so the panel decides.
    d = policy.after_audit(True, 0.95, AMBIGUOUS, "full", 0.7)
    assert d.next == "panel" and "Auditor says PASS but 1 of 2 test(s) passed" in d.reason
    # Confident FAIL while every test passed: also a contradiction.
    assert policy.after_audit(False, 0.95, ALL_PASS, "full", 0.7).next == "panel"
    # Unsure at level audit: a FAIL stands, a PASS becomes a conservative FAIL.
    assert policy.after_audit(False, 0.3, NONE, "audit", 0.7).stage == "auditor"
    d = policy.after_audit(True, 0.3, NONE, "audit", 0.7)
    assert (d.outcome, d.stage) == ("FAIL", "policy") and "confidence 0.30 below 0.70" in d.reason
    # The threshold is inclusive: exactly min_confidence is confident enough.
    assert policy.after_audit(True, 0.7, NONE, "full", 0.7).outcome == "PASS"


@pytest.mark.parametrize(("passed", "prevailing", "outcome"), [(True, "advocate", "PASS"), (False, "critic", "FAIL")])
def test_after_panel_the_judge_decides(passed: bool, prevailing: str, outcome: str) -> None:
    d = policy.after_panel(passed, prevailing)
    assert (d.outcome, d.stage, d.next) == (outcome, "panel", None) and prevailing in d.reason


def test_after_error_is_a_fail_of_that_stage() -> None:
    d = policy.after_error("auditor", "gave invalid output twice")
    assert (d.outcome, d.stage) == ("FAIL", "auditor") and "invalid output twice" in d.reason


@pytest.mark.parametrize(("outcomes", "level", "overall", "words"), [
    (["PASS", "PASS"], "full", "PASS", "2 of 2 criteria passed"),
    (["PASS", "SKIPPED"], "shell", "PASS", "1 subjective skipped at level shell"),
    (["PASS", "FAIL", "SKIPPED"], "shell", "FAIL", "1 of 3 criteria failed"),
    (["FAIL"], "full", "FAIL", "1 of 1 criteria failed"),
    (["SKIPPED", "SKIPPED"], "shell", "FAIL", "nothing could be decided at level shell"),
])
def test_overall(outcomes: list[str], level: str, overall: str, words: str) -> None:
    got, summary = policy.overall(outcomes, level)  # type: ignore[arg-type]
    assert got == overall and words in summary


@pytest.mark.parametrize(("stage", "cached_level", "level", "ok"), [
    (stage, cached, now, stage == "verifier" or cached == now)
    for stage in ("verifier", "auditor", "panel", "policy")
    for cached in ("shell", "audit", "full") for now in ("shell", "audit", "full")
])
def test_cache_reuse_rule(stage: str, cached_level: str, level: str, ok: bool) -> None:
    assert policy.reusable(stage, cached_level, level) is ok  # type: ignore[arg-type]


def test_only_answers_are_cached() -> None:
    assert policy.cacheable(None) and not policy.cacheable("auditor failed")
