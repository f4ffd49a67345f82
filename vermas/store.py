"""The town's store of record: one SQLite database in WAL mode shared by every process.

Every write is one `BEGIN IMMEDIATE` transaction, so checks made inside it (is the hook
free? is the bead still hooked by me?) cannot be raced by another process: SQLite lets
one writer in at a time and the others wait on `busy_timeout`. The JSONL files are an
export of this database, never a source it reads back behind the user's back.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from vermas.atomic import is_disk_full, storage_full
from vermas.errors import StorageFull

# 4: agent_events; 5: cost (transcripts, usage, hook log, model calls); 6: wisps, event session; 7: queue holds
SCHEMA_VERSION = 7

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS issues (
    id TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    design TEXT NOT NULL DEFAULT '',
    acceptance_criteria TEXT NOT NULL DEFAULT '',
    notes TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL,
    priority INTEGER NOT NULL,
    issue_type TEXT NOT NULL,
    assignee TEXT,
    owner TEXT,
    created_at TEXT NOT NULL,
    created_ts REAL NOT NULL,
    created_by TEXT,
    updated_at TEXT NOT NULL,
    updated_ts REAL NOT NULL,
    started_at TEXT,
    closed_at TEXT,
    close_reason TEXT,
    external_ref TEXT,
    ephemeral INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS issues_ready ON issues(status, priority, created_ts, id);
CREATE INDEX IF NOT EXISTS issues_assignee ON issues(assignee, status);
CREATE TABLE IF NOT EXISTS labels (
    issue_id TEXT NOT NULL, label TEXT NOT NULL, PRIMARY KEY (issue_id, label)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS labels_label ON labels(label);
CREATE TABLE IF NOT EXISTS dependencies (
    issue_id TEXT NOT NULL,
    depends_on_id TEXT NOT NULL,
    type TEXT NOT NULL,
    created_at TEXT NOT NULL,
    created_by TEXT,
    PRIMARY KEY (issue_id, depends_on_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS deps_target ON dependencies(depends_on_id, type);
CREATE INDEX IF NOT EXISTS deps_type ON dependencies(type);
CREATE TABLE IF NOT EXISTS comments (
    issue_id TEXT NOT NULL,
    id,
    author TEXT,
    text TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (issue_id, id)
);
CREATE TABLE IF NOT EXISTS prefixes (prefix TEXT PRIMARY KEY, count INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS routes (prefix TEXT PRIMARY KEY, path TEXT NOT NULL, rig TEXT);
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY,
    sender TEXT NOT NULL,
    recipient TEXT NOT NULL,
    subject TEXT NOT NULL,
    kind TEXT,
    body TEXT NOT NULL DEFAULT '',
    reply_to TEXT,
    thread_id TEXT NOT NULL,
    idempotency_key TEXT,
    created_at TEXT NOT NULL,
    created_ts REAL NOT NULL,
    read_at TEXT,
    acked_at TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS messages_idem ON messages(sender, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS messages_inbox ON messages(recipient, read_at, created_ts);
CREATE INDEX IF NOT EXISTS messages_thread ON messages(thread_id, created_ts);
CREATE TABLE IF NOT EXISTS merge_requests (
    id TEXT PRIMARY KEY,
    bead_id TEXT NOT NULL,
    rig TEXT NOT NULL,
    polecat TEXT NOT NULL,
    branch TEXT,
    commit_sha TEXT,
    base TEXT,
    state TEXT NOT NULL,
    summary TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS mr_bead ON merge_requests(bead_id);
CREATE TABLE IF NOT EXISTS mr_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    mr_id TEXT NOT NULL,
    at TEXT NOT NULL,
    at_ts REAL NOT NULL,
    actor TEXT NOT NULL,
    from_state TEXT,
    to_state TEXT NOT NULL,
    evidence TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS mr_events_mr ON mr_events(mr_id, seq);
CREATE TABLE IF NOT EXISTS mq_rigs (
    rig TEXT PRIMARY KEY,
    lease_owner TEXT,
    lease_expires REAL,
    paused_sha TEXT,
    paused_reason TEXT,
    resume_requested INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS mq_runs (
    rig TEXT NOT NULL,
    sha TEXT NOT NULL,
    command TEXT NOT NULL,
    outcome TEXT NOT NULL,
    at_ts REAL NOT NULL,
    PRIMARY KEY (rig, sha, command)
);
CREATE TABLE IF NOT EXISTS mq_bugs (key TEXT PRIMARY KEY, rig TEXT NOT NULL, bead_id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS polecats (
    rig TEXT NOT NULL,
    name TEXT NOT NULL,
    bead_id TEXT,
    branch TEXT,
    worktree TEXT,
    state TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (rig, name)
);
CREATE TABLE IF NOT EXISTS agent_events (
    id INTEGER PRIMARY KEY,
    agent TEXT NOT NULL,
    kind TEXT NOT NULL,
    at REAL NOT NULL,
    tool TEXT,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS agent_events_agent_at ON agent_events(agent, at);
CREATE TABLE IF NOT EXISTS patrol_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    patrol TEXT NOT NULL,
    action TEXT NOT NULL,
    agent TEXT,
    bead TEXT,
    key TEXT,
    reason TEXT NOT NULL DEFAULT '',
    evidence TEXT NOT NULL DEFAULT '{}',
    ok INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS patrol_events_action ON patrol_events(action, agent, at);
CREATE INDEX IF NOT EXISTS patrol_events_key ON patrol_events(key);
CREATE TABLE IF NOT EXISTS agent_transcripts (
    path TEXT PRIMARY KEY,
    agent TEXT NOT NULL,
    session_id TEXT,
    seen_at REAL NOT NULL,
    read_offset INTEGER NOT NULL DEFAULT 0,
    claude_cost_usd REAL
);
CREATE TABLE IF NOT EXISTS usage_records (
    message_id TEXT PRIMARY KEY,
    agent TEXT NOT NULL,
    session_id TEXT,
    bead_id TEXT,
    model TEXT NOT NULL,
    at REAL NOT NULL,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    cache_read_tokens INTEGER NOT NULL DEFAULT 0,
    cache_creation_tokens INTEGER NOT NULL DEFAULT 0,
    reported_cost_usd REAL
);
CREATE INDEX IF NOT EXISTS usage_records_agent ON usage_records(agent);
CREATE INDEX IF NOT EXISTS usage_records_bead ON usage_records(bead_id);
CREATE TABLE IF NOT EXISTS model_calls (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    agent TEXT NOT NULL,
    bead_id TEXT,
    role TEXT NOT NULL,
    model TEXT NOT NULL,
    cost_usd REAL NOT NULL DEFAULT 0,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    cache_read_tokens INTEGER NOT NULL DEFAULT 0,
    cache_creation_tokens INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS hook_log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    agent TEXT NOT NULL,
    bead_id TEXT NOT NULL,
    at REAL NOT NULL,
    held INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS hook_log_agent ON hook_log(agent, at);
CREATE TRIGGER IF NOT EXISTS hook_log_insert AFTER INSERT ON issues
WHEN NEW.status = 'hooked' AND NEW.assignee IS NOT NULL
BEGIN
    INSERT INTO hook_log(agent, bead_id, at, held)
    VALUES (NEW.assignee, NEW.id, (julianday('now') - 2440587.5) * 86400.0, 1);
END;
CREATE TRIGGER IF NOT EXISTS hook_log_update AFTER UPDATE OF status, assignee ON issues
WHEN NEW.status IS NOT OLD.status OR NEW.assignee IS NOT OLD.assignee
BEGIN
    INSERT INTO hook_log(agent, bead_id, at, held)
    SELECT OLD.assignee, OLD.id, (julianday('now') - 2440587.5) * 86400.0, 0
    WHERE OLD.assignee IS NOT NULL AND OLD.status IN ('hooked', 'in_progress')
      AND (NEW.assignee IS NOT OLD.assignee OR NEW.status NOT IN ('hooked', 'in_progress'));
    INSERT INTO hook_log(agent, bead_id, at, held)
    SELECT NEW.assignee, NEW.id, (julianday('now') - 2440587.5) * 86400.0, 1
    WHERE NEW.status = 'hooked' AND NEW.assignee IS NOT NULL
      AND (OLD.status IS NOT 'hooked' OR OLD.assignee IS NOT NEW.assignee);
END;
-- Wisps: ephemeral molecules (vermas.molecules.molecule). Their beads live in `issues` with
-- ephemeral = 1 and are never exported; this row is what the sweep ages them by.
CREATE TABLE IF NOT EXISTS wisps (
    root TEXT PRIMARY KEY,
    created_ts REAL NOT NULL,
    closed_ts REAL
);
CREATE TABLE IF NOT EXISTS escalations (
    key TEXT PRIMARY KEY,
    recipient TEXT NOT NULL,
    raised_at REAL NOT NULL,
    message_id TEXT,
    subject TEXT NOT NULL DEFAULT '',
    bead TEXT,
    agent TEXT,
    reason TEXT,
    reescalated_at REAL,
    resolved_at REAL
);
"""

