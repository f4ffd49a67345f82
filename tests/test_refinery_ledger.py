"""The merge queue's ledger on a real SQLite store: dedup by (bead, commit), the rig lease and
the request leases taken by compare-and-set (raced by real processes), transitions recorded
with their evidence as events, and the migration of a store made before the queue columns."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vermas import beads
from vermas.addresses import parse_address
from vermas.errors import Conflict
from vermas.refinery import ledger
from vermas.refinery.types import MRState
from vermas.store import SCHEMA_VERSION, Database
from vermas.town import Town

MAYOR = parse_address("mayor")
NOW = 1_000_000.0


def bead(town: Town, title: str = "work") -> str:
    return beads.create(town, MAYOR, title=title).id


def enqueue(town: Town, bead_id: str, commit: str, branch: str = "polecat/nux/x") -> ledger.Enqueued:
    return ledger.enqueue(town, rig="gt", bead=bead_id, polecat="gt/polecats/nux", branch=branch, commit=commit,
                          base="main")


def test_same_commit_again_is_one_request(town: Town) -> None:
    b = bead(town)
    first = enqueue(town, b, "a" * 40)
    again = enqueue(town, b, "a" * 40)
    assert first.created and not again.created and again.id == first.id
    rows = ledger.list_requests(town, bead=b)
    assert [r.id for r in rows] == [first.id]
    assert rows[0].state is MRState.QUEUED and rows[0].commit == "a" * 40
    with town.db.read() as conn:  # one merge-request bead, linked to the source bead
        assert conn.execute("SELECT COUNT(*) FROM issues WHERE issue_type = 'merge-request'").fetchone()[0] == 1


def test_new_commit_replaces_open_requests_but_not_one_in_flight(town: Town) -> None:
    b = bead(town)
    old = enqueue(town, b, "a" * 40)
    new = enqueue(town, b, "b" * 40)
    assert new.created and new.replaced == [old.id]
    detail = ledger.show(town, old.id)
    assert detail.request.state is MRState.REJECTED
    assert detail.events[-1].evidence["superseded_by"] == new.id
    # one in flight is not rejected under its worker; the worker sees it is stale (queue.superseded)
    assert ledger.acquire(town, "gt", "w1", NOW)
    assert ledger.claim(town, new.id, "w1", NOW)
    newer = enqueue(town, b, "c" * 40)
    assert newer.replaced == [] and newer.stale_in_flight == [new.id]
    assert ledger.get(town, new.id).state is MRState.CLAIMED


def test_transitions_are_recorded_with_their_evidence(town: Town) -> None:
    mr = enqueue(town, bead(town), "a" * 40).id
    assert ledger.acquire(town, "gt", "w1", NOW)
    assert ledger.claim(town, mr, "w1", NOW)
    ledger.transition(town, mr, MRState.TESTING, "gt/refinery", {"target_sha": "t" * 40}, owner="w1",
                      target_sha="t" * 40, candidate_sha="c" * 40)
    run = {"command": "make test", "exit_status": 0, "duration_s": 1.5, "output_tail": "ok"}
    ledger.transition(town, mr, MRState.MERGED, "gt/refinery", run, owner="w1", merged_sha="c" * 40)
    detail = ledger.show(town, mr)
    assert [(e.from_state, e.to_state) for e in detail.events] == [
        (None, MRState.QUEUED), (MRState.QUEUED, MRState.CLAIMED), (MRState.CLAIMED, MRState.TESTING),
        (MRState.TESTING, MRState.MERGED)]
    assert detail.events[-1].evidence == run and detail.events[-1].actor == "gt/refinery"
    assert detail.request.merged_sha == "c" * 40 and detail.request.target_sha == "t" * 40
    assert detail.request.lease_owner is None  # leaving the in-flight states drops the request lease
    # merged is final: a further transition is refused and writes nothing
    with pytest.raises(Conflict, match="from merged to queued; from merged it may go to: none"):
        ledger.transition(town, mr, MRState.QUEUED, "gt/refinery", {})
    assert len(ledger.events(town, mr)) == 4


def test_an_illegal_edge_or_a_lost_lease_writes_nothing(town: Town) -> None:
    mr = enqueue(town, bead(town), "a" * 40).id
    with pytest.raises(Conflict, match="from queued to merged; from queued it may go to: claimed, rejected"):
        ledger.transition(town, mr, MRState.MERGED, "gt/refinery", {})
    assert ledger.acquire(town, "gt", "w1", NOW)
    assert ledger.claim(town, mr, "w1", NOW)
    # w1 dies; its leases expire; w2 takes the rig and adopts the request
    later = NOW + 1000
    assert ledger.acquire(town, "gt", "w2", later) is not None
    assert ledger.adopt(town, mr, "w2", later)
    with pytest.raises(Conflict, match="leased by w2, not w1"):
        ledger.transition(town, mr, MRState.TESTING, "gt/refinery", {}, owner="w1")
    assert ledger.get(town, mr).state is MRState.CLAIMED
    assert [e.evidence.get("adopted_from") for e in ledger.events(town, mr)][-1] == "w1"


def test_rig_lease_is_exclusive_until_it_expires(town: Town) -> None:
    assert ledger.acquire(town, "gt", "w1", NOW) is not None
    assert ledger.acquire(town, "gt", "w2", NOW + 1) is None  # live, someone else's
    assert ledger.renew(town, "gt", "w1", NOW + 30) is not None
    assert ledger.acquire(town, "gt", "w2", NOW + 61) is None  # renewed: still live
    assert ledger.acquire(town, "gt", "w2", NOW + 200) is not None  # expired: taken over
    assert ledger.renew(town, "gt", "w1", NOW + 201) is None  # w1 lost it and learns so
    mr = enqueue(town, bead(town), "a" * 40).id
    assert not ledger.claim(town, mr, "w1", NOW + 201)  # no rig lease, no claim
    assert ledger.release(town, "gt", "w2")
    assert ledger.queue_state(town, "gt").lease is None


RACER = r"""
import json, sys, time
from pathlib import Path
from vermas.town import Town
from vermas.refinery import ledger
town = Town.open(sys.argv[1]); me = sys.argv[2]; go = Path(sys.argv[3]); now = float(sys.argv[4])
while not go.exists():
    time.sleep(0.005)
