"""A stand-in Anthropic model server, so the REAL Claude Code CLI can be tested offline.

Why: vermas drives many Claude Code sessions (in tmux, with MCP tools). Testing that end to end
with a real model costs money, needs an account and the network, and is not deterministic. Claude
Code honours ``ANTHROPIC_BASE_URL``, so we point it at this server, which speaks the Messages API
the way Claude Code 2.1 uses it, and whose "model" is a scripted, deterministic *policy*.

Wire protocol (checked against Claude Code 2.1.330, see ``vermas/testing/README.md``):

* ``POST /v1/messages?beta=true`` with ``"stream": true``: answered with Server-Sent Events
  ``message_start``, ``content_block_start`` / ``content_block_delta`` (``text_delta`` or
  ``input_json_delta``) / ``content_block_stop`` per block, ``message_delta`` (stop_reason
  ``tool_use`` or ``end_turn``, usage) and ``message_stop``. Non-streaming requests get one JSON
  message. ``POST /v1/messages/count_tokens`` gets a rough count. ``GET /`` and any ``HEAD``
  (Claude Code probes ``HEAD /api/hello``) get 200; anything else a 404 JSON error.
* Claude Code also sends *auxiliary* requests that are not turns of the conversation being
  scripted: session-title generation (no tools, ``output_config.format`` = a JSON schema) and
  side queries forked from the conversation, such as compaction (the full tool list, but the last
  user message says "Your task is to create a detailed summary of the conversation").
  :meth:`ModelRequest.auxiliary_kind` states the rule; the server answers them itself with
  :func:`auxiliary_reply` (a schema-valid JSON object or a tiny summary) and never shows them to
  the policy, so scripts do not advance.
* MCP tools (and some built-ins) are *deferred*: not in ``tools`` but named in a system message;
  the model must call ``ToolSearch`` with ``select:<name>`` first. :class:`ScriptedPolicy` does
  that by itself (one extra turn that does not consume a step).

Structured output (``claude -p --output-format json --json-schema SCHEMA``): Claude Code 2.1 does
NOT use the API's ``output_format``; it adds a tool named ``StructuredOutput`` whose
``input_schema`` is the given schema, and the model must call it. Claude Code then puts the tool
input in the ``structured_output`` field of its JSON result. If the model ends its turn without
calling it, Claude Code sends a user message starting with ``[structured-output-enforce]``. With
:class:`ScriptedPolicy`, use a step ``{"structured": {...}}``: it becomes a ``StructuredOutput``
tool call when that tool is offered (or JSON text when a request carries
``output_config.format``/``output_format`` instead).

Script steps (:class:`ScriptedPolicy`, also loadable from JSON): ``"text"``; ``{"text": ...}``;
``{"tool": "hook_check", "input": {...}}`` (exact name or suffix; input strings that are exactly
``"{{result}}"`` or ``"{{result.a.b}}"`` are filled from the previous real tool result);
``{"structured": {...}}``; ``"wait_for_tool": true`` on a tool step ends the turn with a short
text instead of failing while the tool is not there yet (an interactive session's first prompt
can reach the model before its MCP servers have connected); or a Python callable.

Permissions: in the interactive TUI the default permission mode is *auto*, whose safety check
runs on Anthropic's servers; through a stand-in, MCP tool calls and risky Bash commands then stop
at a blocking "Auto mode can't check actions in this session" dialog. Start TUI sessions with
``--permission-mode acceptEdits --allowedTools ...`` or ``--dangerously-skip-permissions`` (plus
``IS_SANDBOX=1`` as root). ``-p`` sessions are not affected (they use default mode).

Usage::

    policy = ScriptedPolicy([{"tool": "Bash", "input": {"command": "touch x && echo made"}}, "done"])
    with StandinModelServer(policy) as server:
        env = claude_env(server.base_url, home)
        subprocess.run([find_claude_binary(), "-p", "go", "--allowedTools", "Bash"], env=env)
        assert "made" in server.main_requests()[-1].last_tool_result_text()

or as a process: ``python -m vermas.testing.standin --port 8765 --script steps.json``
(prints ``ANTHROPIC_BASE_URL=http://127.0.0.1:8765`` once listening).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import re
import shutil
import signal
import sys
import threading
import traceback
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

Block = dict[str, Any]
"""One content block of an assistant turn: ``{"type": "text", ...}`` or ``{"type": "tool_use", ...}``."""

Policy = Callable[["ModelRequest"], list[Block]]
"""The stand-in's "model": given the parsed request, return the next assistant turn's blocks."""

STRUCTURED_OUTPUT_TOOL = "StructuredOutput"
"""The tool Claude Code 2.1 adds for ``--json-schema``; its input_schema is the user's schema."""

