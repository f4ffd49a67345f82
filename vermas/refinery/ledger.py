"""The merge queue's ledger: the merge request table is the queue of record.

Every state change is one transaction that checks the edge (`types.check_transition`), writes
the row and appends an `mr_events` row with its evidence (who, when, SHAs, command, exit
status, duration, output tail). Nothing else moves a request's state.

Two leases, both compare-and-set inside a write transaction:
- the rig's queue lease (`mq_rigs`): one worker per rig; `acquire` takes it when it is free or
  expired, `renew` extends it only for its live owner;
- each in-flight request's lease (`merge_requests.lease_owner/lease_expires`): `claim` moves a
  queued request to claimed only under the rig lease and only when no live owner holds it;
  `adopt` lets the next rig lease holder resume one whose owner died. A transition that names an
  owner applies only while the row's lease_owner is still that owner, so a worker that lost its
  lease cannot write over its successor.

Pure rules (dedup, order, transitions) live in queue.py and types.py; this module applies them.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar

from pydantic import BaseModel, Field

from vermas import beads, ids, patrol_log, proc, protocol, timeutil
from vermas.errors import Conflict, InvalidInput, NotFound
from vermas.refinery import queue
from vermas.refinery.types import (
    FINAL_STATES, IN_FLIGHT_STATES, LEASE_TTL_S, PRIORITY_MAX, PRIORITY_MIN, HoldKind, Lease, MRState,
    QueueHold, QueuedRequest, RunOutcome, check_transition,
)
from vermas.store import Database
from vermas.town import Town

SEND_BACK_STATES = (MRState.REWORK.value, MRState.CONFLICT.value)
COLUMNS = ("id, bead_id, rig, polecat, branch, commit_sha, base, state, summary, created_at, priority, "
           "queued_ts, attempts, failures, not_before, lease_owner, lease_expires, target_sha, candidate_sha, "
           "merged_sha, untested, cleaned_at, updated_at")
# Fields a transition may set besides the state (never id, bead, rig, branch, commit).
SETTABLE = frozenset({"attempts", "failures", "not_before", "target_sha", "candidate_sha", "merged_sha",
                      "untested", "cleaned_at"})


# ---- escalation keys: one standing escalation per cause (the `escalations` table, vermas.patrol_log) ----
MR_ESCALATION_PREFIX = "mq:"
TARGET_RED_PREFIX = "mq-target-red:"
HOLD_PREFIX = "mq-hold:"


def refinery_patrol(rig: str) -> str:
    """The name the refinery's escalations and resolutions are logged under in patrol_events."""
    return f"refinery:{rig}"


def mr_escalation_key(mr_id: str, state: MRState) -> str:
    """A request escalated in `state`; it stands until the request leaves that state."""
    return f"{MR_ESCALATION_PREFIX}{mr_id}:{MRState(state).value}"


def target_red_key(rig: str, sha: str) -> str:
    """A rig's queue paused for a red target at `sha`; it stands until the queue resumes."""
    return f"{TARGET_RED_PREFIX}{rig}:{sha}"


class MergeRequestRow(BaseModel):
    """One row of the queue of record."""

    # What a person's table shows (`vermas-runner mq list`); --json and `mq show` give all.
    TABLE_COLUMNS: ClassVar[tuple[str, ...]] = ("id", "state", "bead", "polecat", "priority", "attempts", "branch")

    id: str
    bead: str
    rig: str
    polecat: str
    branch: str
    commit: str
    base: str | None = None
    state: MRState
    summary: str = ""
    created_at: str
    queued_at: float
    priority: int = 2
    attempts: int = 0
    failures: int = 0
    not_before: float | None = None
    lease_owner: str | None = None
    lease_expires: float | None = None
    target_sha: str | None = None
    candidate_sha: str | None = None
    merged_sha: str | None = None
    untested: bool = False
    cleaned_at: str | None = None
    updated_at: str | None = None

    def queued(self) -> QueuedRequest:
        """The queue's view (queue.py / decide.py take these)."""
        return QueuedRequest(
            id=self.id, rig=self.rig, bead=self.bead, branch=self.branch or "-", commit=self.commit or "-",
            polecat=self.polecat, priority=min(PRIORITY_MAX, max(PRIORITY_MIN, self.priority)),
            queued_at=max(0.0, self.queued_at), attempts=self.attempts, failures=self.failures,
            not_before=self.not_before, state=self.state)


class MREvent(BaseModel):
    seq: int
    mr_id: str
    at: str
    actor: str
    from_state: MRState | None
    to_state: MRState
    evidence: dict[str, Any] = Field(default_factory=dict)


