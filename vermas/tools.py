"""The tool registry: every vermas tool defined once, for the MCP server and the shell alike.

Each tool is a plain function `fn(call, **params) -> Model`: its type hints are the parameter
schema (pydantic validates them strictly, the same way on both surfaces; every string argument
also passes one text check, see `checked`), the first paragraph of its
docstring is the published description (kept short: MCP tool bytes are paid in every
session), and the following `name: help` lines are the shell's per-option help (never
published). vermas_mcp builds MCP tools from `TOOLS`; vermas_runner builds argparse
subcommands from it. This module never imports the MCP SDK, so the runner starts fast.
"""

from __future__ import annotations

import enum
import functools
import inspect
import os
import re
import time
import traceback
import types
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import BaseModel, Strict

from vermas import beads, convoy, hooks, mail, permissions, polecat, validate
from vermas import rig as rigs
from vermas import sling as slinging
from vermas.refinery import ledger
from vermas.refinery import manage as mq
from vermas import status as town_state
from vermas.addresses import Address, Role, parse_address
from vermas.errors import Forbidden
from vermas.molecules import formula as formulas
from vermas.molecules import molecule
from vermas.permissions import Action, Target
from vermas.sessions import nudge as nudging
from vermas.town import Town
from vermas.twins import shell_words

if typing.TYPE_CHECKING:
    from vermas.inspector.models import TestRun, VerificationReport
    from vermas.inspector.pipeline import Inspector
    from vermas.inspector.records import PlanRecord, SpecRecord

ProgressSink = Callable[[float, "float | None", str], Awaitable[None]]


class Kind(enum.Enum):
    """What a tool does to the town; the MCP layer maps each to its tool annotations."""

    READ = "read"  # changes nothing
    ADD = "add"  # adds records, destroys none
    CHANGE = "change"  # changes existing records
    MARK = "mark"  # sets a mark; repeating it changes nothing more
    SPEC = "spec"  # calls the model; rewrites acceptance_criteria
    PLAN = "plan"  # calls the model; stores a plan
    RUN = "run"  # runs shell tests only
    PIPELINE = "pipeline"  # the whole inspector pipeline, cached per commit
    SYNC = "sync"  # reads from outside the town (a rig's upstream); moves a branch forward only


@dataclass
class Call:
    """Who calls a tool, in which town, and where progress goes (None: nowhere)."""

    town: Town
    actor: Address
    progress: ProgressSink | None = None
    # How long a nudge waits for an idle prompt before queueing mail: an agent's tool call keeps
    # it short; a person at the shell can wait as long as the runner's own nudges do.
    nudge_wait: float = 15.0


@dataclass(frozen=True)
class Param:
    name: str
    annotation: Any  # the strict type both surfaces validate with (see strict())
    default: Any  # inspect.Parameter.empty when required
    help: str
    python_type: Any = None  # the annotation as written (the shell's option shapes read it)

    @property
    def required(self) -> bool:
        return self.default is inspect.Parameter.empty


@dataclass(frozen=True)
class ToolSpec:
    """One tool: its core call and what both surfaces need to present it."""

    name: str
    fn: Callable[..., Any]
    kind: Kind
    blocking: bool = False  # waits seconds (tmux): the MCP layer runs it off the event loop
    progress: bool = False  # reports progress (the MCP layer passes its Context's sink)
    params: tuple[Param, ...] = field(default=())
    description: str = ""
    shell_help: str = ""

    @property
    def result(self) -> Any:
        """The result model (resolved on use: the inspector's models cost ~150 ms to import)."""
        return typing.get_type_hints(self.fn, localns=_inspector_types())["return"]

    @property
    def shell(self) -> tuple[str, ...]:
        return shell_words(self.name)

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.fn)


