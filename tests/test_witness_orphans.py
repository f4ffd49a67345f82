"""Orphan branches, for real: a polecat branch with commits beyond the target, no merge request,
and no slot holding it (its polecat is gone). The witness's observation reads the rig's real
canonical clone and store; the effect spawns a real polecat (tmux on the town's private socket,
the agent a sleeping shell) on that very branch. Never is a branch deleted.

The pure rule (re-sling once, wait `grace`, escalate if orphaned again, leave a bead whose
restarts ran out to that escalation) is table-tested in test_witness_decide.py."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import git
from tests.test_witness_effects import MAYOR, NUX, Rigged
from vermas import beads, polecat, rig
from vermas.protocol import PolecatState
from vermas.witness import observe
from vermas.witness import patrol as witness_patrol

pytestmark = pytest.mark.tmux


def orphan(r: Rigged) -> tuple[str, Path, str, str]:
    """A polecat that committed work and is gone: its session killed, its slot freed with the
    bead back to open (as a crash between the two would leave it); branch and worktree stay."""
    bead, worktree = r.spawn("work that outlived its polecat")
    head = r.commit(worktree)
    branch = polecat.branch_name("nux", bead)
    assert r.sessions.kill(NUX)
    polecat.release(r.town, "gt", "nux", reopen_bead=True)
    return bead, worktree, branch, head


def test_an_orphan_branch_is_seen_from_git_and_the_store(rigged: Rigged) -> None:
    bead, _, branch, _ = orphan(rigged)
    seen, history = observe.observe_rig(rigged.town, rigged.sessions, "gt")
    [b] = seen.branches
    assert (b.branch, b.bead, b.ahead, b.merge_request, b.polecat_present, b.bead_status, b.bead_assignee) == (
        branch, bead, 1, False, False, "open", None)
    assert history.reslung == {}


def test_an_orphan_is_reslung_to_a_new_polecat_on_its_own_branch_once(rigged: Rigged) -> None:
    bead, worktree, branch, head = orphan(rigged)
    now = time.time()

    events = witness_patrol.round(rigged.town, rigged.sessions, now)

    [event] = [e for e in events if e.action == "resling"]
    assert event.ok and event.key == f"resling:{branch}" and event.bead == bead
    assert event.evidence["branch"] == branch and event.evidence["polecat"] == str(NUX)
    info = polecat.find(rigged.town, "gt", "nux")
    assert info is not None and (info.bead_id, info.branch, info.state) == (bead, branch, PolecatState.STARTED)
    detail = beads.show(rigged.town, bead)
    assert (detail.status, detail.assignee) == ("hooked", str(NUX))
    # The same worktree, on the same branch, with the orphan's commit: its work is the start.
    assert Path(str(info.worktree)).resolve() == worktree.resolve()
    assert git(worktree, "rev-parse", "HEAD") == head and (worktree / "work.txt").is_file()
    assert rigged.sessions.alive(NUX) and Path(rigged.pane_path(NUX)).resolve() == worktree.resolve()
    # Held by a slot again: no orphan, no second re-sling.
    seen, history = observe.observe_rig(rigged.town, rigged.sessions, "gt")
    assert [b.polecat_present for b in seen.branches] == [True] and history.reslung == {branch: now}
    assert [e.action for e in witness_patrol.round(rigged.town, rigged.sessions, now + 1)] == []


def test_an_orphan_whose_bead_is_elsewhere_is_escalated_once_and_kept(rigged: Rigged) -> None:
    bead, _, branch, head = orphan(rigged)
    beads.close(rigged.town, MAYOR, bead, reason="done some other way")
    now = time.time()

    events = witness_patrol.round(rigged.town, rigged.sessions, now)

    assert [e.action for e in events] == ["escalate"]
    [(sender, subject, body, _)] = rigged.mail_to("mayor")
    assert sender == "gt/witness" and subject.startswith("ESCALATION")
    assert "reason: orphan-branch" in body and f"branch: {branch}" in body and "The branch is kept" in body
    assert witness_patrol.round(rigged.town, rigged.sessions, now + 60) == []  # standing: not repeated
    assert len(rigged.mail_to("mayor")) == 1
    clone = rig.canonical_clone(rigged.town, "gt")
    assert git(clone, "rev-parse", f"refs/heads/{branch}") == head