# Columns added after a table first shipped: (table, column, declaration). `_ensure_schema` adds
# each one a store lacks (ALTER TABLE ADD COLUMN), so stores made by older versions open unchanged
# and gain them; the check runs inside the migration's transaction, so it is idempotent and safe
# for two processes opening one old store at once.
ADDED_COLUMNS: tuple[tuple[str, str, str], ...] = (
    # The merge queue (vermas.refinery.ledger): the merge request table is the queue of record.
    ("merge_requests", "priority", "INTEGER NOT NULL DEFAULT 2"),
    ("merge_requests", "queued_ts", "REAL"),  # epoch seconds of created_at (ordering; NULL on old rows)
    ("merge_requests", "attempts", "INTEGER NOT NULL DEFAULT 0"),
    ("merge_requests", "failures", "INTEGER NOT NULL DEFAULT 0"),
    ("merge_requests", "not_before", "REAL"),
    ("merge_requests", "lease_owner", "TEXT"),
    ("merge_requests", "lease_expires", "REAL"),
    ("merge_requests", "target_sha", "TEXT"),  # the target tip it was rebased onto
    ("merge_requests", "candidate_sha", "TEXT"),  # its rebased tip (what the target gets)
    ("merge_requests", "merged_sha", "TEXT"),
    ("merge_requests", "untested", "INTEGER NOT NULL DEFAULT 0"),
    ("merge_requests", "cleaned_at", "TEXT"),  # the polecat's worktree and branch handled after merge
    ("merge_requests", "updated_at", "TEXT"),
    # A rig queue's hold (vermas.refinery.types.QueueHold): the town stops merging, with its cause.
    ("mq_rigs", "hold_kind", "TEXT"),
    ("mq_rigs", "hold_reason", "TEXT"),
    ("mq_rigs", "hold_key", "TEXT"),
    ("mq_rigs", "hold_since", "REAL"),
    # Claude Code's session_id on each hook event: tells a killed predecessor's late SessionEnd
    # from the restarted session's own (vermas.witness.classify).
    ("agent_events", "session", "TEXT"),
)
MIGRATED_INDEXES = (
    "CREATE INDEX IF NOT EXISTS mr_queue ON merge_requests(rig, state)",
)

