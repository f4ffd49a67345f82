"""The user's own repository as the rig's upstream (issue 19, item 4), on real git (and once end
to end under `vermas-runner up --model standin`, real Claude Code sessions in tmux).

README tells people to `rig add ~/src/myproj`: a NON-bare repository with main checked out,
where a plain `git push` to main is refused. Merges land there too: a clean work tree is
brought to the merged commit (updateInstead), a dirty one is never overwritten. A bare
repository by path and a file:// URL keep working. After every merge and every `rig sync`
the canonical clone's files equal its HEAD."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import git
from tests.refinery_rig import MergeRig
from tests.test_refinery_e2e import FAILING, QueueTown, e2e, process_queue_until, sling_all, up_town
from vermas import rig
from vermas.errors import Conflict
from vermas.refinery import decide, gitops, ledger, worker
from vermas.protocol import Escalation, ProtocolKind
from vermas.refinery.types import HoldKind, MRState
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


# ---- a refused push holds the queue once; nothing is tested again until something changed --------


def rounds(town: Town, n: int, start: float = 0.0) -> list[worker.StepReport]:
    """n steps of the queue as a patrol would make them, 30 s apart (no lease left over)."""
    base = time.time() + start
    return [worker.process_rig(town, "gt", OWNER, base + 30.0 * i) for i in range(n)]


def escalations(mr: MergeRig) -> list[Escalation]:
    return [m for m in mr.mail_to("mayor", ProtocolKind.ESCALATION) if isinstance(m, Escalation)]


def claims(town: Town, mr_id: str) -> int:
    return [e.to_state for e in ledger.events(town, mr_id)].count(MRState.CLAIMED)


def test_a_dirty_checkout_upstream_holds_the_queue_once_and_resumes_when_clean(town: Town, tmp_path: Path) -> None:
    mr = MergeRig(town, tmp_path, upstream="checkout")
    myproj = mr.bare
    (myproj / "README.md").write_text("my uncommitted edit\n")
    w = mr.work("add a", {"a.txt": "a\n"})
    reports = rounds(town, 4)
    assert all(r.error is None for r in reports), [r.error for r in reports]
    assert sum(r.test_runs for r in reports) == 0 and claims(town, w.mr) == 0  # held before any test
    hold = ledger.queue_state(town, "gt").hold
    assert hold is not None and hold.kind is HoldKind.UPSTREAM_DIRTY
    assert "README.md" in hold.reason and str(myproj) in hold.reason
    [esc] = escalations(mr)  # one escalation for the whole hold
    assert "README.md" in esc.text
    row = ledger.get(town, w.mr)
    assert row.state is MRState.QUEUED and row.attempts == 0
    assert (myproj / "README.md").read_text() == "my uncommitted edit\n"  # never overwritten
    assert "a.txt" not in mr.upstream_files()
    # the person commits the change: clean, the queue resumes and the merge lands on top
    mine = person_commits(myproj, "README.md", "my uncommitted edit\n")
    reports = rounds(town, 2, start=200.0)
    assert all(r.error is None for r in reports), [r.error for r in reports]
    assert ledger.get(town, w.mr).state is MRState.MERGED and ledger.queue_state(town, "gt").hold is None
    assert git(myproj, "merge-base", "--is-ancestor", mine, "main") == ""
    assert (myproj / "a.txt").read_text() == "a\n" and clean(myproj) and clean(mr.clone)
    assert len(escalations(mr)) == 1


def test_a_checkout_dirtied_during_the_test_run_refuses_the_push_and_holds(town: Town, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    mr = MergeRig(town, tmp_path, upstream="checkout")
    myproj = mr.bare
    w = mr.work("add a", {"a.txt": "a\n"})
    pauses = tmp_path / "pauses"
    pauses.mkdir()
    monkeypatch.setenv(worker.PAUSE_ENV, "test")
    monkeypatch.setenv(worker.PAUSE_DIR_ENV, str(pauses))

    def person() -> None:  # edits README.md while the candidate is being tested
        deadline = time.monotonic() + 60
        while not (pauses / "test.reached").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        (myproj / "README.md").write_text("typed while the tests ran\n")
        (pauses / "test.go").write_text("")

    thread = threading.Thread(target=person)
    thread.start()
    first = worker.process_rig(town, "gt", OWNER, time.time())
    thread.join()
    monkeypatch.delenv(worker.PAUSE_ENV)
    assert first.error is None and first.test_runs == 1 and first.merged == []
    hold = ledger.queue_state(town, "gt").hold
    assert hold is not None and hold.kind is HoldKind.UPSTREAM_DIRTY
    last = ledger.events(town, w.mr)[-1]
    assert last.to_state is MRState.QUEUED and "unstaged changes" in last.evidence["push_refused"]  # git's words
    assert ledger.get(town, w.mr).attempts == 0
    assert (myproj / "README.md").read_text() == "typed while the tests ran\n"
    later = rounds(town, 3, start=60.0)
    assert sum(r.test_runs for r in later) == 0 and claims(town, w.mr) == 1 and len(escalations(mr)) == 1
    git(myproj, "checkout", "--", "README.md")  # the person drops the edit: clean again
    rounds(town, 2, start=300.0)
    assert ledger.get(town, w.mr).state is MRState.MERGED and (myproj / "a.txt").read_text() == "a\n"


def test_a_person_committing_during_the_test_run_restarts_the_batch_without_a_hold(
        town: Town, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mr = MergeRig(town, tmp_path, upstream="checkout")
    myproj = mr.bare
    w = mr.work("add a", {"a.txt": "a\n"})
    pauses = tmp_path / "pauses"
    pauses.mkdir()
    monkeypatch.setenv(worker.PAUSE_ENV, "test")
    monkeypatch.setenv(worker.PAUSE_DIR_ENV, str(pauses))
    mine: list[str] = []

    def person() -> None:  # commits in their repository while the candidate is being tested
        deadline = time.monotonic() + 60
        while not (pauses / "test.reached").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        mine.append(person_commits(myproj, "mine.txt", "mine\n"))
        (pauses / "test.go").write_text("")

    thread = threading.Thread(target=person)
    thread.start()
    first = worker.process_rig(town, "gt", OWNER, time.time())
    thread.join()
    monkeypatch.delenv(worker.PAUSE_ENV)
    assert first.error is None and first.merged == [] and first.restarted is not None
    assert "moved" in first.restarted and ledger.queue_state(town, "gt").hold is None and not escalations(mr)
    assert ledger.get(town, w.mr).state is MRState.QUEUED and ledger.get(town, w.mr).attempts == 0
    rounds(town, 2, start=60.0)
    assert ledger.get(town, w.mr).state is MRState.MERGED
    assert git(myproj, "merge-base", "--is-ancestor", mine[0], "main") == "" and (myproj / "a.txt").exists()
    assert clean(myproj) and clean(mr.clone)


REFUSE_UNLESS_ALLOWED = """#!/bin/sh
test -e "$GIT_DIR/allow-pushes" && exit 0
echo "policy: pushes to main need a review" >&2
exit 1
"""


def test_a_push_refused_by_the_upstream_is_held_once_not_retried_every_round(town: Town, tmp_path: Path) -> None:
    """Before: "push refused" was overwritten by "target is no longer <sha>; update-ref refused" and
    the request cycled claim -> test -> requeue every round, with no escalation."""
    mr = MergeRig(town, tmp_path)
    hook = mr.bare / "hooks" / "pre-receive"
    hook.write_text(REFUSE_UNLESS_ALLOWED)
    hook.chmod(0o755)
    w = mr.work("add a", {"a.txt": "a\n"})
    reports = rounds(town, 6)
    assert all(r.error is None for r in reports), [r.error for r in reports]
    assert sum(r.test_runs for r in reports) == 1 and claims(town, w.mr) == 1
    hold = ledger.queue_state(town, "gt").hold
    assert hold is not None and hold.kind is HoldKind.PUSH_REFUSED
    assert "policy: pushes to main need a review" in hold.reason
    requeued = [e for e in ledger.events(town, w.mr) if e.to_state is MRState.QUEUED and e.from_state]
    assert len(requeued) == 1 and "policy: pushes to main need a review" in requeued[0].evidence["push_refused"]
    assert "update-ref refused" not in requeued[0].evidence["reason"]
    [esc] = escalations(mr)
    assert "policy: pushes to main need a review" in esc.text
    assert ledger.get(town, w.mr).attempts == 0 and "a.txt" not in mr.upstream_files()
    # the upstream's owner allows pushes and a person pushes a commit: the tip changed, the queue goes on
    (mr.bare / "allow-pushes").write_text("")
    mr.push_upstream("ext.txt")
    reports = rounds(town, 2, start=400.0)
    assert all(r.error is None for r in reports), [r.error for r in reports]
    assert ledger.get(town, w.mr).state is MRState.MERGED and {"a.txt", "ext.txt"} <= mr.upstream_files()
    assert ledger.queue_state(town, "gt").hold is None and len(escalations(mr)) == 1


def test_on_push_refused_restarts_only_when_the_upstream_moved() -> None:
    args = dict(rig="gt", target_branch="main", url="/src/myproj", message="! [remote rejected] (hook declined)",
                tested_on="a" * 40)
    moved = decide.on_push_refused(**args, upstream_now="b" * 40, checkout=None, dirty="")
    assert isinstance(moved, decide.Restart) and "moved to bbbbbbbbbbbb" in moved.reason
    same = decide.on_push_refused(**args, upstream_now="a" * 40, checkout=None, dirty="")
    assert isinstance(same, decide.HoldQueue) and same.kind is HoldKind.PUSH_REFUSED
    assert "hook declined" in same.reason and "[rigs.gt.merge]" in same.reason
    unknown = decide.on_push_refused(**args, upstream_now=None, checkout=None, dirty="")
    assert isinstance(unknown, decide.HoldQueue) and unknown.kind is HoldKind.PUSH_REFUSED
    dirty = decide.on_push_refused(**args, upstream_now="b" * 40, checkout="/src/myproj", dirty=" M README.md\n")
    assert isinstance(dirty, decide.HoldQueue) and dirty.kind is HoldKind.UPSTREAM_DIRTY
    assert "README.md" in dirty.reason and "/src/myproj" in dirty.reason


def test_a_merge_never_overwrites_a_local_change_in_the_canonical_clone(town: Town, tmp_path: Path) -> None:
    mr = MergeRig(town, tmp_path)
    before = git(mr.clone, "rev-parse", "HEAD")
    (mr.clone / "README.md").write_text("someone's edit in the clone\n")
    w = mr.work("edit readme", {"README.md": "merged\n"})
    first = worker.process_rig(town, "gt", OWNER, time.time())
    assert first.restarted is not None and "local changes" in first.restarted and "README.md" in first.restarted
    assert (mr.clone / "README.md").read_text() == "someone's edit in the clone\n"
    assert git(mr.clone, "rev-parse", "HEAD") == before  # HEAD never ahead of its files
    # every later round says why, and tests nothing, until the clone is clean again
    later = worker.process_rig(town, "gt", OWNER, time.time() + 120)
    assert later.error is not None and "local changes" in later.error and later.test_runs == 0
    git(mr.clone, "checkout", "--", "README.md")
    rounds(town, 2, start=300.0)
    assert ledger.get(town, w.mr).state is MRState.MERGED and git(mr.bare, "show", "main:README.md") == "merged"
    assert clean(mr.clone) and (mr.clone / "README.md").read_text() == "merged\n"


def test_an_untracked_file_in_the_way_in_the_checkout_is_kept_and_holds_until_it_goes(town: Town,
                                                                                     tmp_path: Path) -> None:
    mr = MergeRig(town, tmp_path, upstream="checkout")
    myproj = mr.bare
    (myproj / "a.txt").write_text("a person's own untracked a.txt\n")
    w = mr.work("add a", {"a.txt": "a\n"})
    reports = rounds(town, 4)
    assert all(r.error is None for r in reports) and sum(r.test_runs for r in reports) == 1
    hold = ledger.queue_state(town, "gt").hold
    assert hold is not None and hold.kind is HoldKind.PUSH_REFUSED and "would be overwritten" in hold.reason
    assert (myproj / "a.txt").read_text() == "a person's own untracked a.txt\n" and len(escalations(mr)) == 1
    (myproj / "a.txt").unlink()  # the person moves it away: the checkout's state changed
    rounds(town, 2, start=300.0)
    assert ledger.get(town, w.mr).state is MRState.MERGED and (myproj / "a.txt").read_text() == "a\n"
    assert clean(myproj) and ledger.queue_state(town, "gt").hold is None


# ---- end to end: `up`, real Claude Code sessions on the stand-in, a person's own repository --------------


@pytest.fixture
def up_myproj(tmp_path: Path) -> Iterator[QueueTown]:
    """`vermas-runner up --detach --model standin` with rig gt on a person's NON-bare repository."""
    yield from up_town(tmp_path, upstream="checkout")