class MRDetail(BaseModel):
    request: MergeRequestRow
    events: list[MREvent]


class Enqueued(BaseModel):
    """What a polecat_done did to the queue: a new request, or the existing one for this commit."""

    id: str
    created: bool
    state: MRState = MRState.QUEUED  # the request's state now (a duplicate's may be failed or in flight)
    replaced: list[str] = Field(default_factory=list)  # older open requests of the bead, now rejected
    stale_in_flight: list[str] = Field(default_factory=list)  # being processed; the worker will not merge them


class RigQueue(BaseModel):
    """A rig queue's own row: its lease and whether it is paused for a red target."""

    rig: str
    lease: Lease | None = None
    paused_sha: str | None = None
    paused_reason: str | None = None
    resume_requested: bool = False
    hold: QueueHold | None = None  # the town stops merging (HoldKind); see `hold`


# ---- reading -----------------------------------------------------------------------------------


def _row(r: sqlite3.Row) -> MergeRequestRow:
    queued_ts = r["queued_ts"]
    if queued_ts is None:  # a row from before the queue columns: its creation stamp orders it
        try:
            queued_ts = timeutil.parse(r["created_at"])
        except ValueError:
            queued_ts = 0.0
    return MergeRequestRow(
        id=r["id"], bead=r["bead_id"], rig=r["rig"], polecat=r["polecat"] or "", branch=r["branch"] or "",
        commit=r["commit_sha"] or "", base=r["base"], state=MRState(r["state"]), summary=r["summary"] or "",
        created_at=r["created_at"], queued_at=float(queued_ts), priority=int(r["priority"]),
        attempts=int(r["attempts"]), failures=int(r["failures"]), not_before=r["not_before"],
        lease_owner=r["lease_owner"], lease_expires=r["lease_expires"], target_sha=r["target_sha"],
        candidate_sha=r["candidate_sha"], merged_sha=r["merged_sha"], untested=bool(r["untested"]),
        cleaned_at=r["cleaned_at"], updated_at=r["updated_at"])


def fetch_in_txn(conn: sqlite3.Connection, mr_id: str) -> MergeRequestRow:
    row = conn.execute(f"SELECT {COLUMNS} FROM merge_requests WHERE id = ?", (mr_id,)).fetchone()
    if row is None:
        raise NotFound(f"no merge request {str(mr_id)[:40]!r}; mq list shows the queue")
    return _row(row)


def get(town: Town, mr_id: str) -> MergeRequestRow:
    with town.db.read() as conn:
        return fetch_in_txn(conn, mr_id)


def list_requests(town: Town, rig: str | None = None, states: Iterable[MRState] | None = None,
                  bead: str | None = None) -> list[MergeRequestRow]:
    """Requests oldest first, optionally of one rig, in some states, for one bead."""
    where, args = [], []
    if rig is not None:
        where.append("rig = ?")
        args.append(rig)
    if bead is not None:
        where.append("bead_id = ?")
        args.append(bead)
    wanted = [MRState(s).value for s in states] if states is not None else None
    if wanted is not None:
        where.append(f"state IN ({','.join('?' * len(wanted))})" if wanted else "0")
        args.extend(wanted)
    sql = f"SELECT {COLUMNS} FROM merge_requests" + (" WHERE " + " AND ".join(where) if where else "")
    with town.db.read() as conn:
        rows = [_row(r) for r in conn.execute(sql, args).fetchall()]
    return sorted(rows, key=lambda r: (r.queued_at, r.id))


def counts_by_state(town: Town) -> dict[str, dict[str, int]]:
    """{rig: {state: count}} over every request (`status` shows each rig's queue)."""
    out: dict[str, dict[str, int]] = {}
    with town.db.read() as conn:
        for rig, state, n in conn.execute("SELECT rig, state, COUNT(*) FROM merge_requests GROUP BY rig, state"):
            out.setdefault(rig, {})[state] = n
    return out


def rigs_with_work(town: Town) -> frozenset[str]:
    """Rigs whose queue has something for the worker: a request queued, in flight or failed
    (its backoff), a merge whose cleanup did not finish, or a queue paused (it resumes on a
    green target or a resume request). Rework and conflict wait for a polecat, not the worker."""
    waiting = [MRState.QUEUED.value, *(s.value for s in IN_FLIGHT_STATES), MRState.FAILED.value]
    with town.db.read() as conn:
        rows = conn.execute(
            f"SELECT DISTINCT rig FROM merge_requests WHERE state IN ({','.join('?' * len(waiting))}) "
            "OR (state = ? AND cleaned_at IS NULL) "
            "UNION SELECT rig FROM mq_rigs WHERE paused_sha IS NOT NULL OR resume_requested = 1 "
            "OR hold_kind IS NOT NULL",
            [*waiting, MRState.MERGED.value]).fetchall()
    return frozenset(r[0] for r in rows)


