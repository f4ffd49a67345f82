"""Who may do what: every permission rule of the town, in one pure module.

Each rule is a function of the acting address, an `Action`, and the facts about the target
(a bead's holder, creator and status; a message's recipient). `decide` returns an allow/deny
`Decision` with a reason that says who may; `require` raises `Forbidden` with that reason.
The core calls `require` right where it acts, so the MCP tools and the shell obey the same
rules. Role profiles (vermas_mcp/profiles.py) only choose which tool schemas a role sees;
they are a convenience for context size, never the check.

Permission refusals are `Forbidden`; a state that forbids the change (already closed, the
hook occupied) is `Conflict` and is raised by the module that owns that state.

The rules, written once (tests/test_permissions.py checks every role x action):

- Coordinators are the mayor, the deacon and the overseer: they may edit, assign, close and
  unsling any bead.
- Reading another agent's mail (its inbox or one of its messages) is the overseer's alone:
  the overseer is the human looking over the town; the mayor and deacon coordinate by
  sending mail, and never need to read someone else's. Acknowledging is the recipient's
  alone, for everyone (an ack says "I handled it").
- A bead on someone's hook is edited (title, description, notes, priority, comments...)
  only by its holder, a coordinator, or the witness of the holder's rig (it recovers that
  rig's polecats and may annotate their work).
- A polecat edits only its own hooked bead and beads it created.
- Only coordinators set or clear assignees (everyone else hooks work through sling).
- Closing (bead_close, or bead_update with status=closed, which goes through the same
  rule): a bead hooked by someone else only by a coordinator or its holder; a polecat
  closes only beads it created; its hooked bead leaves the hook through polecat_done.
- Polecats do not sling (they mail their witness or the mayor). Unsling: the holder, the
  witness of the holder's rig, or a coordinator.
- A rig's merge queue (mq retry, reject, resume) is managed by that rig's refinery and by
  coordinators; anyone may read it (mq list, mq show).
- polecat_done is for polecats. Polecats do not run the inspector (verify_*) on anything,
  their own work least of all; anyone may read a verification report.
- Molecules: polecats do not pour them (their work arrives on the hook). A molecule's step is
  closed (mol_step_done) only by the holder of its root; squash and burn are the holder's or
  a coordinator's.
- Nudges type into another agent's session, so they go down the chain of command, written as
  data in NUDGE_REACH: the overseer nudges anyone; the mayor and deacon any agent (not the
  overseer, a person); a witness its own rig's polecats, crew and refinery; a polecat, crew
  member or refinery only its own rig's witness. Everyone else gets mail.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from pydantic import BaseModel

from vermas.addresses import COORDINATOR_ROLES, Address, Role, parse_address
from vermas.errors import Forbidden
from vermas.twins import twin

COORDINATORS = "the mayor, deacon or overseer"


class Action(StrEnum):
    """Everything an agent does that some agent may not."""

    MAIL_READ_OTHERS = "mail.read_others"  # another address's inbox, or a message sent to another
    MAIL_ACK = "mail.ack"
    BEAD_EDIT = "bead.edit"  # title, description, notes, acceptance criteria, priority, comment, status
    BEAD_ASSIGN = "bead.assign"
    BEAD_CLOSE = "bead.close"
    SLING = "sling"
    UNSLING = "unsling"
    POLECAT_DONE = "polecat.done"
    VERIFY = "verify"  # verify_spec, verify_plan, verify_run, verify_bead
    VERIFY_REPORT = "verify.report"
    MQ_MANAGE = "mq.manage"  # mq_retry, mq_reject, mq_resume on a rig's merge queue
    MOL_POUR = "mol.pour"
    MOL_STEP = "mol.step"  # mol_step_done on a molecule's step
    MOL_MANAGE = "mol.manage"  # mol_squash, mol_burn
    NUDGE = "nudge"  # type a line into another agent's session (target: recipient)


class Target(BaseModel, frozen=True):
    """The facts about what is acted on that a rule may look at."""

    bead: str | None = None
    status: str | None = None
    assignee: str | None = None
    creator: str | None = None
    recipient: str | None = None
    rig: str | None = None  # the rig whose merge queue is acted on

    @property
    def holder(self) -> str | None:
        """Who has the bead on their hook (None unless it is hooked)."""
        return self.assignee if self.status == "hooked" else None


class Decision(BaseModel, frozen=True):
    allowed: bool
    reason: str


ALLOW = Decision(allowed=True, reason="allowed")
NO_TARGET = Target()


def is_coordinator(actor: Address) -> bool:
    return actor.role in COORDINATOR_ROLES


def rig_of(address: str | None) -> str | None:
    """The rig part of a rig-scoped address string (`gt/polecats/nux` -> `gt`)."""
    return address.split("/", 1)[0] if address and "/" in address else None


def _is_rig_witness(actor: Address, address: str | None) -> bool:
    return actor.role is Role.WITNESS and address is not None and actor.rig == rig_of(address)


def _deny(reason: str) -> Decision:
    return Decision(allowed=False, reason=reason)


def _what(target: Target) -> str:
    return target.bead or "this bead"


def _mail_read_others(actor: Address, target: Target) -> Decision:
    if actor.role is Role.OVERSEER:
        return ALLOW
    whose = f"{target.recipient}'s" if target.recipient else "others'"
    return _deny(f"{actor} may read only its own mailbox, not {whose}; only the overseer reads others' mail")


def _mail_ack(actor: Address, target: Target) -> Decision:
    if target.recipient == str(actor):
        return ALLOW
    return _deny(f"only the recipient {target.recipient} acknowledges its mail; {actor} may not")


def _bead_edit(actor: Address, target: Target) -> Decision:
    if is_coordinator(actor):
        return ALLOW
    holder = target.holder
    if holder is not None and holder != str(actor) and not _is_rig_witness(actor, holder):
        return _deny(
            f"{_what(target)} is hooked by {holder}; only its holder, its rig's witness, or "
            f"{COORDINATORS} may edit it"
        )
    if actor.role is Role.POLECAT and holder != str(actor) and target.creator != str(actor):
        return _deny(
            f"{actor} is a polecat; a polecat edits only its own hooked bead and beads it created "
            f"(not {_what(target)}); mail your witness to change it"
        )
    return ALLOW


def _bead_assign(actor: Address, target: Target) -> Decision:
    if is_coordinator(actor):
        return ALLOW
    return _deny(f"only {COORDINATORS} set assignees; {actor} may not (sling puts work on a hook)")


def _bead_close(actor: Address, target: Target) -> Decision:
    holder = target.holder
    if is_coordinator(actor):
        return ALLOW
    if actor.role is Role.POLECAT:
        if holder == str(actor):
            return _deny(f"{_what(target)} is on your hook: finish it with polecat_done, not by closing it")
        if target.creator != str(actor):
            return _deny(f"{actor} is a polecat; a polecat closes only beads it created, not {_what(target)}")
        return ALLOW
    if holder is not None and holder != str(actor):
        return _deny(
            f"{_what(target)} is hooked by {holder}; only its holder or {COORDINATORS} may close it "
            f"(or {twin('unsling')} it first)"
        )
    return ALLOW


def _sling(actor: Address, target: Target) -> Decision:
    if actor.role is Role.POLECAT:
        return _deny("polecats do not sling work; mail your witness or the mayor instead")
    return ALLOW


def _unsling(actor: Address, target: Target) -> Decision:
    holder = target.holder
    if is_coordinator(actor) or (holder is not None and holder == str(actor)) or _is_rig_witness(actor, holder):
        return ALLOW
    return _deny(
        f"{actor} may not unsling {_what(target)} (held by {holder}); the holder, its witness, "
        f"{COORDINATORS} may"
    )


def _polecat_done(actor: Address, target: Target) -> Decision:
    if actor.role is Role.POLECAT:
        return ALLOW
    return _deny(f"polecat_done is for polecats; {actor} is a {actor.role.value}")


def _verify(actor: Address, target: Target) -> Decision:
    if actor.role is Role.POLECAT:
        return _deny(f"{actor} is a polecat; polecats do not verify work (their own least of all): "
                     "the refinery does, or the mayor/overseer")
    return ALLOW


def _mq_manage(actor: Address, target: Target) -> Decision:
    if is_coordinator(actor) or (actor.role is Role.REFINERY and actor.rig == target.rig):
        return ALLOW
    queue = f"{target.rig}'s merge queue" if target.rig else "a merge queue"
    return _deny(f"{actor} may not manage {queue}; its refinery or {COORDINATORS} may "
                 "(anyone may read it with mq_list / mq_show)")


def _mol_pour(actor: Address, target: Target) -> Decision:
    if actor.role is Role.POLECAT:
        return _deny("polecats do not pour molecules; their work arrives on the hook (mail your witness)")
    return ALLOW


def _mol_step(actor: Address, target: Target) -> Decision:
    if target.holder is not None and target.holder == str(actor):
        return ALLOW
    held = f"held by {target.holder}" if target.holder else "on no hook"
    return _deny(f"only the holder of molecule {_what(target)} closes its steps; it is {held}, not {actor}'s")


def _mol_manage(actor: Address, target: Target) -> Decision:
    if is_coordinator(actor) or (target.holder is not None and target.holder == str(actor)):
        return ALLOW
    return _deny(f"{actor} may not squash or burn molecule {_what(target)}; its holder "
                 f"({target.holder or 'none'}) or {COORDINATORS} may")


class Reach(StrEnum):
    """Whom a role may nudge."""

    ANYONE = "anyone"
    AGENTS = "any agent but the overseer (a person: mail them)"
    RIG_AGENTS = "its own rig's polecats, crew and refinery"
    OWN_WITNESS = "only its own rig's witness"


# Who may nudge whom (Action.NUDGE), by the nudger's role: one row per role.
NUDGE_REACH: dict[Role, Reach] = {
    Role.OVERSEER: Reach.ANYONE,
    Role.MAYOR: Reach.AGENTS,
    Role.DEACON: Reach.AGENTS,
    Role.WITNESS: Reach.RIG_AGENTS,
    Role.REFINERY: Reach.OWN_WITNESS,
    Role.POLECAT: Reach.OWN_WITNESS,
    Role.CREW: Reach.OWN_WITNESS,
}
RIG_AGENT_ROLES = frozenset({Role.POLECAT, Role.CREW, Role.REFINERY})


def within(actor: Address, target: Address, reach: Reach) -> bool:
    """Whether `target` is within `reach` of `actor` (pure)."""
    if reach is Reach.ANYONE:
        return True
    if reach is Reach.AGENTS:
        return target.role is not Role.OVERSEER
    same_rig = actor.rig is not None and target.rig == actor.rig
    if reach is Reach.RIG_AGENTS:
        return same_rig and target.role in RIG_AGENT_ROLES
    return same_rig and target.role is Role.WITNESS


def _nudge(actor: Address, target: Target) -> Decision:
    reach = NUDGE_REACH[actor.role]
    if target.recipient is not None and within(actor, parse_address(target.recipient), reach):
        return ALLOW
    return _deny(f"{actor} may not nudge {target.recipient}: a {actor.role.value} may nudge {reach.value}; "
                 f"send mail instead ({twin('mail_send')})")


def _anyone(actor: Address, target: Target) -> Decision:
    return ALLOW


RULES = {
    Action.MAIL_READ_OTHERS: _mail_read_others,
    Action.MAIL_ACK: _mail_ack,
    Action.BEAD_EDIT: _bead_edit,
    Action.BEAD_ASSIGN: _bead_assign,
    Action.BEAD_CLOSE: _bead_close,
    Action.SLING: _sling,
    Action.UNSLING: _unsling,
    Action.POLECAT_DONE: _polecat_done,
    Action.VERIFY: _verify,
    Action.VERIFY_REPORT: _anyone,
    Action.MQ_MANAGE: _mq_manage,
    Action.MOL_POUR: _mol_pour,
    Action.MOL_STEP: _mol_step,
    Action.MOL_MANAGE: _mol_manage,
    Action.NUDGE: _nudge,
}


def decide(actor: Address, action: Action, target: Target = NO_TARGET) -> Decision:
    """May `actor` do `action` to `target`? (pure; the reason says who may, when not)"""
    return RULES[action](actor, target)


def require(actor: Address, action: Action, target: Target = NO_TARGET) -> None:
    """Raise Forbidden with the rule's reason unless `actor` may do `action` to `target`."""
    decision = decide(actor, action, target)
    if not decision.allowed:
        raise Forbidden(decision.reason)


def bead_target(row: Mapping[str, Any] | sqlite3.Row) -> Target:
    """The facts of a bead row (sqlite3.Row or mapping with id/status/assignee/created_by)."""
    return Target(bead=row["id"], status=row["status"], assignee=row["assignee"], creator=row["created_by"])
