"""What each agent and each bead cost: tokens in and out, and USD.

Two sources, both Claude Code's own records:

- Session transcripts. Every agent-event hook receives its session's `transcript_path`; the
  lean hook (vermas/hookevent.py) notes it in `agent_transcripts` on SessionStart, Stop and
  SessionEnd. A transcript is JSONL; each assistant entry carries `message.id`, `message.model`
  and `message.usage`. Claude Code writes one entry per content block, each with the whole
  message's usage (seen with Claude Code 2.1.332: a text block and a tool_use block of one
  reply are two entries with identical usage), so usage is counted once per message id.
  Reading is incremental: the byte offset read up to is kept per transcript, so a `status`
  reads only what was appended since the last one. A `cost-state` entry (Claude Code's own
  session total, written when a session ends) is kept as `claude_cost_usd`.
- The inspector's `claude -p` calls, recorded in `model_calls` as they are made, with the cost
  Claude's JSON result reported.

Attribution: a transcript's usage belongs to the agent whose hook noted it, and each message to
the bead that agent held when the message was written: `hook_log`, kept by triggers on `issues`
(store.py), says when each bead was hooked to an agent and when it left (unslung, reassigned,
closed), whichever process did it. A polecat keeps its bead from `polecat_done` until it is gone.

Reading is guarded, since the paths come from hook input: a transcript is opened only if its
real path is under one of the agent's Claude config folders (`claude_config_dirs`), opened
O_NONBLOCK and checked with fstat to be a regular file before a byte is read, so a FIFO, a
device or a folder never blocks `cost`, `status` or the dashboard. Such a file is marked refused
(read_offset REFUSED) and reported once, in the report of the refresh that found it (and a log
line); later refreshes skip it. A path outside the folders is never opened but not marked (the
folders come from config and environment, which can change); every report lists both. A line
longer than MAX_READ (one read) is skipped, also reported once, and counting goes on after it.

USD: Claude Code's own figure where it wrote one (an entry's `costUSD`, `claude -p`'s
`total_cost_usd`), else the estimate from vermas.prices (list prices per model family;
`[cost.prices.<family>]` in town.toml overrides them). Reports say which.
"""

from __future__ import annotations

import json
import logging
import operator
import os
import sqlite3
import stat
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, Field

from vermas import prices, timeutil
from vermas.town import Town

MAX_READ = 64 * 1024 * 1024  # one read of a transcript (READS_PER_REFRESH per refresh, the rest next time);
# a line longer than this is skipped (never a reason to stop counting what follows it)
REFUSED = -1  # agent_transcripts.read_offset of a path that is never opened (see the module doc)
log = logging.getLogger("vermas.cost")
UNATTRIBUTED = "(none)"  # the bead key of usage made while the agent held no bead


class CostBy(StrEnum):
    AGENT = "agent"
    BEAD = "bead"


class Tokens(BaseModel):
    """Token counts of one or more model calls."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0

    @property
    def total(self) -> int:
        return self.input_tokens + self.output_tokens + self.cache_read_tokens + self.cache_creation_tokens

    def combine(self, other: Tokens, op: Callable[[int, int], int]) -> Tokens:
        """Field by field: `operator.add` sums two counts, `max` merges two records of one message."""
        return Tokens(**{f: op(getattr(self, f), getattr(other, f)) for f in TOKEN_FIELDS})


TOKEN_FIELDS = tuple(Tokens.model_fields)


class UsageEntry(BaseModel):
    """One assistant message's usage as a transcript records it (counted once per message id)."""

    message_id: str
    model: str
    at: float  # unix seconds (the entry's timestamp)
    session_id: str | None = None
    tokens: Tokens
    reported_cost_usd: float | None = None  # the entry's own `costUSD`, when Claude Code wrote one


