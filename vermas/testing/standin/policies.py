"""Policies: the stand-in's "model". Script steps rendered into content blocks (`ScriptedPolicy`),
steps chosen from the tools' results as a conversation goes (`PlannedPolicy`), routing by request
(`RoutingPolicy`), one policy per session (`PerSessionPolicy`)."""

from __future__ import annotations

import copy
import json
import os
import re
import threading
from collections.abc import Callable, Generator, Iterable, Sequence
from pathlib import Path
from typing import Any

from vermas.testing.standin.request import (
    STRUCTURED_OUTPUT_TOOL,
    TOOL_SEARCH_TOOL,
    Block,
    ModelRequest,
    Policy,
    auxiliary_reply,
    text_block,
    tool_use_block,
)

# --------------------------------------------------------------------------------------------
# Policies
# --------------------------------------------------------------------------------------------

Step = str | dict[str, Any] | Callable[[ModelRequest], Any]
"""A script step: a text reply, a dict (``text`` / ``tool`` + ``input`` / ``structured``), or a
callable that receives the request and returns blocks or another step."""

_TEMPLATE = re.compile(r"^\{\{\s*(result|result_json)((?:\.[A-Za-z0-9_\-]+)*)\s*\}\}$")


def _render(value: Any, req: ModelRequest) -> Any:
    """Fill ``"{{result}}"`` / ``"{{result.a.b}}"`` placeholders from the last tool result.

    Why: a JSON script (the CLI form) cannot hold callables, but a demo needs to pass e.g. the
    bead id that ``hook_check`` returned on to ``polecat_done``. ``{{result}}`` is the raw text;
    ``{{result.x.y}}`` walks the result parsed as JSON (list indexes allowed).
    """
    if isinstance(value, dict):
        return {k: _render(v, req) for k, v in value.items()}
    if isinstance(value, list):
        return [_render(v, req) for v in value]
    if not isinstance(value, str):
        return value
    m = _TEMPLATE.match(value)
    if not m:
        return value
    kind, dotted = m.group(1), m.group(2)
    if kind == "result" and not dotted:
        return req.last_tool_result_text()
    node: Any = req.last_tool_result_json()
    for part in [p for p in dotted.split(".") if p]:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.lstrip("-").isdigit() and -len(node) <= int(part) < len(node):
            node = node[int(part)]
        else:
            raise LookupError(f"placeholder {value!r}: no {part!r} in last tool result {req.last_tool_result_text()[:300]!r}")
    return node


def structured_blocks(req: ModelRequest, value: Any) -> list[Block]:
    """Return ``value`` as the structured answer in whatever form this request asks for it."""
    if STRUCTURED_OUTPUT_TOOL in req.tool_names():
        return [tool_use_block(STRUCTURED_OUTPUT_TOOL, value)]
    return [text_block(json.dumps(value))]


def step_blocks(step: Step, req: ModelRequest) -> list[Block]:
    """Turn one script step into content blocks for this request.

    Dict steps may combine keys: ``text`` (said first), then ``tool`` + ``input`` (a tool call by
    exact name or suffix, placeholders rendered), or ``structured`` (the final structured answer).
    ``wait_for_tool`` is read by :class:`ScriptedPolicy` (see ``ScriptedPolicy._hold``).
    """
    if callable(step):
        out = step(req)
        if isinstance(out, list):
            return out
        return step_blocks(out, req)
    if isinstance(step, str):
        return [text_block(step)]
    if not isinstance(step, dict):
        raise TypeError(f"unsupported script step {step!r}")
    blocks: list[Block] = []
    if step.get("text"):
        blocks.append(text_block(str(step["text"])))
    if "tool" in step:
        wanted = str(step["tool"])
        name = req.resolve_tool(wanted)
        if name is None:
            raise LookupError(f"script wants tool {wanted!r} but the request offers only {req.tool_names()}")
        blocks.append(tool_use_block(name, _render(step.get("input") or {}, req)))
    if "structured" in step:
        blocks.extend(structured_blocks(req, _render(step["structured"], req)))
    if not blocks:
        raise ValueError(f"script step has nothing to say: {step!r}")
    return blocks