def events(town: Town, mr_id: str) -> list[MREvent]:
    with town.db.read() as conn:
        return _events(conn, mr_id)


def _events(conn: sqlite3.Connection, mr_id: str) -> list[MREvent]:
    rows = conn.execute("SELECT seq, mr_id, at, actor, from_state, to_state, evidence FROM mr_events "
                        "WHERE mr_id = ? ORDER BY seq", (mr_id,)).fetchall()
    return [MREvent(seq=r["seq"], mr_id=r["mr_id"], at=r["at"], actor=r["actor"],
                    from_state=MRState(r["from_state"]) if r["from_state"] else None,
                    to_state=MRState(r["to_state"]), evidence=json.loads(r["evidence"] or "{}")) for r in rows]


def show(town: Town, mr_id: str) -> MRDetail:
    """A request with its whole history (what `mq show` and `bead_show` display)."""
    with town.db.read() as conn:
        return MRDetail(request=fetch_in_txn(conn, mr_id), events=_events(conn, mr_id))


def last_reason(conn: sqlite3.Connection, mr_id: str) -> str:
    """The reason recorded with a request's latest state change (its first line): why it is
    where it is (what a refused re-send and the polecat's hook show)."""
    row = conn.execute("SELECT evidence FROM mr_events WHERE mr_id = ? AND (from_state IS NULL OR "
                       "from_state != to_state) ORDER BY seq DESC LIMIT 1", (mr_id,)).fetchone()
    reason = str(json.loads(row[0] or "{}").get("reason", "")) if row else ""
    return reason.strip().split("\n", 1)[0]


class SentBack(BaseModel):
    """A bead's newest merge request, sent back by the refinery and waiting for its polecat's
    fix: what the polecat's hook shows (the REWORK_REQUEST mail says the same)."""

    merge_request: str
    state: MRState
    commit: str
    evidence: str  # why, with the failing run's output tail (or the conflicting files)


SENT_BACK_EVIDENCE_CHARS = 4000


def sent_back_in_txn(conn: sqlite3.Connection, bead: str) -> SentBack | None:
    """The bead's newest request when it is rework or conflict (None otherwise)."""
    row = conn.execute("SELECT id, state, commit_sha FROM merge_requests WHERE bead_id = ? "
                       "ORDER BY queued_ts DESC, id DESC LIMIT 1", (bead,)).fetchone()
    if row is None or row[1] not in SEND_BACK_STATES:
        return None
    ev = conn.execute("SELECT evidence FROM mr_events WHERE mr_id = ? AND to_state = ? ORDER BY seq DESC LIMIT 1",
                      (row[0], row[1])).fetchone()
    found = json.loads(ev[0] or "{}") if ev else {}
    text = str(found.get("reason") or "")
    tail = str(found.get("output_tail") or "")
    if tail and tail.strip() not in text:
        text = f"{text}\n\n{tail}".strip()
    if len(text) > SENT_BACK_EVIDENCE_CHARS:
        text = "...\n" + text[-(SENT_BACK_EVIDENCE_CHARS - 4):]
    return SentBack(merge_request=row[0], state=MRState(row[1]), commit=row[2] or "", evidence=text)


def history_lines(town: Town, bead: str) -> list[str]:
    """One line per earlier send-back of a bead's work (the history an ESCALATION carries)."""
    with town.db.read() as conn:
        rows = conn.execute(
            "SELECT e.mr_id, e.at, e.to_state, e.evidence FROM mr_events e JOIN merge_requests m ON m.id = e.mr_id "
            f"WHERE m.bead_id = ? AND e.to_state IN ({','.join('?' * len(SEND_BACK_STATES))}) ORDER BY e.seq",
            (bead, *SEND_BACK_STATES)).fetchall()
    out = []
    for r in rows:
        why = json.loads(r["evidence"] or "{}").get("reason", "")
        out.append(f"{r['at']} {r['mr_id']} {r['to_state']}: {why}".rstrip(": "))
    return out


# ---- writing: events and transitions -----------------------------------------------------------


def _event(conn: sqlite3.Connection, mr_id: str, actor: str, old: MRState | None, new: MRState,
           evidence: Mapping[str, Any]) -> str:
    stamp, ts = timeutil.now()
    conn.execute("INSERT INTO mr_events(mr_id, at, at_ts, actor, from_state, to_state, evidence) "
                 "VALUES (?,?,?,?,?,?,?)",
                 (mr_id, stamp, ts, actor, old.value if old else None, new.value,
                  json.dumps(dict(evidence), sort_keys=True, default=str)))
    return stamp