STRUCTURED_OUTPUT_ENFORCE = "[structured-output-enforce]"
"""Prefix of the user message Claude Code sends when a turn ended without StructuredOutput."""

FORK_MARKERS: dict[str, str] = {
    "compact": "create a detailed summary of the conversation",
    "prompt_suggestion": "[SUGGESTION MODE:",
    "away_summary": "The user stepped away and is coming back",
    "rename": "Generate a short kebab-case name",
    "agent_summary": "most recent action in 3-5 words",
}
"""Instructions Claude Code appends for side queries forked from a conversation (same system
prompt and tools as a real turn); the last user message containing one marks the request as
auxiliary. ``compact`` was seen on the wire (``/compact``); the others are from the 2.1.330 CLI."""

DUMMY_API_KEY = "sk-ant-api03-vermas-standin-dummy-key-0000000000000000"
"""A key that looks like a real one; it only ever reaches the stand-in server."""

DEFERRED_TOOLS_MARKER = "deferred tools are now available via ToolSearch"
"""Header of the system message listing tools that must be loaded with ``ToolSearch`` first."""

TOOL_SEARCH_TOOL = "ToolSearch"

REPO_ROOT = Path(__file__).resolve().parents[3]


# --------------------------------------------------------------------------------------------
# Content block helpers
# --------------------------------------------------------------------------------------------


def text_block(text: str) -> Block:
    """An assistant text block."""
    return {"type": "text", "text": text}


def tool_use_block(name: str, input: dict[str, Any] | None = None, id: str | None = None) -> Block:
    """An assistant tool call; ``name`` must be the full name the request offered."""
    return {
        "type": "tool_use",
        "id": id or "toolu_" + uuid.uuid4().hex[:24],
        "name": name,
        "input": dict(input or {}),
    }


def _match_name(name: str, names: Sequence[str]) -> str | None:
    """``name`` itself, else the one ending in ``__name`` (an MCP tool), else one ending in ``name``."""
    if name in names:
        return name
    for suffix in ("__" + name, name):
        for candidate in names:
            if candidate.endswith(suffix):
                return candidate
    return None


