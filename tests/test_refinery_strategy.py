"""`[rigs.<name>.merge] strategy` on real git (issue 19, item 7): "squash" (the default) lands
one commit per bead whose message names the bead and the polecat, so a red commit followed by
its fix lands as ONE green commit; "rebase" keeps each commit. Batching and bisection work
with both. The polecat's branch is deleted only when the squash is proven on the target (the
recorded squash commit is an ancestor and carries the branch's whole change), never when the
branch holds work that did not land."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from pydantic import ValidationError

from tests.conftest import git
from tests.refinery_rig import MAYOR, MergeRig, Work
from vermas import beads, polecat
from vermas.addresses import Address, Role
from vermas.refinery import decide, gitops, ledger, worker
from vermas.refinery.decide import Cleanup, Presence
from vermas.refinery.types import MergeConfig, MRState, QueuedRequest
from vermas.town import Town

OWNER = "runner-1"


def drain(town: Town) -> list[worker.StepReport]:
    reports = worker.drain(town, "gt", OWNER)
    assert all(r.error is None for r in reports), [r.error for r in reports]
    return reports


def main_log(mr: MergeRig) -> list[tuple[str, str]]:
    """(sha, subject) of the upstream's main, newest first."""
    lines = git(mr.bare, "log", "--format=%H %s", "main").splitlines()
    return [(line[:40], line[41:]) for line in lines]


def assert_every_commit_green(mr: MergeRig) -> None:
    """No commit on the upstream's main fails the rig's test (no .txt file says BROKEN)."""
    for sha, subject in main_log(mr):
        found = subprocess.run(["git", "grep", "-l", "BROKEN", sha, "--", "*.txt"], cwd=mr.bare,
                               capture_output=True, text=True)
        assert found.returncode == 1 and not found.stdout, f"{sha} ({subject}) is red: {found.stdout}"


def two_commit_work(mr: MergeRig, title: str) -> Work:
    """A bead whose polecat commits twice (t1.txt, then t2.txt) before polecat_done."""
    bead = beads.create(mr.town, MAYOR, title=title).id
    info = polecat.allocate(mr.town, MAYOR, bead, mr.name)
    polecat.create_worktree(mr.town, info)
    worktree = Path(str(info.worktree))
    (worktree / "t1.txt").write_text("one\n")
    git(worktree, "add", "t1.txt")
    git(worktree, "-c", "user.email=pc@vermas.invalid", "-c", "user.name=polecat", "commit", "-q", "-m", title)
    address = Address(role=Role.POLECAT, rig=mr.name, name=info.name)
    return mr.commit(bead, address, worktree, {"t2.txt": "two\n"}, "second commit")


def rework(mr: MergeRig, town: Town) -> tuple[Work, Work]:
    """A bead whose first commit is red and is sent back, then fixed by a second commit."""
    bad = mr.work("Add the feature", {"feature.txt": "BROKEN\n", "notes.txt": "one\n"}, summary="first try")
    drain(town)
    assert ledger.get(town, bad.mr).state is MRState.REWORK
    assert mr.branch_exists(bad.branch) and bad.worktree.exists()  # kept for the rework
    fixed = mr.commit(bad.bead, bad.address, bad.worktree, {"feature.txt": "working\n"}, "fix the feature")
    drain(town)
    assert ledger.get(town, fixed.mr).state is MRState.MERGED
    return bad, fixed


def test_strategy_is_squash_by_default_and_only_squash_or_rebase() -> None:
    assert MergeConfig().strategy == "squash"
    assert MergeConfig(strategy="rebase").strategy == "rebase"
    with pytest.raises(ValidationError, match="squash"):
        MergeConfig(strategy="merge")  # type: ignore[arg-type]


def test_squash_lands_a_reworked_bead_as_one_green_commit_naming_bead_and_polecat(town: Town,
                                                                                  tmp_path: Path) -> None:
    mr = MergeRig(town, tmp_path)  # strategy: the default
    assert town.config.rigs["gt"].merge.strategy == "squash"
    before = mr.upstream_main()
    bad, fixed = rework(mr, town)
    log = main_log(mr)
    assert len(log) == 2 and log[1][0] == before  # ONE commit on top of the initial one
    sha, subject = log[0]
    assert sha == ledger.get(town, fixed.mr).merged_sha
    assert subject == f"{bad.bead}: Add the feature"
    body = git(mr.bare, "log", "-1", "--format=%B", sha)
    assert f"Bead: {bad.bead} (Add the feature)" in body and f"Polecat: {bad.address}" in body
    assert f"Branch: {bad.branch} at {fixed.commit}" in body and "Squashed 2 commit(s):" in body
    assert "Add the feature" in body and "fix the feature" in body  # the folded commits are listed
    assert git(mr.bare, "log", "-1", "--format=%an", sha) == "polecat"  # authored as the polecat's work
    assert git(mr.bare, "show", "main:feature.txt") == "working" and git(mr.bare, "show", "main:notes.txt") == "one"
    assert_every_commit_green(mr)
    # the squash proven on the target: branch, worktree and slot gone; the evidence says how
    assert not mr.branch_exists(bad.branch) and not bad.worktree.exists() and mr.slots() == []
    events = ledger.show(town, fixed.mr).events
    testing = next(e for e in events if e.to_state is MRState.TESTING)
    assert testing.evidence["strategy"] == "squash" and testing.evidence["candidate_sha"] == sha
    cleanup = events[-1].evidence
    assert cleanup["cleanup"] == "done" and cleanup["branch_deleted"] is True
    assert set(cleanup["commits"].values()) == {Presence.SQUASHED.value} and len(cleanup["commits"]) == 2


