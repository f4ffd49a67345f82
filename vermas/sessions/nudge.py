"""Nudges: deliver a line of text into a Claude Code session so it is submitted exactly once.

Gas Town's issues show how this fails: text typed but never submitted, nudges that
interrupt work, concurrent nudges interleaved. So: one lock per target session; the text
goes in as literal keys in chunks; we wait until the prompt is idle (input box visible
and empty, no "esc to interrupt"); then Enter, and we confirm the input box emptied,
retrying Enter a few times; never Escape. If the agent stays busy, the nudge is queued
as NUDGE mail, which the next prime or hook_check shows.

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

from vermas import mail, protocol
from vermas.addresses import Address, parse_address
from vermas.town import Town

if TYPE_CHECKING:
    from vermas.sessions import TownSessions

PROMPT_GLYPHS = ("❯", ">")
BUSY_MARKERS = ("esc to interrupt",)
CHUNK = 200
MAX_CHARS = 4000
PASTE_SETTLE = 0.5
ENTER_SPACING = 1.0


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
    ENTER = "enter"  # our text is in the box: press Enter
    DONE = "done"  # box emptied (or the agent went busy) after Enter


def next_step(screen: Screen, text: str, typed: bool, entered: bool = False) -> Step:
    """What to do now, given the screen, whether we typed and pressed Enter yet (pure)."""
    probe = text[:20].strip()
    visible = screen.ready and bool(probe) and probe in screen.input_text
    if not typed:
        if not screen.ready or screen.busy:
            return Step.WAIT
        return Step.TYPE if not screen.input_text else Step.FOREIGN
    if visible:
        return Step.ENTER
    if entered and (screen.busy or (screen.ready and not screen.input_text)):
        return Step.DONE
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


def flatten(message: str) -> str:
    """One line: a newline typed into Claude Code would submit early."""
    return " ".join(message.split())


def nudge(
    town: Town, sessions: TownSessions, target: Address, message: str, sender: str = "deacon",
    idle_timeout: float = 45.0, poll: float = 0.15, max_enters: int = 6,
) -> NudgeResult:
    text = flatten(message)
    started = time.monotonic()

    def queue(reason: str) -> NudgeResult:
        subject, body = protocol.format(protocol.Nudge(text=text))
        msg = mail.send(town, parse_address(sender), str(target), subject, body)
        return NudgeResult(target=str(target), submitted=False, queued_message_id=msg.id,
                           seconds=time.monotonic() - started, reason=reason)

    if not text:
        raise ValueError("empty nudge")
    if not sessions.alive(target):
        return queue("session not running")
    with _lock_path(town, target).open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            result = _deliver(sessions, target, text, started, idle_timeout, poll, max_enters)
            if isinstance(result, NudgeResult):
                return result
            if result == "typed":
                # The text is in the input box, maybe even submitted unseen: queueing it as mail
                # too could deliver it twice, so report it unconfirmed instead.
                return NudgeResult(target=str(target), submitted=False, seconds=time.monotonic() - started,
                                   reason="typed but the submission was not confirmed; not queued")
            return queue("agent stayed busy or its prompt never became idle")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _deliver(
    sessions: TownSessions, target: Address, text: str, started: float, idle_timeout: float,
    poll: float, max_enters: int,
) -> NudgeResult | str | None:
    """A NudgeResult when submitted; "typed" when the text went in but was not confirmed;
    None when nothing was typed (the agent stayed busy)."""
    pane = sessions.pane(target)
    if pane is None:
        return None
    typed, enters = False, 0
    deadline = started + idle_timeout
    last_enter = 0.0
    while time.monotonic() < deadline:
        screen = read_screen(sessions.capture(target))
        step = next_step(screen, text, typed, entered=enters > 0)
        if step is Step.TYPE:
            for i in range(0, len(text), CHUNK):
                pane.send_keys(text[i : i + CHUNK], enter=False, literal=True)
            typed = True
            # Claude Code reads a fast burst of keys as a paste and swallows an Enter that
            # follows too closely; let the paste settle before the first Enter.
            last_enter = time.monotonic() - ENTER_SPACING + PASTE_SETTLE
            deadline = max(deadline, time.monotonic() + max_enters * ENTER_SPACING + 5)
        elif step is Step.ENTER:
            if enters >= max_enters:
                return "typed"
            if time.monotonic() - last_enter >= ENTER_SPACING:  # give the TUI time to react
                pane.send_keys("Enter", enter=False)
                enters += 1
                last_enter = time.monotonic()
        elif step is Step.DONE:
            return NudgeResult(target=str(target), submitted=True, enter_presses=enters,
                               seconds=time.monotonic() - started)
        time.sleep(poll)
    return "typed" if typed else None
