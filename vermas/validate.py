"""Input checks shared by every entry point. Each raises InvalidInput that names the
field, what was wrong, and what is allowed; callers check before opening a transaction
so bad input never writes anything."""

from __future__ import annotations

import re

from vermas.errors import InvalidInput
from vermas.ids import BEAD_ID_RE, MAX_ID_LEN

MAX_TITLE_CHARS = 500  # bd's own limit for titles
MAX_BODY_BYTES = 1024 * 1024
LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_:./@+-]{0,63}$")
MAX_LABELS = 50

STATUSES = ("open", "in_progress", "blocked", "deferred", "closed", "pinned", "hooked")
CREATE_TYPES = ("task", "bug", "feature", "epic", "chore", "decision", "docs")
ALL_TYPES = CREATE_TYPES + (
    "message", "molecule", "gate", "convoy", "merge-request", "agent", "event", "rig", "role",
)
DEP_TYPES = (
    "blocks", "conditional-blocks", "waits-for", "parent-child", "related", "relates-to",
    "discovered-from", "supersedes", "duplicates", "replies-to", "tracks",
)
BLOCKING_DEP_TYPES = ("blocks", "conditional-blocks")


def bead_id(value: object, field: str = "bead_id") -> str:
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"{field} must be a bead id like 'hq-a1b2' or 'hq-a1b2.1'")
    if len(value) > MAX_ID_LEN or not BEAD_ID_RE.fullmatch(value):
        raise InvalidInput(
            f"invalid {field} {value[:60]!r}: a bead id is <prefix>-<base36>[.<n>...] "
            "(letters, digits, '-' and '.', no '/' or '..')"
        )
    return value


def title(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput("title must be non-empty text")
    if len(value) > MAX_TITLE_CHARS:
        raise InvalidInput(f"title is {len(value)} characters; at most {MAX_TITLE_CHARS} allowed")
    if "\n" in value or "\r" in value:
        raise InvalidInput("title must be a single line (no newlines); put detail in description")
    return value.strip()


def body(value: object, field: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidInput(f"{field} must be text")
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_BODY_BYTES:
        raise InvalidInput(f"{field} is {size} bytes; at most {MAX_BODY_BYTES} (1 MiB) allowed")
    return value


def choice(value: object, field: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise InvalidInput(f"invalid {field} {str(value)[:40]!r}; allowed: {', '.join(allowed)}")
    return str(value)


def priority(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 4:
        raise InvalidInput(
            f"invalid priority {str(value)[:20]!r}; allowed: an integer 0 (critical) to 4 (backlog)"
        )
    return value


def labels(values: object) -> list[str]:
    if values is None:
        return []
    if not isinstance(values, list) or len(values) > MAX_LABELS:
        raise InvalidInput(f"labels must be a list of at most {MAX_LABELS} strings")
    for label in values:
        if not isinstance(label, str) or not LABEL_RE.fullmatch(label):
            raise InvalidInput(
                f"invalid label {str(label)[:40]!r}; allowed: 1-64 characters of letters, digits "
                "and _:./@+- starting with a letter or digit"
            )
    return sorted(set(values))


def limit(value: object, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise InvalidInput(f"invalid limit {str(value)[:20]!r}; allowed: 1 to {maximum}")
    return value