class TranscriptChunk(BaseModel):
    """What one read of a transcript's new bytes gave."""

    entries: list[UsageEntry]
    claude_cost_usd: float | None = None  # the last `cost-state` total in the chunk
    consumed: int  # bytes up to and including the last complete line


class HookSpan(BaseModel):
    """One hook_log row: `bead_id` was hooked to (held) or left (not held) the agent at `at`."""

    bead_id: str
    at: float
    held: bool


class ModelCallCost(BaseModel):
    """One inspector `claude -p` call to record (vermas.inspector.pipeline gives these)."""

    role: str
    model: str
    cost_usd: float = 0.0
    tokens: Tokens = Field(default_factory=Tokens)


class CostLine(BaseModel):
    """The cost of one agent or one bead (or of the town: key "total")."""

    key: str
    tokens: Tokens = Field(default_factory=Tokens)
    cost_usd: float = 0.0
    estimated_usd: float = Field(0.0, description="the part of cost_usd from the price table, not from Claude Code")
    messages: int = Field(0, description="assistant messages read from transcripts")
    model_calls: int = Field(0, description="inspector claude -p calls")
    claude_cost_usd: float | None = Field(
        None, description="Claude Code's own session totals (cost-state; includes its side requests), if written")


class CostReport(BaseModel):
    """Cost per agent and per bead, and the town's total."""

    by_agent: list[CostLine]
    by_bead: list[CostLine]
    total: CostLine
    transcripts: int = Field(description="session transcripts known")
    missing_transcripts: int = Field(0, description="noted transcripts whose file is gone")
    refused_transcripts: list[str] = Field(
        default_factory=list, description="noted paths never opened: not a regular file under the agent's Claude "
        "config folder (path: why)")
    problems: list[str] = Field(
        default_factory=list, description="what this refresh found wrong (a path refused, an oversized line "
        "skipped): each reported once, by the refresh that found it")
    note: str = ("USD is Claude Code's own figure where it wrote one, else an estimate from list prices "
                 "per model family (vermas/prices.py; [cost.prices.<family>] in town.toml)")


# -- pure parts -------------------------------------------------------------------------------


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def usage_tokens(usage: dict[str, object]) -> Tokens:
    """Messages API `usage` as Tokens (missing or odd fields count 0)."""
    return Tokens(input_tokens=_int(usage.get("input_tokens")), output_tokens=_int(usage.get("output_tokens")),
                  cache_read_tokens=_int(usage.get("cache_read_input_tokens")),
                  cache_creation_tokens=_int(usage.get("cache_creation_input_tokens")))


def _entry_time(value: object) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return timeutil.parse(value)
    except ValueError:
        return None


def usage_entry(record: dict[str, object]) -> UsageEntry | None:
    """The usage of one transcript line, or None if it is not an assistant message with usage."""
    if record.get("type") != "assistant":
        return None
    message = record.get("message")
    if not isinstance(message, dict):
        return None
    usage, msg_id, at = message.get("usage"), message.get("id"), _entry_time(record.get("timestamp"))
    if not isinstance(usage, dict) or not isinstance(msg_id, str) or not msg_id or at is None:
        return None
    cost = record.get("costUSD")
    session = record.get("sessionId")
    return UsageEntry(message_id=msg_id, model=str(message.get("model") or "unknown"), at=at,
                      session_id=session if isinstance(session, str) else None, tokens=usage_tokens(usage),
                      reported_cost_usd=float(cost) if isinstance(cost, (int, float)) and cost >= 0 else None)


def parse_chunk(data: bytes) -> TranscriptChunk:
    """Usage entries in `data` (new bytes of a transcript), up to its last complete line. Lines
    that cannot hold usage are not parsed (tool results can be megabytes); a damaged line is
    skipped. Entries of one message id are merged: per field the largest count."""
    end = data.rfind(b"\n") + 1
    merged: dict[str, UsageEntry] = {}
    claude_cost: float | None = None
    for line in data[:end].splitlines():
        if b'"usage"' not in line and b'"cost-state"' not in line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict):
            continue
        if record.get("type") == "cost-state":
            total = record.get("totalCostUSD")
            if isinstance(total, (int, float)):
                claude_cost = float(total)
            continue
        entry = usage_entry(record)
        if entry is not None:
            merged[entry.message_id] = merge_entries(merged.get(entry.message_id), entry)
    return TranscriptChunk(entries=list(merged.values()), claude_cost_usd=claude_cost, consumed=end)


