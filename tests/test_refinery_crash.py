"""The refinery worker SIGKILLed at the worst moments, then a fresh worker (another owner, after
the dead one's lease expired) finishes: during the test run, between the advance (push +
update-ref) and the bookkeeping, and in the middle of cleanup. Nothing is merged twice, no
commit is lost, no worktree is removed whose commits are not on the target, no mail is sent twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import git, process_gone
from tests.refinery_rig import TEST_COMMAND, MergeRig, Work
from vermas.protocol import Merged, ProtocolKind
from vermas.refinery import ledger, worker
from vermas.refinery.types import LEASE_TTL_S, MRState
from vermas.town import Town

WORKER = r"""
import json, sys, time
from vermas.town import Town
from vermas.refinery import worker
town = Town.open(sys.argv[1])
print(json.dumps([r.model_dump() for r in worker.drain(town, "gt", "doomed")]), flush=True)
"""
SLOW_TESTS = f"touch .running; sleep 2; {TEST_COMMAND}"


def start_worker(town: Town, pauses: Path, point: str | None) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VERMAS_REFINERY")}
    if point:
        env.update({worker.PAUSE_ENV: point, worker.PAUSE_DIR_ENV: str(pauses)})
    return subprocess.Popen([sys.executable, "-c", WORKER, str(town.root)], env=env, stdout=subprocess.PIPE,
                            text=True, start_new_session=True)


def kill_when(proc: subprocess.Popen[str], marker: Path, within: float = 90) -> None:
    deadline = time.monotonic() + within
    while not marker.exists():
        assert proc.poll() is None, f"worker ended before {marker.name}: {proc.communicate()[0]}"
        assert time.monotonic() < deadline, f"worker never reached {marker.name}"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert process_gone(proc.pid)


def fresh_worker(town: Town) -> list[worker.StepReport]:
    """Another runner, after the dead one's lease expired."""
    reports = worker.drain(town, "gt", "survivor", clock=lambda: time.time() + 2 * LEASE_TTL_S)
    assert all(r.error is None for r in reports), [r.error for r in reports]
    return reports


def assert_merged_once(town: Town, mr: MergeRig, works: list[Work]) -> None:
    for w in works:
        events = ledger.events(town, w.mr)
        assert [e.to_state for e in events if e.from_state is not MRState.MERGED].count(MRState.MERGED) == 1
        assert ledger.get(town, w.mr).state is MRState.MERGED
        assert mr.bead_row(w.bead)["status"] == "closed"
        for to in ("gt/witness", str(w.address)):
            assert [m for m in mr.mail_to(to, ProtocolKind.MERGED) if isinstance(m, Merged) and m.bead == w.bead] \
                and len(mr.mail_to(to, ProtocolKind.MERGED)) == (1 if to != "gt/witness" else len(works))
    # one commit per request on the upstream's main, no duplicates, no no-op commits
    subjects = git(mr.bare, "log", "--format=%s", "main").splitlines()
    assert sorted(subjects) == sorted([*(f"{w.bead}: {TITLES[w.bead]}" for w in works), "initial"])  # squashed


@pytest.fixture
def pauses(tmp_path: Path) -> Path:
    folder = tmp_path / "pauses"
    folder.mkdir()
    return folder


TITLES: dict[str, str] = {}  # bead -> its title, which is also its commit message


def two_works(mr: MergeRig) -> list[Work]:
    works = []
    for n in ("a", "b"):
        w = mr.work(f"add {n}", {f"{n}.txt": f"{n}\n"})
        TITLES[w.bead] = f"add {n}"
        works.append(w)
    return works


def test_killed_during_the_test_run(town: Town, tmp_path: Path, pauses: Path) -> None:
    mr = MergeRig(town, tmp_path, test_command=SLOW_TESTS)
    works = two_works(mr)
    before = mr.upstream_main()
    proc = start_worker(town, pauses, None)
    kill_when(proc, town.layout.refinery_worktree("gt") / ".running")
    assert mr.upstream_main() == before
    assert {ledger.get(town, w.mr).state for w in works} == {MRState.TESTING}
    assert all(w.worktree.exists() and mr.branch_exists(w.branch) for w in works)  # nothing merged: all kept
    reports = fresh_worker(town)
    assert sorted(reports[0].requeued) == sorted(w.mr for w in works)  # interrupted: started again
    assert_merged_once(town, mr, works)
    assert all(not w.worktree.exists() for w in works) and mr.slots() == []
    adopted = [e for e in ledger.events(town, works[0].mr) if e.evidence.get("adopted_from") == "doomed"]
    assert len(adopted) == 1


def test_killed_between_the_advance_and_the_bookkeeping(town: Town, tmp_path: Path, pauses: Path) -> None:
    mr = MergeRig(town, tmp_path)
    works = two_works(mr)
    proc = start_worker(town, pauses, "advanced")
    kill_when(proc, pauses / "advanced.reached")
    landed = mr.upstream_main()
    assert {"a.txt", "b.txt"} <= mr.upstream_files()  # on the target, but nobody was told
    assert {ledger.get(town, w.mr).state for w in works} == {MRState.TESTING}
    assert mr.mail_to("gt/witness", ProtocolKind.MERGED) == []
    assert all(w.worktree.exists() for w in works)
    reports = fresh_worker(town)
    assert sorted(reports[0].recovered) == sorted(w.mr for w in works) and reports[0].test_runs == 0
    assert mr.upstream_main() == landed  # finished the bookkeeping, did not merge again
    assert_merged_once(town, mr, works)
    assert all(ledger.get(town, w.mr).merged_sha for w in works)
    assert all(not w.worktree.exists() and not mr.branch_exists(w.branch) for w in works) and mr.slots() == []


def test_killed_during_cleanup(town: Town, tmp_path: Path, pauses: Path) -> None:
    mr = MergeRig(town, tmp_path)
    works = two_works(mr)
    first, second = works
    # the second polecat committed more after polecat_done: that commit is not on the target
    (second.worktree / "more.txt").write_text("more\n")
    git(second.worktree, "add", "more.txt")
    git(second.worktree, "-c", "user.email=pc@vermas.invalid", "-c", "user.name=polecat", "commit", "-q", "-m", "more")
    extra = git(second.worktree, "rev-parse", "HEAD")
    proc = start_worker(town, pauses, "cleanup")
    kill_when(proc, pauses / "cleanup.reached")
    landed = mr.upstream_main()
    assert {ledger.get(town, w.mr).state for w in works} == {MRState.MERGED}
    assert not first.worktree.exists() and mr.branch_exists(first.branch)  # half-way through its cleanup
    fresh_worker(town)
    assert mr.upstream_main() == landed
    assert_merged_once(town, mr, works)
    assert not mr.branch_exists(first.branch)
    # the second's worktree and branch are kept: one of its commits is not on the target
    assert second.worktree.exists() and git(mr.clone, "rev-parse", second.branch) == extra
    assert mr.slots() == [second.address.name]
    kept = ledger.show(town, second.mr).events[-1].evidence
    assert kept["cleanup"] == "kept" and kept["missing"] == [extra]
    assert "more.txt" not in mr.upstream_files()
    assert json.dumps(kept)  # evidence is plain JSON