def transition_in_txn(conn: sqlite3.Connection, mr_id: str, new: MRState, actor: str,
                      evidence: Mapping[str, Any] | None = None, *, owner: str | None = None,
                      expect: Sequence[MRState] | None = None, **fields: Any) -> MergeRequestRow:
    """Move a request to `new` inside the caller's transaction, with its event.

    `owner`: apply only while the request's lease is still this owner's (a worker that lost it
    must not write). `expect`: apply only from one of these states (a stale observation is a
    Conflict, not a silent overwrite). Leaving the in-flight states clears the request's lease."""
    unknown = set(fields) - SETTABLE
    if unknown:
        raise ValueError(f"transition cannot set {sorted(unknown)}; settable: {sorted(SETTABLE)}")
    row = fetch_in_txn(conn, mr_id)
    if expect is not None and row.state not in expect:
        raise Conflict(f"merge request {mr_id} is {row.state}, not {' or '.join(expect)}; someone else moved it")
    if owner is not None and row.lease_owner != owner:
        raise Conflict(f"merge request {mr_id} is leased by {row.lease_owner or 'nobody'}, not {owner}; "
                       "this worker lost its lease and must not write")
    check_transition(row.state, new)
    stamp = _event(conn, mr_id, actor, row.state, new, evidence or {})
    sets = {**fields, "state": new.value, "updated_at": stamp}
    if new not in IN_FLIGHT_STATES:
        sets.update(lease_owner=None, lease_expires=None)
    if "untested" in sets:
        sets["untested"] = int(bool(sets["untested"]))
    conn.execute(f"UPDATE merge_requests SET {', '.join(f'{k} = ?' for k in sets)} WHERE id = ?",
                 (*sets.values(), mr_id))
    if new is not row.state:  # an escalation about the state it leaves no longer stands
        patrol_log.resolve_in_txn(conn, refinery_patrol(row.rig), mr_escalation_key(mr_id, row.state),
                                  f"{mr_id} left {row.state.value} for {new.value} ({actor})", time.time())
    return fetch_in_txn(conn, mr_id)


def transition(town: Town, mr_id: str, new: MRState, actor: str, evidence: Mapping[str, Any] | None = None, *,
               owner: str | None = None, expect: Sequence[MRState] | None = None,
               **fields: Any) -> MergeRequestRow:
    """One transition, one transaction (see transition_in_txn)."""
    with town.db.write() as conn:
        return transition_in_txn(conn, mr_id, new, actor, evidence, owner=owner, expect=expect, **fields)


def note_in_txn(conn: sqlite3.Connection, mr_id: str, actor: str, evidence: Mapping[str, Any],
                **fields: Any) -> MergeRequestRow:
    """An event that is not a state change (a recorded intent, a cleanup outcome), with fields."""
    unknown = set(fields) - SETTABLE
    if unknown:
        raise ValueError(f"note cannot set {sorted(unknown)}; settable: {sorted(SETTABLE)}")
    row = fetch_in_txn(conn, mr_id)
    stamp = _event(conn, mr_id, actor, row.state, row.state, evidence)
    sets = {**fields, "updated_at": stamp}
    conn.execute(f"UPDATE merge_requests SET {', '.join(f'{k} = ?' for k in sets)} WHERE id = ?",
                 (*sets.values(), mr_id))
    return fetch_in_txn(conn, mr_id)


def note(town: Town, mr_id: str, actor: str, evidence: Mapping[str, Any], **fields: Any) -> MergeRequestRow:
    with town.db.write() as conn:
        return note_in_txn(conn, mr_id, actor, evidence, **fields)


# ---- enqueue (dedup) -----------------------------------------------------------------------------


