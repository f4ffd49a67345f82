"""mail_inbox pages past its 1,000-message cap (issue 8, item 19): a cursor (`before`/`after`,
a message id or a timestamp) and an `order`, so every message of a long-lived mailbox can be
read, oldest or newest first, through the MCP tool and its shell twin alike."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import call, fail
from vermas import mail
from vermas.town import Town

BOX = "rig1/polecats/nux"
TOTAL = 2345


def fill_mailbox(town: Town, total: int = TOTAL) -> list[str]:
    """`total` messages to BOX in creation order (oldest first); runs of them share one
    timestamp, so the order's tie-break (the id) is exercised. Returns their ids in order."""
    with town.db.write() as conn:
        for i in range(total):
            mail.send_in_txn(conn, town.db, "mayor", BOX, f"note {i}", body=f"body {i}")
        # Every 7 consecutive messages share a timestamp; ties sort by id.
        conn.execute("UPDATE messages SET created_ts = 1.7e9 + CAST(rowid / 7 AS INTEGER)")
        # Some mail for someone else, which no page of BOX may show.
        for i in range(30):
            mail.send_in_txn(conn, town.db, "mayor", "rig1/polecats/other", f"other {i}")
        rows = conn.execute("SELECT id FROM messages WHERE recipient = ? ORDER BY created_ts, id",
                            (BOX,)).fetchall()
    return [r[0] for r in rows]


async def read_all(c: Any, **args: Any) -> tuple[list[str], int]:
    """Every message by following next_cursor; (ids in page order, pages)."""
    order = args.get("order") or ("oldest" if args.get("unread_only", True) else "newest")
    ids: list[str] = []
    pages = 0
    cursor: str | None = None
    while True:
        page_args = dict(args)
        if cursor is not None:
            page_args["after" if order == "oldest" else "before"] = cursor
        page = await call(c, "mail_inbox", **page_args)
        pages += 1
        ids += [m["id"] for m in page["messages"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return ids, pages
        assert cursor == page["messages"][-1]["id"]
        assert pages <= len(ids), "paging does not end"


async def test_every_message_of_a_large_mailbox_in_either_order(client_for: Any, town: Town) -> None:
    expected = fill_mailbox(town)
    async with client_for(BOX) as c:
        ids, pages = await read_all(c, limit=1000)
        assert ids == expected and pages == 3  # unread: oldest first by default
        ids, pages = await read_all(c, unread_only=False, limit=1000)
        assert ids == expected[::-1] and pages == 3  # all: newest first by default
        ids, _ = await read_all(c, unread_only=False, order="oldest", limit=333)
        assert ids == expected
        ids, _ = await read_all(c, order="newest", limit=7)  # page edges inside runs of ties
        assert ids == expected[::-1]
        # A page that ends exactly at the end says so: no cursor to an empty page.
        last = await call(c, "mail_inbox", after=expected[-11], limit=10)
        assert [m["id"] for m in last["messages"]] == expected[-10:] and last["next_cursor"] is None


async def test_cursor_skips_read_mail_and_is_stable_while_reading(client_for: Any, town: Town) -> None:
    expected = fill_mailbox(town, 50)
    async with client_for(BOX) as c:
        first = await call(c, "mail_inbox", limit=20)
        for m in first["messages"]:  # a worker reads its queue as it pages
            await call(c, "mail_read", message_id=m["id"])
        second = await call(c, "mail_inbox", limit=20, after=first["next_cursor"])
        assert [m["id"] for m in second["messages"]] == expected[20:40]
        # Unread only, from the start: the read ones are gone, the rest in order.
        fresh = await call(c, "mail_inbox", limit=100)
        assert [m["id"] for m in fresh["messages"]] == expected[20:]


async def test_before_and_after_take_timestamps_and_make_windows(client_for: Any, town: Town) -> None:
    expected = fill_mailbox(town, 70)  # timestamps 1.7e9 + rowid // 7: ten instants
    with town.db.read() as conn:
        ts = dict(conn.execute("SELECT id, created_ts FROM messages").fetchall())
    # 2023-11-14T22:13:23Z is 1.7e9 + 3 s.
    async with client_for(BOX) as c:
        after = await call(c, "mail_inbox", after="2023-11-14T22:13:23Z", limit=1000)
        assert [m["id"] for m in after["messages"]] == [i for i in expected if ts[i] > 1.7e9 + 3]
        before = await call(c, "mail_inbox", before="2023-11-14T22:13:23+00:00", order="newest", limit=1000)
        assert [m["id"] for m in before["messages"]] == [i for i in expected if ts[i] < 1.7e9 + 3][::-1]
        window = await call(c, "mail_inbox", after=expected[10], before=expected[20], limit=1000)
        assert [m["id"] for m in window["messages"]] == expected[11:20]


async def test_bad_cursors_and_orders_are_refused_clearly(client_for: Any, town: Town) -> None:
    fill_mailbox(town, 5)
    with town.db.read() as conn:
        foreign = conn.execute("SELECT id FROM messages WHERE recipient != ? LIMIT 1", (BOX,)).fetchone()[0]
    async with client_for(BOX) as c:
        text = await fail(c, "mail_inbox", order="sideways")
        assert "invalid order 'sideways'" in text and "oldest, newest" in text
        text = await fail(c, "mail_inbox", after="yesterday")
        assert "invalid after 'yesterday'" in text and "RFC 3339" in text and "msg-" in text
        text = await fail(c, "mail_inbox", before="msg-../../x")
        assert "invalid message_id" in text
        # Another mailbox's message is not a cursor here, and its existence is not revealed.
        text = await fail(c, "mail_inbox", before=foreign)
        assert f"no message {foreign!r} in the mailbox of {BOX}" in text
        text = await fail(c, "mail_inbox", limit=1001)
        assert "1000" in text


def test_shell_twin_pages_the_same_way(town: Town) -> None:
    expected = fill_mailbox(town, 12)
    runner = str(Path(sys.executable).parent / "vermas-runner")
    env = {**os.environ, "VERMAS_TOWN": str(town.root), "BD_ACTOR": BOX}
    helped = subprocess.run([runner, "mail", "inbox", "--help"], capture_output=True, text=True, env=env, timeout=60)
    assert helped.returncode == 0
    for flag in ("--before", "--after", "--order"):
        assert flag in helped.stdout, helped.stdout
    ids: list[str] = []
    cursor: list[str] = []
    for _ in range(10):
        proc = subprocess.run([runner, "mail", "inbox", "--json", "--limit", "5", "--order", "oldest", *cursor],
                              capture_output=True, text=True, env=env, timeout=60)
        assert proc.returncode == 0, proc.stderr
        page = json.loads(proc.stdout)
        ids += [m["id"] for m in page["messages"]]
        if page["next_cursor"] is None:
            break
        cursor = ["--after", page["next_cursor"]]
    assert ids == expected
    proc = subprocess.run([runner, "mail", "inbox", "--order", "up"], capture_output=True, text=True, env=env,
                          timeout=60)
    assert proc.returncode == 2 and "invalid order 'up'" in proc.stderr and "Traceback" not in proc.stderr
