"""The inspector's pipeline policy: pure functions from observed evidence to the next stage.

Nothing here runs a process or calls a model, so every branch is tested exhaustively. The
rules, in order (also tabled in templates/inspector/README.md):

1. Objective criterion, every test passed            -> PASS, decided by the Verifier (no model).
2. Objective criterion, a test failed *clearly*      -> FAIL, decided by the Verifier.
   Clear = the command ran to completion and exited non-zero, other than 126/127.
3. Objective criterion whose failures are all ambiguous (timed out, killed by a signal, flooded,
   could not start, exit 126/127 "not executable"/"not found"), or with no test at all
                                                     -> Auditor.
4. Subjective criterion                              -> Auditor (tests, if any, are its evidence).
5. Auditor answered with confidence below the rig's `min_confidence`, or contradicted the
   tests (said PASS while a test failed, or FAIL while all passed) -> panel (Advocate, Critic,
   Judge); otherwise the Auditor's answer stands.
6. The Judge's verdict is final.

Levels limit which stages exist. `shell`: no Auditor, so a criterion that needs one is
SKIPPED when subjective (judgement was not asked for) and FAIL when objective (an ambiguous
failure is not a pass). `audit`: no panel, so a contested Auditor FAIL stands and a contested
Auditor PASS becomes FAIL (conservative). `full`: every stage.

Overall: FAIL if any criterion FAILs, or if nothing was decided (all SKIPPED); else PASS.
A role that fails (invalid output twice, CLI error) makes its criterion FAIL with the error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from vermas.inspector.models import (
    Evidence,
    Kind,
    Level,
    Outcome,
    Overall,
    Stage,
    TestResult,
)

NextStage = Literal["auditor", "panel"]
AMBIGUOUS_EXIT_CODES = (126, 127)


@dataclass(frozen=True)
class TestsSummary:
    """What the policy needs to know about a criterion's test results."""

    __test__ = False

    total: int
    passed: int
    clear_failures: int
    ambiguous_failures: int

    @property
    def all_passed(self) -> bool:
        return self.total > 0 and self.passed == self.total


@dataclass(frozen=True)
class Decision:
    """Either an outcome (and the stage that decided it) or the stage to consult next."""

    outcome: Outcome | None
    stage: Stage
    reason: str
    next: NextStage | None = None


def is_clear_failure(evidence: Evidence) -> bool:
    """A failure that speaks for itself: the command ran to the end and said no."""
    return (
        evidence.error is None
        and not evidence.timed_out
        and not evidence.flooded
        and evidence.signal is None
        and evidence.exit_code is not None
        and evidence.exit_code != 0
        and evidence.exit_code not in AMBIGUOUS_EXIT_CODES
    )


def summarize(results: Sequence[TestResult]) -> TestsSummary:
    passed = sum(1 for r in results if r.passed)
    clear = sum(1 for r in results if not r.passed and is_clear_failure(r.evidence))
    return TestsSummary(total=len(results), passed=passed, clear_failures=clear,
                        ambiguous_failures=len(results) - passed - clear)


def after_tests(kind: Kind, tests: TestsSummary, level: Level) -> Decision:
    """Rules 1-4: decide from shell evidence alone, or name the Auditor."""
    if kind == "objective":
        if tests.clear_failures:
            return Decision("FAIL", "verifier", f"{tests.clear_failures} of {tests.total} test(s) failed")
        if tests.all_passed:
            return Decision("PASS", "verifier", f"all {tests.total} test(s) passed")
        why = (f"{tests.ambiguous_failures} of {tests.total} test(s) failed ambiguously"
               if tests.total else "no test decides it")
        if level == "shell":
            return Decision("FAIL", "policy", f"{why}; level shell has no Auditor, so it is not a pass")
        return Decision(None, "verifier", f"{why}; the Auditor judges the evidence", next="auditor")
    if level == "shell":
        return Decision("SKIPPED", "policy", "subjective; level shell does not judge subjective criteria")
    return Decision(None, "verifier", "subjective; the Auditor judges the evidence", next="auditor")


def contradicts(audit_passed: bool, tests: TestsSummary) -> bool:
    """The Auditor disagrees with the exit codes it was shown."""
    return tests.total > 0 and audit_passed != tests.all_passed


def after_audit(
    audit_passed: bool, confidence: float, tests: TestsSummary, level: Level, min_confidence: float
) -> Decision:
    """Rule 5: the Auditor's answer stands unless it is unsure or contradicts the tests."""
    verdict: Outcome = "PASS" if audit_passed else "FAIL"
    doubts = []
    if confidence < min_confidence:
        doubts.append(f"confidence {confidence:.2f} below {min_confidence:.2f}")
    if contradicts(audit_passed, tests):
        doubts.append(f"Auditor says {verdict} but {tests.passed} of {tests.total} test(s) passed")
    if not doubts:
        return Decision(verdict, "auditor", f"Auditor: {verdict} (confidence {confidence:.2f})")
    why = "; ".join(doubts)
    if level == "full":
        return Decision(None, "auditor", f"contested ({why}); the panel decides", next="panel")
    if not audit_passed:
        return Decision("FAIL", "auditor", f"Auditor: FAIL, contested ({why}) but a FAIL stands")
    return Decision("FAIL", "policy", f"Auditor: PASS but contested ({why}); level audit has no panel, so FAIL")


def after_panel(verdict_passed: bool, prevailing: str) -> Decision:
    """Rule 6: the Judge decides."""
    outcome: Outcome = "PASS" if verdict_passed else "FAIL"
    return Decision(outcome, "panel", f"Judge: {outcome} (follows the {prevailing})")


def after_error(stage: Stage, error: str) -> Decision:
    """A role that could not answer leaves its criterion unverified, which is not a pass."""
    return Decision("FAIL", stage, f"{stage} failed: {error}")


def overall(outcomes: Sequence[Outcome], level: Level) -> tuple[Overall, str]:
    failed = sum(1 for o in outcomes if o == "FAIL")
    passed = sum(1 for o in outcomes if o == "PASS")
    skipped = sum(1 for o in outcomes if o == "SKIPPED")
    if failed:
        return "FAIL", f"{failed} of {len(outcomes)} criteria failed"
    if not passed:
        return "FAIL", (f"nothing could be decided at level {level}: all {skipped} criteria are subjective; "
                        "raise the rig's verify_level to audit or full")
    tail = f", {skipped} subjective skipped at level {level}" if skipped else ""
    return "PASS", f"{passed} of {len(outcomes)} criteria passed{tail}"


def reusable(cached_stage: Stage, cached_level: Level, level: Level) -> bool:
    """May a cached outcome for the same (bead, commit, criterion, tests) stand at this level?

    A Verifier decision depends only on the commit and the commands, so it holds at any level;
    anything a level shaped (Auditor, panel, policy) is reused only at the same level.
    """
    return cached_stage == "verifier" or cached_level == level


def cacheable(error: str | None) -> bool:
    """A role failure is not an answer: the next run tries again."""
    return error is None