def merge_entries(old: UsageEntry | None, new: UsageEntry) -> UsageEntry:
    """Two records of one message: the larger count of each field (a block written before the
    reply finished may carry a partial output count), the first timestamp, any reported cost."""
    if old is None:
        return new
    tokens = old.tokens.combine(new.tokens, max)
    cost = max((c for c in (old.reported_cost_usd, new.reported_cost_usd) if c is not None), default=None)
    return old.model_copy(update={"tokens": tokens, "at": min(old.at, new.at), "reported_cost_usd": cost})


def bead_at(spans: Sequence[HookSpan], at: float) -> str | None:
    """The bead an agent held at time `at`, from its hook_log rows (oldest first): the last row
    at or before `at` if it is a hold; a release (or no row yet) means none."""
    held: str | None = None
    for span in spans:
        if span.at > at:
            break
        if span.held:
            held = span.bead_id
        elif held == span.bead_id:
            held = None
    return held


@dataclass
class _Acc:
    tokens: Tokens
    cost: float = 0.0
    estimated: float = 0.0
    messages: int = 0
    calls: int = 0
    claude: float | None = None

    def add(self, tokens: Tokens, cost: float, estimated: float, messages: int, calls: int) -> None:
        self.tokens = self.tokens.combine(tokens, operator.add)
        self.cost += cost
        self.estimated += estimated
        self.messages += messages
        self.calls += calls

    def line(self, key: str) -> CostLine:
        return CostLine(key=key, tokens=self.tokens, cost_usd=round(self.cost, 6),
                        estimated_usd=round(self.estimated, 6), messages=self.messages, model_calls=self.calls,
                        claude_cost_usd=None if self.claude is None else round(self.claude, 6))


class UsageRow(BaseModel):
    """One counted cost, from either source, as the report adds it up."""

    agent: str
    bead_id: str | None
    model: str
    tokens: Tokens
    reported_cost_usd: float | None  # Claude Code's own figure, or None: estimate it
    model_call: bool = False


def summarize(rows: Iterable[UsageRow], claude_costs: dict[str, float], table: dict[str, prices.ModelPrice],
              transcripts: int = 0, missing: int = 0) -> CostReport:
    """Per agent, per bead and in total (pure: the report of a list of rows)."""
    agents: dict[str, _Acc] = {}
    beads: dict[str, _Acc] = {}
    total = _Acc(Tokens())
    for row in rows:
        t = row.tokens
        estimate = prices.estimate_usd(row.model, t.input_tokens, t.output_tokens, t.cache_read_tokens,
                                       t.cache_creation_tokens, table)
        cost = estimate if row.reported_cost_usd is None else row.reported_cost_usd
        estimated = estimate if row.reported_cost_usd is None else 0.0
        counts = (0, 1) if row.model_call else (1, 0)
        for acc in (agents.setdefault(row.agent, _Acc(Tokens())),
                    beads.setdefault(row.bead_id or UNATTRIBUTED, _Acc(Tokens())), total):
            acc.add(t, cost, estimated, *counts)
    for agent, usd in claude_costs.items():
        acc = agents.setdefault(agent, _Acc(Tokens()))
        acc.claude = (acc.claude or 0.0) + usd
        total.claude = (total.claude or 0.0) + usd

    def ordered(accs: dict[str, _Acc]) -> list[CostLine]:
        return sorted((a.line(k) for k, a in accs.items()), key=lambda c: (-c.cost_usd, c.key))

    return CostReport(by_agent=ordered(agents), by_bead=ordered(beads), total=total.line("total"),
                      transcripts=transcripts, missing_transcripts=missing)


