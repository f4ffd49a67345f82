"""Hooks: where an agent's work hangs. A bead is on X's hook when its status is `hooked`
and its assignee is X. GUPP: if your hook has work, run it."""

from __future__ import annotations

from pydantic import BaseModel

from vermas import beads, mail
from vermas.addresses import Address, Role
from vermas.beads import hooked_id
from vermas.molecules import molecule
from vermas.molecules.molecule import MoleculeStatus
from vermas.refinery import ledger
from vermas.refinery.ledger import SentBack
from vermas.town import Town

__all__ = ["HookStatus", "check", "hooked_id"]

GUPP = {
    Role.POLECAT: (
        "GUPP: the bead above is on your hook; work it now without asking. Do the work in your "
        "worktree, commit on your branch, then call polecat_done(status='COMPLETED', summary=...). "
        "If you cannot finish, call polecat_done with ESCALATED (needs help) or DEFERRED."
    ),
    Role.CREW: "GUPP: the bead above is on your hook; work it, then close it or hand it back.",
}
MOLECULE_WORK = (
    "GUPP: the molecule above is on your hook; walk it now without asking: do the current step "
    "(molecule.current), then mol_step_done(step_id, summary), which answers with the next; "
    "repeat until next is null. "
)
DEFAULT_WORK = "GUPP: the bead above is on your hook; run it now, then report by mail."
NO_WORK = {
    Role.POLECAT: "Your hook is empty. Check mail_inbox; if nothing is there, wait for work.",
    Role.WITNESS: "No hooked work. Patrol: read mail_inbox (POLECAT_DONE, HELP) and act on it.",
    Role.REFINERY: "No hooked work. Read mail_inbox for MERGE_READY and process the merge queue.",
    Role.MAYOR: "No hooked work. Read mail_inbox, then use bead_ready and sling to dispatch.",
}


class HookStatus(BaseModel):
    bead: beads.BeadDetail | None
    unread_mail: int
    instructions: str
    molecule: MoleculeStatus | None = None  # the hooked bead is a molecule's root: its checklist
    sent_back: SentBack | None = None  # the refinery sent this bead's work back: why, with the evidence


def rework_instructions(sent: SentBack) -> str:
    """What a polecat whose work came back does (pure): the same commit is refused again."""
    return (f" The refinery sent your work back: merge request {sent.merge_request} is {sent.state} "
            f"(commit {sent.commit[:12]}); the evidence is in sent_back and in your REWORK_REQUEST mail. Fix it on "
            "your branch and commit: polecat_done refuses the same commit again.")


def check(town: Town, actor: Address) -> HookStatus:
    with town.db.read() as conn:
        bead_id = hooked_id(conn, str(actor))
        unread = mail.unread_count(conn, str(actor))
        sent = ledger.sent_back_in_txn(conn, bead_id) if bead_id and actor.role is Role.POLECAT else None
    bead = beads.show(town, bead_id) if bead_id else None
    walk = molecule.status(town, actor, bead.id) if bead is not None and bead.issue_type == molecule.MOLECULE_TYPE \
        else None
    if bead is not None:
        text = GUPP.get(actor.role, DEFAULT_WORK)
        if walk is not None:
            text = MOLECULE_WORK + (text if actor.role is Role.POLECAT else "Then report by mail.")
    else:
        text = NO_WORK.get(actor.role, "No hooked work. Read mail_inbox for requests.")
    if sent is not None:
        text += rework_instructions(sent)
    if unread:
        text += f" You have {unread} unread message(s): mail_inbox."
    return HookStatus(bead=bead, unread_mail=unread, instructions=text, molecule=walk, sent_back=sent)
