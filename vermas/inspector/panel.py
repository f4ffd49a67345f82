"""The adversarial panel for contested criteria: Advocate (argues PASS), Critic (argues FAIL),
Judge (sees criterion, evidence, the Auditor's view and both arguments; returns a Verdict)."""

from __future__ import annotations

from vermas.inspector.auditor import (
    PROMPT_EVIDENCE_CHARS,
    criterion_block,
    evidence_text,
)
from vermas.inspector.backend import RoleCall
from vermas.inspector.models import (
    AcceptanceCriterion,
    Argument,
    AuditResult,
    TestResult,
    Verdict,
)


def _case(criterion: AcceptanceCriterion, results: list[TestResult], audit: AuditResult | None, why: str) -> list[str]:
    parts = [criterion_block(criterion), "", f"Why it is contested: {why}", "",
             "## Evidence (commands run in the candidate work tree, with their output)",
             evidence_text(results, PROMPT_EVIDENCE_CHARS)]
    if audit is not None:
        parts += ["", f"## The Auditor said {'PASS' if audit.passed else 'FAIL'} "
                      f"(confidence {audit.confidence:.2f})", audit.reasoning]
    return parts


def advocate_call(criterion: AcceptanceCriterion, results: list[TestResult], audit: AuditResult | None,
                  why: str, system: str) -> RoleCall[Argument]:
    prompt = "\n".join([*_case(criterion, results, audit, why), "", "Argue that the criterion IS met."])
    return RoleCall(role="advocate", system=system, prompt=prompt, output=Argument,
                    context={"evidence_text": evidence_text(results)}, criterion_id=criterion.id)


def critic_call(criterion: AcceptanceCriterion, results: list[TestResult], audit: AuditResult | None,
                why: str, system: str) -> RoleCall[Argument]:
    prompt = "\n".join([*_case(criterion, results, audit, why), "", "Argue that the criterion is NOT met."])
    return RoleCall(role="critic", system=system, prompt=prompt, output=Argument,
                    context={"evidence_text": evidence_text(results)}, criterion_id=criterion.id)


def judge_call(criterion: AcceptanceCriterion, results: list[TestResult], audit: AuditResult | None,
               advocate: Argument, critic: Argument, why: str, system: str) -> RoleCall[Verdict]:
    prompt = "\n".join([
        *_case(criterion, results, audit, why), "",
        "## The Advocate argues PASS", advocate.argument, "",
        "## The Critic argues FAIL", critic.argument, "", "Decide.",
    ])
    return RoleCall(role="judge", system=system, prompt=prompt, output=Verdict,
                    context={"evidence_text": evidence_text(results)}, criterion_id=criterion.id)