def enqueue_in_txn(conn: sqlite3.Connection, db: Database, *, mr_prefix: str, rig: str, bead: str, polecat: str,
                   branch: str, commit: str, base: str | None, summary: str, actor: str,
                   title: str = "", priority: int = 2) -> Enqueued:
    """polecat_done's merge request, inside its transaction, by the dedup rule (queue.admit):
    the same (bead, commit) again is the existing request; a new commit makes a new request
    (with a merge-request bead of the same id) and rejects the bead's older open ones."""
    if not commit or not branch:
        raise InvalidInput("a merge request needs the polecat's branch and commit")
    mine = [_row(r).queued() for r in conn.execute(
        f"SELECT {COLUMNS} FROM merge_requests WHERE bead_id = ?", (bead,)).fetchall()]
    decision = queue.admit(mine, bead, commit)
    if isinstance(decision, queue.Duplicate):
        refused = queue.resend_refusal(decision.existing, decision.state, commit, branch,
                                       last_reason(conn, decision.existing))
        if refused is not None:
            raise Conflict(refused)
        return Enqueued(id=decision.existing, created=False, state=decision.state)
    stamp, ts = timeutil.now()
    mr_id = ids.new_bead_id(conn, mr_prefix, f"mr\x00{bead}\x00{commit}")
    description = (f"branch: {branch}\ncommit: {commit}\ntarget: {base}\nsource_issue: {bead}\n"
                   f"polecat: {polecat}\nrig: {rig}\n\n{summary}")
    beads.insert(conn, db, bead_id=mr_id, title=f"Merge: {(title or bead)[:400]}", actor=actor,
                 description=description, issue_type="merge-request", priority=priority)
    beads.add_dependency(conn, db, mr_id, bead, "related", actor)
    attempts = conn.execute(
        "SELECT COUNT(*) FROM mr_events e JOIN merge_requests m ON m.id = e.mr_id "
        f"WHERE m.bead_id = ? AND e.to_state IN ({','.join('?' * len(SEND_BACK_STATES))})",
        (bead, *SEND_BACK_STATES)).fetchone()[0]
    conn.execute(
        "INSERT INTO merge_requests (id, bead_id, rig, polecat, branch, commit_sha, base, state, summary, "
        "created_at, priority, queued_ts, attempts, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (mr_id, bead, rig, polecat, branch, commit, base, MRState.QUEUED.value, summary, stamp,
         min(PRIORITY_MAX, max(PRIORITY_MIN, int(priority))), ts, int(attempts), stamp))
    _event(conn, mr_id, actor, None, MRState.QUEUED,
           {"reason": "polecat_done", "branch": branch, "commit": commit, "base": base, "attempts": attempts})
    for old in decision.replaces:
        transition_in_txn(conn, old, MRState.REJECTED, actor, {"reason": f"superseded by {mr_id}",
                                                               "superseded_by": mr_id})
    for earlier in mine:  # a bead rejected loudly (its source gone) has new work now
        if earlier.state is MRState.REJECTED:
            patrol_log.resolve_in_txn(conn, refinery_patrol(rig), mr_escalation_key(earlier.id, MRState.REJECTED),
                                      f"{bead} has a new merge request {mr_id}", time.time())
    return Enqueued(id=mr_id, created=True, replaced=list(decision.replaces),
                    stale_in_flight=list(decision.stale_in_flight))


def enqueue(town: Town, *, rig: str, bead: str, polecat: str, branch: str, commit: str, base: str | None = None,
            summary: str = "", actor: str | None = None) -> Enqueued:
    """enqueue_in_txn in its own transaction (the source bead's title and priority are used)."""
    with town.db.write() as conn:
        source = beads.fetch_row(conn, bead)
        return enqueue_in_txn(conn, town.db, mr_prefix=town.prefix_for_rig(rig), rig=rig, bead=bead,
                              polecat=polecat, branch=branch, commit=commit, base=base, summary=summary,
                              actor=actor or polecat, title=source["title"], priority=source["priority"])


# ---- the rig's queue lease -----------------------------------------------------------------------


def _rig_row(conn: sqlite3.Connection, rig: str) -> RigQueue:
    r = conn.execute("SELECT lease_owner, lease_expires, paused_sha, paused_reason, resume_requested, "
                     "hold_kind, hold_reason, hold_key, hold_since FROM mq_rigs WHERE rig = ?", (rig,)).fetchone()
    if r is None:
        return RigQueue(rig=rig)
    lease = Lease(owner=r[0], expires_at=float(r[1])) if r[0] is not None and r[1] is not None else None
    held = None
    if r[5] is not None:
        held = QueueHold(kind=HoldKind(r[5]), reason=r[6] or r[5], key=r[7] or "", since=float(r[8] or 0.0))
    return RigQueue(rig=rig, lease=lease, paused_sha=r[2], paused_reason=r[3], resume_requested=bool(r[4]),
                    hold=held)


def queue_state(town: Town, rig: str) -> RigQueue:
    with town.db.read() as conn:
        return _rig_row(conn, rig)


OwnerGone = Callable[[str], bool]


def local_owner_gone(owner: str) -> bool:
    """Is this lease owner a runner process of this host that is no longer running (its pid
    free, or reused by a process that started later)? See queue.owner_dead."""
    parsed = queue.parse_owner(owner)
    if parsed is None:
        return False
    return queue.owner_dead(parsed, socket.gethostname(), proc.start_time(parsed.pid))


