"""Durable mail between agent addresses.

Each message has one recipient and its own read and ack state, so reading an inbox never
consumes anything: `mail_read` marks read, `mail_ack` says "handled". A retried send with
the same idempotency key and the same message returns the first message instead of creating
a second; the same key with a different recipient, subject, body or reply_to is a Conflict.
"""

from __future__ import annotations

import enum
import sqlite3
from dataclasses import dataclass

from pydantic import BaseModel

from vermas import ids, permissions, timeutil, validate
from vermas.addresses import Address, parse_address
from vermas.errors import Conflict, Forbidden, InvalidInput, NotFound
from vermas.permissions import Action, Target
from vermas.protocol import ProtocolKind, kind_of
from vermas.store import Database
from vermas.town import Town
from vermas.twins import twin

PROTOCOL_SUBJECTS = tuple(k.value for k in ProtocolKind)
MAX_SUBJECT_CHARS = 500
MAX_KEY_CHARS = 200
PREVIEW_CHARS = 2000
MAX_INBOX = 1000

COLUMNS = (
    "id, sender, recipient, subject, kind, body, reply_to, thread_id, created_at, read_at, acked_at"
)


class Message(BaseModel):
    id: str
    sender: str
    to: str
    subject: str
    kind: str | None = None
    body: str = ""
    body_truncated: bool = False
    reply_to: str | None = None
    thread_id: str
    created_at: str
    read_at: str | None = None
    acked_at: str | None = None


class AckState(BaseModel):
    id: str
    to: str
    read_at: str | None
    acked_at: str | None
    acked: bool


def _message(row: sqlite3.Row, preview: bool = False) -> Message:
    data = dict(row)
    data["to"] = data.pop("recipient")
    body = data["body"]
    if preview and len(body) > PREVIEW_CHARS:
        data["body"] = body[:PREVIEW_CHARS]
        data["body_truncated"] = True
    return Message(**data)


def protocol_kind(subject: str) -> str | None:
    """The protocol word a subject starts with (`POLECAT_DONE nux` -> POLECAT_DONE); see
    vermas.protocol for the typed messages."""
    kind = kind_of(subject)
    return kind.value if kind else None


def _validate_id(message_id: object) -> str:
    if not isinstance(message_id, str) or not message_id.startswith("msg-") or len(message_id) > 40 \
            or not message_id[4:].isalnum():
        raise InvalidInput(f"invalid message_id {str(message_id)[:60]!r}: ids look like 'msg-' + base36")
    return message_id


def send_in_txn(
    conn: sqlite3.Connection,
    db: Database,
    sender: str,
    to: str,
    subject: str,
    body: str = "",
    reply_to: str | None = None,
    idempotency_key: str | None = None,
) -> Message:
    """Send inside the caller's transaction (so polecat_done's mail commits with its MR)."""
    if idempotency_key is not None:
        row = conn.execute(
            f"SELECT {COLUMNS} FROM messages WHERE sender = ? AND idempotency_key = ?",
            (sender, idempotency_key),
        ).fetchone()
        if row is not None:
            return _same_send(row, idempotency_key, to, subject, body, reply_to)
    thread_id = None
    if reply_to is not None:
        parent = conn.execute("SELECT thread_id FROM messages WHERE id = ?", (reply_to,)).fetchone()
        if parent is None:
            raise NotFound(f"reply_to names no message {reply_to!r}")
        thread_id = parent[0]
    message_id = ids.new_message_id(f"{sender}{to}{subject}")
    stamp, ts = timeutil.now()
    conn.execute(
        "INSERT INTO messages (id, sender, recipient, subject, kind, body, reply_to, thread_id, "
        "idempotency_key, created_at, created_ts) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        (message_id, sender, to, subject, protocol_kind(subject), body, reply_to,
         thread_id or message_id, idempotency_key, stamp, ts),
    )
    db.touch("messages")
    return Message(id=message_id, sender=sender, to=to, subject=subject, kind=protocol_kind(subject),
                   body=body, reply_to=reply_to, thread_id=thread_id or message_id, created_at=stamp)


def send_unless_unread(town: Town, actor: Address, to: str, subject: str, body: str = "") -> tuple[Message, bool]:
    """Send, unless the same message from the same sender still waits unread for `to`: then that
    one, and False. A reminder repeated while nobody read the first (a nudge queued on every
    retry) is one message, not a pile; once read, the next one is new. One transaction."""
    recipient = str(parse_address(to))
    body = validate.body(body, "body")
    with town.db.write() as conn:
        row = conn.execute(
            f"SELECT {COLUMNS} FROM messages WHERE recipient = ? AND sender = ? AND subject = ? AND body = ? "
            "AND read_at IS NULL ORDER BY created_ts LIMIT 1", (recipient, str(actor), subject, body)).fetchone()
        if row is not None:
            return _message(row), False
        return send_in_txn(conn, town.db, str(actor), recipient, subject, body), True


