"""The `claude -p` backend with the real CLI against the stand-in: how each kind of failure is
reported, and that cost and duration come from Claude's JSON result."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.inspector_standin import Standin, Text, standin
from vermas.inspector.backend import (
    ClaudeCLI,
    ClaudeSettings,
    ModelCallFailed,
    ModelOutputInvalid,
    RoleCall,
)
from vermas.inspector.models import AuditResult
from vermas.inspector.prompts import role_template

EVIDENCE = "$ cat README.md\nUsage: add(2, 3)\n[PASS: exit code 0]"


@pytest.fixture
def sm(tmp_path: Path) -> Iterator[Standin]:
    with standin(tmp_path / "claude-home") as s:
        yield s


def audit_call() -> RoleCall[AuditResult]:
    return RoleCall(role="auditor", system=role_template("auditor"), prompt="## Criterion AC-1 (subjective)\nx",
                    output=AuditResult, context={"evidence_text": EVIDENCE}, criterion_id="AC-1")


def cli(sm: Standin, **kw: object) -> ClaudeCLI:
    return ClaudeCLI(ClaudeSettings(command=str(sm.claude), **kw), env=sm.env)  # type: ignore[arg-type]


async def test_valid_answer_with_cost_and_duration(sm: Standin) -> None:
    sm.script(auditor=[{"passed": True, "reasoning": "ok", "quotes": ["Usage: add(2, 3)"], "confidence": 0.8}])
    answer, calls = await cli(sm, model="opus").ask(audit_call())
    assert answer.passed and answer.quotes == ["Usage: add(2, 3)"]
    assert len(calls) == 1 and calls[0].ok and calls[0].cost_usd > 0 and calls[0].duration_ms > 0
    assert calls[0].model == "opus" and "opus" in sm.server.main_requests()[0].model  # --model reached the API
    request = sm.server.main_requests()[0]
    # Tools off: no built-in tool is offered, only Claude Code's own StructuredOutput.
    assert "StructuredOutput" in request.tool_names()
    assert {"Bash", "Read", "Write", "Edit", "Glob", "Grep", "WebFetch"}.isdisjoint(request.tool_names())
    assert "VerMAS inspector role: AUDITOR" in request.system_text


async def test_text_instead_of_structured_output_is_retried_then_reported(sm: Standin) -> None:
    # Claude Code itself asks once more for StructuredOutput within a call; we then retry once.
    model = sm.script(auditor=[Text("PASS, looks fine"), Text("PASS!"), Text("still text"), Text("and again")])
    with pytest.raises(ModelOutputInvalid) as caught:
        await cli(sm).ask(audit_call())
    assert "auditor (criterion AC-1) gave invalid output twice" in str(caught.value)
    assert "no structured output" in str(caught.value)
    assert [c.attempt for c in caught.value.calls] == [1, 2] and model.count("auditor") == 4


async def test_budget_exhausted_is_a_clear_failure_with_its_cost(sm: Standin) -> None:
    sm.script(auditor=[{"passed": True, "reasoning": "ok", "quotes": [], "confidence": 0.8}])
    with pytest.raises(ModelCallFailed, match=r"failed \(error_max_budget_usd\).*maximum budget") as caught:
        await cli(sm, budget_usd=0.000001).ask(audit_call())
    assert len(caught.value.calls) == 1 and caught.value.calls[0].cost_usd > 0 and not caught.value.calls[0].ok


async def test_timeout_kills_the_cli(sm: Standin) -> None:
    def slow(_: object) -> dict[str, object]:
        time.sleep(6)
        return {"passed": True, "reasoning": "late", "quotes": [], "confidence": 1}

    sm.script(auditor=[slow])
    start = time.monotonic()
    with pytest.raises(ModelCallFailed, match=r"timed out after 2s and was killed; raise `timeout`"):
        await cli(sm, timeout_s=2).ask(audit_call())
    assert time.monotonic() - start < 5


async def test_cli_error_without_json_is_reported_with_its_stderr(sm: Standin) -> None:
    with pytest.raises(ModelCallFailed, match=r"exited 1 without a JSON result: .*no-such-flag"):
        await cli(sm, args=("--no-such-flag",)).ask(audit_call())
    assert sm.model.count() == 0


async def test_missing_command_names_the_setting_to_fix(tmp_path: Path) -> None:
    backend = ClaudeCLI(ClaudeSettings(command=str(tmp_path / "no-claude-here")))
    with pytest.raises(ModelCallFailed, match=r"cannot run the inspector's model command.*\[inspector\]"):
        await backend.ask(audit_call())
