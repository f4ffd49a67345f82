"""The five verify_* MCP tools through the SDK's in-memory client, with the real `claude -p`
(found through the server process's own environment, as in production) against the stand-in."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import call, fail
from tests.inspector_standin import (
    into_process_env,
    town_candidate,
    AC_ADD,
    AC_README,
    ADD_TEST,
    BAD_CALC,
    README_TEST,
    Standin,
    make_candidate,
    objective_scripts,
    spec,
    standin,
    tspec,
)
from vermas import beads
from vermas.addresses import parse_address
from vermas.export import export_town
from vermas.inspector import records
from vermas.town import RigConfig, Town
from vermas_mcp.profiles import PROFILES

VERIFY_TOOLS = {"verify_spec", "verify_plan", "verify_run", "verify_bead", "verify_report"}


@pytest.fixture
def sm(tmp_path: Path, town: Town, monkeypatch: pytest.MonkeyPatch) -> Iterator[Standin]:
    """The stand-in, wired in the way a deployed town is: town.toml's command, the process env."""
    with standin(tmp_path / "claude-home") as s:
        into_process_env(s, monkeypatch)
        town.config.inspector.command = str(s.claude)
        yield s


def new_bead(town: Town) -> str:
    return beads.create(town, parse_address("overseer"), "Add numbers", "add(a, b) in calc.py; document it").id


async def test_tools_are_listed_per_profile(client_for: Any) -> None:
    for address, profile in (("overseer", None), ("gastown/refinery", None), ("mayor", None)):
        async with client_for(address, profile) as c:
            names = {t.name for t in (await c.list_tools()).tools}
            assert VERIFY_TOOLS <= names
    for address in ("gastown/polecats/nux", "gastown/witness"):
        async with client_for(address) as c:
            assert VERIFY_TOOLS.isdisjoint({t.name for t in (await c.list_tools()).tools})
    async with client_for("overseer") as c:
        tools = {t.name: t for t in (await c.list_tools()).tools}
        assert tools["verify_report"].annotations.read_only_hint is True
        assert tools["verify_bead"].annotations.open_world_hint in (None, True)  # MCP default: open world
        assert tools["verify_run"].annotations.open_world_hint is False
        assert tools["verify_bead"].annotations.destructive_hint is False
        assert "overall" in tools["verify_bead"].output_schema["properties"]
        assert "\n" not in (tools["verify_bead"].description or "")
        assert "ctx" not in tools["verify_bead"].input_schema["properties"]
    assert VERIFY_TOOLS.isdisjoint(PROFILES["polecat"])


async def test_pipeline_step_by_step_through_the_tools(
    client_for: Any, town: Town, sm: Standin, tmp_path: Path
) -> None:
    model = sm.script(**objective_scripts())
    repo = make_candidate(town_candidate(town), calc=BAD_CALC)
    bead_id = new_bead(town)
    async with client_for("overseer") as c:
        assert "no specification yet; run verify_spec" in await fail(c, "verify_plan", bead_id=bead_id)
        assert "has not been verified yet" in await fail(c, "verify_report", bead_id=bead_id)

        made = await call(c, "verify_spec", bead_id=bead_id)
        assert not made["reused"]
        assert [a["id"] for a in made["specification"]["acceptance_criteria"]] == ["AC-1", "AC-2"]
        assert made["calls"][0]["role"] == "designer" and made["calls"][0]["cost_usd"] > 0
        assert "no test plan for its current specification" in await fail(c, "verify_run", bead_id=bead_id,
                                                                             worktree=str(repo))
        plan = await call(c, "verify_plan", bead_id=bead_id, worktree=str(repo))
        assert [t["command"] for t in plan["tests"]] == [ADD_TEST, README_TEST]
        assert (await call(c, "verify_plan", bead_id=bead_id))["reused"] is True

        run = await call(c, "verify_run", bead_id=bead_id, worktree=str(repo))
        assert (run["passed"], run["failed"]) == (1, 1) and run["dirty"] is False
        failing = next(r for r in run["results"] if not r["passed"])
        assert failing["evidence"]["failure"] == "exit code 1" and "expected 5, got -1" in failing["evidence"]["output"]

        progress: list[tuple[float, float | None, str | None]] = []

        async def on_progress(p: float, total: float | None, message: str | None) -> None:
            progress.append((p, total, message))

        result = await c.call_tool("verify_bead", {"bead_id": bead_id, "worktree": str(repo)},
                                   progress_callback=on_progress)
        report = result.structured_content
        assert not result.is_error and report["overall"] == "FAIL" and report["model_calls"] == 0
        assert any("verifier: AC-1 FAIL (exit code 1)" in (m or "") for _, _, m in progress)
        assert progress[-1][2] and "FAIL" in progress[-1][2]
        assert all(b[0] >= a[0] for a, b in zip(progress, progress[1:]))  # monotonic

        shown = await call(c, "verify_report", bead_id=bead_id)
        assert shown["commit"] == report["commit"] and shown["overall"] == "FAIL"
        bead = await call(c, "bead_show", bead_id=bead_id)  # bead_show carries the summary
        assert bead["verification"]["overall"] == "FAIL" and bead["verification"]["commit"] == report["commit"]
        assert "evidence" not in json.dumps(bead["verification"])
    assert model.roles() == ["designer", "strategist"]
    # The spec lives with the bead: in bd's acceptance_criteria, and so in the bd export.
    export_town(town, force=True)
    lines = [json.loads(line) for line in (town.beads_dir / "issues.jsonl").read_text().splitlines()]
    exported = next(line for line in lines if line["id"] == bead_id)
    assert exported["_type"] == "issue" and "AC-1 (objective)" in exported["acceptance_criteria"]
    assert set(exported) <= {"_type", "id", "title", "description", "acceptance_criteria", "status", "priority",
                             "issue_type", "created_at", "created_by", "updated_at", "assignee", "owner"} | {
                                 "design", "notes", "started_at", "closed_at", "close_reason", "external_ref",
                                 "ephemeral", "labels", "dependencies", "comments"}
    with town.db.read() as conn:
        latest = records.latest_report(conn, bead_id)
    assert latest is not None and latest.overall == "FAIL"