class ScriptedPolicy:
    """A deterministic "model" that plays a list of steps, one per conversation turn.

    Each real (non-auxiliary) request is answered by the next step: the first request carries the
    user's prompt; each later one carries the tool_result of the previous tool call, or a new user
    message (TUI). A request whose messages are identical to the previous one (a client retry) is
    answered again with the same blocks instead of advancing. When the steps are used up, the turn
    ends with ``final_text``. One instance scripts one conversation; use :class:`RoutingPolicy` or
    :class:`PerSessionPolicy` when several sessions share a server.
    """

    def __init__(self, steps: Sequence[Step], final_text: str = "(stand-in: script finished)") -> None:
        self.steps: list[Step] = list(steps)
        self.final_text = final_text
        self.position = 0
        self._lock = threading.Lock()
        self._last: tuple[str, list[Block]] | None = None
        self._searched: set[str] = set()

    @classmethod
    def from_json(cls, data: Any) -> ScriptedPolicy:
        """Build from ``[step, ...]`` or ``{"steps": [...], "final_text": "..."}``."""
        if isinstance(data, list):
            return cls(data)
        if isinstance(data, dict) and isinstance(data.get("steps"), list):
            return cls(data["steps"], final_text=str(data.get("final_text", "(stand-in: script finished)")))
        raise ValueError("script JSON must be a list of steps or an object with a 'steps' list")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ScriptedPolicy:
        """Build from a JSON file (the form ``python -m vermas.testing.standin`` uses)."""
        return cls.from_json(json.loads(Path(path).read_text()))

    @property
    def exhausted(self) -> bool:
        return self.position >= len(self.steps)

    def __call__(self, req: ModelRequest) -> list[Block]:
        if req.is_auxiliary():
            return auxiliary_reply(req)
        with self._lock:
            fingerprint = req.conversation_fingerprint()
            if self._last is not None and self._last[0] == fingerprint:
                return copy.deepcopy(self._last[1])
            if self.exhausted:
                blocks = [text_block(self.final_text)]
            else:
                step = self.steps[self.position]
                held = self._hold(step, req)
                if held is not None:
                    blocks = held  # a preparatory turn: the step itself comes next request
                else:
                    blocks = step_blocks(step, req)
                    self.position += 1
            self._last = (fingerprint, blocks)
            return copy.deepcopy(blocks)

    def _hold(self, step: Step, req: ModelRequest) -> list[Block] | None:
        """Blocks for a turn that prepares ``step`` without consuming it, or None to play it
        (see :func:`prepare_step`; the deferred tools the rest of the script names load in one go)."""
        return prepare_step(step, req, self.steps[self.position :], self._searched)


def prepare_step(step: Step, req: ModelRequest, later: Sequence[Step], searched: set[str]) -> list[Block] | None:
    """Blocks for a turn that prepares ``step`` without consuming it, or None to play it.

    Two cases, both about tools a real model could not call yet: the tool is deferred (so,
    like a real model, call ``ToolSearch`` with ``select:<name>`` first, once, loading every
    deferred tool that ``later`` steps name too; ``searched`` remembers them), or the step says
    ``"wait_for_tool": true`` and the tool is not there at all (e.g. the MCP server has not
    connected yet in a TUI session): end the turn with a short text and try again on the next
    user message.
    """
    if not isinstance(step, dict) or "tool" not in step:
        return None
    wanted = str(step["tool"])
    if req.resolve_tool(wanted) is not None:
        return None
    deferred = req.resolve_deferred_tool(wanted)
    if deferred is not None and TOOL_SEARCH_TOOL in req.tool_names() and deferred not in searched:
        names: list[str] = []
        for other in [step, *later]:
            if isinstance(other, dict) and "tool" in other and req.resolve_tool(str(other["tool"])) is None:
                found = req.resolve_deferred_tool(str(other["tool"]))
                if found and found not in names and found not in searched:
                    names.append(found)
        searched.update(names)
        return [tool_use_block(TOOL_SEARCH_TOOL, {"query": "select:" + ",".join(names), "max_results": max(5, len(names))})]
    if deferred is None and step.get("wait_for_tool"):
        return [text_block(f"(stand-in: waiting for tool {wanted} to become available)")]
    return None


