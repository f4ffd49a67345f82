"""The user's own repository as the rig's upstream (issue 19, item 4), on real git.

README tells people to `rig add ~/src/myproj`: a NON-bare repository with main checked out,
where a plain `git push` to main is refused. Merges land there too: a clean work tree is
brought to the merged commit (updateInstead), a dirty one is never overwritten. A bare
repository by path and a file:// URL keep working. After every merge and every `rig sync`
the canonical clone's files equal its HEAD."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import git
from tests.refinery_rig import MergeRig
from vermas import rig
from vermas.errors import Conflict
from vermas.refinery import gitops, ledger, worker
from vermas.refinery.types import MRState
from vermas.town import Town

OWNER = "runner-1"


def drain(town: Town) -> list[worker.StepReport]:
    reports = worker.drain(town, "gt", OWNER)
    assert all(r.error is None for r in reports), [r.error for r in reports]
    return reports


def clean(repo: Path) -> bool:
    return git(repo, "status", "--porcelain", "--untracked-files=no") == ""


def person_commits(repo: Path, name: str, text: str) -> str:
    """A person commits in their own repository (the upstream)."""
    (repo / name).write_text(text)
    git(repo, "add", name)
    git(repo, "-c", "user.email=me@vermas.invalid", "-c", "user.name=me", "commit", "-q", "-m", f"me: {name}")
    return git(repo, "rev-parse", "HEAD")


def touch_old(path: Path) -> None:
    """Same content, another mtime: the index's stat data no longer matches the file."""
    os.utime(path, (946684800, 946684800))


def test_a_merge_lands_in_a_clean_non_bare_upstream_and_its_files_follow(town: Town, tmp_path: Path) -> None:
    mr = MergeRig(town, tmp_path, upstream="checkout")
    myproj = mr.bare
    assert git(myproj, "rev-parse", "--is-bare-repository") == "false"
    assert gitops.upstream_checkout(mr.clone, "main") == myproj.resolve()
    w = mr.work("add a", {"a.txt": "a\n"})
    drain(town)
    row = ledger.get(town, w.mr)
    assert row.state is MRState.MERGED and row.merged_sha == git(myproj, "rev-parse", "main")
    # the person's checkout is at the merged commit: HEAD, index and files
    assert (myproj / "a.txt").read_text() == "a\n" and clean(myproj)
    assert clean(mr.clone) and (mr.clone / "a.txt").read_text() == "a\n"
    # a person's commit there, then another merge: both kept
    mine = person_commits(myproj, "mine.txt", "mine\n")
    w2 = mr.work("add b", {"b.txt": "b\n"})
    drain(town)
    assert ledger.get(town, w2.mr).state is MRState.MERGED
    assert git(myproj, "merge-base", "--is-ancestor", mine, "main") == ""
    assert (myproj / "b.txt").read_text() == "b\n" and (myproj / "mine.txt").read_text() == "mine\n"
    assert clean(myproj) and clean(mr.clone)


@pytest.mark.parametrize("kind", ["bare", "file-url"])
def test_a_bare_upstream_by_path_or_file_url_keeps_working(town: Town, tmp_path: Path, kind: str) -> None:
    mr = MergeRig(town, tmp_path, upstream=kind)
    assert (gitops.local_upstream(mr.clone) is None) is (kind == "file-url")
    assert gitops.upstream_checkout(mr.clone, "main") is None
    w = mr.work("add a", {"a.txt": "a\n"})
    drain(town)
    assert ledger.get(town, w.mr).state is MRState.MERGED
    assert ledger.get(town, w.mr).merged_sha == mr.upstream_main() and "a.txt" in mr.upstream_files()


def test_the_canonical_clone_follows_a_merge_even_when_a_file_was_touched(town: Town, tmp_path: Path) -> None:
    """Before: update-ref moved HEAD, read-tree refused the stat-dirty README.md ("not uptodate")
    and its failure was ignored: `git status` showed the merged files deleted."""
    mr = MergeRig(town, tmp_path)
    touch_old(mr.clone / "README.md")
    w = mr.work("edit readme", {"README.md": "merged\n", "a.txt": "a\n"})
    drain(town)
    assert ledger.get(town, w.mr).state is MRState.MERGED
    assert git(mr.clone, "rev-parse", "HEAD") == mr.upstream_main()
    assert clean(mr.clone), git(mr.clone, "status", "--porcelain")
    assert (mr.clone / "README.md").read_text() == "merged\n" and (mr.clone / "a.txt").read_text() == "a\n"


def test_the_canonical_clone_follows_the_refinerys_sync_and_rig_sync(town: Town, tmp_path: Path) -> None:
    mr = MergeRig(town, tmp_path)
    # the refinery's own sync (fetch, compare-and-set fast-forward) before a batch
    touch_old(mr.clone / "README.md")
    git(mr.pusher, "pull", "-q", "--ff-only")
    mr.push_upstream("README.md", "upstream edit\n")
    w = mr.work("add a", {"a.txt": "a\n"})
    drain(town)
    assert ledger.get(town, w.mr).state is MRState.MERGED
    assert clean(mr.clone) and (mr.clone / "README.md").read_text() == "upstream edit\n"
    # `rig sync`
    touch_old(mr.clone / "README.md")
    mr.push_upstream("README.md", "second edit\n")
    assert rig.sync(town, "gt").state is rig.SyncState.FAST_FORWARDED
    assert git(mr.clone, "rev-parse", "HEAD") == mr.upstream_main()
    assert clean(mr.clone) and (mr.clone / "README.md").read_text() == "second edit\n"


def test_a_local_change_in_the_canonical_clone_is_never_overwritten(town: Town, tmp_path: Path) -> None:
    mr = MergeRig(town, tmp_path)
    before = git(mr.clone, "rev-parse", "HEAD")
    (mr.clone / "README.md").write_text("someone's edit\n")
    mr.push_upstream("README.md", "upstream edit\n")
    with pytest.raises(Conflict, match="local changes"):
        gitops.sync_target(mr.clone, "main", fetch=True)
    assert git(mr.clone, "rev-parse", "HEAD") == before  # HEAD did not move without its files
    assert (mr.clone / "README.md").read_text() == "someone's edit\n"