async def test_bad_input_is_a_tool_error_and_writes_nothing(client_for: Any, town: Town, sm: Standin,
                                                            tmp_path: Path) -> None:
    bead_id = new_bead(town)
    not_git = town_candidate(town, "plain")
    not_git.mkdir(parents=True)
    async with client_for("overseer") as c:
        assert "invalid bead_id" in await fail(c, "verify_bead", bead_id="../etc", worktree=str(not_git))
        assert "no bead 'hq-zzzz'" in await fail(c, "verify_bead", bead_id="hq-zzzz", worktree=str(not_git))
        assert "is not a git work tree" in await fail(c, "verify_bead", bead_id=bead_id, worktree=str(not_git))
        assert "invalid level 'max'; allowed: shell, audit, full" in await fail(
            c, "verify_bead", bead_id=bead_id, worktree=str(not_git), level="max")
        assert "has no merge request" in await fail(c, "verify_bead", bead_id=bead_id)
    async with client_for("gastown/polecats/nux", "all") as c:
        assert "polecats do not verify work" in await fail(c, "verify_bead", bead_id=bead_id, worktree=str(not_git))
    assert sm.model.count() == 0
    with town.db.read() as conn:
        assert records.latest_report(conn, bead_id) is None
    assert beads.show(town, bead_id).acceptance_criteria == ""


async def test_rig_settings_choose_level_and_model(client_for: Any, town: Town, sm: Standin, tmp_path: Path) -> None:
    town.config.rigs["gastown"] = RigConfig(name="gastown", git_url="x", prefix="gt", verify_level="audit",
                                            inspector={"model": "haiku", "min_confidence": 0.5})
    sm.script(designer=[spec(AC_ADD, AC_README)],
              strategist=[{"tests": [tspec("AC-1", ADD_TEST), tspec("AC-2", "calc-docs --check")]}],
              auditor={"AC-2": [{"passed": False, "reasoning": "no docs tool", "quotes": [], "confidence": 0.6}]})
    bead_id = beads.create(town, parse_address("mayor"), "Add", "add it", rig="gastown").id
    assert bead_id.startswith("gt-")
    repo = make_candidate(town_candidate(town))
    async with client_for("gastown/refinery") as c:
        report = await call(c, "verify_bead", bead_id=bead_id, worktree=str(repo))
    assert report["level"] == "audit" and report["actor"] == "gastown/refinery"
    docs = next(o for o in report["criteria"] if o["criterion_id"] == "AC-2")
    # exit 127 is ambiguous -> Auditor; its confident-enough (0.6 >= the rig's 0.5) FAIL stands.
    assert (docs["outcome"], docs["stage"]) == ("FAIL", "auditor")
    assert {c["model"] for c in report["calls"]} == {"haiku"}
    assert all("haiku" in r.model for r in sm.server.main_requests())

    town.config.rigs["gastown"].inspector = {"parallelism": 0, "pass_env": ["GITHUB_TOKEN"]}
    async with client_for("gastown/refinery") as c:
        message = await fail(c, "verify_bead", bead_id=bead_id, worktree=str(repo))
    assert "parallelism 0 (allowed 1..64)" in message and "pass_env GITHUB_TOKEN" in message
    town.config.rigs["gastown"].inspector = {"modle": "opus"}
    async with client_for("gastown/refinery") as c:
        assert "[rigs.gastown] inspector" in await fail(c, "verify_bead", bead_id=bead_id, worktree=str(repo))