def _content_text(content: Any) -> str:
    """Flatten a message or tool_result ``content`` (string or list of blocks) to plain text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict):
            if block.get("type") == "text":
                parts.append(str(block.get("text", "")))
            elif block.get("type") == "tool_result":
                parts.append(_content_text(block.get("content")))
    return "\n".join(parts)


def example_for_schema(schema: Any) -> Any:
    """A small value that satisfies a JSON schema, for answering schema-bound auxiliary requests.

    Why: Claude Code's own side requests (e.g. session titles) ask for JSON of a given shape; a
    valid but harmless answer keeps the CLI quiet instead of logging parse failures.
    """
    if not isinstance(schema, dict):
        return None
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    if "default" in schema:
        return schema["default"]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return example_for_schema(schema[key][0])
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), kind[0] if kind else None)
    if kind == "object" or (kind is None and "properties" in schema):
        props: dict[str, Any] = schema.get("properties") or {}
        return {name: example_for_schema(sub) for name, sub in props.items()}
    if kind == "array":
        n = int(schema.get("minItems", 0))
        return [example_for_schema(schema.get("items", {})) for _ in range(n)]
    if kind == "string":
        return "Stand-in session"
    if kind in ("integer", "number"):
        return schema.get("minimum", 0)
    if kind == "boolean":
        return False
    return None


# --------------------------------------------------------------------------------------------
# Parsed request
# --------------------------------------------------------------------------------------------


@dataclass
class ToolCall:
    """One tool_use the assistant made, paired with the tool_result Claude Code sent back."""

    id: str
    name: str
    input: dict[str, Any]
    result: dict[str, Any] | None = None

    @property
    def text(self) -> str:
        return _content_text(self.result.get("content")) if self.result else ""

    @property
    def is_error(self) -> bool:
        return bool(self.result and self.result.get("is_error"))

    def json(self) -> Any:
        """The result text parsed as JSON, or None if it is not JSON."""
        try:
            return json.loads(self.text.strip())
        except ValueError:
            return None


@dataclass
class ModelRequest:
    """One request Claude Code made, parsed; what a policy looks at to choose its reply."""

    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    raw_size: int = 0

    # -- plain fields ------------------------------------------------------------------------

    @property
    def route(self) -> str:
        """The path without its query string (Claude Code appends ``?beta=true``)."""
        return urlsplit(self.path).path

    @property
    def model(self) -> str:
        return str(self.body.get("model") or "claude-standin")

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list(self.body.get("messages") or [])

    @property
    def tools(self) -> list[dict[str, Any]]:
        return list(self.body.get("tools") or [])

    @property
    def session_id(self) -> str | None:
        """Claude Code's session id (header ``X-Claude-Code-Session-Id``), to tell sessions apart."""
        for k, v in self.headers.items():
            if k.lower() == "x-claude-code-session-id":
                return v
        return None

    @property
    def system_text(self) -> str:
        """The system prompt as one string (Claude Code sends a list of text blocks)."""
        return _content_text(self.body.get("system"))

    def tool_names(self) -> list[str]:
        """Names of the tools offered, e.g. ``Bash``, ``mcp__vermas__hook_check``."""
        return [str(t.get("name")) for t in self.tools if t.get("name")]

    def resolve_tool(self, name: str) -> str | None:
        """The offered tool called ``name``: exact match, else ``mcp__<server>__<name>``, else a suffix.

        Why: scripts name MCP tools by their short name; Claude Code prefixes them per server.
        """
        return _match_name(name, self.tool_names())

    def deferred_tool_names(self) -> list[str]:
        """Tools Claude Code announced as *deferred* (callable only after a ``ToolSearch``).

        Why: Claude Code 2.1 does not put MCP tools (and some built-ins) in ``tools``; it lists
        their names in a system message under "The following deferred tools are now available via
        ToolSearch" and expects the model to call ``ToolSearch`` with ``select:<name>``. After that
        the tool is in ``tools`` (with ``defer_loading: true``). ``ENABLE_TOOL_SEARCH=false`` in the
        CLI's environment turns this off and sends every tool up front.
        """
        names: list[str] = []
        texts = [self.system_text] + [_content_text(m.get("content")) for m in self.messages]
        for text in texts:
            start = text.find(DEFERRED_TOOLS_MARKER)
            while start >= 0:
                lines = text[start:].splitlines()[1:]  # the header is one line ending in ':'
                for line in lines:
                    line = line.strip()
                    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", line):
                        break
                    if line not in names:
                        names.append(line)
                start = text.find(DEFERRED_TOOLS_MARKER, start + 1)
        return names

    def resolve_deferred_tool(self, name: str) -> str | None:
        """Like :meth:`resolve_tool`, among the deferred (not yet loaded) tools."""
        return _match_name(name, self.deferred_tool_names())

    # -- the conversation --------------------------------------------------------------------

    def last_user_message(self) -> dict[str, Any] | None:
        """The last ``user`` message (Claude Code interleaves ``system`` messages; those are skipped)."""
        for msg in reversed(self.messages):
            if msg.get("role") == "user":
                return msg
        return None

    def last_user_text(self) -> str:
        """Text of the last user message (its text blocks, not tool results, not system reminders)."""
        msg = self.last_user_message()
        if msg is None:
            return ""
        content = msg.get("content")
        if isinstance(content, str):
            return content
        texts = [
            str(b.get("text", ""))
            for b in content or []
            if isinstance(b, dict)
            and b.get("type") == "text"
            and not str(b.get("text", "")).lstrip().startswith("<system-reminder>")
        ]
        return "\n".join(texts)

    def last_tool_results(self) -> list[dict[str, Any]]:
        """The raw ``tool_result`` blocks of the last user message (empty after a fresh prompt)."""
        msg = self.last_user_message()
        if msg is None or not isinstance(msg.get("content"), list):
            return []
        return [b for b in msg["content"] if isinstance(b, dict) and b.get("type") == "tool_result"]

    def tool_calls(self) -> list[ToolCall]:
        """Every tool call in the conversation so far, in order, each with its result if it has one."""
        calls: list[ToolCall] = []
        by_id: dict[str, ToolCall] = {}
        for msg in self.messages:
            content = msg.get("content")
            if not isinstance(content, list):
                continue
            for block in content:
                if not isinstance(block, dict):
                    continue
                if msg.get("role") == "assistant" and block.get("type") == "tool_use":
                    call = ToolCall(str(block.get("id")), str(block.get("name")), dict(block.get("input") or {}))
                    calls.append(call)
                    by_id[call.id] = call
                elif msg.get("role") == "user" and block.get("type") == "tool_result":
                    call = by_id.get(str(block.get("tool_use_id")))
                    if call is not None:
                        call.result = block
        return calls

    def last_tool_result(self) -> ToolCall | None:
        """The latest tool call that has a result, ``ToolSearch`` calls skipped.

        Why skip them: loading a deferred tool is machinery; "the last result" a script means is
        what the previous real tool (Bash, an MCP tool) returned.
        """
        for call in reversed(self.tool_calls()):
            if call.result is not None and call.name != TOOL_SEARCH_TOOL:
                return call
        return None

    def last_tool_result_text(self) -> str:
        """Text of the last tool result (what the tool printed or returned), or ``""``."""
        call = self.last_tool_result()
        return call.text if call else ""

    def last_tool_result_is_error(self) -> bool:
        call = self.last_tool_result()
        return bool(call and call.is_error)

    def last_tool_result_json(self) -> Any:
        """The last tool result parsed as JSON (MCP tools return JSON text), or None."""
        call = self.last_tool_result()
        return call.json() if call else None

    def conversation_fingerprint(self) -> str:
        """A digest of the messages, so a retried identical request can be answered identically."""
        data = json.dumps(self.messages, sort_keys=True, default=str)
        return hashlib.sha256(data.encode()).hexdigest()

    # -- structured output -------------------------------------------------------------------

    def structured_output_schema(self) -> dict[str, Any] | None:
        """The JSON schema the caller wants, if any.

        Claude Code ``--json-schema`` offers it as the ``StructuredOutput`` tool's input_schema;
        its own side requests use ``output_config.format`` (API structured outputs); older or other
        clients may send ``output_format``. All three are recognised.
        """
        for tool in self.tools:
            if tool.get("name") == STRUCTURED_OUTPUT_TOOL:
                return dict(tool.get("input_schema") or {})
        return self.output_format_schema()

    def output_format_schema(self) -> dict[str, Any] | None:
        """The schema of an API-level ``output_config.format`` / ``output_format`` json_schema."""
        fmt = (self.body.get("output_config") or {}).get("format") or self.body.get("output_format")
        if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
            return dict(fmt.get("schema") or {})
        return None

    # -- auxiliary requests ------------------------------------------------------------------

    def auxiliary_kind(self) -> str | None:
        """Why this request is one of Claude Code's side requests, or None for a conversation turn.

        Rule (from traffic and strings of Claude Code 2.1.330; see README.md):

        * ``fork:<name>``: a side query *forked* from the conversation. It reuses the turn's system
          prompt and tools (to share the prompt cache) and appends one user message with a fixed
          instruction: compaction, prompt suggestion, away recap, rename, agent summary. Told
          apart only by that instruction (:data:`FORK_MARKERS`).
        * ``output-format``: an API-level ``output_config.format`` (or ``output_format``) JSON
          schema, e.g. session-title generation. Conversation turns never set one: ``--json-schema``
          is done with the StructuredOutput tool instead.
        * ``no-tools``: no tools and neither ``thinking`` nor ``context_management``. Turns always
          carry those two for current models, even with ``--tools ""``.
        * ``probe``: ``max_tokens`` <= 32 (quota or reachability checks).
        """
        if self.route.rstrip("/") != "/v1/messages":
            return "not-messages"
        last = self.last_user_text()
        for name, marker in FORK_MARKERS.items():
            if marker in last:
                return "fork:" + name
        if self.output_format_schema() is not None:
            return "output-format"
        if not self.tools and "thinking" not in self.body and "context_management" not in self.body:
            return "no-tools"
        max_tokens = self.body.get("max_tokens")
        if isinstance(max_tokens, int) and max_tokens <= 32:
            return "probe"
        return None

    def is_auxiliary(self) -> bool:
        """True for Claude Code's own side requests (titles, compaction, probes): not a script turn."""
        return self.auxiliary_kind() is not None

    def to_json(self) -> dict[str, Any]:
        """A JSON-able record, for ``--record`` logs."""
        return {"method": self.method, "path": self.path, "headers": self.headers, "body": self.body}


