"""The vermas MCP server: one per Claude Code session, acting as one agent address.

Tools are thin: validate (the core does it), call the core, return a pydantic model so
Claude Code receives structured content. Domain errors become tool errors whose text
tells the model what was wrong and what is allowed.
"""

import functools

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.types import ToolAnnotations
from pydantic import BaseModel

from vermas import beads, convoy, hooks, mail, polecat
from vermas import nudge as nudging
from vermas import sling as slinging
from vermas import status as town_state
from vermas.addresses import Address, parse_address
from vermas.errors import InvalidInput
from vermas.town import Town
from vermas_mcp.profiles import PROFILES
from vermas_mcp.registry import Binding, registrar
from vermas_mcp.schema import shallow_output, slim
from vermas_mcp.verify_tools import register_verify_tools

INSTRUCTIONS = (
    "vermas: Gas Town for Claude Code. Start with hook_check: if your hook has work, do it now "
    "(GUPP). Mail is durable; mail_read marks read, mail_ack marks handled."
)


class BeadList(BaseModel):
    beads: list[beads.BeadSummary]


class MessageList(BaseModel):
    messages: list[mail.Message]


class ConvoyList(BaseModel):
    convoys: list[convoy.ConvoyStatus]


# Only hints that differ from MCP's defaults (read-only false, destructive true, idempotent
# false, open-world true) are sent: each byte is repeated in every session's tools/list.
READ = ToolAnnotations(read_only_hint=True, open_world_hint=False)
ADD = ToolAnnotations(destructive_hint=False, open_world_hint=False)
CHANGE = ToolAnnotations(open_world_hint=False)
MARK = ToolAnnotations(destructive_hint=False, idempotent_hint=True, open_world_hint=False)


def build_server(town: Town, actor: Address, profile: str = "all") -> MCPServer:
    """An MCP server exposing `profile`'s tools to `actor` in `town`."""
    server, binding = build_template(profile)
    binding.bind(town, actor)
    return server