def _take_from_dead(conn: sqlite3.Connection, rig: str, owner: str, now: float, ttl: float,
                    gone: OwnerGone) -> bool:
    """The rig lease of a live-looking owner whose process is gone (this host's runner, killed)
    becomes ours at once instead of after its expiry; its in-flight requests' leases are freed,
    so `adopt` resumes them in this step. Compare-and-set against the owner observed."""
    seen = _rig_row(conn, rig).lease
    if seen is None or seen.owner == owner or seen.expires_at <= now or not gone(seen.owner):
        return False
    cur = conn.execute("UPDATE mq_rigs SET lease_owner = ?, lease_expires = ? WHERE rig = ? AND lease_owner = ? "
                       "AND lease_expires = ?", (owner, now + ttl, rig, seen.owner, seen.expires_at))
    if cur.rowcount != 1:
        return False
    conn.execute("UPDATE merge_requests SET lease_expires = NULL WHERE rig = ? AND lease_owner = ?",
                 (rig, seen.owner))
    return True


def acquire(town: Town, rig: str, owner: str, now: float, ttl: float = LEASE_TTL_S,
            gone: OwnerGone = local_owner_gone) -> Lease | None:
    """Take the rig's queue lease when it is free or expired, or extend it when it is ours, or
    take it over at once when its owner is a dead process of this host (`gone`; a killed
    runner's rig does not wait out the lease). Compare-and-set: the UPDATE applies only while
    the row still shows what was observed. Returns the lease when `owner` holds it, else None."""
    if not owner:
        raise InvalidInput("a lease owner must be non-empty")
    with town.db.write() as conn:
        conn.execute("INSERT OR IGNORE INTO mq_rigs(rig) VALUES (?)", (rig,))
        if _take_from_dead(conn, rig, owner, now, ttl, gone):
            return Lease(owner=owner, expires_at=now + ttl)
        cur = conn.execute(
            "UPDATE mq_rigs SET lease_owner = ?, lease_expires = ? WHERE rig = ? AND "
            "(lease_owner IS NULL OR lease_owner = ? OR lease_expires IS NULL OR lease_expires <= ?)",
            (owner, now + ttl, rig, owner, now))
        return Lease(owner=owner, expires_at=now + ttl) if cur.rowcount == 1 else None


def renew(town: Town, rig: str, owner: str, now: float, ttl: float = LEASE_TTL_S) -> Lease | None:
    """Extend our live lease (and our in-flight requests' leases); None when it was lost."""
    with town.db.write() as conn:
        cur = conn.execute("UPDATE mq_rigs SET lease_expires = ? WHERE rig = ? AND lease_owner = ? AND "
                           "lease_expires > ?", (now + ttl, rig, owner, now))
        if cur.rowcount != 1:
            return None
        conn.execute("UPDATE merge_requests SET lease_expires = ? WHERE rig = ? AND lease_owner = ?",
                     (now + ttl, rig, owner))
        return Lease(owner=owner, expires_at=now + ttl)


def release(town: Town, rig: str, owner: str) -> bool:
    """Give the rig lease back (a clean stop); in-flight requests keep their state and are
    adopted by the next holder. False when it was not ours."""
    with town.db.write() as conn:
        cur = conn.execute("UPDATE mq_rigs SET lease_owner = NULL, lease_expires = NULL WHERE rig = ? AND "
                           "lease_owner = ?", (rig, owner))
        conn.execute("UPDATE merge_requests SET lease_expires = NULL, lease_owner = NULL WHERE rig = ? AND "
                     "lease_owner = ?", (rig, owner))
        return cur.rowcount == 1


def _holds_rig(conn: sqlite3.Connection, rig: str, owner: str, now: float) -> bool:
    return queue.holds(_rig_row(conn, rig).lease, owner, now)


def claim(town: Town, mr_id: str, owner: str, now: float, ttl: float = LEASE_TTL_S) -> bool:
    """queued -> claimed under `owner`'s live rig lease, by compare-and-set on the request's own
    lease (UPDATE ... WHERE lease_owner IS NULL OR lease_expires < now). False when someone else
    has it, it is no longer queued, or `owner` does not hold the rig's lease."""
    with town.db.write() as conn:
        row = fetch_in_txn(conn, mr_id)
        if not _holds_rig(conn, row.rig, owner, now):
            return False
        cur = conn.execute(
            "UPDATE merge_requests SET state = ?, lease_owner = ?, lease_expires = ? WHERE id = ? AND state = ? "
            "AND (lease_owner IS NULL OR lease_owner = ? OR lease_expires IS NULL OR lease_expires < ?)",
            (MRState.CLAIMED.value, owner, now + ttl, mr_id, MRState.QUEUED.value, owner, now))
        if cur.rowcount != 1:
            return False
        stamp = _event(conn, mr_id, owner, MRState.QUEUED, MRState.CLAIMED, {"lease_owner": owner,
                                                                           "lease_expires": now + ttl})
        conn.execute("UPDATE merge_requests SET updated_at = ? WHERE id = ?", (stamp, mr_id))
        return True


