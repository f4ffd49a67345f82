"""Import bd JSONL (both bd eras) into the store: upsert by id, newer `updated_at` wins.

Accepts lines with or without `"_type"`, local-offset or UTC timestamps, int or string
comment ids; skips tombstones and non-issue lines; ignores unknown fields.

Every record passes the same checks as the tools (vermas/validate.py, vermas/ids.py,
addresses, the dependency rules of beads.dep_add) before anything of it is written, so an
import cannot put into the store what no tool would accept. A bad record is reported as
`line N: field: what is allowed` and nothing from it is written; by default the other lines
still land (`skip_bad=True`, the CLI's default), otherwise the whole file is refused. A
damaged file (a line that is not UTF-8 or not a JSON object, e.g. a truncated last line) is
always refused whole: such a line cannot even be attributed to a bead, so importing the rest
could silently lose a newer version or a tombstone of it.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from vermas import ids, timeutil, validate
from vermas.addresses import NAME_RE, parse_address
from vermas.beads import _reaches  # the tools' cycle rule (dep_add), one definition
from vermas.errors import InvalidInput
from vermas.town import Town

TEXT_FIELDS = ("description", "design", "acceptance_criteria", "notes", "close_reason")
FREE_TEXT_FIELDS = ("owner", "created_by", "external_ref")  # bd's free text (emails, names)
MAX_COMMENT_ID = 2**63 - 1  # SQLite's INTEGER
MAX_COMMENT_ID_CHARS = 64
CYCLE_DEP_TYPES = validate.BLOCKING_DEP_TYPES + ("parent-child",)
MAX_LISTED_PROBLEMS = 20  # in a refusal message; the report lists every one


class LineProblem(BaseModel):
    """Why one line of the file was not imported."""

    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.field}: {self.message}"


class ImportReport(BaseModel):
    lines: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped_older: int = 0
    tombstones: int = 0
    other: int = 0
    skipped_bad: int = 0
    problems: list[LineProblem] = []


class BadField(Exception):
    """One field of one record breaks a rule; becomes a LineProblem."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field_name = field_name
        self.message = message


@dataclass
class Record:
    """A checked bd record, ready to write: nothing here can fail a rule any more."""

    lineno: int
    row: dict[str, Any]
    labels: list[str]
    deps: list[tuple[str, str, str, str | None]]  # (target, type, created_at, created_by)
    comments: list[tuple[int | str, str | None, str, str]] = field(default_factory=list)

    @property
    def bead_id(self) -> str:
        return str(self.row["id"])


# ---- checks (pure) --------------------------------------------------------------------------


def _rule(field_name: str, check: Any, *args: Any) -> Any:
    """Run a validate.* check, naming the record's field when it fails."""
    try:
        return check(*args)
    except InvalidInput as exc:
        raise BadField(field_name, str(exc)) from exc


