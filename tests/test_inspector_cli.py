"""`vermas-runner verify` as a user runs it: a separate process, town.toml settings, real `claude -p`
against the stand-in; and the library entry point the refinery's merge queue calls."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.inspector_standin import (
    town_candidate,
    BAD_CALC,
    GOOD_CALC,
    Standin,
    commit_change,
    make_candidate,
    objective_scripts,
    standin,
)
from vermas import beads, cost
from vermas.addresses import parse_address
from vermas.inspector.pipeline import verify_for_merge
from vermas.town import Town


@pytest.fixture
def sm(tmp_path: Path) -> Iterator[Standin]:
    with standin(tmp_path / "claude-home") as s:
        yield s


def runner(town: Town, sm: Standin, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in sm.env.items() if k not in ("VERMAS_TOWN", "BD_ACTOR")}
    return subprocess.run([sys.executable, "-m", "vermas_runner.cli", "verify", *args, "--town", str(town.root)],
                          env=env, capture_output=True, text=True, timeout=120)


def test_runner_verify_exit_codes_and_evidence(town: Town, sm: Standin, tmp_path: Path) -> None:
    sm.script(**objective_scripts())
    town.config.inspector.command = str(sm.claude)
    town.save_config()  # the runner process reads town.toml
    bead_id = beads.create(town, parse_address("overseer"), "Add numbers", "add(a, b)").id
    repo = make_candidate(town_candidate(town), calc=BAD_CALC)

    failed = runner(town, sm, bead_id, "--worktree", str(repo))
    assert failed.returncode == 1, failed.stderr
    assert f"{bead_id} @ " in failed.stdout and ": FAIL - 1 of 2 criteria failed" in failed.stdout
    assert "FAIL    AC-1 [objective, verifier]" in failed.stdout
    assert "-> exit code 1" in failed.stdout and "| AssertionError: expected 5, got -1" in failed.stdout
    assert "designer:" in failed.stderr and "verifier: AC-1 FAIL" in failed.stderr  # progress on stderr
    assert f"verify bead {bead_id}: verifier: AC-1 FAIL (" in failed.stderr and "\x1b" not in failed.stderr

    # the claude -p calls it made are in the town's cost ledger, for the refinery and the bead
    ledger = cost.cost_report(town)
    line = next(b for b in ledger.by_bead if b.key == bead_id)
    made = json.loads(runner(town, sm, bead_id, "--worktree", str(repo), "--json", "--quiet").stdout)
    assert made["model_calls"] == 0  # cached: no new calls, nothing more in the ledger
    assert line.model_calls >= 2 and line.tokens.input_tokens > 0 and line.cost_usd > 0
    assert cost.cost_report(town).by_bead == ledger.by_bead
    assert [a.key for a in ledger.by_agent] == ["overseer"]  # who verified (no rig: the overseer)

    commit_change(repo, "calc.py", GOOD_CALC)
    passed = runner(town, sm, bead_id, "--worktree", str(repo), "--json", "--quiet")
    assert passed.returncode == 0, passed.stderr
    report = json.loads(passed.stdout)
    assert report["overall"] == "PASS" and report["model_calls"] == 0 and passed.stderr == ""

    broken = runner(town, sm, bead_id, "--worktree", str(town_candidate(town, "nowhere")))
    assert broken.returncode == 2 and "is not a git work tree" in broken.stderr and broken.stdout == ""
    assert sm.model.roles() == ["designer", "strategist"]


def test_verify_for_merge_is_the_refinery_gate(town: Town, sm: Standin, tmp_path: Path) -> None:
    sm.script(**objective_scripts())
    town.config.inspector.command = str(sm.claude)
    bead_id = beads.create(town, parse_address("overseer"), "Add numbers", "add(a, b)").id
    repo = make_candidate(town_candidate(town), calc=GOOD_CALC)
    seen: list[str] = []

    async def progress(done: float, total: float | None, message: str) -> None:
        seen.append(message)

    report = verify_for_merge(town, bead_id, repo, progress=progress, env=sm.env)
    assert report.overall == "PASS" and report.actor == "deacon" and report.worktree == str(repo)
    assert any(m.startswith("verifier: AC-2 PASS") for m in seen)
    assert os.environ.get("ANTHROPIC_BASE_URL") != sm.server.base_url  # nothing leaked into this process
