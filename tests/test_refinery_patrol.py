"""The runner works every rig's merge queue (issue 9): each patrol round gives a rig with work
one `process_rig` step on a thread of its own, so a long test run blocks neither the other
rigs nor the rest of the patrol (exports); a step that raises is logged with its traceback and
the loop goes on; a merged polecat's tmux session is stopped. The real patrol loop runs in its
own process on real git (a bare upstream), polecat work finished by the real polecat_done."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import git
from tests.refinery_rig import MAYOR, MergeRig
from vermas import beads, patrol, proc
from vermas.addresses import parse_address
from vermas.refinery import ledger, worker
from vermas.refinery.types import MRState
from vermas.sessions import TownSessions
from vermas.town import Town

PATROL = """
import sys
from vermas import patrol
from vermas.sessions import TownSessions
from vermas.town import Town
town = Town.open(sys.argv[1])
print("READY", patrol.runner_owner(), flush=True)
patrol.run_forever(town, TownSessions(town.root, socket=sys.argv[2]), interval=0.1)
print("STOPPED", flush=True)
"""


def wait_until(check: Callable[[], bool], log: Path, what: str, within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} never happened; runner log: {log.read_text()}")
        time.sleep(0.1)


class Runner:
    """The real patrol loop in a subprocess (its stdout is the runner log)."""

    def __init__(self, town: Town, log: Path, socket_name: str) -> None:
        self.log = log
        with log.open("w") as out:
            self.proc = subprocess.Popen([sys.executable, "-c", PATROL, str(town.root), socket_name],
                                         stdout=out, stderr=subprocess.STDOUT)
        wait_until(lambda: "READY" in log.read_text(), log, "the runner starting", within=20)

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)
        return self.log.read_text()


@pytest.fixture
def private_tmux(town: Town) -> Iterator[TownSessions]:
    """The town's sessions on a tmux server of this test's own (killed after, with its socket)."""
    sessions = TownSessions(town.root, socket=f"vermas-test-mq-{uuid.uuid4().hex[:10]}")
    try:
        yield sessions
    finally:
        sessions.kill_server()


# ---- the pure decision ----------------------------------------------------------------------------


def test_each_rig_with_work_gets_one_step_and_a_stepping_rig_is_left_alone() -> None:
    seen = patrol.Observed(stale_exports=(), merge_queues=(
        patrol.MergeQueue("gt", has_work=True, stepping=False),
        patrol.MergeQueue("slow", has_work=True, stepping=True),  # its long test run goes on
        patrol.MergeQueue("idle", has_work=False, stepping=False)))
    assert patrol.decide(seen) == [patrol.Action("merge", "gt")]
    assert patrol.decide(patrol.Observed(stale_exports=("issues",), merge_queues=(
        patrol.MergeQueue("gt", has_work=True, stepping=False),))) == [patrol.Action("export"),
                                                                      patrol.Action("merge", "gt")]


def test_the_owner_is_unique_per_runner_process() -> None:
    # The start time tells this process from a later one that reuses its pid.
    assert patrol.runner_owner() == f"runner:{socket.gethostname()}:{os.getpid()}:{proc.start_time(os.getpid())}"


def test_a_step_that_changed_nothing_logs_nothing_and_a_merge_is_one_line() -> None:
    assert patrol.step_line(worker.StepReport(rig="gt", owner="o", lease=True, idle=True)) is None
    line = patrol.step_line(worker.StepReport(rig="gt", owner="o", merged=["gt-1", "gt-2"], merged_sha="abc",
                                              reworked=["gt-3"], requeued=["gt-4"], test_runs=3))
    assert line == "mq gt: merged gt-1, gt-2 at abc; rework gt-3; requeued gt-4 (3 test run(s))"
    untested = patrol.step_line(worker.StepReport(rig="gt", owner="o", merged=["gt-1"], merged_sha="abc",
                                                  untested=True))
    assert untested is not None and "untested: no test_command" in untested


def test_rigs_with_work_are_the_ones_the_worker_has_something_for(town: Town, tmp_path: Path) -> None:
    mr = MergeRig(town, tmp_path)
    assert ledger.rigs_with_work(town) == frozenset()
    w = mr.work("add a", {"a.txt": "a\n"})
    assert ledger.rigs_with_work(town) == {"gt"}
    worker.drain(town, "gt", "o")
    assert ledger.get(town, w.mr).state is MRState.MERGED
    assert ledger.rigs_with_work(town) == frozenset()  # merged and cleaned up: nothing left
    assert ledger.counts_by_state(town) == {"gt": {"merged": 1}}


# ---- the real patrol loop ----------------------------------------------------------------------------


def test_the_runner_merges_a_polecats_work_and_stops_its_session(town: Town, tmp_path: Path,
                                                                 private_tmux: TownSessions) -> None:
    """polecat_done queues; the runner's patrol (a real process) merges it onto the upstream's
    main, closes the bead, removes the worktree and stops the polecat's tmux session."""
    mr = MergeRig(town, tmp_path)
    w = mr.work("add a", {"a.txt": "a\n"})
    assert private_tmux.start(w.address, w.worktree, ["sleep", "600"], env={})
    assert private_tmux.alive(w.address)
    runner = Runner(town, tmp_path / "runner.log", private_tmux.socket)
    try:
        wait_until(lambda: ledger.get(town, w.mr).cleaned_at is not None, runner.log, "the merge and cleanup")
        row = ledger.get(town, w.mr)
        assert row.state is MRState.MERGED and row.merged_sha == mr.upstream_main()
        assert git(mr.bare, "show", "main:a.txt") == "a"
        assert mr.bead_row(w.bead)["status"] == "closed"
        assert not w.worktree.exists() and not mr.branch_exists(w.branch) and mr.slots() == []
        assert not private_tmux.alive(w.address)  # its session was stopped after the merge
        lease = ledger.queue_state(town, "gt").lease
        started = proc.start_time(runner.proc.pid)
        assert lease is not None and lease.owner == f"runner:{socket.gethostname()}:{runner.proc.pid}:{started}"
    finally:
        seen = runner.stop()
    assert runner.proc.returncode == 0 and "STOPPED" in seen
    assert f"mq gt: merged {w.mr} at {row.merged_sha}" in seen
    assert "Traceback" not in seen
    assert ledger.queue_state(town, "gt").lease is None  # a clean stop gives the lease back


