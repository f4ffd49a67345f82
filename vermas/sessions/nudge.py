"""Nudges: deliver a line of text into a Claude Code session so it is submitted exactly once.

Gas Town's issues show how this fails: text typed but never submitted, nudges that
interrupt work, concurrent nudges interleaved. So: one lock per target session; the text
(checked by `validate.nudge_text`: no control characters, one line) goes in through a tmux
buffer, in chunks, so tmux never parses it; we wait until the prompt is idle (input box
visible and empty, no "esc to interrupt"); we press Enter only once the whole text shows in
the input box, and confirm the box emptied, retrying Enter a few times; never Escape. If
the agent stays busy, or the text does not show up whole, what was typed is erased and the
nudge is queued as NUDGE mail, which the next prime or hook_check shows: a nudge is
delivered whole or queued, never left partly typed.

`read_screen` and `next_step` are pure (screen text in, decision out) and tested
without tmux; `nudge` is the thin effect around them.
"""

from __future__ import annotations

import fcntl
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel

from vermas import mail, protocol, validate
from vermas.addresses import Address, parse_address
from vermas.town import Town

if TYPE_CHECKING:
    from vermas.sessions import TownSessions

PROMPT_GLYPHS = ("❯", ">")
BUSY_MARKERS = ("esc to interrupt",)
CHUNK = 200
# Claude Code folds input that arrives faster than it redraws into "[Pasted text #1]" once it
# passes ~800 characters, and then the text cannot be checked on screen; 0.2 s between
# 200-character chunks keeps a 1,200-character text typed out in full (measured with v2.1).
CHUNK_GAP = 0.2
MAX_CHARS = validate.MAX_NUDGE_CHARS
PASTE_SETTLE = 0.5
ENTER_SPACING = 1.0
ECHO_TIMEOUT = 5.0  # seconds after typing for the whole text to show before it is erased


@dataclass(frozen=True)
class Screen:
    ready: bool  # an input box is on screen
    busy: bool  # the agent is working
    input_text: str  # what sits in the input box now


def _is_rule(line: str) -> bool:
    stripped = line.strip()
    return len(stripped) >= 10 and set(stripped) <= {"─", "━", "-"}


def read_screen(text: str) -> Screen:
    """Find Claude Code's input box: a prompt glyph line between two horizontal rules."""
    lines = text.splitlines()
    rules = [i for i, line in enumerate(lines) if _is_rule(line)]
    busy = any(marker in line for line in lines[-6:] for marker in BUSY_MARKERS)
    for top, bottom in zip(rules[-2::-1], rules[:0:-1]):
        if bottom <= top + 1:
            continue
        box = lines[top + 1 : bottom]
        first = box[0].lstrip()
        if first.startswith(PROMPT_GLYPHS):
            body = first[1:].strip() + "".join(" " + line.strip() for line in box[1:] if line.strip())
            return Screen(ready=True, busy=busy, input_text=body.strip())
        break
    return Screen(ready=False, busy=busy, input_text="")


TRUST_DIALOG = "Yes, I trust this folder"


def is_trust_dialog(text: str) -> bool:
    """Claude Code's folder-trust question, which we pre-answer in its config; it still
    shows when a concurrently exiting session rewrote that config without our entry."""
    return TRUST_DIALOG in text and "Enter to confirm" in text


def accept_trust_dialog(sessions: "TownSessions", target: Address) -> bool:
    """Choose "Yes, I trust this folder" (one Down from the default "No, exit"), then Enter.
    The runner created this folder for this agent, so trusting it is the runner's call."""
    pane = sessions.pane(target)
    if pane is None:
        return False
    pane.send_keys("Down", enter=False)
    time.sleep(0.3)
    if "❯ Yes, I trust this folder" not in sessions.capture(target):
        return False
    pane.send_keys("Enter", enter=False)
    time.sleep(0.5)
    return True


class Step(str, Enum):
    WAIT = "wait"  # not ready or busy: look again shortly
    TYPE = "type"  # idle, empty box: type the text
    FOREIGN = "foreign"  # someone else's text is in the box: leave it alone and wait
    ENTER = "enter"  # our whole text is in the box: press Enter
    ERASE = "erase"  # typed, but the whole text never showed: erase it (then queue it as mail)
    CLEAR = "clear"  # part of this same text sits in the box, left by a nudger that died: erase it, then type
    DONE = "done"  # box emptied (or the agent went busy) after Enter


