"""The stand-in Anthropic model server, so the real Claude Code CLI can be tested offline.

Split along its seams: `request` (the parsed Messages API request; wire protocol and usage are
described there), `policies` (scripted "models"), `polecat` (the stand-in polecat, scripted by
its bead's text), `wire` (JSON and SSE responses), `server`
(the HTTP server and its command line) and `claude` (running the real CLI against it).
"""

from vermas.testing.standin.claude import REPO_ROOT, claude_env, find_claude_binary, write_claude_home
from vermas.testing.standin.policies import (
    PerSessionPolicy,
    PlannedPolicy,
    RoutingPolicy,
    ScriptedPolicy,
    Step,
    step_blocks,
    structured_blocks,
    system_contains,
)
from vermas.testing.standin.polecat import BeadScript, polecat_policy
from vermas.testing.standin.request import (
    DEFERRED_TOOLS_MARKER,
    DUMMY_API_KEY,
    STRUCTURED_OUTPUT_ENFORCE,
    STRUCTURED_OUTPUT_TOOL,
    TOOL_SEARCH_TOOL,
    Block,
    ModelRequest,
    Policy,
    ToolCall,
    auxiliary_reply,
    example_for_schema,
    text_block,
    tool_use_block,
)
from vermas.testing.standin.server import PolicyError, StandinModelServer, main
from vermas.testing.standin.wire import message_json, sse_events

__all__ = [
    "DEFERRED_TOOLS_MARKER", "DUMMY_API_KEY", "REPO_ROOT", "STRUCTURED_OUTPUT_ENFORCE",
    "STRUCTURED_OUTPUT_TOOL", "TOOL_SEARCH_TOOL", "BeadScript", "Block", "ModelRequest", "PerSessionPolicy",
    "PlannedPolicy", "Policy", "PolicyError", "RoutingPolicy", "ScriptedPolicy", "StandinModelServer", "Step",
    "ToolCall", "auxiliary_reply", "claude_env", "example_for_schema", "find_claude_binary", "main",
    "message_json", "polecat_policy", "sse_events", "step_blocks", "structured_blocks", "system_contains",
    "text_block", "tool_use_block", "write_claude_home",
]
