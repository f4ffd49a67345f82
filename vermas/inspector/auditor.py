"""Auditor: judges one criterion from the Verifier's evidence when exit codes cannot decide."""

from __future__ import annotations

from vermas.inspector.backend import RoleCall
from vermas.inspector.models import (
    AcceptanceCriterion,
    AuditResult,
    TestResult,
    to_context_text,
)

PROMPT_EVIDENCE_CHARS = 24_000
NO_EVIDENCE = "(no test evidence: the plan has no command for this criterion)"


def evidence_text(results: list[TestResult], limit: int | None = None) -> str:
    return to_context_text(results, limit) if results else NO_EVIDENCE


def criterion_block(criterion: AcceptanceCriterion) -> str:
    hint = f"\nHow to check: {criterion.test_hint}" if criterion.test_hint else ""
    return f"## Criterion {criterion.id} ({criterion.kind})\n{criterion.description}{hint}"


def prompt(criterion: AcceptanceCriterion, results: list[TestResult], why: str) -> str:
    return "\n".join([
        criterion_block(criterion), "", f"Why you are asked: {why}", "",
        "## Evidence (commands run in the candidate work tree, with their output)",
        evidence_text(results, PROMPT_EVIDENCE_CHARS), "", "Judge the criterion.",
    ])


def call(criterion: AcceptanceCriterion, results: list[TestResult], why: str, system: str) -> RoleCall[AuditResult]:
    """Quotes are checked against the full evidence (the prompt may show it clipped)."""
    return RoleCall(role="auditor", system=system, prompt=prompt(criterion, results, why), output=AuditResult,
                    context={"evidence_text": evidence_text(results)}, criterion_id=criterion.id)
