"""The inspector's models: what a model's answer must satisfy beyond its JSON schema."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from vermas.inspector.backend import ClaudeCLI, ClaudeSettings, RoleCall, output_schema
from vermas.inspector.models import (
    AuditResult,
    Evidence,
    Specification,
    TestPlan,
    Verdict,
    VerificationReport,
    clip,
)
from vermas.inspector.strategist import READ_TOOLS


def spec(*ids_kinds: tuple[str, str]) -> Specification:
    return Specification(title="t", acceptance_criteria=[
        {"id": i, "description": f"d {i}", "kind": k} for i, k in ids_kinds])


def test_spec_ids_must_be_unique_and_well_formed() -> None:
    with pytest.raises(ValidationError, match="'AC-1' is used twice"):
        spec(("AC-1", "objective"), ("AC-1", "subjective"))
    with pytest.raises(ValidationError, match="pattern"):
        spec(("AC 1; rm -rf /", "objective"))
    with pytest.raises(ValidationError, match="at least 1"):
        Specification(title="t", acceptance_criteria=[])
    with pytest.raises(ValidationError, match="kind"):
        spec(("AC-1", "vibes"))


def test_rendered_criteria_are_bd_text() -> None:
    s = Specification(title="t", acceptance_criteria=[
        {"id": "AC-1", "description": "adds", "test_hint": "run it", "kind": "objective"},
        {"id": "AC-2", "description": "clear", "kind": "subjective"}])
    assert s.render_acceptance_criteria() == (
        "- [ ] AC-1 (objective): adds\n  - check: run it\n- [ ] AC-2 (subjective): clear")


def test_plan_must_name_real_criteria_and_cover_every_objective_one() -> None:
    s = spec(("AC-1", "objective"), ("AC-2", "objective"), ("AC-3", "subjective"))
    ok = {"tests": [{"criterion_id": "AC-1", "command": "true"}, {"criterion_id": "AC-2", "command": "true"}]}
    assert len(TestPlan.model_validate(ok, context={"spec": s}).tests) == 2  # subjective may go untested
    with pytest.raises(ValidationError, match="objective criteria without a test: AC-2"):
        TestPlan.model_validate({"tests": ok["tests"][:1]}, context={"spec": s})
    with pytest.raises(ValidationError, match="unknown criterion 'AC-9'.*AC-1, AC-2, AC-3"):
        TestPlan.model_validate({"tests": [*ok["tests"], {"criterion_id": "AC-9", "command": "true"}]},
                                context={"spec": s})
    # Without the spec in the context (loading a stored plan) only the shape is checked.
    assert TestPlan.model_validate({"tests": ok["tests"][:1]}).tests[0].timeout == 60


@pytest.mark.parametrize(("test", "words"), [
    ({"criterion_id": "AC-1", "command": "   "}, "command is blank"),
    ({"criterion_id": "AC-1", "command": "a\x00b"}, "NUL"),
    ({"criterion_id": "AC-1", "command": "true", "timeout": 0}, "greater than 0"),
    ({"criterion_id": "AC-1", "command": "true", "timeout": 99999}, "less than or equal to 3600"),
])
def test_test_spec_bounds(test: dict[str, object], words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        TestPlan.model_validate({"tests": [test]})


def test_quotes_must_occur_in_the_evidence_modulo_whitespace() -> None:
    context = {"evidence_text": "$ cat README.md\nUsage:   add(2,\n 3) returns 5\n"}
    ok = AuditResult.model_validate(
        {"passed": True, "reasoning": "r", "quotes": ["Usage: add(2, 3) returns 5"], "confidence": 1},
        context=context)
    assert ok.quotes
    with pytest.raises(ValidationError, match="does not occur in the evidence"):
        AuditResult.model_validate({"passed": True, "reasoning": "r", "quotes": ["returns 6"], "confidence": 1},
                                   context=context)
    with pytest.raises(ValidationError, match="less than or equal to 1"):
        AuditResult.model_validate({"passed": True, "reasoning": "r", "confidence": 1.5})


def test_verdict_must_follow_the_side_it_names() -> None:
    with pytest.raises(ValidationError, match="inconsistent"):
        Verdict(passed=True, prevailing="critic", reasoning="r")
    assert Verdict(passed=False, prevailing="critic", reasoning="r").passed is False


@pytest.mark.parametrize(("kw", "failure"), [
    ({"exit_code": 0}, None),
    ({"exit_code": 3}, "exit code 3"),
    ({"exit_code": 127}, "exit code 127 (command not found)"),
    ({"exit_code": None, "signal": "SIGKILL", "timed_out": True}, "timed out after 1.5s; its process group was killed"),
    ({"exit_code": None, "signal": "SIGKILL", "flooded": True},
     "flooded its output (10 bytes); its process group was killed"),
    ({"exit_code": None, "signal": "SIGSEGV"}, "killed by SIGSEGV"),
    ({"exit_code": None, "error": "ENOENT"}, "could not start: ENOENT"),
])
def test_evidence_says_how_it_failed(kw: dict[str, object], failure: str | None) -> None:
    e = Evidence(command="c", output="", output_bytes=10, duration_s=1.5, **kw)
    assert e.failure == failure
    assert json.loads(e.model_dump_json())["failure"] == failure  # in the structured output too


def test_output_schemas_are_self_contained() -> None:
    for model in (Specification, TestPlan, AuditResult, Verdict):
        text = json.dumps(output_schema(model))
        assert "$ref" not in text and "$defs" not in text
    criteria = output_schema(Specification)["properties"]["acceptance_criteria"]
    assert criteria["items"]["properties"]["kind"]["enum"] == ["objective", "subjective"]
    assert "confidence" in output_schema(AuditResult)["required"]


def test_claude_argv_tools_off_unless_the_role_needs_them() -> None:
    cli = ClaudeCLI(ClaudeSettings(command="/opt/claude", args=("--verbose",), model="opus", budget_usd=0.25))
    argv = cli.argv(RoleCall(role="auditor", system="SYS", prompt="P", output=AuditResult))
    assert argv[:3] == ["/opt/claude", "--verbose", "-p"]
    pairs = dict(zip(argv, argv[1:]))
    assert pairs["--output-format"] == "json" and pairs["--model"] == "opus"
    assert pairs["--max-budget-usd"] == "0.25" and pairs["--system-prompt"] == "SYS"
    assert pairs["--tools"] == "" and "--allowedTools" not in argv
    assert json.loads(pairs["--json-schema"]) == output_schema(AuditResult)
    assert "--no-session-persistence" in argv and "P" not in argv  # the prompt goes on stdin
    reading = cli.argv(RoleCall(role="strategist", system="S", prompt="P", output=TestPlan, tools=READ_TOOLS))
    assert dict(zip(reading, reading[1:]))["--tools"] == "Read,Glob,Grep"
    assert reading[reading.index("--allowedTools") + 1:][:3] == ["Read", "Glob", "Grep"]


def test_claude_environment_drops_what_makes_a_nested_session_refuse() -> None:
    cli = ClaudeCLI(ClaudeSettings(), env={"CLAUDECODE": "1", "CLAUDE_CODE_ENTRYPOINT": "cli", "PATH": "/bin",
                                           "ANTHROPIC_BASE_URL": "http://x"})
    assert cli.env == {"PATH": "/bin", "ANTHROPIC_BASE_URL": "http://x"}


def test_clip_keeps_head_and_tail() -> None:
    assert clip("abc", 10) == "abc"
    clipped = clip("a" * 50 + "b" * 50, 20)
    assert clipped.startswith("a" * 10) and clipped.endswith("b" * 10) and "80 characters omitted" in clipped


def test_report_loads_without_evidence_context() -> None:
    """Stored reports carry quotes; loading them must not re-check against evidence it lacks."""
    report = VerificationReport.model_validate({
        "bead_id": "hq-a1", "commit": "c", "worktree": "/w", "level": "audit", "overall": "PASS", "summary": "s",
        "criteria": [{"criterion_id": "AC-1", "description": "d", "kind": "subjective", "outcome": "PASS",
                      "stage": "auditor", "reason": "r",
                      "audit": {"passed": True, "reasoning": "r", "quotes": ["anything"], "confidence": 1}}],
        "model_calls": 0, "model_cost_usd": 0, "model_duration_ms": 0, "tests_run": 0, "cached_criteria": 0,
        "started_at": "x", "duration_s": 0, "actor": "overseer"})
    assert report.outcome("AC-1").audit is not None


def test_compact_clips_output_for_a_models_context_and_summary_drops_evidence() -> None:
    def result(cid: str, passed: bool) -> dict[str, object]:
        return {"criterion_id": cid, "passed": passed, "evidence": {
            "command": "c", "output": ("x" * 50_000) + "END", "output_bytes": 50_003,
            "exit_code": 0 if passed else 1, "duration_s": 1}}

    report = VerificationReport.model_validate({
        "bead_id": "hq-a1", "commit": "c", "worktree": "/w", "level": "shell", "overall": "FAIL", "summary": "s",
        "criteria": [
            {"criterion_id": "AC-1", "description": "d", "kind": "objective", "outcome": "PASS", "stage": "verifier",
             "reason": "all 1 test(s) passed", "tests": [result("AC-1", True)]},
            {"criterion_id": "AC-2", "description": "d", "kind": "objective", "outcome": "FAIL", "stage": "verifier",
             "reason": "1 of 1 test(s) failed", "tests": [result("AC-2", False)]}],
        "model_calls": 2, "model_cost_usd": 0.1, "model_duration_ms": 10, "tests_run": 2, "cached_criteria": 0,
        "started_at": "x", "duration_s": 1, "actor": "overseer"})
    compact = report.compact()
    passed, failed = (c.tests[0].evidence.output for c in compact.criteria)
    assert len(passed) < 1_100 and len(failed) < 8_100 and passed.endswith("END") and failed.endswith("END")
    assert len(report.criteria[0].tests[0].evidence.output) == 50_003  # the original is untouched
    summary = report.summarize()
    assert [(c.criterion_id, c.outcome, c.stage) for c in summary.criteria] == [
        ("AC-1", "PASS", "verifier"), ("AC-2", "FAIL", "verifier")]
    assert len(summary.model_dump_json()) < 600
