"""Sling's two decisions, table-tested (pure), and the reported bug end to end with real
git: a bead in_progress with an open merge request, slung again, spawns no second polecat
(core, `vermas-runner sling`, MCP in-memory client)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import call, fail, git, make_repo
from vermas import beads, dispatch, polecat, rig, sling
from vermas.addresses import parse_address
from vermas.errors import Conflict, Forbidden, InvalidInput
from vermas.town import Town

RIGS = {"gt", "sample"}


@pytest.mark.parametrize(("target", "kind", "value"), [
    ("mayor", dispatch.TargetKind.AGENT, "mayor"),
    ("deacon", dispatch.TargetKind.AGENT, "deacon"),
    ("overseer", dispatch.TargetKind.AGENT, "overseer"),
    ("gt/witness", dispatch.TargetKind.AGENT, "gt/witness"),
    ("gt/crew/ann", dispatch.TargetKind.AGENT, "gt/crew/ann"),
    ("other/polecats/nux", dispatch.TargetKind.AGENT, "other/polecats/nux"),
    ("gt", dispatch.TargetKind.RIG, "gt"),
    ("sample", dispatch.TargetKind.RIG, "sample"),
])
def test_classify_target(target: str, kind: dispatch.TargetKind, value: str) -> None:
    got = dispatch.classify_target(target, RIGS)
    assert got.kind is kind
    assert (str(got.agent) if kind is dispatch.TargetKind.AGENT else got.rig) == value


@pytest.mark.parametrize(("target", "message"), [
    ("nope", "unknown rig 'nope'; rigs in this town: gt, sample"),
    ("", "rig name or an agent address"),
    ("gt/polecats/", "invalid address"),
    ("Mayor", "unknown rig"),
    ("gt/../x", "invalid address"),
])
def test_classify_target_rejects(target: str, message: str) -> None:
    with pytest.raises(InvalidInput) as info:
        dispatch.classify_target(target, RIGS)
    assert message in str(info.value)


MR = dispatch.OpenMergeRequest(id="gt-mr1", branch="polecat/nux/gt-a", state="queued")
MAYOR, OVERSEER, NUX = parse_address("mayor"), parse_address("overseer"), parse_address("gt/polecats/nux")


@pytest.mark.parametrize(("status", "mrs", "actor", "force", "error", "text"), [
    ("open", [], MAYOR, False, None, ""),
    ("blocked", [], MAYOR, False, None, ""),
    ("deferred", [], MAYOR, False, None, ""),
    ("in_progress", [], MAYOR, False, Conflict, "in_progress, held by gt/crew/ann"),
    ("in_progress", [MR], MAYOR, False, Conflict, "open merge request gt-mr1 (branch polecat/nux/gt-a"),
    ("open", [MR], MAYOR, False, Conflict, "gt-mr1"),
    ("closed", [], MAYOR, False, Conflict, "closed"),
    ("hooked", [], MAYOR, False, Conflict, "already hooked by gt/crew/ann"),
    ("hooked", [], OVERSEER, True, Conflict, "already hooked"),
    ("in_progress", [MR], OVERSEER, True, None, ""),
    ("closed", [], OVERSEER, True, None, ""),
    ("in_progress", [MR], MAYOR, True, Forbidden, "overseer only"),
    ("open", [], MAYOR, True, Forbidden, "overseer only"),
    ("open", [], NUX, False, Forbidden, "polecats do not sling"),
    ("tombstone", [], MAYOR, False, Conflict, "only open"),
])
def test_refusal(status: str, mrs: list[dispatch.OpenMergeRequest], actor: Any, force: bool,
                 error: type | None, text: str) -> None:
    got = dispatch.refusal(status, "gt/crew/ann", mrs, actor, force)
    if error is None:
        assert got is None
    else:
        assert type(got) is error and text in str(got)


def finished_bead(town: Town, tmp_path: Path) -> tuple[str, str]:
    """A bead a polecat finished: in_progress with a queued merge request (real git)."""
    rig.add(town, "gt", str(make_repo(tmp_path / "src")), prefix="gt")
    clone = rig.canonical_clone(town, "gt")
    worktree = town.root / "gt" / "polecats" / "nux"
    git(clone, "worktree", "add", "-q", "-b", "polecat/nux/work", str(worktree))
    git(worktree, "config", "user.email", "t@vermas.invalid")
    git(worktree, "config", "user.name", "t")
    bead = beads.create(town, MAYOR, "do it", rig="gt")
    sling.sling(town, MAYOR, bead.id, "gt/polecats/nux")
    (worktree / "work.txt").write_text("done\n")
    git(worktree, "add", "work.txt")
    git(worktree, "commit", "-q", "-m", "work")
    mr = polecat.done(town, NUX, summary="did it")
    assert mr.id is not None
    return bead.id, mr.id


def polecat_rows(town: Town) -> int:
    with town.db.read() as conn:
        return int(conn.execute("SELECT COUNT(*) FROM polecats").fetchone()[0])


def test_in_progress_with_open_mr_is_not_slung_again_core(town: Town, tmp_path: Path) -> None:
    bead_id, mr_id = finished_bead(town, tmp_path)
    before = polecat_rows(town)
    with pytest.raises(Conflict, match=f"open merge request {mr_id} \\(branch polecat/nux/work"):
        sling.sling(town, MAYOR, bead_id, "gt")
    with pytest.raises(Conflict, match=mr_id):
        sling.sling(town, MAYOR, bead_id, "gt/crew/ann")
    with pytest.raises(Forbidden, match="overseer only"):
        sling.sling(town, MAYOR, bead_id, "gt/crew/ann", force=True)
    assert polecat_rows(town) == before
    assert not (town.root / "gt" / "polecats" / "slit").exists()
    with town.db.read() as conn:
        assert beads.fetch(conn, bead_id).status == "in_progress"
    forced = sling.sling(town, OVERSEER, bead_id, "gt/crew/ann", force=True)
    assert (forced.status, forced.assignee) == ("hooked", "gt/crew/ann")


def test_in_progress_with_open_mr_is_not_slung_again_runner(town: Town, tmp_path: Path) -> None:
    bead_id, mr_id = finished_bead(town, tmp_path)
    runner = str(Path(sys.executable).with_name("vermas-runner"))
    env = {k: v for k, v in os.environ.items() if k not in ("VERMAS_TOWN", "BD_ACTOR")}
    proc = subprocess.run([runner, "sling", bead_id, "gt", "--town", str(town.root)], capture_output=True,
                          text=True, timeout=120, env=env)
    assert proc.returncode == 2 and mr_id in proc.stderr and "polecat/nux/work" in proc.stderr
    proc = subprocess.run([runner, "sling", bead_id, "gt", "--force", "--actor", "mayor", "--town",
                           str(town.root)], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2 and "overseer only" in proc.stderr
    assert polecat_rows(town) == 0


def test_runner_sling_to_mayor_hooks_it(town: Town) -> None:
    """The runner's sling uses the same dispatch rule as the tool: `mayor` is an address."""
    bead = beads.create(town, MAYOR, "for the mayor")
    runner = str(Path(sys.executable).with_name("vermas-runner"))
    env = {k: v for k, v in os.environ.items() if k not in ("VERMAS_TOWN", "BD_ACTOR")}
    proc = subprocess.run([runner, "sling", bead.id, "mayor", "--town", str(town.root)], capture_output=True,
                          text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert f"hooked {bead.id} to mayor" in proc.stdout


async def test_in_progress_with_open_mr_is_not_slung_again_mcp(town: Town, tmp_path: Path,
                                                               client_for: Any) -> None:
    bead_id, mr_id = finished_bead(town, tmp_path)
    async with client_for("mayor") as mayor, client_for("overseer", profile="all") as overseer:
        assert mr_id in await fail(mayor, "sling", bead_id=bead_id, target="gt")
        assert "overseer only" in await fail(mayor, "sling", bead_id=bead_id, target="gt", force=True)
        assert polecat_rows(town) == 0
        forced = await call(overseer, "sling", bead_id=bead_id, target="gt/crew/ann", force=True)
        assert forced["status"] == "hooked"
