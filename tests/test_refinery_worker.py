"""The refinery worker on real git (bare upstream, `rig add`, polecat worktrees, real
polecat_done, a real test command run contained): merged onto the upstream's main with the
bead closed and the polecat cleaned up; batches tested once; a culprit bisected out and sent
back; conflicts sent back naming the files; untested merges marked; a target that moves during
the run restarts the batch without losing anything."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.conftest import git
from tests.refinery_rig import MAYOR, MergeRig
from vermas import convoy
from vermas.protocol import Merged, ProtocolKind, ReworkRequest
from vermas.refinery import ledger, worker
from vermas.refinery.types import MRState
from vermas.town import Town

OWNER = "runner-1"


def drain(town: Town) -> list[worker.StepReport]:
    reports = worker.drain(town, "gt", OWNER)
    assert all(r.error is None for r in reports), [r.error for r in reports]
    return reports


def runs(reports: list[worker.StepReport]) -> int:
    return sum(r.test_runs for r in reports)


@pytest.fixture
def mr(town: Town, tmp_path: Path) -> MergeRig:
    return MergeRig(town, tmp_path)


def test_one_good_request_lands_on_upstream_main_and_the_polecat_is_cleaned_up(town: Town, mr: MergeRig) -> None:
    w = mr.work("add a", {"a.txt": "a\n"})
    before = mr.upstream_main()
    reports = drain(town)
    assert runs(reports) == 1
    row = ledger.get(town, w.mr)
    assert row.state is MRState.MERGED and row.merged_sha == mr.upstream_main() and not row.untested
    assert git(mr.bare, "show", f"{row.merged_sha}:a.txt") == "a"
    assert git(mr.bare, "rev-parse", f"{row.merged_sha}^") == before  # rebased onto the tip: linear
    bead = mr.bead_row(w.bead)
    assert bead["status"] == "closed" and bead["close_reason"] == f"merged in {row.merged_sha}"
    assert mr.bead_row(w.mr)["status"] == "closed"  # the merge-request bead too
    for to in ("gt/witness", str(w.address)):
        [msg] = mr.mail_to(to, ProtocolKind.MERGED)
        assert isinstance(msg, Merged) and (msg.bead, msg.merged_sha, msg.tests) == (w.bead, row.merged_sha, "passed")
    assert not w.worktree.exists() and not mr.branch_exists(w.branch) and mr.slots() == []
    # the canonical clone's checkout followed the ref: clean, with the file
    assert git(mr.clone, "status", "--porcelain", "--untracked-files=no") == ""
    assert (mr.clone / "a.txt").read_text() == "a\n"
    detail = ledger.show(town, w.mr)
    assert [e.to_state for e in detail.events] == [MRState.QUEUED, MRState.CLAIMED, MRState.TESTING,
                                                   MRState.MERGED, MRState.MERGED]
    merged = detail.events[3].evidence
    assert (merged["command"], merged["exit_status"], merged["status"]) == (mr.town.config.rigs["gt"].test_command,
                                                                          0, "passed")
    assert detail.events[4].evidence["cleanup"] == "done"
    assert drain(town)[-1].idle  # nothing left to do


def test_a_batch_of_three_good_requests_is_merged_with_one_test_run(town: Town, mr: MergeRig) -> None:
    works = [mr.work(f"add {n}", {f"{n}.txt": f"{n}\n"}) for n in ("a", "b", "c")]
    tracking = convoy.create(town, MAYOR, "three", [w.bead for w in works])
    [report, *_] = drain(town)
    assert report.test_runs == 1 and sorted(report.merged) == sorted(w.mr for w in works)
    assert report.merged_sha == mr.upstream_main()
    assert {"a.txt", "b.txt", "c.txt"} <= mr.upstream_files()
    assert int(git(mr.bare, "rev-list", "--count", "main")) == 4  # three rebased commits on the initial one
    assert all(mr.bead_row(w.bead)["status"] == "closed" for w in works)
    assert convoy.status(town, tracking.id).landed and mr.bead_row(tracking.id)["status"] == "closed"
    assert mr.slots() == [] and not any(w.worktree.exists() for w in works)


def test_one_bad_in_a_batch_of_four_is_bisected_out_and_sent_back(town: Town, mr: MergeRig) -> None:
    good1 = mr.work("g1", {"g1.txt": "fine\n"})
    bad = mr.work("bad", {"bad.txt": "BROKEN\n"})
    good3 = mr.work("g3", {"g3.txt": "fine\n"})
    good4 = mr.work("g4", {"g4.txt": "fine\n"})
    reports = drain(town)
    assert reports[0].merged == [good1.mr] and reports[0].reworked == [bad.mr]
    assert sorted(reports[0].requeued) == sorted([good3.mr, good4.mr])
    assert runs(reports) <= 1 + 2 * 2  # the bound for N = 4, one bad
    assert {ledger.get(town, w.mr).state for w in (good1, good3, good4)} == {MRState.MERGED}
    assert ledger.get(town, bad.mr).state is MRState.REWORK
    assert "bad.txt" not in mr.upstream_files() and {"g1.txt", "g3.txt", "g4.txt"} <= mr.upstream_files()
    [rework] = mr.mail_to(str(bad.address), ProtocolKind.REWORK_REQUEST)
    assert isinstance(rework, ReworkRequest)
    assert (rework.reason, rework.exit_status, rework.merge_request) == ("tests", "1", bad.mr)
    assert rework.command == town.config.rigs["gt"].test_command
    # the culprit keeps its worktree and branch, and its bead is back on its hook
    assert bad.worktree.exists() and mr.branch_exists(bad.branch)
    assert git(bad.worktree, "rev-parse", "HEAD") == bad.commit
    row = mr.bead_row(bad.bead)
    assert (row["status"], row["assignee"]) == ("hooked", str(bad.address))
    with town.db.read() as conn:  # and its slot asks the runner for the GUPP nudge again
        assert conn.execute("SELECT state FROM polecats WHERE name = ?", (bad.address.name,)).fetchone()[0] == "started"
    # the polecat fixes it; its next polecat_done is a new request (attempt 2) that merges
    fixed = mr.commit(bad.bead, bad.address, bad.worktree, {"bad.txt": "fixed\n"}, "fix")
    assert fixed.mr != bad.mr and ledger.get(town, fixed.mr).attempts == 1
    assert ledger.get(town, bad.mr).state is MRState.REJECTED  # superseded by the new commit
    drain(town)
    assert ledger.get(town, fixed.mr).state is MRState.MERGED
    assert git(mr.bare, "show", "main:bad.txt") == "fixed" and mr.slots() == []


def test_a_conflict_is_sent_back_naming_the_files(town: Town, mr: MergeRig) -> None:
    first = mr.work("edit readme", {"README.md": "first version\n"})
    second = mr.work("edit readme too", {"README.md": "second version\n"})
    reports = drain(town)
    assert ledger.get(town, first.mr).state is MRState.MERGED
    assert ledger.get(town, second.mr).state is MRState.CONFLICT
    assert second.mr in reports[0].requeued  # conflicted with the one ahead of it, not yet the target
    [rework] = mr.mail_to(str(second.address), ProtocolKind.REWORK_REQUEST)
    assert isinstance(rework, ReworkRequest)
    assert (rework.reason, rework.files, rework.target_sha) == ("conflict", "README.md", mr.upstream_main())
    assert git(mr.bare, "show", "main:README.md") == "first version"
    assert git(mr.clone, "rev-parse", second.branch) == second.commit  # the polecat's branch untouched
    assert second.worktree.exists()
    event = ledger.show(town, second.mr).events[-1]
    assert event.to_state is MRState.CONFLICT and event.evidence["files"] == ["README.md"]


def test_a_rig_without_a_test_command_merges_marked_untested(town: Town, tmp_path: Path) -> None:
    mr = MergeRig(town, tmp_path, test_command="")
    w = mr.work("add a", {"a.txt": "BROKEN but nobody tests\n"})
    [report, *_] = drain(town)
    assert report.untested and report.test_runs == 0 and report.merged == [w.mr]
    row = ledger.get(town, w.mr)
    assert row.untested and row.merged_sha == mr.upstream_main()
    [msg] = mr.mail_to("gt/witness", ProtocolKind.MERGED)
    assert isinstance(msg, Merged) and msg.tests == "untested" and "untested" in msg.text
    assert ledger.show(town, w.mr).events[3].evidence["untested"] is True


def test_target_moving_during_the_run_restarts_and_loses_nothing(
        town: Town, mr: MergeRig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    w = mr.work("add a", {"a.txt": "a\n"})
    pauses = tmp_path / "pauses"
    pauses.mkdir()
    monkeypatch.setenv(worker.PAUSE_ENV, "test")
    monkeypatch.setenv(worker.PAUSE_DIR_ENV, str(pauses))
    result: list[worker.StepReport] = []
    thread = threading.Thread(target=lambda: result.append(worker.process_rig(town, "gt", OWNER, time.time())))
    thread.start()
    deadline = time.monotonic() + 60
    while not (pauses / "test.reached").exists():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    external = mr.push_upstream("external.txt")  # someone lands work while the tests run
    (pauses / "test.go").touch()
    thread.join(timeout=120)
    [first] = result
    assert first.merged == [] and first.restarted and "moved" in first.restarted
    assert ledger.get(town, w.mr).state is MRState.QUEUED
    assert mr.upstream_main() == external  # nothing was pushed onto the moved target
    drain(town)
    row = ledger.get(town, w.mr)
    assert row.state is MRState.MERGED and row.merged_sha == mr.upstream_main()
    assert git(mr.bare, "rev-parse", f"{row.merged_sha}^") == external  # on top of the new tip
    assert {"a.txt", "external.txt"} <= mr.upstream_files()
    assert [e.to_state for e in ledger.events(town, w.mr)].count(MRState.MERGED) == 2  # merged once (+ cleanup note)


def test_a_red_target_pauses_the_queue_once_and_resumes_when_green(town: Town, mr: MergeRig) -> None:
    red = mr.push_upstream("upstream.txt", "BROKEN upstream\n")
    w = mr.work("add a", {"a.txt": "a\n"})
    reports = drain(town)
    assert reports[-1].paused and ledger.get(town, w.mr).state is MRState.QUEUED  # not its fault
    assert ledger.queue_state(town, "gt").paused_sha == red and mr.upstream_main() == red
    assert runs(reports) == 2  # the candidate, then the target alone
    [escalation] = mr.mail_to("mayor", ProtocolKind.ESCALATION)
    assert getattr(escalation, "reason", None) == "target-red"
    with town.db.read() as conn:
        bugs = conn.execute("SELECT title FROM issues WHERE issue_type = 'bug'").fetchall()
    assert [b[0] for b in bugs] == [f"main fails its tests at {red}"]
    again = drain(town)  # still red: no run, no second bug, no second escalation
    assert again[-1].paused and runs(again) == 0 and len(mr.mail_to("mayor", ProtocolKind.ESCALATION)) == 1
    fixed = mr.push_upstream("upstream.txt", "fine now\n")
    drain(town)
    row = ledger.get(town, w.mr)
    assert row.state is MRState.MERGED and git(mr.bare, "rev-parse", f"{row.merged_sha}^") == fixed
    assert ledger.queue_state(town, "gt").paused_sha is None


def test_after_max_attempts_a_conflict_is_escalated_and_the_branch_kept(town: Town, mr: MergeRig) -> None:
    config = town.config.rigs["gt"]
    town.config.rigs["gt"] = config.model_copy(update={"merge": config.merge.model_copy(update={"max_attempts": 1})})
    town.save_config()  # [rigs.gt.merge] max_attempts = 1, as a user would write it
    mr.work("edit readme", {"README.md": "first version\n"})
    second = mr.work("edit readme too", {"README.md": "second version\n"})
    drain(town)
    assert ledger.get(town, second.mr).state is MRState.CONFLICT
    assert mr.mail_to(str(second.address), ProtocolKind.REWORK_REQUEST) == []
    [escalation] = mr.mail_to("mayor", ProtocolKind.ESCALATION)
    assert (getattr(escalation, "reason", None), getattr(escalation, "branch", None)) == (
        "attempts-exhausted", second.branch)
    assert mr.branch_exists(second.branch) and second.worktree.exists()


def test_a_request_whose_branch_is_gone_is_rejected_loudly(town: Town, mr: MergeRig) -> None:
    w = mr.work("add a", {"a.txt": "a\n"})
    git(mr.clone, "worktree", "remove", "--force", str(w.worktree))
    git(mr.clone, "branch", "-D", w.branch)
    [report, *_] = drain(town)
    assert report.rejected == [w.mr] and report.escalated == [w.mr]
    assert ledger.get(town, w.mr).state is MRState.REJECTED
    [escalation] = mr.mail_to("mayor", ProtocolKind.ESCALATION)
    assert getattr(escalation, "reason", None) == "source-gone"
    assert mr.bead_row(w.bead)["status"] != "closed"  # never silently closed