@pytest.mark.slow
def test_a_long_test_run_blocks_neither_other_rigs_nor_exports_and_a_raising_rig_is_logged(
        town: Town, tmp_path: Path) -> None:
    """Three rigs: `slow` tests for seconds, `bx` raises on every step (its canonical clone is
    gone), `gt` is ordinary. While `slow` tests, `gt` merges and the patrol exports a new bead
    (work is made before the runner starts: its patrol would roll back a half-made polecat);
    `bx`'s traceback is in the runner log once, and the loop goes on until `slow` merges too."""
    for sub in ("gt", "slow", "bx"):
        (tmp_path / sub).mkdir()
    gt = MergeRig(town, tmp_path / "gt")
    slow = MergeRig(town, tmp_path / "slow", test_command="sleep 6", name="slow", prefix="sl")
    bx = MergeRig(town, tmp_path / "bx", name="bx", prefix="bx")
    slow_work = slow.work("slow one", {"s.txt": "s\n"})
    fast = gt.work("fast one", {"f.txt": "f\n"})
    broken = bx.work("never", {"b.txt": "b\n"})
    shutil.rmtree(bx.clone)
    socket_name = f"vermas-test-mq-none-{uuid.uuid4().hex[:8]}"
    runner = Runner(town, tmp_path / "runner.log", socket_name)
    try:
        wait_until(lambda: ledger.get(town, slow_work.mr).state is MRState.TESTING, runner.log, "slow testing")
        bead = beads.create(town, MAYOR, title="exported while a test runs").id
        wait_until(lambda: ledger.get(town, fast.mr).state is MRState.MERGED, runner.log, "gt merging")
        wait_until(lambda: bead in town.layout.export_file("issues").read_text(), runner.log, "the export")
        assert ledger.get(town, slow_work.mr).state is MRState.TESTING  # still in its test run
        wait_until(lambda: ledger.get(town, slow_work.mr).state is MRState.MERGED, runner.log, "slow merging")
        assert git(slow.bare, "show", "main:s.txt") == "s"
        assert runner.proc.poll() is None
    finally:
        seen = runner.stop()
        # the deacon started the town's sessions (the mayor) on this socket: they are ours to stop
        TownSessions(town.root, socket=socket_name).kill_server()
    assert seen.count("mq bx: step raised") == 1, seen  # logged once, not every round
    assert "Traceback (most recent call last)" in seen and "FileNotFoundError" in seen
    assert ledger.get(town, broken.mr).state is MRState.QUEUED  # nothing lost: it waits for a fix
    assert parse_address(str(broken.address)).rig == "bx"