def auxiliary_reply(req: ModelRequest) -> list[Block]:
    """A harmless answer to a side request: schema-valid JSON, a tiny summary, or "OK"."""
    schema = req.output_format_schema()
    if schema is not None:
        return [text_block(json.dumps(example_for_schema(schema)))]
    if req.auxiliary_kind() == "fork:compact":
        return [
            text_block(
                "<analysis>Stand-in model: nothing to analyse.</analysis>\n"
                "<summary>Stand-in model conversation; no details to keep.</summary>"
            )
        ]
    return [text_block("OK")]


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
        """Blocks for a turn that prepares ``step`` without consuming it, or None to play it.

        Two cases, both about tools a real model could not call yet: the tool is deferred (so,
        like a real model, call ``ToolSearch`` with ``select:<name>`` first, once), or the step
        says ``"wait_for_tool": true`` and the tool is not there at all (e.g. the MCP server has
        not connected yet in a TUI session): end the turn with a short text and try again on
        the next user message.
        """
        if not isinstance(step, dict) or "tool" not in step:
            return None
        wanted = str(step["tool"])
        if req.resolve_tool(wanted) is not None:
            return None
        deferred = req.resolve_deferred_tool(wanted)
        if deferred is not None and TOOL_SEARCH_TOOL in req.tool_names() and deferred not in self._searched:
            # Load every deferred tool the rest of the script names in one go, as a model would.
            names: list[str] = []
            for later in self.steps[self.position :]:
                if isinstance(later, dict) and "tool" in later and req.resolve_tool(str(later["tool"])) is None:
                    found = req.resolve_deferred_tool(str(later["tool"]))
                    if found and found not in names and found not in self._searched:
                        names.append(found)
            self._searched.update(names)
            return [tool_use_block(TOOL_SEARCH_TOOL, {"query": "select:" + ",".join(names), "max_results": max(5, len(names))})]
        if deferred is None and step.get("wait_for_tool"):
            return [text_block(f"(stand-in: waiting for tool {wanted} to become available)")]
        return None


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