def _parse_doc(doc: str) -> tuple[str, str, dict[str, str]]:
    """(published description, shell summary, per-parameter help) from a tool's docstring."""
    paragraphs = inspect.cleandoc(doc).split("\n\n")
    description = " ".join(paragraphs[0].split())
    helps: dict[str, str] = {}
    current = ""
    for line in "\n\n".join(paragraphs[1:]).splitlines():
        head, sep, text = line.partition(":")
        if sep and head.strip().isidentifier() and not line.startswith(" "):
            current = head.strip()
            helps[current] = text.strip()
        elif current and line.strip():
            helps[current] += " " + line.strip()
    return description, re.split(r"[.;:] +(?=[A-Z])", description)[0].rstrip("."), helps


def _evaluate(annotation: Any, fn: Callable[..., Any]) -> Any:
    """A parameter's annotation as a type (they are strings under `from __future__ import annotations`)."""
    return eval(annotation, fn.__globals__) if isinstance(annotation, str) else annotation  # noqa: S307


# Scalars validated strictly at the edge: pydantic's lax mode turns True into 1 and "5" into 5
# (priority=True was stored as 1, limit="5" accepted); strict, a bool is not an int, a string
# is not a number, 1 and "true" are not bools. JSON schemas are unchanged.
STRICT_SCALARS: dict[Any, Any] = {
    int: Annotated[int, Strict()],
    bool: Annotated[bool, Strict()],
    str: Annotated[str, Strict()],
    float: Annotated[float, Strict()],
}


def strict(annotation: Any) -> Any:
    """`annotation` with every scalar strict, inside `X | None` and `list[X]` too."""
    if annotation in STRICT_SCALARS:
        return STRICT_SCALARS[annotation]
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is list and len(args) == 1:
        return list[strict(args[0])]  # type: ignore[misc]
    if origin in (types.UnionType, typing.Union):
        return typing.Union[tuple(strict(a) for a in args)]  # noqa: UP007
    return annotation


# String parameters that may span lines; every other string parameter (titles, subjects, ids,
# addresses, names, labels, keys, paths) must be a single line without control characters.
MULTILINE_PARAMS = frozenset({"description", "body", "notes", "comment", "reason", "summary",
                              "acceptance_criteria", "message"})


