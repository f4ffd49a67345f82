"""Agent events: the direct evidence of what each agent's session is doing.

Two writers: Claude Code's own hooks in every session (vermas/hookevent.py, run by the hooks
vermas.agents.settings_for generates) and every vermas MCP tool call by an actor
(vermas_mcp/registry.py). Both use `hookevent.insert_event`, so one statement and one
retention rule (the newest KEEP_PER_AGENT events of each agent) hold for all rows.

Readers: the patrols (latest event per agent: what it is doing and since when), `status`,
and `vermas-runner events`.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import time
from enum import StrEnum

from pydantic import BaseModel, computed_field

from vermas import hookevent, validate
from vermas.addresses import parse_address
from vermas.town import Town


class EventKind(StrEnum):
    """An event's kind: the Claude Code hook that fired, or TOOL for a vermas MCP tool call."""

    SESSION_START = "SessionStart"
    USER_PROMPT_SUBMIT = "UserPromptSubmit"
    PRE_TOOL_USE = "PreToolUse"
    POST_TOOL_USE = "PostToolUse"
    POST_TOOL_USE_FAILURE = "PostToolUseFailure"  # a failed tool ends it too (PostToolUse does not fire)
    STOP = "Stop"
    STOP_FAILURE = "StopFailure"  # a turn ended by an API error
    NOTIFICATION = "Notification"  # detail: permission_prompt, idle_prompt, elicitation_dialog
    SESSION_END = "SessionEnd"
    TOOL = "tool"  # a vermas MCP tool call by the agent (tool: its name)


HOOK_KINDS: tuple[EventKind, ...] = tuple(k for k in EventKind if k is not EventKind.TOOL)
KINDS: tuple[str, ...] = tuple(k.value for k in EventKind)
MAX_LIST = 100_000


class AgentEvent(BaseModel):
    id: int
    agent: str
    kind: str
    at: float  # unix seconds
    tool: str | None = None
    detail: str = ""

    @computed_field  # type: ignore[prop-decorator]
    @property
    def time(self) -> str:
        """`at` in RFC 3339 UTC with milliseconds (for people and scripts)."""
        return dt.datetime.fromtimestamp(self.at, dt.timezone.utc).isoformat(timespec="milliseconds")

    @property
    def label(self) -> str:
        """One word for tables: `tool:<name>`, `Notification:<type>`, `PreToolUse:<tool>`."""
        if self.kind == EventKind.TOOL:
            return f"tool:{self.tool}"
        suffix = self.tool or self.detail
        return f"{self.kind}:{suffix}" if suffix else self.kind


_COLUMNS = "id, agent, kind, at, tool, detail"


def _event(row: sqlite3.Row | tuple[object, ...]) -> AgentEvent:
    return AgentEvent(id=row[0], agent=row[1], kind=row[2], at=row[3], tool=row[4], detail=row[5] or "")


def record(town: Town, agent: str, kind: EventKind | str, tool: str | None = None, detail: str = "",
           at: float | None = None) -> None:
    """Append one event in its own short write (the MCP layer's path; hooks write directly)."""
    with town.db.write() as conn:
        hookevent.insert_event(conn, agent, str(kind), time.time() if at is None else at, tool, detail)


def tool_called(town: Town, actor: str, name: str) -> None:
    """A vermas MCP tool call by `actor` is activity: one TOOL event, recorded before the call
    runs (a call that blocks for seconds is activity from its start). Never fails the call: a
    store that cannot take the row is counted in the hook failure log, as a hook's would be."""
    try:
        record(town, actor, EventKind.TOOL, tool=name)
    except Exception as exc:  # noqa: BLE001 - evidence is best effort; the tool call is what matters
        hookevent.count_failure(str(town.layout.hook_failures), f"tool:{name} {actor}: {exc}")


def latest(town: Town, agents: list[str] | None = None) -> dict[str, AgentEvent]:
    """Each agent's newest event. Given agents: one index lookup each (the patrol's path);
    None: every agent that has events."""
    with town.db.read() as conn:
        if agents is None:
            agents = [r[0] for r in conn.execute("SELECT DISTINCT agent FROM agent_events")]
        found: dict[str, AgentEvent] = {}
        for agent in agents:
            row = conn.execute(f"SELECT {_COLUMNS} FROM agent_events WHERE agent = ? "
                               "ORDER BY at DESC, id DESC LIMIT 1", (agent,)).fetchone()
            if row is not None:
                found[agent] = _event(row)
    return found


def list_events(town: Town, agent: str | None = None, kind: str | None = None, after_id: int | None = None,
                limit: int = 200) -> list[AgentEvent]:
    """Events oldest first: the newest `limit` matching ones, or (after_id given, for --follow)
    the first `limit` with a larger id. A bad agent, kind or limit is InvalidInput naming
    what is allowed."""
    where, params = [], []
    if agent is not None:
        where.append("agent = ?")
        params.append(str(parse_address(agent)))
    if kind is not None:
        where.append("kind = ?")
        params.append(validate.choice(kind, "event kind", KINDS))
    limit = validate.limit(limit, MAX_LIST)
    if after_id is not None:
        where.append(f"id > {int(after_id)}")
    order = "DESC" if after_id is None else "ASC"
    sql = (f"SELECT {_COLUMNS} FROM agent_events {'WHERE ' + ' AND '.join(where) if where else ''} "
           f"ORDER BY id {order} LIMIT {limit}")
    with town.db.read() as conn:
        rows = [_event(r) for r in conn.execute(sql, params)]
    return rows[::-1] if after_id is None else rows


def hook_failures(town: Town) -> int:
    """How many hook runs could not record their event (one line each in the failure log)."""
    try:
        with town.layout.hook_failures.open("rb") as fh:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 16), b""))
    except FileNotFoundError:
        return 0