# -- the store --------------------------------------------------------------------------------


def _hook_spans(conn: sqlite3.Connection, agent: str) -> list[HookSpan]:
    return [HookSpan(bead_id=r[0], at=r[1], held=bool(r[2])) for r in conn.execute(
        "SELECT bead_id, at, held FROM hook_log WHERE agent = ? ORDER BY at, seq", (agent,))]


def claude_config_dirs(town: Town, environ: Mapping[str, str] | None = None) -> list[str]:
    """The Claude config folders the town's agents write transcripts under (real paths): the
    town's `[agent] env` CLAUDE_CONFIG_DIR or HOME/.claude, and this process's (agents inherit
    the runner's environment where the town sets neither)."""
    environ = os.environ if environ is None else environ
    dirs: list[str] = []
    for env in (town.config.agent.env, environ):
        if env.get("CLAUDE_CONFIG_DIR"):
            dirs.append(env["CLAUDE_CONFIG_DIR"])
        if env.get("HOME"):
            dirs.append(str(Path(env["HOME"]) / ".claude"))
    return sorted({os.path.realpath(d) for d in dirs if os.path.isabs(d)})


def _under(real: str, roots: Sequence[str]) -> bool:
    return any(real.startswith(root.rstrip(os.sep) + os.sep) for root in roots)


OUTSIDE = "not under the agent's Claude config folder"


def refusal(path: str, roots: Sequence[str]) -> str | None:
    """Why `path` must never be opened as a transcript, or None; only stats, never opens."""
    real = os.path.realpath(path)
    if not _under(real, roots):
        return f"{OUTSIDE} ({', '.join(roots) or 'none known'})"
    try:
        mode = os.stat(real).st_mode
    except OSError:
        return None  # missing (counted as such) or unreadable: tried again next time
    return None if stat.S_ISREG(mode) else "not a regular file"


@dataclass
class _Read:
    data: bytes = b""
    start: int = 0
    missing: bool = False
    refused: str | None = None  # why the path is never to be opened
    capped: bool = False  # the read stopped at MAX_READ
    at_line_start: bool = True  # `start` begins a line (offset 0, or the byte before is a newline)


def _read_new(path: str, offset: int, roots: Sequence[str]) -> _Read:
    """The bytes appended since `offset` (from 0 again if the file shrank), and where they
    start; never blocks: the real path must be under `roots`, and the file is opened O_NONBLOCK
    and checked with fstat to be a regular file before anything is read."""
    real = os.path.realpath(path)
    if not _under(real, roots):
        return _Read(refused=refusal(path, roots))
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return _Read(missing=True)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return _Read(refused="not a regular file")
        size = info.st_size
        if size < offset:
            offset = 0  # rewritten: read it again (usage is keyed by message id, so nothing doubles)
        if size == offset:
            return _Read(start=offset)
        want = min(size - offset, MAX_READ)
        at_line_start = offset == 0 or os.pread(fd, 1, offset - 1) == b"\n"
        chunks, got = [], 0
        while got < want:
            chunk = os.pread(fd, want - got, offset + got)
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        return _Read(data=b"".join(chunks), start=offset, capped=want == MAX_READ, at_line_start=at_line_start)
    except OSError:
        return _Read(missing=True)
    finally:
        os.close(fd)


UPSERT_USAGE = """
INSERT INTO usage_records(message_id, agent, session_id, bead_id, model, at, input_tokens, output_tokens,
    cache_read_tokens, cache_creation_tokens, reported_cost_usd) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT(message_id) DO UPDATE SET
    input_tokens = max(input_tokens, excluded.input_tokens),
    output_tokens = max(output_tokens, excluded.output_tokens),
    cache_read_tokens = max(cache_read_tokens, excluded.cache_read_tokens),
    cache_creation_tokens = max(cache_creation_tokens, excluded.cache_creation_tokens),
    reported_cost_usd = coalesce(excluded.reported_cost_usd, reported_cost_usd)
"""