def _bad_text(value: Any) -> tuple[str, str] | None:
    """(path, character) of the first string, key or value, that is not valid Unicode (a lone
    surrogate from a `\\ud800` escape), which SQLite and UTF-8 exports cannot hold."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:  # iterative: json.loads nests deeper than a recursive walk may
        path, item = stack.pop()
        if isinstance(item, dict):
            for key, sub in item.items():
                stack.append((f"{path}.{key}" if path else str(key), key))
                stack.append((f"{path}.{key}" if path else str(key), sub))
        elif isinstance(item, list):
            stack.extend((f"{path}[{n}]", sub) for n, sub in enumerate(item))
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as exc:
                shown = (path or "(record)").encode("utf-8", "backslashreplace").decode("utf-8")
                return shown, f"U+{ord(item[exc.start]):04X}"
    return None


def _stamp(value: Any, field_name: str, required: bool = False) -> tuple[str, float] | None:
    if value in (None, "") and not required:
        return None
    try:
        if not isinstance(value, str):
            raise ValueError(value)
        return value, timeutil.parse(value)
    except (ValueError, OverflowError, OSError) as exc:
        shown = "missing" if value in (None, "") else f"{str(value)[:40]!r} is not valid"
        raise BadField(field_name, f"{shown}; allowed: an RFC 3339 timestamp such as "
                                   "2026-01-12T02:16:51Z") from exc


def _free_text(value: Any, field_name: str) -> str | None:
    return _rule(field_name, validate.body, value, field_name) or None


def _assignee(value: Any, status: str) -> str | None:
    """An address, as bead_update requires; bd's plain user names ("bob") stay allowed on a
    bead that is not hooked, since nothing acts on them. A hooked bead's assignee is the
    agent the runner drives, so it must be an address."""
    if value in (None, ""):
        return None
    if isinstance(value, str) and status != "hooked" and NAME_RE.fullmatch(value):
        return value
    try:
        parse_address(value)
    except InvalidInput as exc:
        extra = "" if status == "hooked" else (
            "; or, on a bead that is not hooked, a bd user name (1-32 of a-z, 0-9, _ and -)")
        raise BadField("assignee", f"{exc}{extra}") from exc
    return str(value)


def _title(value: Any) -> str:
    """The tools' title rule. Surrounding whitespace is what bead_create strips, so it is
    checked without it, and kept as bd wrote it (a re-export must match bd's file)."""
    _rule("title", validate.title, value.strip() if isinstance(value, str) else value)
    return str(value)


def _dependencies(value: Any, bead_id: str, created_at: str) -> list[tuple[str, str, str, str | None]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadField("dependencies", "must be a list of objects with depends_on_id and type")
    out: dict[str, tuple[str, str, str, str | None]] = {}
    for n, dep in enumerate(value):
        where = f"dependencies[{n}]"
        if not isinstance(dep, dict):
            raise BadField(where, "must be an object with depends_on_id and type")
        if dep.get("issue_id") not in (None, bead_id):
            raise BadField(f"{where}.issue_id", f"{str(dep['issue_id'])[:60]!r} is not this line's id {bead_id!r}")
        target = _rule(f"{where}.depends_on_id", validate.bead_id, dep.get("depends_on_id"), "depends_on_id")
        dep_type = _rule(f"{where}.type", validate.choice, dep.get("type") or "blocks", "type", validate.DEP_TYPES)
        if target == bead_id:
            raise BadField(f"{where}.depends_on_id", "a bead cannot depend on itself; allowed: another bead's id")
        stamp = _stamp(dep.get("created_at"), f"{where}.created_at")
        by = _free_text(dep.get("created_by"), f"{where}.created_by")
        if target in out:  # the store holds one dependency per pair of beads
            if out[target][1] != dep_type:
                raise BadField(f"{where}.type", f"{bead_id} already depends on {target} as {out[target][1]!r}; "
                                                "allowed: one dependency type per pair of beads")
            continue  # the same dependency twice: keep the first
        out[target] = (target, dep_type, stamp[0] if stamp else created_at, by)
    return list(out.values())


def _comments(value: Any, created_at: str) -> list[tuple[int | str, str | None, str, str]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadField("comments", "must be a list of objects with text")
    out: list[tuple[int | str, str | None, str, str]] = []
    seen: set[tuple[str, int | str]] = set()
    for n, comment in enumerate(value, start=1):
        where = f"comments[{n - 1}]"
        if not isinstance(comment, dict):
            raise BadField(where, "must be an object with text (and optional id, author, created_at)")
        cid = comment.get("id", n)
        valid_int = isinstance(cid, int) and not isinstance(cid, bool) and 0 <= cid <= MAX_COMMENT_ID
        if not valid_int and not (isinstance(cid, str) and 0 < len(cid) <= MAX_COMMENT_ID_CHARS):
            raise BadField(f"{where}.id", f"{str(cid)[:40]!r} is not allowed; allowed: a non-negative integer "
                                          f"or a string of 1-{MAX_COMMENT_ID_CHARS} characters")
        if (type(cid).__name__, cid) in seen:
            raise BadField(f"{where}.id", f"{cid!r} is used by an earlier comment; allowed: one id per comment")
        seen.add((type(cid).__name__, cid))
        stamp = _stamp(comment.get("created_at"), f"{where}.created_at")
        out.append((cid, _free_text(comment.get("author"), f"{where}.author"),
                    _rule(f"{where}.text", validate.body, comment.get("text"), "text"),
                    stamp[0] if stamp else created_at))
    return out


def check_record(rec: dict[str, Any], lineno: int) -> Record:
    """The record as it will be stored, or BadField naming the first rule it breaks."""
    bad = _bad_text(rec)
    if bad is not None:
        raise BadField(bad[0], f"holds a lone surrogate ({bad[1]}); allowed: valid Unicode text")
    bead_id = _rule("id", validate.bead_id, rec.get("id"), "id")
    created_at, created_ts = _stamp(rec.get("created_at"), "created_at", required=True) or ("", 0.0)
    updated = _stamp(rec.get("updated_at"), "updated_at")
    updated_at, updated_ts = updated or (created_at, created_ts)
    status = _rule("status", validate.choice, rec.get("status"), "status", validate.STATUSES)
    closed = _stamp(rec.get("closed_at"), "closed_at")
    started = _stamp(rec.get("started_at"), "started_at")
    ephemeral = rec.get("ephemeral")
    if ephemeral is not None and not isinstance(ephemeral, bool):
        raise BadField("ephemeral", f"{str(ephemeral)[:20]!r} is not allowed; allowed: true or false")
    row: dict[str, Any] = {
        "id": bead_id, "title": _title(rec.get("title")), "status": status,
        "priority": _rule("priority", validate.priority, rec.get("priority", 2)),
        "issue_type": _rule("issue_type", validate.choice, rec.get("issue_type") or "task", "issue_type",
                            validate.ALL_TYPES),
        "created_at": created_at, "created_ts": created_ts, "updated_at": updated_at, "updated_ts": updated_ts,
        "closed_at": (closed[0] if closed else updated_at) if status == "closed" else None,
        "ephemeral": int(bool(ephemeral)), "assignee": _assignee(rec.get("assignee"), status),
        "started_at": started[0] if started else None,
    }
    for key in TEXT_FIELDS:
        row[key] = _rule(key, validate.body, rec.get(key), key)
    row["close_reason"] = row["close_reason"] or None
    for key in FREE_TEXT_FIELDS:
        row[key] = _free_text(rec.get(key), key)
    return Record(lineno, row, _rule("labels", validate.labels, rec.get("labels")),
                  _dependencies(rec.get("dependencies"), bead_id, created_at),
                  _comments(rec.get("comments"), created_at))


# ---- reading the file -----------------------------------------------------------------------


def _damaged(lineno: int, what: str) -> InvalidInput:
    return InvalidInput(f"line {lineno}: {what}; the file is damaged, so nothing was imported")


def _parse(line: str, lineno: int, last: bool) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        cut = " (the last line looks cut short)" if last and exc.pos >= len(line.rstrip()) else ""
        raise _damaged(lineno, f"not JSON ({exc.msg} at column {exc.colno}){cut}") from exc
    except RecursionError as exc:
        raise _damaged(lineno, "JSON nested too deeply") from exc


def _read_lines(path: Path) -> list[str]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}") from exc
    return split_lines(data)


def split_lines(data: bytes) -> list[str]:
    """A file's lines, split on '\\n' only (str.splitlines would also split inside a JSON
    string at U+2028 or \\x85); a line that is not UTF-8 refuses the file."""
    lines = []
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        try:
            lines.append(raw.removesuffix(b"\r").decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise _damaged(lineno, f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at byte {exc.start + 1} of the "
                                   "line); allowed: UTF-8 JSON lines") from exc
    return lines


# ---- writing --------------------------------------------------------------------------------


def _check_cycles(conn: sqlite3.Connection, rec: Record) -> None:
    """Refuse what beads.dep_add refuses: a blocking or parent-child link that closes a loop
    (an imported parent-child cycle would leave `ready` with no answer to give)."""
    for n, (target, dep_type, _, _) in enumerate(rec.deps):
        if dep_type in CYCLE_DEP_TYPES and _reaches(conn, target, rec.bead_id):
            raise BadField(f"dependencies[{n}]", f"{rec.bead_id} -> {target} ({dep_type}) would make a cycle: "
                                                 f"{target} already depends on {rec.bead_id}; allowed: no cycles "
                                                 "of blocking or parent-child dependencies")


def _upsert(conn: sqlite3.Connection, rec: Record, report: ImportReport) -> None:
    bead_id = rec.bead_id
    existing = conn.execute("SELECT updated_ts FROM issues WHERE id = ?", (bead_id,)).fetchone()
    if existing is not None and existing[0] >= rec.row["updated_ts"]:
        report.unchanged += existing[0] == rec.row["updated_ts"]
        report.skipped_older += existing[0] > rec.row["updated_ts"]
        return
    conn.execute("DELETE FROM dependencies WHERE issue_id = ?", (bead_id,))
    _check_cycles(conn, rec)
    cols = ", ".join(rec.row)
    conn.execute(f"INSERT OR REPLACE INTO issues ({cols}) VALUES ({', '.join('?' * len(rec.row))})",
                 tuple(rec.row.values()))
    if existing is None:
        ids.bump_prefix(conn, ids.prefix_of(bead_id))
        report.created += 1
    else:
        report.updated += 1
    conn.execute("DELETE FROM labels WHERE issue_id = ?", (bead_id,))
    conn.executemany("INSERT INTO labels(issue_id, label) VALUES (?, ?)", [(bead_id, lb) for lb in rec.labels])
    conn.executemany("INSERT INTO dependencies(issue_id, depends_on_id, type, created_at, created_by) "
                     "VALUES (?,?,?,?,?)", [(bead_id, *dep) for dep in rec.deps])
    conn.execute("DELETE FROM comments WHERE issue_id = ?", (bead_id,))
    conn.executemany("INSERT INTO comments(issue_id, id, author, text, created_at) VALUES (?,?,?,?,?)",
                     [(bead_id, *c) for c in rec.comments])


def _write_line(conn: sqlite3.Connection, rec: Record, report: ImportReport) -> LineProblem | None:
    """Upsert one record in a savepoint, so a rule broken mid-write leaves nothing of it."""
    conn.execute("SAVEPOINT import_line")
    try:
        _upsert(conn, rec, report)
    except BadField as exc:
        conn.execute("ROLLBACK TO import_line")
        conn.execute("RELEASE import_line")
        return LineProblem(line=rec.lineno, field=exc.field_name, message=exc.message)
    conn.execute("RELEASE import_line")
    return None


def _refusal(problems: list[LineProblem]) -> InvalidInput:
    shown = "\n".join(f"  {p}" for p in problems[:MAX_LISTED_PROBLEMS])
    more = len(problems) - MAX_LISTED_PROBLEMS
    tail = f"\n  ... and {more} more" if more > 0 else ""
    return InvalidInput(f"{len(problems)} bad line(s); nothing was imported:\n{shown}{tail}")


def _check_prefix(rec: Record, prefix: str | None) -> None:
    """A rig's file holds the rig's beads: an id is routed by the route whose prefix it starts
    with (routes.jsonl, `<prefix>-`, as bd routes), so a bead of another prefix imported from it
    would belong to another rig or to none."""
    if prefix is not None and not rec.bead_id.startswith(prefix + "-"):
        raise BadField("id", f"{rec.bead_id[:60]!r} does not route to this rig; allowed: ids starting with "
                             f"this rig's prefix {prefix + '-'!r}")


def import_lines(town: Town, lines: list[str], *, skip_bad: bool = False, prefix: str | None = None) -> ImportReport:
    """Import the lines; with skip_bad, bad records are reported and skipped, else refused.
    With prefix, only beads whose id has that prefix are accepted (a rig's own file)."""
    report = ImportReport()
    records: list[Record] = []
    last = max((n for n, line in enumerate(lines, start=1) if line.strip()), default=0)
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        report.lines += 1
        rec = _parse(line, lineno, lineno == last)
        if not isinstance(rec, dict):
            raise _damaged(lineno, "not a JSON object")
        if rec.get("_type", "issue") != "issue":
            report.other += 1
        elif rec.get("status") == "tombstone":
            report.tombstones += 1
        else:
            try:
                checked = check_record(rec, lineno)
                _check_prefix(checked, prefix)
                records.append(checked)
            except BadField as exc:
                report.problems.append(LineProblem(line=lineno, field=exc.field_name, message=exc.message))
    if report.problems and not skip_bad:
        raise _refusal(report.problems)
    with town.db.write() as conn:
        for rec in records:
            problem = _write_line(conn, rec, report)
            if problem is not None:
                report.problems.append(problem)
        if report.problems and not skip_bad:
            raise _refusal(report.problems)
        if report.created or report.updated:
            town.db.touch("issues")
    report.problems.sort(key=lambda p: p.line)
    report.skipped_bad = len(report.problems)
    return report


def import_file(town: Town, path: Path, *, skip_bad: bool = False) -> ImportReport:
    return import_lines(town, _read_lines(path), skip_bad=skip_bad)
