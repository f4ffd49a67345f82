"""Claude Code hook entry point: one agent event into the town store, in a few milliseconds.

Claude Code runs this on every prompt, tool call, turn end and notification of every agent
(the hooks vermas.agents.settings_for generates), as

    python -I -S -c BOOT KIND STORE FAILURES ACTOR [DETAIL]

with the hook's JSON on stdin. It runs that often, so it is kept to the interpreter's own
start-up: stdlib C modules only (`_sqlite3`, `_json`; their Python wrappers import datetime,
re and friends, which cost more than the write), no vermas, no pydantic. `-I -S` skip site
and the environment's PYTHON* variables, so a user's setup cannot slow or break it.

It never breaks or holds up the agent: it prints nothing, always exits 0, waits at most
BUSY_TIMEOUT_S for the store, never creates a store that is not there, and counts every
failure as one line in FAILURES (bounded), which `vermas-runner events` reports.

Only an agent of the town is recorded: ACTOR must have the launch settings the town wrote for
it (`<runtime>/agents/<session>/settings.json`, FAILURES being `<runtime>/hook-failures.log`),
which is where Claude Code read this very hook from, so a real agent always passes (one stat).
An event for any other name is refused (counted as a failure), so made-up names cannot grow the
table. The table is bounded as well: besides the newest KEEP_PER_AGENT per agent, at most
KEEP_EVENTS rows in all (the oldest go first), whoever writes (the MCP layer writes too).

vermas.events uses `insert_event` from here, so the MCP layer and the hooks write events
with the same statement and the same retention.
"""

from __future__ import annotations

import time

AT = time.time()  # first: the event's time is when Claude Code fired the hook, not when we got to it

import os  # noqa: E402  (after the clock on purpose)
import sys  # noqa: E402

try:  # the C modules: `sqlite3` and `json` would import datetime, re and more (~6 ms)
    import _sqlite3 as sqlite
except ImportError:  # pragma: no cover - an interpreter without the C module split
    import sqlite3 as sqlite  # type: ignore[no-redef]

BUSY_TIMEOUT_S = 2.0  # most event hooks are waited for: a store locked this long is wedged
KEEP_PER_AGENT = 500  # retention: the newest events of each agent (evidence needs the latest few)
KEEP_EVENTS = 100_000  # retention per table: 200 agents' worth; ids are sequential, so a range delete
PRUNE_EVERY = 16  # prune on one insert in this many (ids are sequential), so it costs ~nothing
MAX_FAILURE_LOG = 256 * 1024  # FAILURES stops growing here; the count is then "at least"
MAX_STDIN = 8 * 1024 * 1024  # a Write tool's input can be large; we only need the top-level names
STDIN_WAIT_S = 2.0

INSERT = "INSERT INTO agent_events(agent, kind, at, tool, detail, session) VALUES (?, ?, ?, ?, ?, ?)"
PRUNE = ("DELETE FROM agent_events WHERE agent = ?1 AND at < (SELECT at FROM agent_events "
         "WHERE agent = ?1 ORDER BY at DESC LIMIT 1 OFFSET ?2)")
PRUNE_TABLE = "DELETE FROM agent_events WHERE id <= ?"  # the rowid's b-tree: only the rows it removes
SESSION_PREFIX = "vermas-"  # vermas.addresses.Address.session_name: "vermas-" + address with "/" as "-"

# Where each session's Claude Code transcript is (its usage records: vermas.cost reads them).
# Noted on the hooks that open and close a turn: a second note of the same path is one index
# probe that changes nothing, and a session resumed or cleared into a new file is noted too.
TRANSCRIPT_KINDS = frozenset({"SessionStart", "Stop", "SessionEnd"})
NOTE_TRANSCRIPT = ("INSERT INTO agent_transcripts(path, agent, session_id, seen_at) VALUES (?, ?, ?, ?) "
                   "ON CONFLICT(path) DO NOTHING")

# What each hook event adds as detail: the field Claude Code's own matcher looks at.
DETAIL_FIELD = {"SessionStart": "source", "SessionEnd": "reason", "Notification": "notification_type",
                "StopFailure": "error", "PostToolUseFailure": "error"}


def insert_event(conn: sqlite.Connection, agent: str, kind: str, at: float, tool: str | None,
                 detail: str, session: str | None = None) -> None:
    """Append one event (autocommit: one short write) and now and then trim that agent's
    history to the newest KEEP_PER_AGENT, through the (agent, at) index. `session`: Claude
    Code's session_id when the hook input gave one."""
    cur = conn.execute(INSERT, (agent, kind, at, tool, detail, session))
    row = cur.lastrowid or 0
    if row % PRUNE_EVERY == 0:
        conn.execute(PRUNE, (agent, KEEP_PER_AGENT - 1))
        if row > KEEP_EVENTS:
            conn.execute(PRUNE_TABLE, (row - KEEP_EVENTS,))


def is_town_agent(failures: str, actor: str) -> bool:
    """ACTOR has the launch settings the town wrote for it (the file this hook came from):
    `<dirname(FAILURES)>/agents/vermas-<actor, '/' as '-'>/settings.json`. One stat."""
    if not actor or not failures.startswith("/"):
        return False
    session = SESSION_PREFIX + actor.replace("/", "-")  # no "/" left: always one folder under agents/
    try:
        return os.path.isfile(f"{os.path.dirname(failures)}/agents/{session}/settings.json")
    except (OSError, ValueError):
        return False