def test_rebase_keeps_each_commit_of_a_reworked_bead(town: Town, tmp_path: Path) -> None:
    mr = MergeRig(town, tmp_path, strategy="rebase")
    bad, fixed = rework(mr, town)
    subjects = [s for _, s in main_log(mr)]
    assert subjects == ["fix the feature", "Add the feature", "initial"]  # the red commit is on main
    assert not mr.branch_exists(bad.branch) and mr.slots() == []  # every commit reachable: cleaned
    cleanup = ledger.show(town, fixed.mr).events[-1].evidence
    assert set(cleanup["commits"].values()) == {Presence.REACHABLE.value}


@pytest.mark.parametrize("strategy", ["squash", "rebase"])
def test_a_batch_with_a_culprit_is_bisected_and_the_rest_land(town: Town, tmp_path: Path, strategy: str) -> None:
    mr = MergeRig(town, tmp_path, strategy=strategy)
    good1 = mr.work("g1", {"g1.txt": "fine\n"})
    two = two_commit_work(mr, "two commits")
    bad = mr.work("bad", {"bad.txt": "BROKEN\n"})
    good4 = mr.work("g4", {"g4.txt": "fine\n"})
    reports = drain(town)
    assert reports[0].reworked == [bad.mr] and sum(r.test_runs for r in reports) <= 1 + 2 * 2 + 1
    merged = [good1, two, good4]
    assert all(ledger.get(town, w.mr).state is MRState.MERGED for w in merged)
    assert ledger.get(town, bad.mr).state is MRState.REWORK and mr.branch_exists(bad.branch)
    assert "bad.txt" not in mr.upstream_files() and {"g1.txt", "t1.txt", "t2.txt", "g4.txt"} <= mr.upstream_files()
    subjects = [s for _, s in main_log(mr)]
    if strategy == "squash":  # one commit per bead, each naming its bead
        assert sorted(subjects) == sorted([*(f"{w.bead}: {t}" for w, t in zip(merged, ("g1", "two commits", "g4"),
                                                                                 strict=True)), "initial"])
    else:
        assert sorted(subjects) == sorted(["g1", "two commits", "second commit", "g4", "initial"])
    assert_every_commit_green(mr)
    assert all(not mr.branch_exists(w.branch) for w in merged) and mr.slots() == [bad.address.name]


def test_squash_keeps_a_branch_that_gained_a_commit_the_squash_does_not_carry(town: Town, tmp_path: Path) -> None:
    mr = MergeRig(town, tmp_path)
    w = mr.work("add a", {"a.txt": "a\n"})
    # after polecat_done, the polecat commits more work without asking for a merge
    (w.worktree / "later.txt").write_text("not merged\n")
    git(w.worktree, "add", "later.txt")
    git(w.worktree, "-c", "user.email=pc@vermas.invalid", "-c", "user.name=polecat", "commit", "-q", "-m", "later")
    drain(town)
    assert ledger.get(town, w.mr).state is MRState.MERGED and git(mr.bare, "show", "main:a.txt") == "a"
    assert "later.txt" not in mr.upstream_files()
    assert mr.branch_exists(w.branch) and w.worktree.exists()  # its unmerged commit is not deleted
    cleanup = ledger.show(town, w.mr).events[-1].evidence
    later = git(w.worktree, "rev-parse", "HEAD")
    assert cleanup["cleanup"] == "kept" and cleanup["missing"] == [later]


def test_squash_landed_needs_the_commit_on_the_target_and_the_same_change(town: Town, tmp_path: Path) -> None:
    mr = MergeRig(town, tmp_path)
    w = mr.work("add a", {"a.txt": "a\n"})
    since = git(mr.clone, "rev-parse", "main")
    drain(town)
    squash = ledger.get(town, w.mr).merged_sha
    assert squash is not None and ledger.get(town, w.mr).cleaned_at is not None
    target = git(mr.clone, "rev-parse", "main")
    assert gitops.squash_landed(mr.clone, squash, target, since, w.commit)
    assert not gitops.squash_landed(mr.clone, squash, since, since, w.commit)  # not on that target
    other = mr.work("add b", {"b.txt": "b\n"})  # a different change
    assert not gitops.squash_landed(mr.clone, squash, target, since, other.commit)


def test_squash_message_and_cleanup_decision() -> None:
    req = QueuedRequest(id="gt-mr1", rig="gt", bead="gt-a1", branch="polecat/nux/gt-a1", commit="c" * 40,
                        polecat="gt/polecats/nux", queued_at=1.0)
    text = decide.squash_message(req, "Fix\nthe widget", ["abc123 red", "def456 fix"])
    subject, _, body = text.partition("\n\n")
    assert subject == "gt-a1: Fix the widget"
    assert "Polecat: gt/polecats/nux" in body and "Squashed 2 commit(s):\n  abc123 red\n  def456 fix" in body
    assert decide.squash_message(req, "", []).startswith("gt-a1: gt-a1\n")
    squashed = {"a": Presence.SQUASHED, "b": Presence.SQUASHED}
    assert decide.cleanup(req.branch, squashed) == Cleanup(req.branch)
    assert isinstance(decide.cleanup(req.branch, {"a": Presence.SQUASHED, "b": Presence.MISSING}), decide.Keep)