def same_text(shown: str, text: str) -> bool:
    """Whether the input box holds exactly `text`. Whitespace is ignored because the box
    wraps long lines (and `read_screen` joins them with spaces), so a token split across
    two rows reads with a space inside it; every other character must match, in order."""
    return "".join(shown.split()) == "".join(text.split())


def chunks(text: str, size: int = CHUNK) -> list[str]:
    """The pieces typed one at a time. Any piece may start with '-' or end with ';': they go
    through a tmux buffer, never as tmux arguments."""
    return [text[i : i + size] for i in range(0, len(text), size)]


LEFTOVER_MIN_CHARS = 8  # a shorter text in the box is not recognisably ours: it is left alone


def leftover_of(shown: str, text: str) -> bool:
    """Whether the box holds the start of this very text (whitespace ignored, as same_text):
    what a nudger that died after typing, before its Enter, leaves behind (a killed runner)."""
    have, want = "".join(shown.split()), "".join(text.split())
    return len(have) >= LEFTOVER_MIN_CHARS and want.startswith(have)


def next_step(screen: Screen, text: str, typed: bool, entered: bool = False, overdue: bool = False) -> Step:
    """What to do now, given the screen, whether we typed and pressed Enter yet, and whether
    the typed text has had its time to show (pure). Enter only when the box shows the
    whole text: a partial text is never submitted. The same text left whole in the box by a
    nudger that died before its Enter is ours to submit (once: it is the same nudge); a part of
    it is erased and typed again; anything else in the box is someone else's."""
    whole = screen.ready and same_text(screen.input_text, text)
    if not typed:
        if not screen.ready or screen.busy:
            return Step.WAIT
        if not screen.input_text:
            return Step.TYPE
        if whole:
            return Step.ENTER
        return Step.CLEAR if leftover_of(screen.input_text, text) else Step.FOREIGN
    if whole:
        return Step.ENTER
    if entered and (screen.busy or (screen.ready and not screen.input_text)):
        return Step.DONE
    if not entered and overdue:
        return Step.ERASE
    return Step.WAIT


class NudgeResult(BaseModel):
    target: str
    submitted: bool
    queued_message_id: str | None = None
    enter_presses: int = 0
    seconds: float
    reason: str = ""


def _lock_path(town: Town, address: Address) -> Path:
    folder = town.layout.locks_dir
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{address.session_name}.nudge.lock"


# A line starting with one of these is a command to Claude Code, not a message to the model:
# `/clear` wipes the context, `!` runs a shell command, `#` (older versions) writes memory.
COMMAND_PREFIXES = ("/", "!", "#")


def acts_as_command(text: str) -> bool:
    """Whether Claude Code would run `text` (a flattened nudge) as a command (pure): such a
    line is never typed; it is queued as NUDGE mail, which the agent reads as text."""
    return text.startswith(COMMAND_PREFIXES)


def flatten(message: str) -> str:
    """One line: a newline typed into Claude Code would submit early."""
    return " ".join(message.split())


@dataclass(frozen=True)
class Undelivered:
    """The nudge did not go in; `queue` says whether to queue it as mail (nothing of it is
    left in the box, so mail cannot deliver it twice)."""

    queue: bool
    reason: str


def nudge(
    town: Town, sessions: TownSessions, target: Address, message: str, sender: str = "deacon",
    idle_timeout: float = 45.0, poll: float = 0.15, max_enters: int = 6,
) -> NudgeResult:
    """Deliver `message` (refused with InvalidInput if it holds control characters; line
    breaks become spaces) whole and confirmed, or queue it as NUDGE mail."""
    text = validate.nudge_text(message)
    started = time.monotonic()

    def queue(reason: str) -> NudgeResult:
        subject, body = protocol.format(protocol.Nudge(text=text))
        msg, new = mail.send_unless_unread(town, parse_address(sender), str(target), subject, body)
        return NudgeResult(target=str(target), submitted=False, queued_message_id=msg.id,
                           seconds=time.monotonic() - started,
                           reason=reason if new else f"{reason}; the same nudge already waits unread ({msg.id})")

    if acts_as_command(text):
        return queue(f"a line starting with {text[0]!r} would run as a Claude Code command; "
                     "queued as mail, never typed")
    if not sessions.alive(target):
        return queue("session not running")
    with _lock_path(town, target).open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            result = _deliver(sessions, target, text, started, idle_timeout, poll, max_enters)
            if isinstance(result, NudgeResult):
                return result
            if result.queue:
                return queue(result.reason)
            return NudgeResult(target=str(target), submitted=False, seconds=time.monotonic() - started,
                               reason=result.reason)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _type(sessions: TownSessions, target: Address, text: str) -> bool:
    """Type the text chunk by chunk, pausing between chunks (see CHUNK_GAP)."""
    for n, piece in enumerate(chunks(text)):
        if n:
            time.sleep(CHUNK_GAP)
        if not sessions.type_literal(target, piece):
            return False
    return True


