"""What every vermas tool module shares: the binding of a server to its town and actor,
the domain-error edge, and registration limited to the actor's profile.

The binding is filled in after the server is built, so the town's MCP zygote can build
each role's server once and fork children that only bind (building takes ~100 ms).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations

from vermas.addresses import Address
from vermas.errors import VermasError
from vermas.town import Town

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class Binding:
    """Who the tools act as and in which town; set once per served process."""

    _town: Town | None = field(default=None, repr=False)
    _actor: Address | None = None

    def bind(self, town: Town, actor: Address) -> "Binding":
        self._town, self._actor = town, actor
        return self

    @property
    def town(self) -> Town:
        if self._town is None:
            raise RuntimeError("server not bound to a town yet")
        return self._town

    @property
    def actor(self) -> Address:
        if self._actor is None:
            raise RuntimeError("server not bound to an actor yet")
        return self._actor


def edge(fn: F) -> F:
    """Map domain exceptions to tool errors carrying their actionable message.

    The wrapper is async; a sync core call runs inline: store calls take well under a
    millisecond, and a stdio server has one client, so the SDK's worker-thread hop for
    sync tools would cost more than the work itself.
    """
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return await fn(*args, **kwargs)
            except VermasError as exc:
                raise ToolError(str(exc)) from exc

    else:

        @functools.wraps(fn)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except VermasError as exc:
                raise ToolError(str(exc)) from exc

    return wrapper  # type: ignore[return-value]


def registrar(server: MCPServer, enabled: set[str]) -> Callable[[ToolAnnotations], Callable[[F], F]]:
    """`@tool(annotations)`: register a function as a tool if the profile includes it, with
    its docstring folded to one line (bytes in tools/list are paid in every session)."""

    def tool(annotations: ToolAnnotations) -> Callable[[F], F]:
        def register(fn: F) -> F:
            if fn.__name__ in enabled:
                description = " ".join((fn.__doc__ or "").split())
                server.tool(annotations=annotations, description=description)(edge(fn))
            return fn

        return register

    return tool
