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

from vermas.errors import InvalidInput

ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
# The one id rule (every tool, the import and creation use it): a root `<prefix>-<base36>`, then at
# most MAX_DEPTH child levels `.<n>` of at most MAX_CHILD_DIGITS digits, MAX_ID_LEN characters in all.
MAX_DEPTH = 8
MAX_CHILD_DIGITS = 6
MAX_ID_LEN = 96
BEAD_ID_RE = re.compile(
    rf"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*-[a-z0-9]+(?:\.[0-9]{{1,{MAX_CHILD_DIGITS}}}){{0,{MAX_DEPTH}}}$", re.I)

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


def new_sequential_id(conn: sqlite3.Connection, prefix: str) -> str:
    """`<prefix>-<base36 n>` from the prefix's count, which only grows: ids that are deleted
    (wisps) are never handed out again, and they stay short however many come and go. An id
    taken already (an imported one) is stepped over."""
    row = conn.execute("SELECT count FROM prefixes WHERE prefix = ?", (prefix,)).fetchone()
    n = (row[0] if row else 0) + 1
    while True:
        bead_id = f"{prefix}-{base36(n.to_bytes(8, 'big'))}"
        if conn.execute("SELECT 1 FROM issues WHERE id = ?", (bead_id,)).fetchone() is None:
            return bead_id
        n += 1


def is_bead_id(value: str) -> bool:
    return len(value) <= MAX_ID_LEN and BEAD_ID_RE.fullmatch(value) is not None


def depth(bead_id: str) -> int:
    """How many child levels an id has: 0 for `hq-a1b2`, 2 for `hq-a1b2.1.3`."""
    return bead_id.count(".")


def check_parent(parent_id: str) -> None:
    """Refuse, before anything is written, a parent whose children could not be valid ids
    (a depth-9 id would be refused by every tool and by a re-import of the town's export)."""
    if depth(parent_id) >= MAX_DEPTH:
        raise InvalidInput(
            f"parent {parent_id} is already {MAX_DEPTH} levels deep; a bead id has at most {MAX_DEPTH} "
            "child levels (<prefix>-<hash>.1.2...): create this bead under a shallower parent "
            "and link it with bead_dep_add"
        )
    if len(parent_id) + 2 > MAX_ID_LEN:
        raise InvalidInput(
            f"parent id is {len(parent_id)} characters; a child's id (<parent>.<n>) would exceed "
            f"{MAX_ID_LEN}: create this bead under a shorter parent id"
        )


def new_child_id(conn: sqlite3.Connection, parent_id: str) -> str:
    """The next `<parent>.<n>`, one above the highest direct child that exists; refused (inside
    the caller's transaction, so nothing is written) when that id would break the id rule."""
    check_parent(parent_id)
    highest = 0
    pattern = parent_id.replace("[", "[[]") + ".*"
    for (child,) in conn.execute("SELECT id FROM issues WHERE id GLOB ?", (pattern,)):
        suffix = child[len(parent_id) + 1 :]
        if suffix.isdigit():
            highest = max(highest, int(suffix))
    child = f"{parent_id}.{highest + 1}"
    if not is_bead_id(child):
        raise InvalidInput(
            f"parent {parent_id} has children up to .{highest}; the next id {child[:100]} would break the "
            f"id rule (at most {MAX_CHILD_DIGITS} digits per level, {MAX_ID_LEN} characters): "
            "create this bead under another parent"
        )
    return child


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