# Tables whose change makes an export stale, by export name.
EXPORT_KINDS = ("issues", "messages", "routes")


def private_files(db_path: Path) -> None:
    """Owner-only modes for the store and its companions (0600): mail and beads are not for other
    OS users. Also repairs towns made before this rule (0644 under umask 022)."""
    for suffix in ("", "-wal", "-shm", ".writelock"):
        try:
            os.chmod(str(db_path) + suffix, 0o600)
        except (FileNotFoundError, PermissionError):
            pass


class Database:
    """A connection to a town's store, safe to share between this process's threads.

    One connection guarded by a lock keeps things simple: tool calls arrive on worker
    threads, and SQLite releases the GIL while it works, so reads stay fast.
    """

    def __init__(self, path: Path, *, create: bool = False) -> None:
        if not create and not path.exists():
            raise FileNotFoundError(path)
        self.path = path
        self._lock = threading.RLock()
        if create and not path.exists():
            os.close(os.open(str(path), os.O_RDWR | os.O_CREAT, 0o600))  # SQLite gives -wal/-shm its mode
        self._conn = sqlite3.connect(
            str(path), timeout=60.0, isolation_level=None, check_same_thread=False
        )
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA busy_timeout = 60000")
        self._conn.execute("PRAGMA journal_mode = WAL")
        # NORMAL is durable against process crashes (SIGKILL) in WAL mode; only an OS
        # crash or power loss may drop the last commits, which we accept for speed.
        self._conn.execute("PRAGMA synchronous = NORMAL")
        self._conn.execute("PRAGMA foreign_keys = OFF")
        # Writers queue on an flock before BEGIN IMMEDIATE: the kernel wakes the next one the
        # moment the lock is free, where SQLite's busy handler sleeps and polls (1, 2, 5, 10 ms
        # ...), which with 16 concurrent writers cost more time than the writes themselves.
        # The kernel drops the lock of a process that dies, so a crash never leaves it held.
        self._write_lock = os.open(str(path) + ".writelock", os.O_RDWR | os.O_CREAT, 0o600)
        self._listeners: list[Callable[[set[str]], None]] = []
        self._pending: set[str] | None = None
        try:
            self._ensure_schema()
        except sqlite3.Error as exc:
            self.close()
            if is_disk_full(exc):
                raise self._full() from exc
            raise
        private_files(path)

    def _full(self) -> StorageFull:
        return storage_full(self.path, "the town store", "nothing was written (the transaction was rolled back)")

    def _ensure_schema(self) -> None:
        row = self._conn.execute("PRAGMA user_version").fetchone()
        if row[0] >= SCHEMA_VERSION:
            return
        with self._lock:
            # executescript commits implicitly; the statements are idempotent, so two
            # processes racing here both succeed.
            self._conn.executescript("BEGIN IMMEDIATE;" + SCHEMA)
            try:
                for table, column, decl in ADDED_COLUMNS:
                    have = {r[1] for r in self._conn.execute(f"PRAGMA table_info({table})")}
                    if column not in have:
                        self._conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
                for statement in MIGRATED_INDEXES:
                    self._conn.execute(statement)
                self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self._lock:
            self._conn.close()
            os.close(self._write_lock)

    def add_listener(self, fn: Callable[[set[str]], None]) -> None:
        """Call fn(kinds) after each commit that changed exported tables."""
        self._listeners.append(fn)

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction; rolled back whole on any exception. A full disk
        (SQLITE_FULL, on any statement or the commit) raises StorageFull naming the store."""
        try:
            with self._transaction() as conn:
                yield conn
        except sqlite3.Error as exc:
            if is_disk_full(exc):
                raise self._full() from exc
            raise

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            fcntl.flock(self._write_lock, fcntl.LOCK_EX)
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                self._pending = set()
                try:
                    yield self._conn
                    changed = self._pending
                    for kind in changed:
                        self._conn.execute(
                            "INSERT INTO meta(key, value) VALUES (?, '1') ON CONFLICT(key) "
                            "DO UPDATE SET value = CAST(value AS INTEGER) + 1",
                            (f"gen:{kind}",),
                        )
                    self._conn.execute("COMMIT")
                except BaseException:
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                    raise
                finally:
                    self._pending = None
            finally:
                fcntl.flock(self._write_lock, fcntl.LOCK_UN)
        if changed:
            for fn in self._listeners:
                fn(changed)

    def touch(self, *kinds: str) -> None:
        """Mark exports stale inside the current write transaction."""
        if self._pending is None:
            raise RuntimeError("touch() outside a write transaction")
        self._pending.update(kinds)

    @contextmanager
    def unexported(self, kind: str) -> Iterator[None]:
        """Writes inside this block do not make the `kind` export stale (rows the export never
        holds, a wisp's); a touch made before it, or after it, still counts."""
        if self._pending is None:
            raise RuntimeError("unexported() outside a write transaction")
        before = kind in self._pending
        yield
        if not before and self._pending is not None:
            self._pending.discard(kind)

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot for multi-statement reads."""
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                yield self._conn
            finally:
                self._conn.execute("COMMIT")

    def snapshot_reader(self) -> sqlite3.Connection:
        """A separate read-only connection for long reads (exports): WAL lets it read a
        consistent snapshot while this process's own connection keeps serving writes."""
        conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=60.0,
                               isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 60000")
        return conn

    def generation(self, conn: sqlite3.Connection, kind: str) -> int:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (f"gen:{kind}",)).fetchone()
        return int(row[0]) if row else 0

    def integrity_check(self) -> str:
        with self._lock:
            return str(self._conn.execute("PRAGMA integrity_check").fetchone()[0])