def adopt(town: Town, mr_id: str, owner: str, now: float, ttl: float = LEASE_TTL_S) -> bool:
    """Resume an in-flight request (claimed/testing) whose owner is gone: its lease is ours when
    it is free, expired or already ours, and we hold the rig lease. The state is unchanged; the
    takeover is an event."""
    with town.db.write() as conn:
        row = fetch_in_txn(conn, mr_id)
        if row.state not in IN_FLIGHT_STATES or not _holds_rig(conn, row.rig, owner, now):
            return False
        cur = conn.execute(
            "UPDATE merge_requests SET lease_owner = ?, lease_expires = ? WHERE id = ? AND state IN (?, ?) "
            "AND (lease_owner IS NULL OR lease_owner = ? OR lease_expires IS NULL OR lease_expires < ?)",
            (owner, now + ttl, mr_id, MRState.CLAIMED.value, MRState.TESTING.value, owner, now))
        if cur.rowcount != 1:
            return False
        if row.lease_owner != owner:
            _event(conn, mr_id, owner, row.state, row.state, {"adopted_from": row.lease_owner,
                                                              "reason": "previous owner's lease expired or its "
                                                                        "process is gone"})
        return True


# ---- pause, run cache, bugs ------------------------------------------------------------------------


def pause_in_txn(conn: sqlite3.Connection, rig: str, sha: str, reason: str) -> None:
    conn.execute("INSERT OR IGNORE INTO mq_rigs(rig) VALUES (?)", (rig,))
    conn.execute("UPDATE mq_rigs SET paused_sha = ?, paused_reason = ?, resume_requested = 0 WHERE rig = ?",
                 (sha, reason, rig))


def unpause(town: Town, rig: str) -> None:
    """The queue resumes (a green target, or the overseer's `mq resume`): its red-target
    escalations are resolved in the same transaction."""
    with town.db.write() as conn:
        conn.execute("UPDATE mq_rigs SET paused_sha = NULL, paused_reason = NULL, resume_requested = 0 "
                     "WHERE rig = ?", (rig,))
        patrol_log.resolve_prefixed_in_txn(conn, refinery_patrol(rig), f"{TARGET_RED_PREFIX}{rig}:",
                                           f"the {rig} merge queue resumed", time.time())


def request_resume(town: Town, rig: str) -> RigQueue:
    """The overseer resumes a paused queue (`mq resume`); the worker unpauses on its next step."""
    with town.db.write() as conn:
        conn.execute("INSERT OR IGNORE INTO mq_rigs(rig) VALUES (?)", (rig,))
        conn.execute("UPDATE mq_rigs SET resume_requested = 1 WHERE rig = ?", (rig,))
        return _rig_row(conn, rig)


# ---- holds: the town stops merging (HoldKind) -------------------------------------------------------


def hold_key(rig: str) -> str:
    """The escalation a rig's hold stands under (one per rig: a new cause replaces the old)."""
    return f"mq-hold:{rig}"


def hold(town: Town, rig: str, kind: HoldKind, reason: str, key: str, now: float, actor: str) -> bool:
    """Hold `rig`'s queue for a cause of the town's, and record ONE escalation (the escalations
    table and an ESCALATION mail to the mayor) in the same transaction. False, writing nothing,
    when the same hold (kind and cause fingerprint) already stands: a cause escalates once."""
    reason = " ".join(reason.split())[:500] or kind.value
    with town.db.write() as conn:
        current = _rig_row(conn, rig).hold
        if current is not None and current.kind is kind and current.key == key:
            return False
        conn.execute("INSERT OR IGNORE INTO mq_rigs(rig) VALUES (?)", (rig,))
        conn.execute("UPDATE mq_rigs SET hold_kind = ?, hold_reason = ?, hold_key = ?, hold_since = ? WHERE rig = ?",
                     (kind.value, reason, key, now, rig))
        if current is not None:  # a different cause: the old escalation is answered by the new one
            patrol_log.resolve_in_txn(conn, f"refinery:{rig}", hold_key(rig), f"replaced by: {reason}", now)
        message = protocol.Escalation(text=f"The merge queue of rig {rig} is held: {reason}\n"
                                           "Nothing merges until the cause is fixed; the queue resumes by itself "
                                           "once it is (or `vermas-runner mq resume` after a fix).",
                                      reason=kind.value, rig=rig, key=hold_key(rig))
        patrol_log.raise_escalation_in_txn(conn, town.db, f"refinery:{rig}", actor, hold_key(rig), "mayor", message,
                                           f"queue held: {reason}", now, agent=actor)
        return True


