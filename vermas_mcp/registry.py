"""MCP tools built from the one tool registry (vermas/tools.py): the binding of a server to
its town and actor, the annotations of each tool kind, and the domain-error edge.

The binding is filled in after the server is built, so the town's MCP zygote can build
each role's server once and fork children that only bind (building takes ~100 ms).
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations

from vermas import events
from vermas.addresses import Address
from vermas.errors import VermasError
from vermas.tools import Call, Kind, ProgressSink, ToolSpec, report_unexpected
from vermas.town import Town
from vermas_mcp.sdk import REFUSAL

log = logging.getLogger("vermas_mcp")

# Only hints that differ from MCP's defaults (read-only false, destructive true, idempotent
# false, open-world true) are sent: each byte is repeated in every session's tools/list.
ANNOTATIONS: dict[Kind, ToolAnnotations] = {
    Kind.READ: ToolAnnotations(read_only_hint=True, open_world_hint=False),
    Kind.ADD: ToolAnnotations(destructive_hint=False, open_world_hint=False),
    Kind.CHANGE: ToolAnnotations(open_world_hint=False),
    Kind.MARK: ToolAnnotations(destructive_hint=False, idempotent_hint=True, open_world_hint=False),
    Kind.SPEC: ToolAnnotations(idempotent_hint=True),  # calls the model; rewrites acceptance_criteria
    Kind.PLAN: ToolAnnotations(destructive_hint=False, idempotent_hint=True),  # calls the model
    Kind.RUN: ToolAnnotations(destructive_hint=False, idempotent_hint=True, open_world_hint=False),
    Kind.PIPELINE: ToolAnnotations(destructive_hint=False, idempotent_hint=True),  # cached per commit
    Kind.SYNC: ToolAnnotations(destructive_hint=False, idempotent_hint=True),  # fetches a rig's upstream
}


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


def _sink(ctx: Context | None) -> ProgressSink | None:
    """Inspector progress as MCP progress notifications (seen by clients that asked for them)."""
    if ctx is None:
        return None

    async def report(progress: float, total: float | None, message: str) -> None:
        await ctx.report_progress(progress, total, message)

    return report


def mcp_function(spec: ToolSpec, b: Binding) -> Callable[..., Any]:
    """An async function whose signature is the spec's parameters (plus the SDK's Context for
    tools that report progress), calling the spec's core function as the bound actor.

    Every call, refused ones too, is recorded first as the actor's activity (vermas.events).
    Domain exceptions become tool errors carrying their actionable message; any other exception
    becomes a one-line tool error naming the tool and the exception type, its traceback logged
    (vermas.tools.report_unexpected), never the SDK's bare "Error executing tool X". A sync core call
    runs inline (store calls take well under a millisecond, and a stdio server has one
    client, so the SDK's worker-thread hop would cost more than the work); a blocking one
    (a nudge waits seconds for an idle prompt) runs in a worker thread.
    """

    async def tool(**kwargs: Any) -> Any:
        events.tool_called(b.town, str(b.actor), spec.name)  # activity evidence for the patrols
        if REFUSAL in kwargs:  # the arguments failed validation (see sdk.StrictArguments)
            raise ToolError(kwargs[REFUSAL])
        call = Call(b.town, b.actor, progress=_sink(kwargs.pop("ctx", None)))
        try:
            if spec.is_async:
                return await spec.fn(call, **kwargs)
            if spec.blocking:
                return await anyio.to_thread.run_sync(functools.partial(spec.fn, call, **kwargs))
            return spec.fn(call, **kwargs)
        except VermasError as exc:
            raise ToolError(str(exc)) from exc
        except Exception as exc:  # noqa: BLE001 - a bug or a broken town file: one line, traceback logged
            log.error("tool %s (actor %s) raised %s", spec.name, b.actor, type(exc).__name__, exc_info=exc)
            raise ToolError(report_unexpected(b.town, b.actor, spec.name, exc)) from exc

    params = [inspect.Parameter(p.name, inspect.Parameter.KEYWORD_ONLY, default=p.default, annotation=p.annotation)
              for p in spec.params]
    if spec.progress:
        params.append(inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, default=None,
                                        annotation=Context | None))
    result = spec.result
    tool.__name__ = tool.__qualname__ = spec.name
    tool.__doc__ = spec.description
    tool.__signature__ = inspect.Signature(params, return_annotation=result)  # type: ignore[attr-defined]
    tool.__annotations__ = {p.name: p.annotation for p in params} | {"return": result}
    return tool


def register(server: MCPServer, spec: ToolSpec, b: Binding) -> None:
    server.tool(name=spec.name, annotations=ANNOTATIONS[spec.kind], description=spec.description)(
        mcp_function(spec, b))