def _erase(sessions: TownSessions, target: Address, text: str, why: str, poll: float) -> Undelivered:
    """Backspace over what we typed (we typed only into an empty box, so len(text) presses
    remove all of ours and nothing else; never Escape, which interrupts the agent)."""
    pane = sessions.pane(target)
    if pane is not None:
        pane.send_keys("BSpace", enter=False, repeat=len(text))
    deadline = time.monotonic() + ECHO_TIMEOUT
    while time.monotonic() < deadline:
        screen = read_screen(sessions.capture(target))
        if screen.ready and not screen.input_text:
            return Undelivered(queue=True, reason=f"{why}; erased it and queued it as mail")
        time.sleep(poll)
    return Undelivered(queue=True, reason=f"{why}; queued it as mail, but the input box did not clear")


def _deliver(
    sessions: TownSessions, target: Address, text: str, started: float, idle_timeout: float,
    poll: float, max_enters: int,
) -> NudgeResult | Undelivered:
    """A NudgeResult when submitted; otherwise what went wrong and whether to queue it."""
    pane = sessions.pane(target)
    if pane is None:
        return Undelivered(queue=True, reason="session not running")
    typed, enters = False, 0
    typed_at = 0.0
    deadline = started + idle_timeout
    last_enter = 0.0
    while time.monotonic() < deadline:
        screen = read_screen(sessions.capture(target))
        overdue = typed and time.monotonic() - typed_at > ECHO_TIMEOUT
        step = next_step(screen, text, typed, entered=enters > 0, overdue=overdue)
        if step is Step.TYPE:
            typed = True
            if not _type(sessions, target, text):
                return _erase(sessions, target, text, "tmux refused to type the text", poll)
            typed_at = time.monotonic()
            # Claude Code reads a fast burst of keys as a paste and swallows an Enter that
            # follows too closely; let the paste settle before the first Enter.
            last_enter = time.monotonic() - ENTER_SPACING + PASTE_SETTLE
            deadline = max(deadline, time.monotonic() + max_enters * ENTER_SPACING + ECHO_TIMEOUT + 5)
        elif step is Step.ERASE:
            return _erase(sessions, target, text, "the text did not show whole in the input box", poll)
        elif step is Step.CLEAR:  # at most len(text) presses: the leftover is a part of it
            pane.send_keys("BSpace", enter=False, repeat=len(text))
            time.sleep(PASTE_SETTLE)
        elif step is Step.ENTER:
            if not typed:  # the whole text left by a nudger that died: from here on it is ours
                typed, typed_at = True, time.monotonic()
                last_enter = time.monotonic() - ENTER_SPACING
                deadline = max(deadline, time.monotonic() + max_enters * ENTER_SPACING + ECHO_TIMEOUT + 5)
            if enters >= max_enters:
                break
            if time.monotonic() - last_enter >= ENTER_SPACING:  # give the TUI time to react
                pane.send_keys("Enter", enter=False)
                enters += 1
                last_enter = time.monotonic()
        elif step is Step.DONE:
            return NudgeResult(target=str(target), submitted=True, enter_presses=enters,
                               seconds=time.monotonic() - started)
        time.sleep(poll)
    if enters:
        # The whole text was in the box and Enter went in, maybe even submitted unseen:
        # queueing it as mail too could deliver it twice, so report it unconfirmed instead.
        return Undelivered(queue=False, reason="typed but the submission was not confirmed; not queued")
    if typed:
        return _erase(sessions, target, text, "the text did not show whole in the input box", poll)
    return Undelivered(queue=True, reason="agent stayed busy or its prompt never became idle")
