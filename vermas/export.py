"""bd-compatible JSONL export of the store: `.beads/issues.jsonl`, `messages.jsonl` and
`routes.jsonl`, each rewritten atomically (temp file, fsync, rename).

Exports are coalesced: a process that commits schedules one export a short moment later
(well under a second), and a generation counter in the store tells every exporter
whether the file already holds the latest commit. A file lock orders exporters so an
older snapshot never overwrites a newer one. If a writer dies before its export runs,
the next process to open the town (or `vermas-runner export`) catches it up.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vermas import git
from vermas.atomic import write_atomic
from vermas.proc import pid_alive
from vermas.store import EXPORT_KINDS

if TYPE_CHECKING:  # the town exports itself when created (Town.init), so only the type here
    from vermas.town import Town

ISSUE_LINE_SQL = """
SELECT json_patch('{"_type":"issue"}', json_object(
  'id', i.id, 'title', i.title,
  'description', NULLIF(i.description, ''), 'design', NULLIF(i.design, ''),
  'acceptance_criteria', NULLIF(i.acceptance_criteria, ''), 'notes', NULLIF(i.notes, ''),
  'status', i.status, 'priority', i.priority, 'issue_type', i.issue_type,
  'assignee', i.assignee, 'owner', i.owner,
  'created_at', i.created_at, 'created_by', i.created_by, 'updated_at', i.updated_at,
  'started_at', i.started_at,
  'closed_at', CASE WHEN i.status = 'closed' THEN i.closed_at END,
  'close_reason', i.close_reason,
  'external_ref', i.external_ref,
  'ephemeral', CASE WHEN i.ephemeral THEN json('true') END,
  'labels', (SELECT json_group_array(label) FROM (
      SELECT label FROM labels WHERE issue_id = i.id ORDER BY label) HAVING count(*) > 0),
  'dependencies', (SELECT json_group_array(json_object('issue_id', issue_id,
      'depends_on_id', depends_on_id, 'type', type, 'created_at', created_at,
      'created_by', created_by)) FROM (SELECT * FROM dependencies WHERE issue_id = i.id
      ORDER BY depends_on_id) HAVING count(*) > 0),
  'comments', (SELECT json_group_array(json_object('id', id, 'issue_id', issue_id,
      'author', author, 'text', text, 'created_at', created_at)) FROM (SELECT * FROM comments
      WHERE issue_id = i.id ORDER BY created_at, rowid) HAVING count(*) > 0)
)) FROM issues i WHERE {where} ORDER BY i.id
"""
# A wisp's beads (ephemeral, their root in `wisps`) never reach a file: bd's wisps do not sync
# either. Ephemeral beads imported from bd are not wisps of this town and round-trip as they came.
NOT_A_WISP = ("NOT (i.ephemeral AND EXISTS (SELECT 1 FROM wisps w WHERE w.root = CASE WHEN instr(i.id, '.') > 0 "
              "THEN substr(i.id, 1, instr(i.id, '.') - 1) ELSE i.id END))")

MESSAGE_LINE_SQL = """
SELECT json_patch('{"_type":"message"}', json_object(
  'id', id, 'from', sender, 'to', recipient, 'subject', subject, 'kind', kind,
  'body', NULLIF(body, ''), 'reply_to', reply_to, 'thread_id', thread_id,
  'idempotency_key', idempotency_key, 'created_at', created_at,
  'read_at', read_at, 'acked_at', acked_at)) FROM messages ORDER BY created_ts, id
"""

ROUTE_LINE_SQL = """
SELECT json_patch('{}', json_object('prefix', prefix, 'path', path, 'rig', rig))
  FROM routes ORDER BY prefix