def checked(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` behind the text check every tool argument gets (validate.text_arguments: no lone
    surrogate anywhere, single-line fields one line), before the core runs, so both surfaces
    (MCP tools and shell twins call spec.fn) refuse bad text with a clear error, nothing written."""
    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def run_async(c: Call, **kwargs: Any) -> Any:
            validate.text_arguments(kwargs, MULTILINE_PARAMS)
            return await fn(c, **kwargs)

        return run_async

    @functools.wraps(fn)
    def run(c: Call, **kwargs: Any) -> Any:
        validate.text_arguments(kwargs, MULTILINE_PARAMS)
        return fn(c, **kwargs)

    return run


# --- Unexpected exceptions: one line for the caller, the traceback in the log ------------------
# A domain error (VermasError) is the tool's answer. Anything else is a bug or a broken
# environment: the caller gets one line naming the tool and the exception type (the SDK's own
# answer would be a bare "Error executing tool X", the shell's a traceback), and the traceback
# goes to TOOL_ERRORS_FILE in the town's runtime folder (and, from the MCP server, to its stderr,
# which Claude Code keeps as the server's log), where a person can find it.

TOOL_ERRORS_FILE = "tool-errors.log"  # in the town's .runtime/ folder
MAX_TOOL_ERRORS_LOG = 1024 * 1024  # the file stops growing here


def unexpected_error(tool_name: str, exc: BaseException) -> str:
    """The one line an unexpected exception of a tool becomes (pure)."""
    text = " ".join(str(exc).split())[:200]
    return (f"{tool_name} failed: unexpected {type(exc).__name__}{': ' + text if text else ''} "
            f"(a vermas bug or a broken town file; the traceback is in .runtime/{TOOL_ERRORS_FILE})")


def report_unexpected(town: Town, actor: Address | str, tool_name: str, exc: BaseException) -> str:
    """Append an unexpected exception of a tool with its traceback to the town's
    TOOL_ERRORS_FILE (bounded) and return the caller's one line. Never raises."""
    trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        path = town.layout.runtime_dir / TOOL_ERRORS_FILE
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            if os.fstat(fd).st_size < MAX_TOOL_ERRORS_LOG:
                os.write(fd, f"{time.time():.3f} tool {tool_name} actor {actor}\n{trace}\n".encode(errors="replace"))
        finally:
            os.close(fd)
    except OSError:
        pass  # no runtime folder (or full): stderr still has it
    return unexpected_error(tool_name, exc)


def _inspector_types() -> dict[str, Any]:
    # deferred: the inspector's models are only needed to resolve verify tools' annotations
    from vermas.inspector.models import TestRun, VerificationReport  # deferred: as above
    from vermas.inspector.records import PlanRecord, SpecRecord  # deferred: as above

    return {"TestRun": TestRun, "VerificationReport": VerificationReport, "PlanRecord": PlanRecord,
            "SpecRecord": SpecRecord}


TOOLS: dict[str, ToolSpec] = {}


def tool(kind: Kind, blocking: bool = False,
         progress: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register `fn` as a tool (in definition order, which is tools/list's order)."""

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        description, summary, helps = _parse_doc(fn.__doc__ or "")
        signature = inspect.signature(fn)
        params = []
        for p in list(signature.parameters.values())[1:]:  # the first is the Call
            python_type = _evaluate(p.annotation, fn)
            params.append(Param(p.name, strict(python_type), p.default, helps.get(p.name, ""), python_type))
        run = checked(fn)
        TOOLS[fn.__name__] = ToolSpec(fn.__name__, run, kind, blocking, progress, tuple(params), description,
                                      summary)
        return run

    return register


class BeadList(BaseModel):
    beads: list[beads.BeadSummary]


class MessageList(BaseModel):
    messages: list[mail.Message]


class ConvoyList(BaseModel):
    convoys: list[convoy.ConvoyStatus]


@tool(Kind.ADD)
def bead_create(c: Call, title: str, description: str = "", issue_type: str = "task", priority: int = 2,
                labels: list[str] | None = None, parent: str | None = None,
                acceptance_criteria: str = "", rig: str | None = None) -> beads.Bead:
    """New bead. issue_type task|bug|feature|epic|chore|decision|docs; priority 0-4 (0
    critical); parent: makes <parent>.N; rig: its prefix (default: yours).

    title: one-line summary of the work
    description: what to do and why
    issue_type: task, bug, feature, epic, chore, decision or docs
    priority: 0 (critical) to 4 (backlog)
    labels: a label (repeat the option for several)
    parent: parent bead id; the new bead becomes <parent>.N
    acceptance_criteria: how to tell the work is done
    rig: rig whose prefix the id takes (default: the actor's)
    """
    return beads.create(c.town, c.actor, title, description, issue_type, priority, labels, parent,
                        rig=rig, acceptance_criteria=acceptance_criteria)


@tool(Kind.READ)
def bead_show(c: Call, bead_id: str) -> beads.BeadDetail:
    """A bead in full, with dependencies, dependents, comments.

    bead_id: the bead's id, e.g. hq-a1b2
    """
    return beads.show(c.town, bead_id)


@tool(Kind.READ)
def bead_list(c: Call, status: str | None = None, issue_type: str | None = None,
              assignee: str | None = None, label: str | None = None, limit: int = 50) -> BeadList:
    """Beads matching all given filters, newest first.

    status: open, in_progress, blocked, deferred, closed, pinned or hooked
    issue_type: only beads of this type
    assignee: only beads assigned to this address
    label: only beads with this label
    limit: at most this many beads
    """
    return BeadList(beads=beads.list_beads(c.town, status, issue_type, assignee, label, limit))


@tool(Kind.READ)
def bead_ready(c: Call, limit: int = 20) -> BeadList:
    """Open beads with no open blocker, by priority then age (bd's ready rule).

    limit: at most this many beads
    """
    return BeadList(beads=beads.ready(c.town, limit))


@tool(Kind.CHANGE)
def bead_update(c: Call, bead_id: str, status: str | None = None, priority: int | None = None,
                assignee: str | None = None, title: str | None = None,
                description: str | None = None, notes: str | None = None,
                comment: str | None = None) -> beads.Bead:
    """Change a bead's fields; comment adds one. A hooked bead's status changes only via
    unsling or polecat_done.

    bead_id: the bead to change
    status: new status (open, in_progress, blocked, deferred, closed, pinned)
    priority: new priority, 0 (critical) to 4
    assignee: new assignee address
    title: new title
    description: new description
    notes: new notes
    comment: a comment to add
    """
    return beads.update(c.town, c.actor, bead_id, status=status, priority=priority, assignee=assignee,
                        title=title, description=description, notes=notes, comment=comment)


@tool(Kind.CHANGE)
def bead_close(c: Call, bead_id: str, reason: str = "") -> beads.Bead:
    """Close a bead; lands convoys it completes.

    bead_id: the bead to close
    reason: why it is closed
    """
    return beads.close(c.town, c.actor, bead_id, reason)


@tool(Kind.MARK)
def bead_dep_add(c: Call, bead_id: str, depends_on_id: str, dep_type: str = "blocks") -> beads.Dependency:
    """bead_id depends on depends_on_id. dep_type: blocks (default), parent-child, related,
    discovered-from, tracks, conditional-blocks, waits-for, ...

    bead_id: the dependent bead
    depends_on_id: the bead it depends on (its blocker, for blocks)
    dep_type: blocks, parent-child, related, discovered-from, tracks, conditional-blocks, waits-for
    """
    return beads.dep_add(c.town, c.actor, bead_id, depends_on_id, dep_type)


@tool(Kind.READ)
def hook_check(c: Call) -> hooks.HookStatus:
    """Your hooked bead (null if none), unread mail count, and what to do next."""
    return hooks.check(c.town, c.actor)


@tool(Kind.CHANGE)
def sling(c: Call, bead_id: str, target: str, force: bool = False,
          vars: list[str] | None = None) -> beads.Bead:
    """Hook a bead onto an agent (e.g. rig/crew/name), or to a rig name: spawns a polecat.
    bead_id formula:NAME pours that formula (with vars) and hooks its root. Refused if hooked,
    in_progress, closed or in the merge queue; force: overseer only.

    bead_id: the bead to hook, or formula:NAME to pour that formula and hook the molecule's root
    target: an agent address whose hook takes it, or a rig name (spawns a polecat for it)
    force: overseer only: sling even if in_progress, closed or waiting in the merge queue
    vars: with formula:NAME, a formula variable as name=value (repeat the option for several)
    """
    return slinging.sling(c.town, c.actor, bead_id, target, force=force, vars=vars)


@tool(Kind.CHANGE)
def unsling(c: Call, bead_id: str) -> beads.Bead:
    """Take a bead off its hook, back to open.

    bead_id: the hooked bead
    """
    return slinging.unsling(c.town, c.actor, bead_id)


@tool(Kind.ADD)
def mail_send(c: Call, to: str, subject: str, body: str = "", reply_to: str | None = None,
              idempotency_key: str | None = None) -> mail.Message:
    """Durable mail to an address. Protocol subjects begin POLECAT_DONE, MERGE_READY, MERGED,
    REWORK_REQUEST, ESCALATION, HELP, HANDOFF or NUDGE. A reused idempotency_key returns the
    first message.

    to: the recipient's address, e.g. mayor or gt/witness
    subject: one line; protocol messages begin with their kind
    body: the message text
    reply_to: id of the message this answers
    idempotency_key: a key that makes a retried send return the first message
    """
    return mail.send(c.town, c.actor, to, subject, body, reply_to, idempotency_key)


@tool(Kind.READ)
def mail_inbox(c: Call, unread_only: bool = True, limit: int = 20, address: str | None = None,
               before: str | None = None, after: str | None = None,
               order: str | None = None) -> mail.InboxPage:
    """Your unread mail oldest first (unread_only false: all, newest first). Page: pass
    next_cursor as after (oldest) or before (newest). Bodies are previews (mail_read: full).

    unread_only: only unread messages (--no-unread-only: all, newest first)
    limit: at most this many messages (1 to 1000 per page)
    address: whose mailbox (overseer only; default: the actor's)
    before: only messages before this one (a message id, e.g. a next_cursor) or this RFC 3339 time
    after: only messages after this one (a message id, e.g. a next_cursor) or this RFC 3339 time
    order: oldest or newest first (default: oldest for unread, newest for all)
    """
    return mail.inbox_page(c.town, c.actor, unread_only, limit, address, before, after, order)


@tool(Kind.MARK)
def mail_read(c: Call, message_id: str) -> mail.Message:
    """A message in full; marks it read.

    message_id: the message's id
    """
    return mail.read(c.town, c.actor, message_id)


@tool(Kind.MARK)
def mail_ack(c: Call, message_id: str) -> mail.AckState:
    """Acknowledge a message as handled.

    message_id: the message's id
    """
    return mail.ack(c.town, c.actor, message_id)


@tool(Kind.CHANGE)
def polecat_done(c: Call, status: str = "COMPLETED", summary: str = "") -> polecat.MergeRequest:
    """Finish your hooked work: COMPLETED (needs commits, every step done) queues a merge;
    ESCALATED asks for help; DEFERRED hands it back. Mails your witness.

    status: COMPLETED, ESCALATED or DEFERRED
    summary: what was done (or what blocks it)
    """
    return polecat.done(c.town, c.actor, status, summary)


@tool(Kind.ADD)
def convoy_create(c: Call, title: str, bead_ids: list[str]) -> convoy.ConvoyStatus:
    """Track a batch of beads; the convoy lands when all are closed.

    title: what the batch delivers
    bead_ids: the beads to track (one or more)
    """
    return convoy.create(c.town, c.actor, title, bead_ids)


@tool(Kind.READ)
def convoy_status(c: Call, convoy_id: str) -> convoy.ConvoyStatus:
    """Closed / total beads of a convoy, and whether it landed.

    convoy_id: the convoy's id
    """
    return convoy.status(c.town, convoy_id)


@tool(Kind.READ)
def convoy_list(c: Call, include_landed: bool = False) -> ConvoyList:
    """Convoys, open ones only unless include_landed.

    include_landed: list landed convoys too
    """
    return ConvoyList(convoys=convoy.list_convoys(c.town, include_landed))


@tool(Kind.SYNC, blocking=True)
def rig_sync(c: Call, rig: str) -> rigs.SyncResult:
    """Fetch a rig's upstream into its canonical clone and fast-forward its default branch, as
    every polecat spawn does first. Fails (nothing moved) if the fetch fails or it diverged.

    rig: the rig to sync (vermas-runner rig list shows them)
    """
    return rigs.sync(c.town, rig)


@tool(Kind.READ)
def mq_list(c: Call, rig: str | None = None, state: str | None = None, limit: int = 50) -> mq.QueueView:
    """A rig's merge queue (default: every rig's): requests oldest first, each queue's lease and pause.

    rig: only this rig's queue
    state: open (every unfinished state), queued, claimed, testing, merged, rework, conflict, rejected or failed
    limit: at most this many requests, the newest (1-500)
    """
    return mq.view(c.town, rig, state, validate.limit(limit, 500))


@tool(Kind.READ)
def mq_show(c: Call, mr_id: str) -> ledger.MRDetail:
    """A merge request with every state change and its evidence (SHAs, command, exit, output tail).

    mr_id: the merge request's id (mq list shows them)
    """
    return ledger.show(c.town, mr_id)


@tool(Kind.CHANGE)
def mq_retry(c: Call, mr_id: str) -> ledger.MergeRequestRow:
    """Queue a rework, conflict or failed merge request again (its backoff reset).

    mr_id: the merge request to retry
    """
    return mq.retry(c.town, c.actor, mr_id)


@tool(Kind.CHANGE)
def mq_reject(c: Call, mr_id: str, reason: str) -> ledger.MergeRequestRow:
    """Reject a merge request for good, with the reason (its branch is kept).

    mr_id: the merge request to reject
    reason: why, for the polecat's witness and the record
    """
    return mq.reject(c.town, c.actor, mr_id, reason)


@tool(Kind.CHANGE)
def mq_resume(c: Call, rig: str) -> ledger.RigQueue:
    """Resume a rig's queue paused on a red target (the refinery re-tests the target first).

    rig: the rig whose queue to resume
    """
    return mq.resume(c.town, c.actor, rig)


@tool(Kind.READ)
def town_status(c: Call) -> town_state.TownStatus:
    """Beads by status, hooked agents, unread mail per agent, open convoys."""
    return town_state.town_status(c.town)


@tool(Kind.ADD, blocking=True)
def nudge(c: Call, target: str, message: str) -> nudging.NudgeResult:
    """Type a one-line message into an agent's Claude Code session, submitted exactly once
    when its prompt is idle; if it stays busy the text is queued as NUDGE mail.

    target: the agent's address, e.g. mayor or gt/polecats/nux
    message: the text to type (one line: tabs and newlines become spaces; no control characters)
    """
    address = parse_address(target)
    message = validate.nudge_text(message)
    permissions.require(c.actor, Action.NUDGE, Target(recipient=str(address)))
    from vermas.sessions import TownSessions  # deferred: tmux (libtmux) only when a nudge is sent

    return nudging.nudge(c.town, TownSessions(c.town.root), address, message, sender=str(c.actor),
                         idle_timeout=c.nudge_wait)


def _inspector(c: Call) -> Inspector:
    from vermas.inspector.pipeline import Inspector  # deferred: ~150 ms of imports, only when verifying

    if c.actor.role is Role.POLECAT:
        raise Forbidden(f"{c.actor} is a polecat; polecats do not verify work (their own least of all): "
                        "the refinery does, or the mayor/overseer")
    return Inspector(c.town, str(c.actor), progress=c.progress)


@tool(Kind.SPEC, progress=True)
async def verify_spec(c: Call, bead_id: str, refresh: bool = False) -> SpecRecord:
    """Designer: the bead's Specification (acceptance criteria, objective or subjective), also
    written to its acceptance_criteria. Reuses the stored spec while the bead is unchanged
    unless refresh.

    bead_id: the bead to specify
    refresh: write a new spec even if the bead is unchanged
    """
    return await _inspector(c).spec(bead_id, refresh)


@tool(Kind.PLAN, progress=True)
async def verify_plan(c: Call, bead_id: str, refresh: bool = False, worktree: str | None = None) -> PlanRecord:
    """Strategist: shell tests (exit 0 = pass) for the bead's current Specification. Reuses the
    stored plan while the spec is unchanged unless refresh. worktree: a checkout to read paths from.

    bead_id: the bead to plan tests for
    refresh: plan anew even if the spec is unchanged
    worktree: a git checkout the planner may read paths from
    """
    return await _inspector(c).plan(bead_id, refresh, worktree)


@tool(Kind.RUN, progress=True)
async def verify_run(c: Call, bead_id: str, worktree: str | None = None) -> TestRun:
    """Verifier: run the bead's planned tests now in the candidate work tree (default: the work
    tree of its latest merge request); evidence for every test (output clipped). No model, no cache.

    bead_id: the bead whose planned tests run
    worktree: the candidate's git checkout (default: its latest merge request's worktree)
    """
    return (await _inspector(c).run(bead_id, worktree)).compact()


@tool(Kind.PIPELINE, progress=True)
async def verify_bead(c: Call, bead_id: str, worktree: str | None = None,
                      level: str | None = None) -> VerificationReport:
    """The whole pipeline: spec, plan, tests, then Auditor/panel where the policy needs them.
    level: shell|audit|full (default: the rig's verify_level). Unchanged commits are cached.

    bead_id: the bead to verify
    worktree: the candidate's git checkout (default: its latest merge request's worktree)
    level: shell, audit or full (default: the rig's verify_level)
    """
    return (await _inspector(c).verify(bead_id, worktree, level)).compact()


def _formula_rig(c: Call, rig: str | None) -> str | None:
    """The rig whose canonical clone is looked at first: the one named (it must exist), else
    the actor's when it has one."""
    c.town.require_rig(rig)
    rig = rig or c.actor.rig
    return rig if rig in c.town.config.rigs else None


class FormulaList(BaseModel):
    formulas: list[formulas.FormulaInfo]


@tool(Kind.READ)
def formula_list(c: Call, rig: str | None = None) -> FormulaList:
    """Formulas available: the rig's .beads/formulas, the town's, then vermas's built-ins.

    rig: look in this rig's canonical clone first (default: the actor's rig)
    """
    return FormulaList(formulas=formulas.list_formulas(*molecule.places(c.town, _formula_rig(c, rig))))


@tool(Kind.READ)
def formula_show(c: Call, formula: str, vars: list[str] | None = None, rig: str | None = None) -> formulas.Proto:
    """A formula cooked with vars: the resolved steps mol_pour would write (writes nothing).

    formula: the formula's name (see formula_list)
    vars: a formula variable as name=value (repeat the option for several)
    rig: look in this rig's canonical clone first (default: the actor's rig)
    """
    return molecule.cook_named(c.town, formula, formulas.parse_vars(vars), _formula_rig(c, rig))


@tool(Kind.ADD)
def mol_pour(c: Call, formula: str, vars: list[str] | None = None, hook: str | None = None,
             rig: str | None = None, wisp: bool = False) -> molecule.MoleculeStatus:
    """Pour a formula as a molecule: a root bead and one bead per step; hook: an agent to hold it.
    wisp: ephemeral, never exported, deleted once squashed, burned or closed a while.

    formula: the formula's name (see formula_list)
    vars: a formula variable as name=value (repeat the option for several)
    hook: agent address whose hook takes the root (the walker)
    rig: rig whose prefix the ids take, and whose formulas are looked at first
    wisp: pour an ephemeral molecule (patrols, scratch checklists): no JSONL rows, swept when closed
    """
    proto = molecule.cook_named(c.town, formula, formulas.parse_vars(vars), _formula_rig(c, rig))
    return molecule.pour(c.town, c.actor, proto, hook=hook, rig=rig, wisp=wisp)


@tool(Kind.READ)
def mol_status(c: Call, root: str | None = None) -> molecule.MoleculeStatus:
    """A molecule's checklist (done/current/ready/blocked), current step in full.

    root: the molecule's root bead (default: the one on your hook)
    """
    return molecule.status(c.town, c.actor, root)


@tool(Kind.CHANGE)
def mol_step_done(c: Call, step_id: str, summary: str = "") -> molecule.StepDone:
    """Close a step of your hooked molecule; returns the next step.

    step_id: the step's id in the formula, or its bead id
    summary: what was done (kept as the step's outcome)
    """
    return molecule.step_done(c.town, c.actor, step_id, summary)


@tool(Kind.CHANGE)
def mol_squash(c: Call, root: str, summary: str = "") -> beads.Bead:
    """Close a molecule into one digest bead: the summary and each step's outcome.

    root: the molecule's root bead
    summary: what the molecule achieved
    """
    return molecule.squash(c.town, c.actor, root, summary)


@tool(Kind.CHANGE)
def mol_burn(c: Call, root: str, force: bool = False) -> molecule.Removed:
    """Discard a molecule with no record; refused if a step is done, unless force.

    root: the molecule's root bead
    force: discard even though steps are done
    """
    return molecule.burn(c.town, c.actor, root, force)


@tool(Kind.READ)
async def verify_report(c: Call, bead_id: str, full: bool = False) -> VerificationReport:
    """The bead's latest verification report (any role may read it). Test output is clipped
    (1 KB per pass, 8 KB per failure) unless full (up to 64 KB per test).

    bead_id: the verified bead
    full: test output up to 64 KB per test instead of clipped
    """
    from vermas.inspector.pipeline import Inspector  # deferred: as in _inspector

    report = Inspector(c.town, str(c.actor)).report(bead_id)
    return report if full else report.compact()