def refresh(town: Town, problems: list[str] | None = None) -> int:
    """Read what every known transcript appended since the last refresh into usage_records;
    returns how many messages were read. Files are read outside any transaction; the offset is
    then moved compare-and-set, so two processes refreshing at once never count a chunk twice.
    What it finds wrong (a path refused, an oversized line skipped) is logged and appended to
    `problems`, once: a refused path is never read again, a skipped line is passed."""
    with town.db.read() as conn:
        known = [(r[0], r[1], r[2]) for r in conn.execute(
            "SELECT path, agent, read_offset FROM agent_transcripts WHERE read_offset >= 0 ORDER BY seen_at")]
    roots = claude_config_dirs(town)
    read = 0
    for path, agent, offset in known:
        for _ in range(READS_PER_REFRESH):  # a capped read (more to come): read on, a few times at most
            counted, read_on = _refresh_one(town, path, agent, offset, roots, problems)
            read += counted
            if read_on is None:
                break
            offset = read_on
    return read


READS_PER_REFRESH = 4  # MAX_READ reads of one transcript per refresh (so a skipped line's rest is read too)


def _refresh_one(town: Town, path: str, agent: str, offset: int, roots: Sequence[str],
                 problems: list[str] | None) -> tuple[int, int | None]:
    """One read of one transcript: (messages counted, the offset to read on from when the read
    stopped at MAX_READ, else None)."""
    got = _read_new(path, offset, roots)
    if got.refused is not None:
        if got.refused.startswith(OUTSIDE):
            return 0, None  # never opened, but not marked: the folders come from config and environment
        if _refuse(town, path, offset):
            _problem(problems, f"transcript {path} of {agent} refused: {got.refused}")
        return 0, None
    if got.missing or not got.data:
        if not got.missing and got.start != offset:  # shrank to exactly the old start: note the reset
            _store_chunk(town, path, agent, offset, got.start, TranscriptChunk(entries=[], consumed=0))
        return 0, None
    chunk = parse_chunk(got.data)
    if chunk.consumed == 0:
        if not got.capped:
            return 0, None  # a line still being written
        # No line end in MAX_READ bytes: skip them (the line's rest, read next, fails to parse and
        # is skipped as a damaged line); reported once, where the line starts.
        skipped = TranscriptChunk(entries=[], consumed=len(got.data))
        if not _store_chunk(town, path, agent, offset, got.start, skipped):
            return 0, None
        if got.at_line_start:
            _problem(problems, f"transcript {path} of {agent}: a line over {MAX_READ} bytes at byte {got.start} "
                     "skipped (usage after it is still counted)")
        return 0, got.start + len(got.data)
    if _store_chunk(town, path, agent, offset, got.start, chunk):
        return len(chunk.entries), got.start + chunk.consumed if got.capped else None
    return 0, None


def _problem(problems: list[str] | None, text: str) -> None:
    log.warning("%s", text)
    if problems is not None:
        problems.append(text)


def _refuse(town: Town, path: str, expected: int) -> bool:
    """Mark a transcript path never to be opened (compare-and-set: one refresh reports it)."""
    with town.db.write() as conn:
        return conn.execute("UPDATE agent_transcripts SET read_offset = ? WHERE path = ? AND read_offset = ?",
                            (REFUSED, path, expected)).rowcount == 1