def _uri(path: str) -> str:
    """A read-write URI for an existing file: mode=rw never creates a missing store."""
    quoted = path.replace("%", "%25").replace("?", "%3f").replace("#", "%23")
    return f"file:{quoted}?mode=rw"


def _read_stdin() -> bytes:
    """The hook input, but never a wait on a stdin nobody closes (a hand run, a terminal)."""
    import select  # deferred: only when stdin is a pipe (a C module; cheap, but not needed otherwise)

    fd = sys.stdin.fileno()
    if os.isatty(fd):
        return b""
    chunks: list[bytes] = []
    size, deadline = 0, time.monotonic() + STDIN_WAIT_S
    while size < MAX_STDIN:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            break
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


class _Ctx:
    """What `_json.make_scanner` reads off a decoder: plain JSON, nothing hooked."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = float
    memo: dict[str, str] = {}


def parse_input(raw: bytes) -> dict[str, object]:
    """The hook's JSON object, or {} when it is not one (the event is still recorded)."""
    if not raw:
        return {}
    try:
        import _json  # deferred: only when there is input; json.decoder would import re (~4 ms)

        text = raw.decode("utf-8").strip()
        scan = _json.make_scanner(_Ctx())  # type: ignore[arg-type]  # a duck-typed decoder context
        value, end = scan(text, 0)
        return value if isinstance(value, dict) and end == len(text) else {}
    except Exception:  # noqa: BLE001 - any odd input: record the event without its fields
        return {}


def event_fields(kind: str, data: dict[str, object], given_detail: str) -> tuple[str | None, str]:
    """The tool name (tool events) and the detail (notification type, start source, ...)."""
    tool = data.get("tool_name")
    detail = data.get(DETAIL_FIELD.get(kind, ""), given_detail) or given_detail
    if kind == "PostToolUseFailure" and data.get("is_interrupt") is True:
        detail = "interrupted"
    return (tool[:200] if isinstance(tool, str) else None,
            detail[:200] if isinstance(detail, str) else given_detail)


def count_failure(failures: str, what: str) -> None:
    """One line per failure (time, what), appended; stops growing at MAX_FAILURE_LOG. Only
    an absolute path (as the settings give it): never a file in whatever folder the agent is in."""
    if not failures.startswith("/"):
        return
    try:
        fd = os.open(failures, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    except OSError:
        return  # no town folder either: nothing to count into
    try:
        if os.fstat(fd).st_size < MAX_FAILURE_LOG:
            os.write(fd, (f"{AT:.3f} {what}".replace("\n", " ")[:300] + "\n").encode())
    except OSError:
        pass
    finally:
        os.close(fd)


def transcript_of(kind: str, data: dict[str, object]) -> tuple[str, str | None] | None:
    """(transcript path, session id) to note for this event, or None (other kinds, no path)."""
    path = data.get("transcript_path")
    if kind not in TRANSCRIPT_KINDS or not isinstance(path, str) or not path.startswith("/"):
        return None
    session = data.get("session_id")
    return path[:4096], session[:200] if isinstance(session, str) else None


def record(argv: list[str], raw: bytes) -> None:
    """KIND STORE FAILURES ACTOR [DETAIL], the input JSON: one row in agent_events (and, on the
    kinds in TRANSCRIPT_KINDS, the session's transcript path in agent_transcripts)."""
    kind, store, failures, actor = argv[:4]
    if not is_town_agent(failures, actor):
        count_failure(failures, f"{kind} {actor[:80]!r}: refused: not an agent of this town (no launch settings)")
        return
    data = parse_input(raw)
    tool, detail = event_fields(kind, data, argv[4] if len(argv) > 4 else "")
    transcript = transcript_of(kind, data)
    try:
        conn = sqlite.connect(_uri(store), timeout=BUSY_TIMEOUT_S, isolation_level=None, uri=True)
    except Exception as exc:  # noqa: BLE001 - a missing or unreadable store
        count_failure(failures, f"{kind} {actor}: open {store}: {exc}")
        return
    try:
        conn.execute("PRAGMA synchronous = NORMAL")  # WAL: durable against a crash, no fsync per event
        session = data.get("session_id")
        insert_event(conn, actor, kind, AT, tool, detail, session[:200] if isinstance(session, str) else None)
        if transcript is not None:
            conn.execute(NOTE_TRANSCRIPT, (transcript[0], actor, transcript[1], AT))
    except Exception as exc:  # noqa: BLE001 - busy past the timeout, no table, disk full, ...
        count_failure(failures, f"{kind} {actor}: {exc}")
    finally:
        conn.close()


def main() -> None:
    """The hook: whatever happens, exit 0 with nothing on stdout (Claude Code reads it)."""
    try:
        argv = sys.argv[1:]
        if len(argv) < 4:
            return
        try:
            raw = _read_stdin()
        except Exception:  # noqa: BLE001 - a closed or odd stdin: the event still counts
            raw = b""
        record(argv, raw)
    except BaseException:  # noqa: BLE001 - including KeyboardInterrupt/SystemExit: never fail the agent
        pass
    finally:
        try:
            sys.stdout.flush()
        except Exception:  # noqa: BLE001
            pass
        os._exit(0)  # no interpreter teardown: a few ms saved per event, and the exit code fixed


if __name__ == "__main__":
    main()