def _same_send(row: sqlite3.Row, key: str, to: str, subject: str, body: str,
               reply_to: str | None) -> Message:
    """A retried send (same key, same message) gets the first message back; the same key
    for a different message is a caller's mistake that must not pass as delivered."""
    sent = {"to": row["recipient"], "subject": row["subject"], "body": row["body"], "reply_to": row["reply_to"]}
    asked = {"to": to, "subject": subject, "body": body, "reply_to": reply_to}
    differs = [name for name in sent if sent[name] != asked[name]]
    if differs:
        raise Conflict(
            f"idempotency_key {key[:60]!r} was already used for message {row['id']} with a different "
            f"{', '.join(differs)}; nothing was sent. Reuse a key only to retry the same message; "
            "use a new key for a new message"
        )
    return _message(row)


def send(
    town: Town,
    actor: Address,
    to: str,
    subject: str,
    body: str = "",
    reply_to: str | None = None,
    idempotency_key: str | None = None,
) -> Message:
    recipient = str(parse_address(to))
    if not isinstance(subject, str) or not subject.strip():
        raise InvalidInput(
            "subject must be non-empty text; protocol subjects start with one of "
            + ", ".join(PROTOCOL_SUBJECTS)
        )
    if len(subject) > MAX_SUBJECT_CHARS or "\n" in subject:
        raise InvalidInput(f"subject must be one line of at most {MAX_SUBJECT_CHARS} characters")
    body = validate.body(body, "body")
    if reply_to is not None:
        _validate_id(reply_to)
    if idempotency_key is not None and (
        not isinstance(idempotency_key, str) or not 0 < len(idempotency_key) <= MAX_KEY_CHARS
    ):
        raise InvalidInput(f"idempotency_key must be 1 to {MAX_KEY_CHARS} characters")
    with town.db.write() as conn:
        return send_in_txn(conn, town.db, str(actor), recipient, subject.strip(), body, reply_to,
                           idempotency_key)


def _mailbox(actor: Address, address: str | None) -> str:
    if address is None or address == str(actor):
        return str(actor)
    target = str(parse_address(address))
    permissions.require(actor, Action.MAIL_READ_OTHERS, Target(recipient=target))
    return target


class Order(str, enum.Enum):
    """Which end of a mailbox a page starts from."""

    OLDEST = "oldest"
    NEWEST = "newest"


class InboxPage(BaseModel):
    """One page of a mailbox; `next_cursor` (a message id) continues it, None at the end."""

    messages: list[Message]
    next_cursor: str | None = None


@dataclass(frozen=True)
class _Bound:
    """One side of a page: a message's place (created_ts, id) or an instant (created_ts only)."""

    ts: float
    message_id: str | None


_CURSOR_HELP = "a message id (msg-...) or an RFC 3339 timestamp such as 2026-02-12T10:00:00Z"


def _order(order: object, unread_only: bool) -> Order:
    if order is None:
        return Order.OLDEST if unread_only else Order.NEWEST
    try:
        return Order(order)
    except ValueError:
        raise InvalidInput(f"invalid order {str(order)[:40]!r}; allowed: oldest, newest") from None