@e2e
def test_under_up_a_reworked_bead_lands_as_one_green_commit_in_a_persons_checkout(up_myproj: QueueTown) -> None:
    qt = up_myproj
    myproj = qt.rig.bare
    [bead] = sling_all(qt, FAILING)  # red first (BROKEN), fixed after the REWORK_REQUEST
    process_queue_until(qt, lambda: qt.bead_status(bead) == "closed", "the reworked bead to be merged")
    first, second = qt.requests(bead)
    assert first.state is MRState.REJECTED and second.state is MRState.MERGED, qt.diagnostics()
    assert [e.to_state for e in ledger.events(qt.town, first.id)].count(MRState.REWORK) == 1
    # one commit for the bead on the person's main, checked out, files and index at it
    assert git(myproj, "log", "--format=%s", "main").splitlines() == [f"{bead}: Add the feature", "initial"]
    assert git(myproj, "rev-parse", "HEAD") == second.merged_sha
    assert (myproj / "feature.txt").read_text() == "working\n" and clean(myproj)
    assert clean(qt.rig.clone) and git(qt.rig.clone, "rev-parse", "HEAD") == second.merged_sha
    process_queue_until(qt, lambda: qt.rig.slots() == [], "the slot to be freed after the merge")
    assert not qt.rig.branch_exists(second.branch)  # the squash proven on main: branch deleted
