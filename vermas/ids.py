"""Bead ids in bd's scheme: `<prefix>-<base36 hash>`, children `<parent>.<n>`.

The hash is content plus a nonce, so ids do not depend on clocks or object addresses
(the seed's timestamp + id(self) collided); its length grows with the prefix's bead
count so short ids stay unlikely to collide, and a collision retries with a new nonce.
"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3

ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
BEAD_ID_RE = re.compile(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*-[a-z0-9]+(?:\.[0-9]{1,6}){0,8}$", re.I)
MAX_ID_LEN = 96

# (bead count below which, hash length): 4 chars to ~500 beads, 5 to ~1,500, then 6+.
LENGTH_STEPS = ((500, 4), (1500, 5), (50_000, 6), (1_500_000, 7))


def base36(data: bytes) -> str:
    number = int.from_bytes(data, "big")
    out = []
    while number:
        number, rem = divmod(number, 36)
        out.append(ALPHABET[rem])
    return "".join(reversed(out)) or "0"


def hash_length(count: int) -> int:
    for limit, length in LENGTH_STEPS:
        if count < limit:
            return length
    return 8


def candidate(prefix: str, seed: str, nonce: int, length: int) -> str:
    digest = hashlib.sha256(f"{seed}\x00{nonce}".encode()).digest()[:8]  # 12+ base36 digits
    return f"{prefix}-{base36(digest)[-length:].rjust(length, '0')}"


def new_bead_id(conn: sqlite3.Connection, prefix: str, seed: str) -> str:
    """Allocate an unused id inside the caller's write transaction."""
    row = conn.execute("SELECT count FROM prefixes WHERE prefix = ?", (prefix,)).fetchone()
    length = hash_length(row[0] if row else 0)
    salt = os.urandom(8).hex()
    for attempt in range(40):
        bead_id = candidate(prefix, seed + salt, attempt, length + attempt // 10)
        if conn.execute("SELECT 1 FROM issues WHERE id = ?", (bead_id,)).fetchone() is None:
            return bead_id
    raise RuntimeError("could not allocate a bead id after 40 attempts")


def new_child_id(conn: sqlite3.Connection, parent_id: str) -> str:
    """The next `<parent>.<n>`, one above the highest direct child that exists."""
    highest = 0
    pattern = parent_id.replace("[", "[[]") + ".*"
    for (child,) in conn.execute("SELECT id FROM issues WHERE id GLOB ?", (pattern,)):
        suffix = child[len(parent_id) + 1 :]
        if suffix.isdigit():
            highest = max(highest, int(suffix))
    return f"{parent_id}.{highest + 1}"


def prefix_of(bead_id: str) -> str:
    """The routing prefix of an id: everything before the last '-' of its root."""
    root = bead_id.split(".", 1)[0]
    return root.rsplit("-", 1)[0]


def bump_prefix(conn: sqlite3.Connection, prefix: str, by: int = 1) -> None:
    conn.execute(
        "INSERT INTO prefixes(prefix, count) VALUES (?, ?) "
        "ON CONFLICT(prefix) DO UPDATE SET count = count + excluded.count",
        (prefix, by),
    )


def new_message_id(seed: str) -> str:
    digest = hashlib.sha256((seed + os.urandom(8).hex()).encode()).digest()[:8]
    return "msg-" + base36(digest)[-12:].rjust(12, "0")
