"""Prime: the markdown a Claude Code SessionStart hook prints, so an agent starts knowing
who it is, what is on its hook, and what mail waits (the first turn may not see MCP tools
yet, so this context must not depend on them)."""

from __future__ import annotations

from vermas import hooks, mail
from vermas.molecules import molecule
from vermas.addresses import Address
from vermas.town import Town


def prime(town: Town, actor: Address) -> str:
    status = hooks.check(town, actor)
    out = [f"# vermas: you are `{actor}` ({actor.role.value}) in town `{town.config.name}`", ""]
    bead = status.bead
    if bead is not None:
        out += [f"## Hooked work: {bead.id} — {bead.title}", "",
                f"- priority P{bead.priority}, type {bead.issue_type}, status {bead.status}"]
        for label, text in (("Description", bead.description), ("Acceptance criteria",
                            bead.acceptance_criteria), ("Notes", bead.notes)):
            if text:
                out += ["", f"### {label}", "", text]
        blockers = [d.depends_on_id for d in bead.dependencies if d.type in ("blocks", "parent-child")]
        if blockers:
            out += ["", "Depends on: " + ", ".join(blockers)]
        if status.molecule is not None:
            out += ["", f"### Checklist (molecule {status.molecule.root}, formula {status.molecule.formula})", "",
                    *molecule.checklist(status.molecule)]
        if status.sent_back is not None:
            sent = status.sent_back
            out += ["", f"### Sent back by the refinery: {sent.merge_request} is {sent.state} "
                        f"(commit {sent.commit[:12]})", "", "```", sent.evidence or "(no evidence recorded)", "```"]
        out += ["", f"**{status.instructions}**"]
    else:
        out += ["## Hook empty", "", status.instructions]
    if status.unread_mail:
        out += ["", f"## Unread mail ({status.unread_mail})", ""]
        for msg in mail.inbox(town, actor, unread_only=True, limit=10):
            out.append(f"- `{msg.id}` from {msg.sender}: **{msg.subject}**")
        out.append("")
        out.append("Read with mail_read(message_id); acknowledge handled mail with mail_ack.")
    return "\n".join(out) + "\n"
