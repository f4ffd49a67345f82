"""Runner crash recovery without waiting: a rig's merge lease whose owner is a dead runner
process of this host (`runner:<host>:<pid>:<start>`) is taken over at once, not after the 60 s
lease; a pid reused by a later process does not count as the owner alive (its start time
differs). The owner decision is pure (every case below); the takeover runs for real: a process
holding the lease (and an in-flight request's lease) is SIGKILLed and the next acquire wins
within a second or two."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from vermas import beads, proc
from vermas.addresses import parse_address
from vermas.refinery import ledger, queue
from vermas.refinery.queue import RunnerId
from vermas.refinery.types import LEASE_TTL_S, MRState
from vermas.town import Town

HOST = "here"


@pytest.mark.parametrize(("owner", "parsed"), [
    ("runner:here:42:777", RunnerId("here", 42, 777)),
    ("runner:here:42", RunnerId("here", 42, None)),  # written before start times were recorded
    ("runner-test", None), ("w1", None), ("runner::42:1", None), ("runner:here:x:1", None),
    ("runner:here:42:x", None), ("runner:here:42:1:2", None), ("", None),
])
def test_only_runner_owners_name_a_process(owner: str, parsed: RunnerId | None) -> None:
    assert queue.parse_owner(owner) == parsed


def test_an_owner_name_round_trips() -> None:
    assert queue.parse_owner(queue.runner_owner_name("h.local", 7, 99)) == RunnerId("h.local", 7, 99)
    assert queue.parse_owner(queue.runner_owner_name("h", 7, None)) == RunnerId("h", 7, None)


@pytest.mark.parametrize(("owner", "observed", "dead"), [
    (RunnerId(HOST, 42, 777), 777, False),  # the same process still runs
    (RunnerId(HOST, 42, 777), None, True),  # no process at that pid
    (RunnerId(HOST, 42, 777), 900, True),  # the pid was reused by a later process
    (RunnerId(HOST, 42, 777), 100, True),  # ...or by any other process (a reboot's counter)
    (RunnerId(HOST, 42, None), 900, False),  # no start recorded: a live pid may be the owner
    (RunnerId(HOST, 42, None), None, True),
    (RunnerId("elsewhere", 42, 777), None, False),  # another host's process cannot be checked here
    (None, None, False),  # not a runner: only expiry frees it
])
def test_only_a_dead_process_of_this_host_frees_a_lease_early(owner: RunnerId | None, observed: int | None,
                                                              dead: bool) -> None:
    assert queue.owner_dead(owner, HOST, observed) is dead


def test_this_processes_start_time_is_stable_and_a_free_pid_has_none() -> None:
    mine = proc.start_time(os.getpid())
    assert mine is not None and proc.start_time(os.getpid()) == mine
    child = subprocess.Popen(["true"])
    child.wait()
    assert proc.start_time(child.pid) is None  # reaped: no such process


HOLDER = textwrap.dedent("""
    import os, socket, sys, time
    from vermas import proc
    from vermas.refinery import ledger, queue
    from vermas.town import Town
    town = Town.open(sys.argv[1])
    owner = queue.runner_owner_name(socket.gethostname(), os.getpid(), proc.start_time(os.getpid()))
    now = time.time()
    assert ledger.acquire(town, "gt", owner, now) is not None
    assert ledger.claim(town, sys.argv[2], owner, now)
    print(owner, flush=True)
    time.sleep(600)
""")


def test_a_sigkilled_runners_lease_is_taken_over_at_once(tmp_path: Path) -> None:
    town, _ = Town.init(tmp_path / "town")
    try:
        bead = beads.create(town, parse_address("mayor"), "work").id
        mr = ledger.enqueue(town, rig="gt", bead=bead, polecat="gt/polecats/nux", branch="polecat/nux/x",
                            commit="a" * 40).id
        holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(town.root), mr], stdout=subprocess.PIPE,
                                  text=True)
        try:
            assert holder.stdout is not None
            owner = holder.stdout.readline().strip()
            assert queue.parse_owner(owner) == RunnerId(socket.gethostname(), holder.pid,
                                                       proc.start_time(holder.pid))
            # Alive: its lease holds against the next runner.
            assert ledger.acquire(town, "gt", "runner-next", time.time()) is None
            assert not ledger.local_owner_gone(owner)
        finally:
            os.kill(holder.pid, signal.SIGKILL)
            holder.wait()
        killed = time.monotonic()
        lease = ledger.acquire(town, "gt", "runner-next", time.time())
        took = time.monotonic() - killed
        assert lease is not None and lease.owner == "runner-next"
        assert took < 2.0, f"takeover took {took:.1f}s"
        # Without the takeover it would have waited out the lease.
        assert ledger.queue_state(town, "gt").lease == lease and lease.expires_at - time.time() > LEASE_TTL_S - 5
        # Its in-flight request is resumed in the same step, the takeover recorded.
        assert ledger.adopt(town, mr, "runner-next", time.time())
        row = ledger.get(town, mr)
        assert (row.state, row.lease_owner) == (MRState.CLAIMED, "runner-next")
        assert ledger.events(town, mr)[-1].evidence["adopted_from"] == owner
    finally:
        town.close()


def test_a_reused_pid_does_not_keep_a_dead_owners_lease(tmp_path: Path) -> None:
    """The owner's pid now runs another process (this one) that started later: taken over."""
    town, _ = Town.init(tmp_path / "town")
    try:
        start = proc.start_time(os.getpid())
        assert start is not None
        stale = queue.runner_owner_name(socket.gethostname(), os.getpid(), start - 1)
        live = queue.runner_owner_name(socket.gethostname(), os.getpid(), start)
        assert ledger.acquire(town, "gt", stale, time.time()) is not None
        assert ledger.acquire(town, "gt", "runner-next", time.time()) is not None
        # A live owner (the same pid and start) keeps it.
        ledger.release(town, "gt", "runner-next")
        assert ledger.acquire(town, "gt", live, time.time()) is not None
        assert ledger.acquire(town, "gt", "runner-next", time.time()) is None
    finally:
        town.close()