"""

QUERIES = {"issues": ISSUE_LINE_SQL.replace("{where}", NOT_A_WISP), "messages": MESSAGE_LINE_SQL,
           "routes": ROUTE_LINE_SQL}


# The rig's file inside its canonical clone (layout.rig_export_file is the clone / this path).
RIG_FILE = ".beads/issues.jsonl"
_tracked_cache: dict[Path, tuple[tuple[int, int, int], bool]] = {}


def repo_tracks(clone: Path) -> bool:
    """Whether the rig's repository tracks `.beads/issues.jsonl` (bd users, Gas Town's layout).

    Such a file belongs to the repository's history: people's bd commits and merged commits
    change it, and vermas never commits it. So vermas does not write it: a rewritten tracked
    file would leave the canonical clone modified, and every fast-forward that brings an
    upstream change of the file (`rig sync`, each sling's sync, the refinery's advance) would
    be refused ("would be overwritten"). What the history brings into it is imported into the
    store instead (vermas.beadsync); the town's own file still holds every bead. Read from the
    clone's index (cached by the index file's identity), so a fast-forward that brings the
    file in counts at once."""
    index = clone / ".git" / "index"
    try:
        st = index.stat()
        stamp: tuple[int, int, int] | None = (st.st_mtime_ns, st.st_size, st.st_ino)
    except OSError:
        stamp = None
    cached = _tracked_cache.get(clone)
    if stamp is not None and cached is not None and cached[0] == stamp:
        return cached[1]
    tracked = git.run(clone, "ls-files", "--cached", "--", RIG_FILE, check=False) != ""
    if stamp is not None:
        _tracked_cache[clone] = (stamp, tracked)
    return tracked


def exclude_untracked_export(clone: Path) -> None:
    """Where the repository does not track the file, vermas's export is listed in the clone's
    `.git/info/exclude`: `git status` in the clone stays clean, and git treats an ignored file
    as its own to replace, so an upstream that starts tracking `.beads/issues.jsonl` later
    still fast-forwards (the store holds everything the export had)."""
    exclude = clone / ".git" / "info" / "exclude"
    if not exclude.parent.parent.is_dir():  # not a plain clone (.git is a file): nothing to do
        return
    line = "/" + RIG_FILE
    try:
        text = exclude.read_text()
    except FileNotFoundError:
        text = ""
    if line not in text.splitlines():
        exclude.parent.mkdir(exist_ok=True)
        write_atomic(exclude, text + ("" if text.endswith("\n") or not text else "\n") + line + "\n")


def _targets(town: Town, kind: str) -> list[tuple[str, Path, str, tuple[str, ...]]]:
    """(state key, file, query, args) for one export kind. The town file holds every bead;
    each rig's canonical clone also gets its own beads, so they travel with its code, unless
    the rig's repository tracks that file (repo_tracks says why it is then left to git)."""
    out: list[tuple[str, Path, str, tuple[str, ...]]] = [(kind, town.layout.export_file(kind), QUERIES[kind], ())]
    if kind == "issues":
        for rig in town.config.rigs.values():
            clone = town.layout.canonical_clone(rig.name)
            if clone.is_dir() and not repo_tracks(clone):
                out.append((f"issues:{rig.name}", town.layout.rig_export_file(rig.name),
                            ISSUE_LINE_SQL.replace("{where}", f"i.id GLOB ? AND {NOT_A_WISP}"), (rig.prefix + "-*",)))
    return out


def _state_path(town: Town) -> Path:
    return town.layout.export_state


def _read_state(town: Town) -> dict[str, Any]:
    """{export key: generation written}, plus "<key>@": wall time of that write and
    "<key>#": the file's identity right after it (see _fingerprint)."""
    try:
        return {k: v for k, v in json.loads(_state_path(town).read_text()).items()}
    except (OSError, ValueError, AttributeError):
        return {}


def _fingerprint(path: Path) -> list[int] | None:
    """Size, mtime and inode of an export file, or None if it is missing. A file whose
    fingerprint differs from the one recorded right after our own write was changed by
    someone else (truncated, hand-edited, restored from an old copy): the store is the
    record, so it is rewritten even though the generation says it is current."""
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _current(state: dict[str, Any], key: str, target: Path, generation: int) -> bool:
    """Whether `target` holds generation `generation` of its export, untouched since."""
    if state.get(key, -1) < generation:
        return False
    recorded = state.get(key + "#")
    now = _fingerprint(target)
    return now is not None and (recorded is None or list(recorded) == now)


def export_town(town: Town, kinds: Iterable[str] = EXPORT_KINDS, force: bool = False) -> dict[str, int]:
    """Bring the JSONL files up to the store's latest commit; returns lines written per
    file (files already current are skipped unless force)."""
    return _export(town, kinds, force)[0]


