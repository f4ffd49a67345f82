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


# --- Nudge text ----------------------------------------------------------------------------
# A nudge is typed into a terminal, where a control character is a key press: ^C interrupts
# (or kills) the agent's TUI, ESC leaves its input box, ^U erases what was typed, ^D ends it.
# So the rule: line breaks and tabs become spaces (a newline typed into Claude Code would
# submit early), runs of whitespace collapse to one space; every other C0 control, DEL, every
# C1 control and lone surrogates are refused, naming the character and its position.

MAX_NUDGE_CHARS = 4000
NUDGE_SPACES = frozenset("\t\n\v\f\r\x85\u2028\u2029")  # flattened to spaces, never typed
CONTROL_NAMES = {0x00: "NUL", 0x03: "^C", 0x04: "^D", 0x08: "backspace", 0x15: "^U", 0x1A: "^Z",
                 0x1B: "ESC", 0x7F: "DEL", 0x9B: "CSI"}


def _control_name(code: int) -> str:
    if code in CONTROL_NAMES:
        return CONTROL_NAMES[code]
    if code < 0x20:
        return f"^{chr(code + 0x40)}"
    return "C1 control"


def nudge_text(value: object, field: str = "message") -> str:
    """The one line a nudge types: refuses what would act as keys, flattens line breaks."""
    if not isinstance(value, str):
        raise InvalidInput(f"{field} must be text")
    if len(value) > MAX_NUDGE_CHARS:
        raise InvalidInput(f"{field} is {len(value)} characters; it must be 1 to {MAX_NUDGE_CHARS} characters")
    for position, char in enumerate(value):
        code = ord(char)
        if char in NUDGE_SPACES:
            continue
        if code < 0x20 or 0x7F <= code <= 0x9F:
            raise InvalidInput(
                f"{field} contains the control character U+{code:04X} ({_control_name(code)}) at "
                f"position {position}; a nudge is typed into a terminal, where it would act as a key. "
                "Allowed: printable text (tabs and line breaks become spaces)"
            )
        if 0xD800 <= code <= 0xDFFF:
            raise InvalidInput(f"{field} contains a lone surrogate U+{code:04X} at position {position}; "
                               "allowed: valid Unicode text")
    text = " ".join(value.split())
    if not text:
        raise InvalidInput(f"{field} must be 1 to {MAX_NUDGE_CHARS} characters of text, not only spaces")
    return text