def _bound(conn: sqlite3.Connection, box: str, name: str, value: object) -> _Bound | None:
    """A cursor as a bound: a message of this mailbox (exactly its place in the order) or an
    instant (every message created strictly before/after it)."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"{name} must be {_CURSOR_HELP}")
    if value.startswith("msg-"):
        message_id = _validate_id(value)
        row = conn.execute("SELECT created_ts FROM messages WHERE id = ? AND recipient = ?",
                           (message_id, box)).fetchone()
        if row is None:
            raise NotFound(f"{name}: no message {message_id!r} in the mailbox of {box}; "
                           f"use an id from {twin('mail_inbox')} (its next_cursor) or a timestamp")
        return _Bound(float(row[0]), message_id)
    try:
        return _Bound(timeutil.parse(value), None)
    except ValueError:
        raise InvalidInput(f"invalid {name} {value[:60]!r}: must be {_CURSOR_HELP}") from None


def _bound_sql(bound: _Bound, op: str) -> tuple[str, tuple[object, ...]]:
    """SQL for `(created_ts, id) op bound`: keyset order, so pages never skip or repeat a message
    even when many share a timestamp."""
    if bound.message_id is None:
        return f"created_ts {op} ?", (bound.ts,)
    return f"(created_ts {op} ? OR (created_ts = ? AND id {op} ?))", (bound.ts, bound.ts, bound.message_id)


def inbox_page(
    town: Town, actor: Address, unread_only: bool = True, limit: int = 20, address: str | None = None,
    before: str | None = None, after: str | None = None, order: str | None = None,
) -> InboxPage:
    """A page of a mailbox in a stable order (created time, then id), between optional bounds.

    Unread mail defaults to oldest first (a work queue), all mail to newest first (history).
    A full page carries `next_cursor`, the id of its last message: pass it as `after` (oldest
    first) or `before` (newest first) for the next page, so every message of a mailbox of any
    size can be read. Bodies are previews of at most 2,000 characters (mail_read: whole).
    """
    validate.limit(limit, MAX_INBOX)
    box = _mailbox(actor, address)
    direction = _order(order, unread_only)
    where: list[str] = ["recipient = ?"]
    args: list[object] = [box]
    if unread_only:
        where.append("read_at IS NULL")
    with town.db.read() as conn:
        for name, value, op in (("before", before, "<"), ("after", after, ">")):
            bound = _bound(conn, box, name, value)
            if bound is not None:
                sql, extra = _bound_sql(bound, op)
                where.append(sql)
                args.extend(extra)
        sort = "ASC" if direction is Order.OLDEST else "DESC"
        rows = conn.execute(
            f"SELECT {COLUMNS} FROM messages WHERE {' AND '.join(where)} "
            f"ORDER BY created_ts {sort}, id {sort} LIMIT ?", (*args, limit + 1)).fetchall()
    more = len(rows) > limit
    messages = [_message(r, preview=True) for r in rows[:limit]]
    return InboxPage(messages=messages, next_cursor=messages[-1].id if more else None)


def inbox(
    town: Town, actor: Address, unread_only: bool = True, limit: int = 20, address: str | None = None
) -> list[Message]:
    """The first page of a mailbox (see inbox_page)."""
    return inbox_page(town, actor, unread_only, limit, address).messages


def unread_count(conn: sqlite3.Connection, address: str) -> int:
    return int(conn.execute(
        "SELECT COUNT(*) FROM messages WHERE recipient = ? AND read_at IS NULL", (address,)
    ).fetchone()[0])


def _own(conn: sqlite3.Connection, actor: Address, message_id: str) -> sqlite3.Row:
    row: sqlite3.Row | None = conn.execute(f"SELECT {COLUMNS} FROM messages WHERE id = ?", (message_id,)).fetchone()
    if row is None:
        raise NotFound(f"no message {message_id!r}; {twin('mail_inbox')} lists your messages")
    if row["recipient"] != str(actor):
        decision = permissions.decide(actor, Action.MAIL_READ_OTHERS, Target(recipient=row["recipient"]))
        if not decision.allowed:
            raise Forbidden(f"{message_id} is addressed to {row['recipient']}, not to {actor}: {decision.reason}")
    return row


def read(town: Town, actor: Address, message_id: str) -> Message:
    _validate_id(message_id)
    with town.db.write() as conn:
        row = _own(conn, actor, message_id)
        if row["read_at"] is None and row["recipient"] == str(actor):
            conn.execute("UPDATE messages SET read_at = ? WHERE id = ?", (timeutil.now()[0], message_id))
            town.db.touch("messages")
            row = _own(conn, actor, message_id)
        return _message(row)


def ack(town: Town, actor: Address, message_id: str) -> AckState:
    """Acknowledge handling; implies read. Acking twice keeps the first time."""
    _validate_id(message_id)
    with town.db.write() as conn:
        row = _own(conn, actor, message_id)
        permissions.require(actor, Action.MAIL_ACK, Target(recipient=row["recipient"]))
        if row["acked_at"] is None:
            stamp = timeutil.now()[0]
            conn.execute(
                "UPDATE messages SET acked_at = ?, read_at = COALESCE(read_at, ?) WHERE id = ?",
                (stamp, stamp, message_id),
            )
            town.db.touch("messages")
            row = _own(conn, actor, message_id)
        return AckState(id=row["id"], to=row["recipient"], read_at=row["read_at"],
                        acked_at=row["acked_at"], acked=row["acked_at"] is not None)
