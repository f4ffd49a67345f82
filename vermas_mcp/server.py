"""The vermas MCP server: one per Claude Code session, acting as one agent address.

Tools are defined once, in vermas/tools.py (shared with the runner's shell twins); this
module registers the actor's profile of them. Each is thin: validate (pydantic, from the
signature), call the core, return a pydantic model so Claude Code receives structured
content. Domain errors become tool errors whose text tells the model what was wrong and
what is allowed.
"""

from mcp.server.mcpserver import MCPServer

from vermas.addresses import Address
from vermas.tools import TOOLS
from vermas.town import Town
from vermas_mcp.profiles import PROFILES
from vermas_mcp.registry import Binding, register
from vermas_mcp.schema import shallow_output, slim
from vermas_mcp.sdk import registered_tools, strict_arguments

INSTRUCTIONS = (
    "vermas: Gas Town for Claude Code. Start with hook_check: if your hook has work, do it now "
    "(GUPP). Mail is durable; mail_read marks read, mail_ack marks handled."
)


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
    for spec in TOOLS.values():  # the registry's order is tools/list's order
        if spec.name in enabled:
            register(server, spec, b)
    _slim_schemas(server)
    strict_arguments(server)
    return server, b


def _slim_schemas(server: MCPServer) -> None:
    """Publish slimmer schemas (same validation, fewer bytes in every session's context)."""
    for registered in registered_tools(server):
        registered.parameters = slim(registered.parameters)
        if registered.fn_metadata.output_schema is not None:
            registered.fn_metadata.output_schema = shallow_output(registered.fn_metadata.output_schema)

