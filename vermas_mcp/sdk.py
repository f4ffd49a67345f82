"""Every use of the MCP SDK's private internals, in one place (mcp 2.3; see pyproject's pin).

The SDK has no public way to do these two things; when it gains one, only this file changes.
Each access says why it is needed and what the public API lacks.
"""

from __future__ import annotations

from typing import Any

from mcp.server.mcpserver import MCPServer


def registered_tools(server: MCPServer) -> list[Any]:
    """The registered Tool objects, so their published schemas can be slimmed in place.

    Why private: `MCPServer.list_tools()` returns copies (mcp.types.Tool) built from these on
    every request; editing the copies changes nothing, and `add_tool` takes no schema."""
    return list(server._tool_manager.list_tools())


def lowlevel_server(server: MCPServer) -> Any:
    """The low-level Server behind an MCPServer, to run it over our own stdio transport.

    Why private: `run_stdio_async()` always uses the SDK's stdio_server on sys.stdin/stdout;
    there is no public way to hand an MCPServer other streams."""
    return server._lowlevel_server
