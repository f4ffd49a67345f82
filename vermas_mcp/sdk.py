"""Every use of the MCP SDK's private internals, in one place (mcp 2.3; see pyproject's pin).

The SDK has no public way to do these two things; when it gains one, only this file changes.
Each access says why it is needed and what the public API lacks.
"""

from __future__ import annotations

import json
import typing
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.utilities.func_metadata import FuncMetadata
from pydantic import ValidationError

from vermas.validate import pydantic_problems

# The key under which a refused call's reason reaches the tool function (see StrictArguments).
REFUSAL = "_vermas_refusal"


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


class StrictArguments(FuncMetadata):
    """The SDK's argument handling with two of its leniencies removed.

    - An unknown parameter is refused (the SDK drops it silently, so `prority=0` would
      create a bead at the default priority and report success).
    - A string that looks like JSON is parsed only for list parameters (Claude Desktop sends
      lists as JSON text); the SDK also parsed it for `str | None` ones, so
      `bead_update(title='["draft"]')` was refused as "not a string".
    A refusal is handed to the tool function under REFUSAL, which raises it as a tool error:
    raised here, the SDK would turn any exception but a ValidationError into a bare
    "Error executing tool X"."""

    def validate_arguments(self, arguments_to_validate: dict[str, Any]) -> dict[str, Any]:
        fields = self.arg_model.model_fields
        unknown = sorted(k for k in arguments_to_validate if k not in fields)
        if unknown:
            allowed = ", ".join(fields) or "none"
            return {REFUSAL: f"unknown parameter {unknown[0][:40]!r}; allowed: {allowed}"}
        try:
            return super().validate_arguments(arguments_to_validate)
        except ValidationError as exc:
            return {REFUSAL: f"invalid arguments: {pydantic_problems(exc)}"}

    def pre_parse_json(self, data: dict[str, Any]) -> dict[str, Any]:
        parsed = dict(data)
        for name, value in data.items():
            info = self.arg_model.model_fields.get(name)
            if info is None or not isinstance(value, str) or not _is_list(info.annotation):
                continue
            try:
                decoded = json.loads(value)
            except (ValueError, RecursionError):
                continue
            if isinstance(decoded, list):
                parsed[name] = decoded
        return parsed


def _is_list(annotation: Any) -> bool:
    if typing.get_origin(annotation) is list:
        return True
    return any(_is_list(a) for a in typing.get_args(annotation))


def strict_arguments(server: MCPServer) -> None:
    """Give every registered tool StrictArguments.

    Why private: the SDK has no hook for argument validation; `Tool.fn_metadata` is the
    object its `run` asks, so each tool's is replaced by an equal one of the subclass."""
    for registered in registered_tools(server):
        old = registered.fn_metadata
        registered.fn_metadata = StrictArguments.model_construct(
            **{name: getattr(old, name) for name in FuncMetadata.model_fields})
