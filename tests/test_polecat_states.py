"""Polecat states are one enum, and after polecat_done `polecat list` and `status` say `done`
(or escalated / deferred), not `working`: a finished polecat can be told from a stuck one.
Real git worktrees, the real MCP tool, the real runner CLI (no tmux server is started)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import call, git, make_repo
from vermas import beads, polecat, rig
from vermas.addresses import parse_address
from vermas.protocol import DONE_STATE, PolecatState
from vermas.sessions import TownSessions
from vermas.town import Town

RUNNER = str(Path(sys.executable).with_name("vermas-runner"))
MAYOR = parse_address("mayor")


def test_states_are_one_enum_with_what_a_user_sees() -> None:
    assert [s.value for s in PolecatState] == [
        "spawning", "started", "working", "done", "escalated", "deferred", "nuked"]
    assert DONE_STATE == {"COMPLETED": PolecatState.DONE, "ESCALATED": PolecatState.ESCALATED,
                          "DEFERRED": PolecatState.DEFERRED}


def working_polecat(town: Town, tmp_path: Path) -> polecat.PolecatInfo:
    """A polecat as a spawn leaves it once its GUPP nudge was delivered, with one commit."""
    rig.add(town, "gt", str(make_repo(tmp_path / "src")), prefix="gt")
    bead = beads.create(town, MAYOR, "do it", rig="gt")
    info = polecat.allocate(town, MAYOR, bead.id, "gt")
    polecat.create_worktree(town, info)
    polecat.set_state(town, "gt", info.name, PolecatState.WORKING)
    worktree = Path(str(info.worktree))
    git(worktree, "config", "user.email", "t@vermas.invalid")
    git(worktree, "config", "user.name", "t")
    (worktree / "work.txt").write_text("done\n")
    git(worktree, "add", "work.txt")
    git(worktree, "commit", "-q", "-m", "work")
    return info


def runner(town: Town, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("VERMAS_TOWN", "BD_ACTOR")}
    proc = subprocess.run([RUNNER, *args, "--town", str(town.root)], capture_output=True, text=True,
                          timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


async def test_polecat_done_says_done_in_list_and_status(town: Town, tmp_path: Path, client_for) -> None:  # type: ignore[no-untyped-def]
    info = working_polecat(town, tmp_path)
    assert [p.state for p in polecat.list_polecats(town)] == [PolecatState.WORKING]
    async with client_for(info.address) as c:
        mr = await call(c, "polecat_done", status="COMPLETED", summary="did it")
    assert mr["state"] == "queued"
    assert [p.state for p in polecat.list_polecats(town)] == [PolecatState.DONE]
    listed = json.loads(runner(town, "polecat", "list", "--json"))
    assert [(p["address"], p["state"]) for p in listed] == [(info.address, "done")]
    assert "done" in runner(town, "polecat", "list").split(info.address, 1)[1].splitlines()[0]
    status = json.loads(runner(town, "status", "--json"))
    assert [(p["address"], p["state"]) for p in status["polecats"]] == [(info.address, "done")]
    row = runner(town, "status").rsplit(info.address, 1)[1].splitlines()[0]  # the polecats table
    assert "done" in row and "working" not in row


@pytest.mark.parametrize(("status", "state"), [("ESCALATED", "escalated"), ("DEFERRED", "deferred")])
def test_other_endings_have_their_own_state(town: Town, tmp_path: Path, status: str, state: str) -> None:
    info = working_polecat(town, tmp_path)
    polecat.done(town, parse_address(info.address), status=status, summary="stuck")
    assert [p.state.value for p in polecat.list_polecats(town)] == [state]


def test_a_failed_polecat_done_leaves_the_state(town: Town, tmp_path: Path) -> None:
    info = working_polecat(town, tmp_path)
    (Path(str(info.worktree)) / "README.md").write_text("uncommitted\n")
    with pytest.raises(Exception, match="uncommitted changes"):
        polecat.done(town, parse_address(info.address), status="COMPLETED")
    assert [p.state for p in polecat.list_polecats(town)] == [PolecatState.WORKING]


@pytest.mark.tmux
def test_spawn_without_kick_is_started_not_working(town: Town, tmp_path: Path) -> None:
    """`started` means the session is up and its GUPP nudge not yet delivered; a spawn that
    leaves the nudge to the patrol must not claim `working`."""
    rig.add(town, "gt", str(make_repo(tmp_path / "src")), prefix="gt")
    town.config.agent.command, town.config.agent.args = "sh", ["-c", "sleep 600", "agent"]
    town.save_config()
    sessions = TownSessions(town.root)
    try:
        bead = beads.create(town, MAYOR, "do it", rig="gt")
        info = polecat.spawn(town, MAYOR, bead.id, "gt", sessions, kick="none")
        assert info.state is PolecatState.STARTED
        assert [p.state for p in polecat.list_polecats(town)] == [PolecatState.STARTED]
    finally:
        sessions.kill_server()
