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

import hashlib
import json
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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
                return dict(msg)
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
                    answered = by_id.get(str(block.get("tool_use_id")))
                    if answered is not None:
                        answered.result = block
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