lease = ledger.acquire(town, "gt", me, now)
claimed = [m.id for m in ledger.list_requests(town, rig="gt", states=[ledger.MRState.QUEUED])
           if ledger.claim(town, m.id, me, now)]
print(json.dumps({"me": me, "lease": lease is not None, "claimed": claimed}))
"""


def race(town: Town, tmp_path: Path, owners: list[str], now: float) -> list[dict[str, object]]:
    go = tmp_path / f"go-{now}"
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(town.root), me, str(go), str(now)],
                              stdout=subprocess.PIPE, text=True) for me in owners]
    time.sleep(0.5)  # all started and waiting on the go file
    go.touch()
    results = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    return results


def test_racing_processes_never_both_hold_the_queue_or_a_request(town: Town, tmp_path: Path) -> None:
    ids = [enqueue(town, bead(town, f"w{i}"), f"{i}" * 40).id for i in range(3)]
    results = race(town, tmp_path, ["p1", "p2", "p3"], NOW)
    winners = [r for r in results if r["lease"]]
    assert len(winners) == 1 and sorted(winners[0]["claimed"]) == sorted(ids)  # type: ignore[arg-type]
    assert all(r["claimed"] == [] for r in results if not r["lease"])
    # the winner dies holding claimed requests; after expiry the next race has again one winner,
    # and nobody claims a request that is still claimed (only adopt resumes it)
    more = enqueue(town, bead(town, "late"), "9" * 40).id
    results = race(town, tmp_path, ["q1", "q2"], NOW + 1000)
    winners = [r for r in results if r["lease"]]
    assert len(winners) == 1 and winners[0]["claimed"] == [more]
    states = {r.id: r.state for r in ledger.list_requests(town, rig="gt")}
    assert all(states[i] is MRState.CLAIMED for i in ids)
    events = [e for i in [*ids, more] for e in ledger.events(town, i) if e.to_state is MRState.CLAIMED]
    assert len(events) == 4  # each request claimed exactly once


OLD_MERGE_REQUESTS = """
CREATE TABLE merge_requests (
    id TEXT PRIMARY KEY, bead_id TEXT NOT NULL, rig TEXT NOT NULL, polecat TEXT NOT NULL, branch TEXT,
    commit_sha TEXT, base TEXT, state TEXT NOT NULL, summary TEXT NOT NULL DEFAULT '', created_at TEXT NOT NULL
);
CREATE INDEX mr_bead ON merge_requests(bead_id);
"""


def test_an_old_store_is_migrated_once_and_keeps_its_requests(tmp_path: Path) -> None:
    town, _ = Town.init(tmp_path / "town")
    b = bead(town)
    path = town.layout.store_path
    town.close()
    conn = sqlite3.connect(path)  # back to the store as version 2 made it
    conn.executescript("DROP TABLE merge_requests; DROP TABLE mr_events; DROP TABLE mq_rigs; DROP TABLE mq_runs; "
                       "DROP TABLE mq_bugs;" + OLD_MERGE_REQUESTS + "PRAGMA user_version = 2;")
    conn.execute("INSERT INTO merge_requests VALUES ('gt-old1', ?, 'gt', 'gt/polecats/nux', 'polecat/nux/x', ?, "
                 "'main', 'queued', 'old work', '2026-01-02T03:04:05.000000Z')", (b, "a" * 40))
    conn.commit()
    conn.close()
    town = Town.open(tmp_path / "town")
    try:
        row = ledger.get(town, "gt-old1")
        assert (row.state, row.priority, row.attempts, row.summary) == (MRState.QUEUED, 2, 0, "old work")
        assert row.queued_at == pytest.approx(1767323045.0)  # ordered by its old created_at
        assert ledger.acquire(town, "gt", "w1", NOW) and ledger.claim(town, "gt-old1", "w1", NOW)
        assert [e.to_state for e in ledger.events(town, "gt-old1")] == [MRState.CLAIMED]
        again = enqueue(town, b, "a" * 40)  # dedup sees the old row
        assert not again.created and again.id == "gt-old1"
    finally:
        town.close()
    # opening again (and again) changes nothing
    for _ in range(2):
        db = Database(path)
        cols = [r[1] for r in db._conn.execute("PRAGMA table_info(merge_requests)")]
        assert cols.count("lease_owner") == 1 and "merged_sha" in cols
        assert db._conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        db.close()