def build_template(profile: str = "all") -> tuple[MCPServer, Binding]:
    """A server with `profile`'s tools whose town and actor are bound later (see Binding)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; allowed: {', '.join(PROFILES)}")
    enabled = set(PROFILES[profile])
    server = MCPServer(name="vermas", instructions=INSTRUCTIONS, log_level="WARNING")
    b = Binding()
    tool = registrar(server, enabled)

    @tool(ADD)
    def bead_create(title: str, description: str = "", issue_type: str = "task", priority: int = 2,
                    labels: list[str] | None = None, parent: str | None = None,
                    acceptance_criteria: str = "", rig: str | None = None) -> beads.Bead:
        """New bead. issue_type: task|bug|feature|epic|chore|decision|docs; priority 0-4 (0 =
        critical); parent: makes <parent>.N; rig: use that rig's prefix (default: yours)."""
        return beads.create(b.town, b.actor, title, description, issue_type, priority, labels, parent,
                            rig=rig, acceptance_criteria=acceptance_criteria)

    @tool(READ)
    def bead_show(bead_id: str) -> beads.BeadDetail:
        """A bead in full, with dependencies, dependents, comments."""
        return beads.show(b.town, bead_id)

    @tool(READ)
    def bead_list(status: str | None = None, issue_type: str | None = None,
                  assignee: str | None = None, label: str | None = None, limit: int = 50) -> BeadList:
        """Beads matching all given filters, newest first."""
        return BeadList(beads=beads.list_beads(b.town, status, issue_type, assignee, label, limit))

    @tool(READ)
    def bead_ready(limit: int = 20) -> BeadList:
        """Open beads with no open blocker, by priority then age (bd's ready rule)."""
        return BeadList(beads=beads.ready(b.town, limit))

    @tool(CHANGE)
    def bead_update(bead_id: str, status: str | None = None, priority: int | None = None,
                    assignee: str | None = None, title: str | None = None,
                    description: str | None = None, notes: str | None = None,
                    comment: str | None = None) -> beads.Bead:
        """Change a bead's fields; comment adds a comment. A hooked bead's status changes only
        via unsling or polecat_done."""
        return beads.update(b.town, b.actor, bead_id, status=status, priority=priority, assignee=assignee,
                            title=title, description=description, notes=notes, comment=comment)

    @tool(CHANGE)
    def bead_close(bead_id: str, reason: str = "") -> beads.Bead:
        """Close a bead; lands convoys it completes."""
        return beads.close(b.town, b.actor, bead_id, reason)

    @tool(MARK)
    def bead_dep_add(bead_id: str, depends_on_id: str, dep_type: str = "blocks") -> beads.Dependency:
        """bead_id depends on depends_on_id. dep_type: blocks (default), parent-child, related,
        discovered-from, tracks, conditional-blocks, waits-for, ..."""
        return beads.dep_add(b.town, b.actor, bead_id, depends_on_id, dep_type)

    @tool(READ)
    def hook_check() -> hooks.HookStatus:
        """Your hooked bead (null if none), unread mail count, and what to do next."""
        return hooks.check(b.town, b.actor)

    @tool(CHANGE)
    def sling(bead_id: str, target: str, force: bool = False) -> beads.Bead:
        """Hook a bead onto an agent (e.g. rig/crew/name) or spawn a polecat (target: a rig).
        Refused if hooked, in_progress, closed or in the merge queue; force: overseer only."""
        return slinging.sling(b.town, b.actor, bead_id, target, force=force)

    @tool(CHANGE)
    def unsling(bead_id: str) -> beads.Bead:
        """Take a bead off its hook, back to open."""
        return slinging.unsling(b.town, b.actor, bead_id)

    @tool(ADD)
    def mail_send(to: str, subject: str, body: str = "", reply_to: str | None = None,
                  idempotency_key: str | None = None) -> mail.Message:
        """Durable mail to an agent address. Protocol subjects begin POLECAT_DONE, MERGE_READY,
        MERGED, REWORK_REQUEST, ESCALATION, HELP, HANDOFF or NUDGE. A reused idempotency_key
        returns the first message."""
        return mail.send(b.town, b.actor, to, subject, body, reply_to, idempotency_key)

    @tool(READ)
    def mail_inbox(unread_only: bool = True, limit: int = 20, address: str | None = None) -> MessageList:
        """Your mail, not marked read: unread oldest first, or all newest first. Bodies are
        previews (mail_read: full). address: overseer only."""
        return MessageList(messages=mail.inbox(b.town, b.actor, unread_only, limit, address))

    @tool(MARK)
    def mail_read(message_id: str) -> mail.Message:
        """A message in full; marks it read."""
        return mail.read(b.town, b.actor, message_id)

    @tool(MARK)
    def mail_ack(message_id: str) -> mail.AckState:
        """Acknowledge a message as handled."""
        return mail.ack(b.town, b.actor, message_id)

    @tool(CHANGE)
    def polecat_done(status: str = "COMPLETED", summary: str = "") -> polecat.MergeRequest:
        """Finish your hooked work: COMPLETED (needs commits) queues a merge request, ESCALATED
        asks for help, DEFERRED hands it back. Mails your witness."""
        return polecat.done(b.town, b.actor, status, summary)

    @tool(ADD)
    def convoy_create(title: str, bead_ids: list[str]) -> convoy.ConvoyStatus:
        """Track a batch of beads; the convoy lands when all are closed."""
        return convoy.create(b.town, b.actor, title, bead_ids)

    @tool(READ)
    def convoy_status(convoy_id: str) -> convoy.ConvoyStatus:
        """Closed / total beads of a convoy, and whether it landed."""
        return convoy.status(b.town, convoy_id)

    @tool(READ)
    def convoy_list(include_landed: bool = False) -> ConvoyList:
        """Convoys, open ones only unless include_landed."""
        return ConvoyList(convoys=convoy.list_convoys(b.town, include_landed))

    @tool(READ)
    def town_status() -> town_state.TownStatus:
        """Beads by status, hooked agents, unread mail per agent, open convoys."""
        return town_state.town_status(b.town)

    @tool(ADD)
    async def nudge(target: str, message: str) -> nudging.NudgeResult:
        """Type a one-line message into an agent's Claude Code session, submitted exactly once
        when its prompt is idle; if it stays busy the text is queued as NUDGE mail."""
        address = parse_address(target)
        if not message.strip() or len(message) > nudging.MAX_CHARS:
            raise InvalidInput(f"message must be 1 to {nudging.MAX_CHARS} characters")
        from vermas.sessions import TownSessions  # tmux only when a nudge is sent

        # Waiting for an idle prompt takes seconds: keep the event loop free meanwhile.
        return await anyio.to_thread.run_sync(functools.partial(
            nudging.nudge, b.town, TownSessions(b.town.root), address, message, sender=str(b.actor),
            idle_timeout=15.0))

    register_verify_tools(server, b, enabled)
    _slim_schemas(server)
    return server, b


def _slim_schemas(server: MCPServer) -> None:
    """Publish slimmer schemas (same validation, fewer bytes in every session's context)."""
    for registered in server._tool_manager.list_tools():  # the SDK has no public hook for this
        registered.parameters = slim(registered.parameters)
        if registered.fn_metadata.output_schema is not None:
            registered.fn_metadata.output_schema = shallow_output(registered.fn_metadata.output_schema)

