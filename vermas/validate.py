"""Input checks shared by every entry point. Each raises InvalidInput that names the
field, what was wrong, and what is allowed; callers check before opening a transaction
so bad input never writes anything."""

from __future__ import annotations

import re

from pydantic import ValidationError
import unicodedata
from collections.abc import Collection, Mapping

from vermas.errors import InvalidInput
from vermas.ids import is_bead_id

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
    if not is_bead_id(value):
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
    no_surrogates(value, "title")
    single_line(value, "title", hint="; put detail in description")
    return value.strip()


# Characters no single-line field may hold: every control character (Unicode category Cc: C0
# incl. NUL, tab, \x0b, \x0c, ESC; DEL; C1 incl. \x85) and the line and paragraph separators
# (categories Zl, Zp: U+2028, U+2029). tests/test_robust_input.py checks this equals the categories.
LINE_BREAKING = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


CONTROL_NAMES = {"\x00": "NUL", "\t": "tab", "\n": "line feed", "\x0b": "vertical tab", "\x0c": "form feed",
                 "\r": "carriage return", "\x1b": "escape", "\x7f": "delete", "\x85": "next line"}


def _char_name(ch: str) -> str:
    name = CONTROL_NAMES.get(ch) or unicodedata.name(ch, "").lower() or "a control character"
    return f"U+{ord(ch):04X} ({name})"


def no_surrogates(value: str, field: str) -> str:
    """Refuse lone surrogates ("\\ud800"): JSON can carry them and Python keeps them, but they
    are not Unicode, so neither UTF-8 (the store, the exports) nor a reply can encode them. The
    message names the position, never the character (echoing it would break the reply too)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInput(
            f"{field} contains a lone surrogate (invalid Unicode) at position {exc.start}") from None
    return value


def single_line(value: str, field: str, hint: str = "") -> str:
    """Refuse every line break and control character, not only \\n and \\r: a title or subject
    is shown on one line of a table, a tmux status or a prompt, where U+2028, \\x85, \\x0b or
    ESC would break the line or act on the terminal."""
    found = LINE_BREAKING.search(value)
    if found:
        raise InvalidInput(
            f"{field} must be a single line of text without control characters; found "
            f"{_char_name(found.group())} at position {found.start()}{hint}"
        )
    return value


def text_arguments(arguments: Mapping[str, object], multiline: Collection[str]) -> None:
    """The text check every tool argument gets at the registry (MCP and shell alike): no
    string anywhere (lists included) holds a lone surrogate, and every string argument not
    named in `multiline` is a single line."""
    for name, value in arguments.items():
        items = value if isinstance(value, list) else [value]
        for index, item in enumerate(items):
            if not isinstance(item, str):
                continue
            field = f"{name}[{index}]" if isinstance(value, list) else name
            no_surrogates(item, field)
            if name not in multiline:
                single_line(item, field)


def body(value: object, field: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidInput(f"{field} must be text")
    no_surrogates(value, field)
    size = len(value.encode("utf-8"))
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
NUDGE_KEY_NAMES = {0x00: "NUL", 0x03: "^C", 0x04: "^D", 0x08: "backspace", 0x15: "^U", 0x1A: "^Z",
                 0x1B: "ESC", 0x7F: "DEL", 0x9B: "CSI"}


def _control_name(code: int) -> str:
    if code in NUDGE_KEY_NAMES:
        return NUDGE_KEY_NAMES[code]
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
def pydantic_problems(exc: ValidationError) -> str:
    """pydantic's errors as one line of `field: what is wrong (got value)` clauses: the caller
    sees which argument to fix, without pydantic's multi-line report and documentation links."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "arguments"
        got = f" (got {repr(err['input'])[:40]})" if "input" in err and err["type"] != "missing" else ""
        parts.append(f"{where}: {err['msg']}{got}")
    return "; ".join(parts)
