"""Mail protocol messages: one typed model per kind, one formatter, one parser; and the
states other modules store and show (`PolecatState`).

Wire form (what templates/*.md tell agents, and what POLECAT_DONE always looked like):
the subject is the kind, then the message's key words (`POLECAT_DONE nux gt-a1b2`); the body
is `field: value` header lines, a blank line, then free text. Headers are authoritative; the
subject's words after the kind are for people. A body with no headers is all text (NUDGE,
or HELP written by hand). `parse(*format(m)) == m` for every message (property-tested).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, ClassVar

from pydantic import BaseModel, StringConstraints, ValidationError

Line = Annotated[str, StringConstraints(min_length=1, max_length=300, pattern=r"^[^\n\r\s][^\n\r]*$")]


class ProtocolKind(StrEnum):
    POLECAT_DONE = "POLECAT_DONE"
    MERGE_READY = "MERGE_READY"
    MERGED = "MERGED"
    REWORK_REQUEST = "REWORK_REQUEST"
    ESCALATION = "ESCALATION"
    HELP = "HELP"
    HANDOFF = "HANDOFF"
    NUDGE = "NUDGE"
    CONVOY_LANDED = "CONVOY_LANDED"


class PolecatState(StrEnum):
    """What a polecat's slot has been through, as `status` and `polecat list` show it.

    Each value says what happened, never what is about to: a polecat is `working` only once
    its GUPP nudge was confirmed delivered, and `done` only once polecat_done queued its work.
    """

    SPAWNING = "spawning"  # slot taken and bead hooked; worktree and session being made
    STARTED = "started"  # session up; its GUPP nudge not yet confirmed delivered (the runner's to send)
    WORKING = "working"  # GUPP nudge delivered: the agent is on its hooked work
    DONE = "done"  # polecat_done COMPLETED: merge request queued, waiting for the refinery
    ESCALATED = "escalated"  # polecat_done ESCALATED: the bead is blocked, waiting for help
    DEFERRED = "deferred"  # polecat_done DEFERRED: the bead went back unassigned; the slot idles
    NUKED = "nuked"  # what nuke returns: slot, sandbox and session are gone (never stored)


# The states whose polecat has a session to run: `up` starts these and no others. A finished
# polecat (done: waiting only for its merge; escalated; deferred) has nothing to do in a session,
# and one started anyway makes a model turn for nothing before the witness stops it. Work the
# refinery sends back sets the slot to `started` again, so it is run once more.
SESSION_STATES = frozenset({PolecatState.STARTED, PolecatState.WORKING})

# The state polecat_done leaves a slot in, by the status it reported.
DONE_STATE = {"COMPLETED": PolecatState.DONE, "ESCALATED": PolecatState.ESCALATED,
              "DEFERRED": PolecatState.DEFERRED}


class ProtocolMessage(BaseModel, frozen=True):
    """Base: `text` is the free text after the headers (a summary, a reason, the nudge)."""

    KIND: ClassVar[ProtocolKind]
    SUBJECT: ClassVar[tuple[str, ...]] = ()  # fields whose values follow the kind in the subject
    text: str = ""

    def headers(self) -> list[tuple[str, str]]:
        return [(name, value) for name in type(self).model_fields if name != "text"
                for value in [getattr(self, name)] if value is not None]

    def subject(self) -> str:
        words = [str(getattr(self, f)) for f in self.SUBJECT if getattr(self, f, None) is not None]
        return " ".join([self.KIND.value, *words])


class PolecatDone(ProtocolMessage, frozen=True):
    KIND = ProtocolKind.POLECAT_DONE
    bead: Line
    status: Line
    polecat: Line
    branch: Line | None = None
    commit: Line | None = None
    merge_request: Line | None = None

    def subject(self) -> str:
        return f"{self.KIND.value} {self.polecat.rsplit('/', 1)[-1]} {self.bead}"


class MergeReady(ProtocolMessage, frozen=True):
    KIND = ProtocolKind.MERGE_READY
    SUBJECT = ("bead", "branch")
    bead: Line
    branch: Line
    merge_request: Line | None = None
    commit: Line | None = None
    polecat: Line | None = None


class Merged(ProtocolMessage, frozen=True):
    """The refinery landed a bead's work: `commit` is the polecat's commit, `merged_sha` the
    commit the target now points at (rebased, so it differs), `tests` is `passed` or `untested`
    (a rig without a test command says so in every MERGED, never silently)."""

    KIND = ProtocolKind.MERGED
    SUBJECT = ("bead",)
    bead: Line
    merge_request: Line | None = None
    commit: Line | None = None
    polecat: Line | None = None
    merged_sha: Line | None = None
    target: Line | None = None  # the target branch
    tests: Line | None = None


class ReworkRequest(ProtocolMessage, frozen=True):
    """Work sent back by the refinery. `reason` is conflict, tests or verification; a conflict
    names its `files` (comma-separated) and the `target_sha` it met; a failure names the
    `command` (or the verification criterion) and its `exit_status`. The evidence tail is the text."""

    KIND = ProtocolKind.REWORK_REQUEST
    SUBJECT = ("bead",)
    bead: Line
    merge_request: Line | None = None
    polecat: Line | None = None
    branch: Line | None = None
    reason: Line | None = None
    target_sha: Line | None = None
    files: Line | None = None
    command: Line | None = None
    exit_status: Line | None = None
    attempt: Line | None = None


class Escalation(ProtocolMessage, frozen=True):
    """A problem a person (or the mayor) must judge. From the refinery, `reason` says which
    (attempts-exhausted, target-red, cannot-verify, source-gone), `branch` is kept, the history is the text."""

    KIND = ProtocolKind.ESCALATION
    SUBJECT = ("bead",)
    bead: Line | None = None
    polecat: Line | None = None
    merge_request: Line | None = None
    reason: Line | None = None
    rig: Line | None = None
    branch: Line | None = None
    target_sha: Line | None = None
    # From the patrols: the agent the problem is about (any role, not only polecats) and the
    # cause's dedup key, which the escalation stands under until acknowledged (never sent twice).
    agent: Line | None = None
    key: Line | None = None


class Help(ProtocolMessage, frozen=True):
    KIND = ProtocolKind.HELP
    SUBJECT = ("bead",)
    bead: Line | None = None


class Handoff(ProtocolMessage, frozen=True):
    KIND = ProtocolKind.HANDOFF
    SUBJECT = ("bead",)
    bead: Line | None = None


class Nudge(ProtocolMessage, frozen=True):
    KIND = ProtocolKind.NUDGE

    def subject(self) -> str:
        return f"{self.KIND.value} {' '.join(self.text.split())[:200]}".rstrip()


class ConvoyLanded(ProtocolMessage, frozen=True):
    """Every bead a convoy tracks is closed. Sent by the deacon to the convoy's creator and the
    mayor exactly once per convoy (`convoy_landed:<id>` is the dedup key)."""

    KIND = ProtocolKind.CONVOY_LANDED
    SUBJECT = ("convoy",)
    convoy: Line
    title: Line | None = None
    beads: Line | None = None  # how many beads it tracked


MODELS: dict[ProtocolKind, type[ProtocolMessage]] = {
    m.KIND: m for m in (PolecatDone, MergeReady, Merged, ReworkRequest, Escalation, Help, Handoff, Nudge,
                        ConvoyLanded)
}


def kind_of(subject: str) -> ProtocolKind | None:
    """The protocol word a subject starts with (`POLECAT_DONE nux` -> POLECAT_DONE)."""
    word = subject.split(None, 1)[0].rstrip(":") if subject.strip() else ""
    return ProtocolKind(word) if word in ProtocolKind.__members__ else None


def format(msg: ProtocolMessage) -> tuple[str, str]:  # noqa: A001 - the protocol's one formatter
    """(subject, body) of a message."""
    lines = [f"{name}: {value}" for name, value in msg.headers()]
    if lines:
        body = "\n".join(lines) + (f"\n\n{msg.text}" if msg.text else "")
    else:  # all text; a leading blank line keeps header-like or blank-first text from being misread
        body = f"\n{msg.text}" if msg.text.startswith("\n") or _header_like(type(msg), msg.text) else msg.text
    return msg.subject(), body


def _header_like(model: type[ProtocolMessage], text: str) -> bool:
    first = text.split("\n", 1)[0]
    return any(first.startswith(f"{name}: ") for name in model.model_fields if name != "text")


def parse(subject: str, body: str) -> ProtocolMessage | None:
    """The typed message, or None when the subject is no protocol kind or the body lacks a
    field the kind requires (hand-written mail then stays plain mail)."""
    kind = kind_of(subject)
    if kind is None:
        return None
    model = MODELS[kind]
    names = [n for n in model.model_fields if n != "text"]
    lines = body.split("\n")
    fields: dict[str, str] = {}
    i = 0
    while i < len(lines):
        name, sep, value = lines[i].partition(": ")
        if not sep or name not in names or name in fields:
            break
        fields[name] = value
        i += 1
    if fields:
        rest = lines[i:]
        text = "\n".join(rest[1:] if rest and rest[0] == "" else rest)
    else:
        text = body[1:] if body.startswith("\n") else body
    try:
        return model(**fields, text=text)
    except ValidationError:
        return None