Planner = Callable[[ModelRequest], Generator[Sequence[Step], ModelRequest, None]]
"""A round of :class:`PlannedPolicy`: a generator started with the request that opened the
round; it yields the next steps and is sent the request that carries the result of the last."""


class PlannedPolicy:
    """A "model" that chooses its steps as the conversation goes, from what the tools returned.

    Why: a scripted list cannot react (a polecat reads its bead and its mail, then decides what
    to do). Each user prompt (a new message with no tool results: the first prompt, a nudge)
    starts a round: ``planner(req)`` is a generator that yields a list of steps; they are played
    one per turn, and when they are used up the generator is sent the request carrying the last
    result and yields the next ones. A round ends with a text step (the end of the turn) or when
    the generator returns (then ``final_text``). Deferred tools are loaded with ``ToolSearch``
    as :class:`ScriptedPolicy` does; ``preload`` names tools to load in the same search. A retried
    identical request is answered again with the same blocks. One instance per conversation
    (wrap it in :class:`PerSessionPolicy`).
    """

    def __init__(self, planner: Planner, preload: Sequence[str] = (), final_text: str = "(stand-in: round finished)") -> None:
        self.planner = planner
        self.preload: list[Step] = [{"tool": name} for name in preload]
        self.final_text = final_text
        self.rounds = 0
        self._round: Generator[Sequence[Step], ModelRequest, None] | None = None
        self._pending: list[Step] = []
        self._searched: set[str] = set()
        self._last: tuple[str, list[Block]] | None = None
        self._lock = threading.Lock()

    def __call__(self, req: ModelRequest) -> list[Block]:
        if req.is_auxiliary():
            return auxiliary_reply(req)
        with self._lock:
            fingerprint = req.conversation_fingerprint()
            if self._last is not None and self._last[0] == fingerprint:
                return copy.deepcopy(self._last[1])
            blocks = self._next(req)
            self._last = (fingerprint, blocks)
            return copy.deepcopy(blocks)

    def _next(self, req: ModelRequest) -> list[Block]:
        if not req.last_tool_results():  # a prompt: a new round (an unfinished one is dropped)
            if self._round is not None:
                self._round.close()
            self.rounds += 1
            self._round = self.planner(req)
            self._pending = self._advance(None)
        elif not self._pending:
            self._pending = self._advance(req)
        if not self._pending:
            return [text_block(self.final_text)]
        step = self._pending[0]
        held = prepare_step(step, req, [*self._pending[1:], *self.preload], self._searched)
        if held is not None:
            return held
        self._pending.pop(0)
        return step_blocks(step, req)

    def _advance(self, req: ModelRequest | None) -> list[Step]:
        if self._round is None:
            return []
        try:
            steps = next(self._round) if req is None else self._round.send(req)
        except StopIteration:
            self._round = None
            return []
        return list(steps)


class RoutingPolicy:
    """Send each request to the first policy whose predicate accepts it (e.g. by system prompt).

    Why: a demo runs several agents against one stand-in; each agent's ``--append-system-prompt``
    (or identity) lands in the system prompt, which picks its script.
    """

    def __init__(self, routes: Iterable[tuple[Callable[[ModelRequest], bool], Policy]], default: Policy | None = None) -> None:
        self.routes = list(routes)
        self.default = default

    def __call__(self, req: ModelRequest) -> list[Block]:
        for predicate, policy in self.routes:
            if predicate(req):
                return policy(req)
        if self.default is None:
            raise LookupError("no route matches this request and there is no default policy")
        return self.default(req)


def system_contains(marker: str) -> Callable[[ModelRequest], bool]:
    """Predicate for :class:`RoutingPolicy`: the system prompt contains ``marker``."""
    return lambda req: marker in req.system_text


class PerSessionPolicy:
    """One fresh policy per Claude Code session id (header ``X-Claude-Code-Session-Id``)."""

    def __init__(self, factory: Callable[[], Policy]) -> None:
        self.factory = factory
        self.policies: dict[str | None, Policy] = {}
        self._lock = threading.Lock()

    def __call__(self, req: ModelRequest) -> list[Block]:
        with self._lock:
            policy = self.policies.setdefault(req.session_id, self.factory())
        return policy(req)