def release_hold(town: Town, rig: str, reason: str, actor: str, now: float) -> bool:
    """Release `rig`'s hold (its cause is gone, or a person resumed it) and resolve its
    escalation; False when no hold stood."""
    with town.db.write() as conn:
        changed = conn.execute("UPDATE mq_rigs SET hold_kind = NULL, hold_reason = NULL, hold_key = NULL, "
                               "hold_since = NULL WHERE rig = ? AND hold_kind IS NOT NULL", (rig,)).rowcount
        if not changed:
            return False
        patrol_log.resolve_in_txn(conn, f"refinery:{rig}", hold_key(rig), f"{reason} ({actor})", now)
        return True


def cache_run(town: Town, rig: str, outcome: RunOutcome, now: float) -> None:
    with town.db.write() as conn:
        conn.execute("INSERT OR REPLACE INTO mq_runs(rig, sha, command, outcome, at_ts) VALUES (?,?,?,?,?)",
                     (rig, outcome.candidate_sha, outcome.command, outcome.model_dump_json(), now))


def cached_run(town: Town, rig: str, sha: str, command: str) -> RunOutcome | None:
    with town.db.read() as conn:
        r = conn.execute("SELECT outcome FROM mq_runs WHERE rig = ? AND sha = ? AND command = ?",
                         (rig, sha, command)).fetchone()
    return RunOutcome.model_validate_json(r[0]) if r else None


def open_bug_keys(town: Town, rig: str) -> frozenset[str]:
    with town.db.read() as conn:
        rows = conn.execute("SELECT b.key FROM mq_bugs b JOIN issues i ON i.id = b.bead_id WHERE b.rig = ? AND "
                            "i.status != 'closed'", (rig,)).fetchall()
    return frozenset(r[0] for r in rows)


def record_bug_in_txn(conn: sqlite3.Connection, key: str, rig: str, bead_id: str) -> None:
    conn.execute("INSERT OR REPLACE INTO mq_bugs(key, rig, bead_id) VALUES (?,?,?)", (key, rig, bead_id))


# ---- by hand: retry, reject (mq_retry / mq_reject) -------------------------------------------------


def retry(town: Town, mr_id: str, actor: str) -> MergeRequestRow:
    """Back to queued from rework, conflict or failed (backoff and failure count reset)."""
    with town.db.write() as conn:
        row = fetch_in_txn(conn, mr_id)
        if row.state not in (MRState.REWORK, MRState.CONFLICT, MRState.FAILED):
            raise Conflict(f"merge request {mr_id} is {row.state}; only rework, conflict or failed requests "
                           "can be retried")
        return transition_in_txn(conn, mr_id, MRState.QUEUED, actor, {"reason": "retried by hand"},
                                 failures=0, not_before=None)


def reject(town: Town, mr_id: str, actor: str, reason: str) -> MergeRequestRow:
    """Rejected by hand, with the reason; a final state."""
    if not isinstance(reason, str) or not reason.strip():
        raise InvalidInput("a reason is required to reject a merge request")
    with town.db.write() as conn:
        row = fetch_in_txn(conn, mr_id)
        if row.state in FINAL_STATES:
            raise Conflict(f"merge request {mr_id} is already {row.state}")
        return transition_in_txn(conn, mr_id, MRState.REJECTED, actor, {"reason": reason.strip()[:2000]})


def requeue_due(town: Town, rig: str, actor: str, now: float) -> list[str]:
    """failed requests whose backoff elapsed go back to queued (an escalated one has no
    not_before and waits for mq retry)."""
    done = []
    with town.db.write() as conn:
        rows = conn.execute("SELECT id FROM merge_requests WHERE rig = ? AND state = ? AND not_before IS NOT NULL "
                            "AND not_before <= ?", (rig, MRState.FAILED.value, now)).fetchall()
        for (mr_id,) in rows:
            transition_in_txn(conn, mr_id, MRState.QUEUED, actor, {"reason": "backoff elapsed"})
            done.append(mr_id)
    return done
