"""The VerMAS inspector's MCP tools: verify_spec, verify_plan, verify_run, verify_bead,
verify_report.

Thin like the rest of the server: validate, call vermas.inspector, return pydantic models
(structured content). Domain errors become ToolErrors carrying their actionable message.
Slow tools report progress (tests run, model calls made) through the MCP progress mechanism,
so a client that asked for progress sees the pipeline move.
"""

from __future__ import annotations

from mcp.server.mcpserver import Context, MCPServer
from mcp.types import ToolAnnotations

from vermas.addresses import Role
from vermas.errors import Forbidden
from vermas.inspector.models import TestRun, VerificationReport
from vermas.inspector.pipeline import Inspector, ProgressSink
from vermas.inspector.records import PlanRecord, SpecRecord
from vermas_mcp.registry import Binding, registrar

TOOLS = ("verify_spec", "verify_plan", "verify_run", "verify_bead", "verify_report")

# Only hints that differ from MCP's defaults (read-only false, destructive true, idempotent
# false, open-world true) are sent, as in server.py: every byte is repeated in every session.
SPEC = ToolAnnotations(idempotent_hint=True)  # calls the model; rewrites acceptance_criteria
PLAN = ToolAnnotations(destructive_hint=False, idempotent_hint=True)  # calls the model; stores a plan
RUN = ToolAnnotations(destructive_hint=False, idempotent_hint=True, open_world_hint=False)  # shell tests only
BEAD = ToolAnnotations(destructive_hint=False, idempotent_hint=True)  # whole pipeline, cached per commit
READ = ToolAnnotations(read_only_hint=True, open_world_hint=False)


def _sink(ctx: Context | None) -> ProgressSink | None:
    if ctx is None:
        return None

    async def report(progress: float, total: float | None, message: str) -> None:
        await ctx.report_progress(progress, total, message)

    return report


def register_verify_tools(server: MCPServer, b: Binding, enabled: set[str]) -> None:
    """Register the inspector tools that are in `enabled` (the actor's profile)."""
    tool = registrar(server, enabled)

    def inspector(ctx: Context | None) -> Inspector:
        if b.actor.role is Role.POLECAT:
            raise Forbidden(f"{b.actor} is a polecat; polecats do not verify work (their own least of all): "
                            "the refinery does, or the mayor/overseer")
        return Inspector(b.town, str(b.actor), progress=_sink(ctx))

    @tool(SPEC)
    async def verify_spec(bead_id: str, refresh: bool = False, ctx: Context | None = None) -> SpecRecord:
        """Designer: the bead's Specification (acceptance criteria, objective or subjective), also
        written to its acceptance_criteria. Reuses the stored spec while the bead is unchanged
        unless refresh."""
        return await inspector(ctx).spec(bead_id, refresh)

    @tool(PLAN)
    async def verify_plan(bead_id: str, refresh: bool = False, worktree: str | None = None,
                          ctx: Context | None = None) -> PlanRecord:
        """Strategist: shell tests (exit 0 = pass) for the bead's current Specification. Reuses the
        stored plan while the spec is unchanged unless refresh. worktree: a checkout to read paths from."""
        return await inspector(ctx).plan(bead_id, refresh, worktree)

    @tool(RUN)
    async def verify_run(bead_id: str, worktree: str | None = None, ctx: Context | None = None) -> TestRun:
        """Verifier: run the bead's planned tests now in the candidate work tree (default: the work
        tree of its latest merge request); evidence for every test (output clipped). No model, no cache."""
        return (await inspector(ctx).run(bead_id, worktree)).compact()

    @tool(BEAD)
    async def verify_bead(bead_id: str, worktree: str | None = None, level: str | None = None,
                          ctx: Context | None = None) -> VerificationReport:
        """The whole pipeline: spec, plan, tests, then Auditor/panel where the policy needs them.
        level: shell|audit|full (default: the rig's verify_level). Unchanged commits are cached."""
        return (await inspector(ctx).verify(bead_id, worktree, level)).compact()

    @tool(READ)
    async def verify_report(bead_id: str, full: bool = False) -> VerificationReport:
        """The bead's latest verification report (any role may read it). Test output is clipped
        (1 KB per pass, 8 KB per failure) unless full (up to 64 KB per test)."""
        report = Inspector(b.town, str(b.actor)).report(bead_id)
        return report if full else report.compact()