def _store_chunk(town: Town, path: str, agent: str, expected: int, start: int, chunk: TranscriptChunk) -> bool:
    with town.db.write() as conn:
        row = conn.execute("SELECT read_offset FROM agent_transcripts WHERE path = ?", (path,)).fetchone()
        if row is None or row[0] != expected:
            return False  # another refresh got there first
        spans = _hook_spans(conn, agent)
        for e in chunk.entries:
            t = e.tokens
            conn.execute(UPSERT_USAGE, (e.message_id, agent, e.session_id, bead_at(spans, e.at), e.model, e.at,
                                        t.input_tokens, t.output_tokens, t.cache_read_tokens,
                                        t.cache_creation_tokens, e.reported_cost_usd))
        conn.execute("UPDATE agent_transcripts SET read_offset = ?, claude_cost_usd = coalesce(?, claude_cost_usd) "
                     "WHERE path = ?", (start + chunk.consumed, chunk.claude_cost_usd, path))
    return True


def record_model_calls(town: Town, agent: str, bead_id: str | None, calls: Sequence[ModelCallCost]) -> None:
    """The inspector's `claude -p` calls for a bead, with what Claude reported they cost."""
    if not calls:
        return
    _, now = timeutil.now()
    with town.db.write() as conn:
        for c in calls:
            t = c.tokens
            conn.execute(
                "INSERT INTO model_calls(at, agent, bead_id, role, model, cost_usd, input_tokens, output_tokens, "
                "cache_read_tokens, cache_creation_tokens) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (now, agent, bead_id, c.role, c.model, c.cost_usd, t.input_tokens, t.output_tokens,
                 t.cache_read_tokens, t.cache_creation_tokens))


def _tokens(row: sqlite3.Row, first: int) -> Tokens:
    return Tokens(**{f: int(row[first + i]) for i, f in enumerate(TOKEN_FIELDS)})


def usage_rows(conn: sqlite3.Connection) -> list[UsageRow]:
    """Every counted cost in the store: transcript messages, then inspector calls."""
    rows = [UsageRow(agent=r[0], bead_id=r[1], model=r[2], tokens=_tokens(r, 3), reported_cost_usd=r[7])
            for r in conn.execute(
                "SELECT agent, bead_id, model, input_tokens, output_tokens, cache_read_tokens, "
                "cache_creation_tokens, reported_cost_usd FROM usage_records")]
    rows += [UsageRow(agent=r[0], bead_id=r[1], model=r[2], tokens=_tokens(r, 3), reported_cost_usd=r[7],
                      model_call=True)
             for r in conn.execute(
                 "SELECT agent, bead_id, model, input_tokens, output_tokens, cache_read_tokens, "
                 "cache_creation_tokens, cost_usd FROM model_calls")]
    return rows


def cost_report(town: Town, *, read_transcripts: bool = True) -> CostReport:
    """Cost per agent and per bead (reading new transcript lines first, unless told not to)."""
    found: list[str] = []
    if read_transcripts:
        refresh(town, found)
    with town.db.read() as conn:
        rows = usage_rows(conn)
        transcripts = [(r[0], r[1], r[2], r[3]) for r in conn.execute(
            "SELECT path, agent, claude_cost_usd, read_offset FROM agent_transcripts")]
    claude: dict[str, float] = {}
    for _, agent, usd, _ in transcripts:
        if usd is not None:
            claude[agent] = claude.get(agent, 0.0) + float(usd)
    roots = claude_config_dirs(town)
    why = {path: refusal(path, roots) for path, _, _, _ in transcripts}
    refused = [f"{path}: {why[path] or 'not a regular file when read'}" for path, _, _, offset in transcripts
               if offset == REFUSED or (why[path] or "").startswith(OUTSIDE)]
    missing = sum(1 for path, _, _, offset in transcripts
                  if offset != REFUSED and why[path] is None and not os.path.exists(path))
    report = summarize(rows, claude, town.config.cost.table(), len(transcripts), missing)
    return report.model_copy(update={"refused_transcripts": refused, "problems": found})


def agent_cost(report: CostReport, agent: str) -> CostLine | None:
    """One agent's line of a report (for views that show cost beside each agent)."""
    return next((line for line in report.by_agent if line.key == agent), None)