def _export(
    town: Town, kinds: Iterable[str], force: bool = False, min_interval: dict[str, float] | None = None,
) -> tuple[dict[str, int], set[str]]:
    """Export; with min_interval, a stale kind that any process of the town exported less
    than that many seconds ago is deferred (returned) instead, so many writers share one
    export instead of each rewriting the same file."""
    written: dict[str, int] = {}
    deferred: set[str] = set()
    lock_path = town.layout.export_lock
    with lock_path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            state = _read_state(town)
            reader = town.db.snapshot_reader()  # its own connection: never blocks tool calls
            try:
                for kind in kinds:
                    for key, target, query, args in _targets(town, kind):
                        reader.execute("BEGIN")
                        try:
                            generation = town.db.generation(reader, kind)
                            if not force and _current(state, key, target, generation):
                                continue
                            wait = (min_interval or {}).get(kind, 0.0)
                            if target.exists() and time.time() - state.get(key + "@", 0.0) < wait:
                                deferred.add(kind)
                                continue
                            lines = [row[0] for row in reader.execute(query, args)]
                        finally:
                            reader.execute("COMMIT")
                        target.parent.mkdir(exist_ok=True)
                        if key.startswith("issues:"):
                            exclude_untracked_export(target.parent.parent)
                        write_atomic(target, "".join(line + "\n" for line in lines))
                        state[key] = generation
                        state[key + "@"] = time.time()
                        state[key + "#"] = _fingerprint(target)
                        written[key] = len(lines)
            finally:
                reader.close()
            if written:
                write_atomic(_state_path(town), json.dumps(state))
            _remove_orphan_temp_files(town.beads_dir)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return written, deferred


def _remove_orphan_temp_files(folder: Path) -> None:
    """Temp files of exporters that were killed mid-write (`.<name>.<pid>.tmp`)."""
    for tmp in folder.glob(".*.tmp"):
        pid = tmp.name.rsplit(".", 2)[-2]
        if pid.isdigit() and not pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)


def stale_kinds(town: Town) -> list[str]:
    """Export kinds with a file (the town's or a rig clone's) that is behind the store,
    missing, or changed since it was written (a truncated file is caught here)."""
    state = _read_state(town)
    with town.db.read() as conn:
        return [
            kind for kind in EXPORT_KINDS
            if any(not _current(state, key, target, town.db.generation(conn, kind))
                   for key, target, _, _ in _targets(town, kind))
        ]


class ExportScheduler:
    """Coalesces this process's commits into few exports, run on a daemon thread.

    issues.jsonl and routes.jsonl follow a commit within about half a second (the bd
    export that travels with the code); messages.jsonl, a record for people and tools,
    is coalesced over a few seconds, since mail is the busiest table and rewriting it on
    every send would cost more than the sends themselves.
    """

    DELAYS = {"issues": 0.5, "routes": 0.5, "messages": 5.0}

    def __init__(self, town: Town) -> None:
        self.town = town
        self._due: dict[str, float] = {}  # kind -> monotonic time its export is due
        self._cond = threading.Condition()
        self._closed = False
        self._exporting = threading.Lock()  # held while an export runs, so flush waits for it
        self._problem: str | None = None  # the last export failure, logged once per change
        self._thread = threading.Thread(target=self._loop, name="vermas-export", daemon=True)
        self._thread.start()
        town.db.add_listener(self.notify)
        atexit.register(self.flush)

    def notify(self, kinds: set[str]) -> None:
        now = time.monotonic()
        with self._cond:
            for kind in kinds:
                self._due.setdefault(kind, now + self.DELAYS.get(kind, 0.5))
            self._cond.notify()

    def _take_due(self, everything: bool = False) -> list[str]:
        now = time.monotonic()
        due = sorted(k for k, t in self._due.items() if everything or t <= now)
        for kind in due:
            del self._due[kind]
        return due

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (not self._due or min(self._due.values()) > time.monotonic()):
                    timeout = min(self._due.values()) - time.monotonic() if self._due else None
                    self._cond.wait(timeout)
                if self._closed:
                    return
            with self._exporting:
                with self._cond:
                    kinds = self._take_due()
                self._export(kinds)

    def _export(self, kinds: list[str], final: bool = False) -> None:
        if not kinds:
            return
        try:
            _, deferred = _export(self.town, kinds, min_interval=None if final else self.DELAYS)
        except Exception as exc:  # an export failure must never take the server down; retry later
            deferred = set(kinds)
            self._report(f"{type(exc).__name__}: {exc}")
        else:
            self._report(None)
        if deferred:
            self.notify(deferred)

    def _report(self, problem: str | None) -> None:
        """Say on stderr (the MCP client's server log, the runner's log) when exports start
        failing and when they work again: once per change, not on every retry."""
        if problem == self._problem:
            return
        if problem is not None:
            print(f"vermas: writing the exports in {self.town.beads_dir} failed, will retry: {problem}",
                  file=sys.stderr, flush=True)
        elif self._problem is not None:
            print("vermas: exports are written again", file=sys.stderr, flush=True)
        self._problem = problem

    def flush(self) -> None:
        """Export everything pending now, after any export already running has finished
        (at exit, so a clean shutdown always leaves the files current)."""
        with self._exporting:
            with self._cond:
                kinds = self._take_due(everything=True)
            self._export(kinds, final=True)

    def close(self) -> None:
        self.flush()
        with self._cond:
            self._closed = True
            self._cond.notify()