# --------------------------------------------------------------------------------------------
# Responses
# --------------------------------------------------------------------------------------------


def _usage(req: ModelRequest, output_tokens: int) -> dict[str, Any]:
    # A rough, small input count: real sizes would only matter for auto-compaction thresholds.
    return {
        "input_tokens": max(1, req.raw_size // 4),
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def _stop_reason(blocks: list[Block]) -> str:
    return "tool_use" if any(b.get("type") == "tool_use" for b in blocks) else "end_turn"


def _output_tokens(blocks: list[Block]) -> int:
    return max(1, len(json.dumps(blocks)) // 4)


def message_json(req: ModelRequest, blocks: list[Block]) -> dict[str, Any]:
    """A complete (non-streaming) Messages API response."""
    return {
        "id": "msg_" + uuid.uuid4().hex[:24],
        "type": "message",
        "role": "assistant",
        "model": req.model,
        "content": blocks,
        "stop_reason": _stop_reason(blocks),
        "stop_sequence": None,
        "usage": _usage(req, _output_tokens(blocks)),
    }


def _chunks(text: str, size: int = 40) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def sse_events(req: ModelRequest, blocks: list[Block]) -> list[tuple[str, dict[str, Any]]]:
    """The Server-Sent Events a streaming Messages API response consists of, in order."""
    message = message_json(req, [])
    message["stop_reason"] = None
    message["usage"] = _usage(req, 1)
    events: list[tuple[str, dict[str, Any]]] = [("message_start", {"type": "message_start", "message": message})]
    for index, block in enumerate(blocks):
        if block.get("type") == "tool_use":
            start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
            deltas = [{"type": "input_json_delta", "partial_json": c} for c in _chunks(json.dumps(block.get("input") or {}))]
        else:
            start = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": c} for c in _chunks(str(block.get("text", "")))]
        events.append(("content_block_start", {"type": "content_block_start", "index": index, "content_block": start}))
        events.extend(("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d}) for d in deltas)
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    events.append(
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": _stop_reason(blocks), "stop_sequence": None},
                "usage": {"output_tokens": _output_tokens(blocks)},
            },
        )
    )
    events.append(("message_stop", {"type": "message_stop"}))
    return events


# --------------------------------------------------------------------------------------------
# Server
# --------------------------------------------------------------------------------------------


@dataclass
class PolicyError:
    """A policy exception, kept so a test can show why the CLI got an error instead of a reply."""

    request: ModelRequest
    error: str


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # keep test output clean; every request is recorded on the server instead

    def _send_json(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _not_found(self) -> None:
        self._send_json(404, {"type": "error", "error": {"type": "not_found_error", "message": f"no route {self.command} {self.path}"}})

    def do_HEAD(self) -> None:  # noqa: N802 - stdlib naming
        # Claude Code probes connectivity with HEAD /api/hello; any HEAD is "alive".
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:  # noqa: N802
        if urlsplit(self.path).path == "/":
            self._send_json(200, {"ok": True, "server": "vermas-standin-model"})
        else:
            self._not_found()

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            self._send_json(400, {"type": "error", "error": {"type": "invalid_request_error", "message": "body is not JSON"}})
            return
        req = ModelRequest(self.command, self.path, dict(self.headers.items()), body if isinstance(body, dict) else {}, len(raw))
        route = req.route.rstrip("/")
        if route == "/v1/messages/count_tokens":
            self.server.owner._record(req)
            self._send_json(200, {"input_tokens": max(1, len(raw) // 4)})
            return
        if route != "/v1/messages":
            self._not_found()
            return
        self.server.owner._record(req)
        try:
            blocks = self.server.owner.respond(req)
        except Exception as exc:  # noqa: BLE001 - report any policy bug to both sides
            detail = f"stand-in policy failed: {type(exc).__name__}: {exc}"
            self.server.owner._record_error(req, detail + "\n" + traceback.format_exc())
            # 400 (not 5xx) so Claude Code reports it at once instead of retrying with backoff.
            self._send_json(400, {"type": "error", "error": {"type": "invalid_request_error", "message": detail}})
            return
        if not req.stream:
            self._send_json(200, message_json(req, blocks))
            return
        data = "".join(f"event: {name}\ndata: {json.dumps(payload)}\n\n" for name, payload in sse_events(req, blocks)).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    owner: StandinModelServer


class StandinModelServer:
    """The stand-in model on 127.0.0.1 (ephemeral port by default), served from a background thread.

    Use as a context manager so the thread and socket are always released. Every request to a
    Messages endpoint is kept in :attr:`requests` (thread-safe) for assertions.
    """

    def __init__(
        self,
        policy: Policy,
        host: str = "127.0.0.1",
        port: int = 0,
        answer_auxiliary: bool = True,
        record_file: str | os.PathLike[str] | None = None,
    ) -> None:
        self.policy = policy
        self.answer_auxiliary = answer_auxiliary
        self._lock = threading.Lock()
        self._requests: list[ModelRequest] = []
        self._errors: list[PolicyError] = []
        self._record_file = Path(record_file) if record_file else None
        self._httpd = _HTTPServer((host, port), _Handler)
        self._httpd.owner = self
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        """What to put in ``ANTHROPIC_BASE_URL``."""
        return f"http://{self._httpd.server_address[0]}:{self.port}"

    def start(self) -> StandinModelServer:
        if self._thread is None:
            self._thread = threading.Thread(target=self._httpd.serve_forever, name=f"standin-model:{self.port}", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port; safe to call twice."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> StandinModelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- behaviour ---------------------------------------------------------------------------

    def respond(self, req: ModelRequest) -> list[Block]:
        """Blocks for one Messages request: side requests answered here, the rest by the policy."""
        if self.answer_auxiliary and req.is_auxiliary():
            return auxiliary_reply(req)
        blocks = self.policy(req)
        if not blocks:
            raise ValueError("policy returned no content blocks")
        return blocks

    # -- recording ---------------------------------------------------------------------------

    def _record(self, req: ModelRequest) -> None:
        with self._lock:
            self._requests.append(req)
            if self._record_file is not None:
                with self._record_file.open("a") as f:
                    f.write(json.dumps(req.to_json()) + "\n")

    def _record_error(self, req: ModelRequest, error: str) -> None:
        with self._lock:
            self._errors.append(PolicyError(req, error))
        print(error, file=sys.stderr)

    @property
    def requests(self) -> list[ModelRequest]:
        """Every request received so far (a copy: safe while the server keeps running)."""
        with self._lock:
            return list(self._requests)

    @property
    def errors(self) -> list[PolicyError]:
        with self._lock:
            return list(self._errors)

    def main_requests(self) -> list[ModelRequest]:
        """The conversation turns (Messages requests that are not Claude Code side requests)."""
        return [r for r in self.requests if r.route.rstrip("/") == "/v1/messages" and not r.is_auxiliary()]


# --------------------------------------------------------------------------------------------
# Running the real CLI against it
# --------------------------------------------------------------------------------------------


def find_claude_binary() -> Path | None:
    """The Claude Code CLI to test with: ``$VERMAS_CLAUDE_BIN``, the project-local install made by
    ``scripts/install-claude.sh`` (``.tools/claude``), then ``claude`` on PATH; None if absent."""
    env_bin = os.environ.get("VERMAS_CLAUDE_BIN")
    if env_bin:
        p = Path(env_bin)
        return p if p.is_file() and os.access(p, os.X_OK) else None
    local = REPO_ROOT / ".tools" / "claude" / "node_modules" / ".bin" / "claude"
    if local.is_file() and os.access(local, os.X_OK):
        return local
    found = shutil.which("claude")
    return Path(found) if found else None


def claude_env(
    base_url: str,
    home: str | os.PathLike[str],
    api_key: str = DUMMY_API_KEY,
    extra: dict[str, str] | None = None,
    base: dict[str, str] | None = None,
) -> dict[str, str]:
    """Environment for running the real CLI against the stand-in, isolated from the user's setup.

    Why each part: ``HOME`` points at a private directory so ``~/.claude.json`` and ``~/.claude/``
    of the user are never read or written; every inherited ``CLAUDE*``/``ANTHROPIC*`` variable is
    dropped (``CLAUDECODE`` makes a nested session refuse to start; an inherited
    ``CLAUDE_CONFIG_DIR``, auth token or model override would leak the caller's setup);
    ``CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC`` stops telemetry/update/title traffic that has
    no network here.
    """
    env = {k: v for k, v in (base if base is not None else os.environ).items() if not k.startswith(("CLAUDE", "ANTHROPIC_"))}
    env.update(
        {
            "HOME": str(home),
            "ANTHROPIC_BASE_URL": base_url,
            "ANTHROPIC_API_KEY": api_key,
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_AUTOUPDATER": "1",
        }
    )
    env.update(extra or {})
    return env


def write_claude_home(
    home: str | os.PathLike[str],
    api_key: str = DUMMY_API_KEY,
    trusted_dirs: Iterable[str | os.PathLike[str]] = (),
    settings: dict[str, Any] | None = None,
) -> Path:
    """Write a Claude Code config under ``home`` with which the interactive TUI starts straight at
    its prompt (no onboarding, network check, API-key question, folder trust or bypass warning).

    ``~/.claude.json``: ``hasCompletedOnboarding`` (skips onboarding and its network check),
    ``customApiKeyResponses.approved`` = the key's last 20 characters (skips "Detected a custom API
    key"), ``projects[<dir>].hasTrustDialogAccepted`` for each trusted dir (skips folder trust;
    it also covers sessions started in a subdirectory).
    ``~/.claude/settings.json``: ``skipDangerousModePermissionPrompt`` (skips the
    ``--dangerously-skip-permissions`` warning) plus any ``settings`` given. Returns ``home``.
    """
    home_path = Path(home)
    (home_path / ".claude").mkdir(parents=True, exist_ok=True)
    projects: dict[str, dict[str, Any]] = {}
    for d in trusted_dirs:
        # Claude Code keys projects by the real path of the working directory.
        projects[os.path.realpath(d)] = {"hasTrustDialogAccepted": True}
    config = {
        "hasCompletedOnboarding": True,
        "customApiKeyResponses": {"approved": [api_key[-20:]], "rejected": []},
        "projects": projects,
    }
    (home_path / ".claude.json").write_text(json.dumps(config, indent=2) + "\n")
    merged: dict[str, Any] = {"skipDangerousModePermissionPrompt": True}
    merged.update(settings or {})
    (home_path / ".claude" / "settings.json").write_text(json.dumps(merged, indent=2) + "\n")
    return home_path


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m vermas.testing.standin --port N --script FILE``: serve until interrupted."""
    parser = argparse.ArgumentParser(description="Stand-in Anthropic Messages API server driven by a JSON script.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on stdout)")
    parser.add_argument("--script", help="JSON file: a list of steps or {'steps': [...], 'final_text': ...}")
    parser.add_argument("--record", help="append every request as a JSON line to this file")
    args = parser.parse_args(argv)
    policy: Policy = ScriptedPolicy.load(args.script) if args.script else ScriptedPolicy([])
    server = StandinModelServer(policy, host=args.host, port=args.port, record_file=args.record)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with server:
        print(f"ANTHROPIC_BASE_URL={server.base_url}", flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
