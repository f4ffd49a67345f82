"""The inspector's only model backend: Claude Code's print mode (`claude -p`).

Every model call is one `claude -p --output-format json --json-schema SCHEMA` process, with
the role's template as its system prompt, the prompt on stdin (no argv size limit), built-in
tools off unless the role needs read-only ones, `--max-budget-usd`, and a wall-clock timeout
that kills the process group. Claude Code makes the model answer through its StructuredOutput
tool and checks the schema itself; we then validate the answer with pydantic, including the
checks a schema cannot express (context validators). An invalid answer is retried once with
the validation error quoted back; a second invalid answer fails with that error. Cost and
duration come from Claude's JSON result. No SDK, no API keys: authentication is whatever the
user's Claude Code already uses.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import signal
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

from vermas.errors import VermasError
from vermas.inspector.models import ModelCall

T = TypeVar("T", bound=BaseModel)

# Variables that make a nested Claude Code refuse to start or act as a sub-session.
DROPPED_ENV = ("CLAUDECODE", "CLAUDE_CODE_ENTRYPOINT", "CLAUDE_CODE_SSE_PORT")
RETRY_NOTE = (
    "\n\n---\nYOUR PREVIOUS ANSWER WAS REJECTED. Validation error:\n{error}\n"
    "Answer again with the StructuredOutput tool, correcting exactly this."
)


class ModelError(VermasError):
    """A role could not produce a valid answer. Carries the calls made, so their cost is kept."""

    def __init__(self, message: str, calls: Sequence[ModelCall] = ()) -> None:
        super().__init__(message)
        self.calls = list(calls)


class ModelCallFailed(ModelError):
    """The CLI could not answer at all: not installed, timed out, over budget, API error."""


class ModelOutputInvalid(ModelError):
    """The model answered twice, and neither answer passed validation."""


@dataclass(frozen=True)
class ClaudeSettings:
    command: str = "claude"
    args: tuple[str, ...] = ()
    model: str = "sonnet"
    budget_usd: float = 1.0
    timeout_s: float = 300.0
    env: tuple[tuple[str, str], ...] = ()  # [inspector] env: set on top of the caller's environment


@dataclass
class RoleCall(Generic[T]):
    """One question to one role: who asks, what it is told, and what shape the answer has."""

    role: str
    system: str
    prompt: str
    output: type[T]
    context: dict[str, Any] = field(default_factory=dict)
    tools: tuple[str, ...] = ()
    cwd: Path | None = None
    criterion_id: str | None = None


class ModelBackend(Protocol):
    async def ask(self, call: RoleCall[T]) -> tuple[T, list[ModelCall]]:
        """The validated answer and every model call it took (one or two)."""
        ...


def output_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with every `$ref` inlined.

    Why: the schema becomes a tool's input_schema on the API side; a self-contained schema
    without `$defs` is accepted by every validator on the way.
    """
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any, seen: tuple[str, ...] = ()) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                name = ref.split("/")[-1]
                if name in seen:
                    raise ValueError(f"recursive schema {name} cannot be inlined")
                merged = {**copy.deepcopy(defs[name]), **{k: v for k, v in node.items() if k != "$ref"}}
                return inline(merged, (*seen, name))
            return {k: inline(v, seen) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v, seen) for v in node]
        return node

    inlined: dict[str, Any] = inline(schema)
    return inlined


def format_validation_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors()[:10]:
        where = ".".join(str(p) for p in err.get("loc", ())) or "(answer)"
        lines.append(f"- {where}: {err.get('msg')}")
    return "\n".join(lines)


def claude_environment(base: Mapping[str, str] | None = None, extra: Sequence[tuple[str, str]] = ()) -> dict[str, str]:
    """The caller's environment minus what would make `claude -p` a nested session, with the
    town's `[inspector] env` on top. When that names its own ANTHROPIC_BASE_URL (another model
    endpoint, e.g. the stand-in), the caller's other CLAUDE*/ANTHROPIC_* variables are dropped:
    the user's login, config dir or model overrides must not leak into that endpoint's calls."""
    source = os.environ if base is None else base
    env = {k: v for k, v in source.items() if k not in DROPPED_ENV}
    if any(k == "ANTHROPIC_BASE_URL" for k, _ in extra):
        env = {k: v for k, v in env.items() if not k.startswith(("CLAUDE", "ANTHROPIC_"))}
    env.update(extra)
    return env


class ClaudeCLI:
    """`claude -p` as a ModelBackend."""

    def __init__(self, settings: ClaudeSettings, env: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self.env = claude_environment(env, settings.env)

    def argv(self, call: RoleCall[Any]) -> list[str]:
        s = self.settings
        argv = [s.command, *s.args, "-p", "--output-format", "json",
                "--json-schema", json.dumps(output_schema(call.output)),
                "--model", s.model, "--max-budget-usd", f"{s.budget_usd:g}",
                "--no-session-persistence", "--system-prompt", call.system,
                "--tools", ",".join(call.tools)]
        if call.tools:
            argv += ["--allowedTools", *call.tools]
        return argv

    async def ask(self, call: RoleCall[T]) -> tuple[T, list[ModelCall]]:
        calls: list[ModelCall] = []
        prompt = call.prompt
        error = ""
        for attempt in (1, 2):
            raw, record = await self._invoke(call, prompt, attempt, calls)
            calls.append(record)
            try:
                if raw is None:
                    raise ValueError(record.error or "no structured output")
                return call.output.model_validate(raw, context=call.context), calls
            except (ValidationError, ValueError) as exc:
                error = (format_validation_error(exc) if isinstance(exc, ValidationError)
                         else f"- {exc}")
                record.ok = False
                record.error = error[:2000]
            prompt = call.prompt + RETRY_NOTE.format(error=error)
        raise ModelOutputInvalid(
            f"the {call.role}{_about(call)} gave invalid output twice (asked once more with the "
            f"validation error, as the policy allows); last error:\n{error}",
            calls,
        )

    async def _invoke(
        self, call: RoleCall[Any], prompt: str, attempt: int, earlier: list[ModelCall]
    ) -> tuple[Any, ModelCall]:
        """Run the CLI once; returns (structured_output or None, the call record)."""
        s = self.settings
        record = ModelCall(role=call.role, criterion_id=call.criterion_id, attempt=attempt,
                           model=s.model, ok=True)
        with tempfile.TemporaryDirectory(prefix="vermas-inspector-") as scratch:
            cwd = call.cwd or Path(scratch)
            try:
                proc = await asyncio.create_subprocess_exec(
                    *self.argv(call), cwd=cwd, env=self.env, stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                    start_new_session=True,
                )
            except OSError as exc:
                raise ModelCallFailed(
                    f"cannot run the inspector's model command {s.command!r} ({exc.strerror or exc}); "
                    "install Claude Code, or set `command` under [inspector] (or a rig's inspector "
                    "table) in town.toml", earlier,
                ) from exc
            try:
                out, err = await asyncio.wait_for(proc.communicate(prompt.encode()), timeout=s.timeout_s)
            except TimeoutError:
                _killpg(proc.pid)
                await proc.wait()
                record.ok, record.error = False, f"timed out after {s.timeout_s:g}s"
                raise ModelCallFailed(
                    f"claude -p for the {call.role}{_about(call)} timed out after {s.timeout_s:g}s "
                    "and was killed; raise `timeout` under [inspector] in town.toml if it needs longer",
                    [*earlier, record],
                ) from None
            finally:
                if proc.returncode is None:
                    _killpg(proc.pid)
        try:
            result = json.loads(out.decode("utf-8", "replace"))
            if not isinstance(result, dict):
                raise ValueError("not an object")
        except ValueError:
            record.ok, record.error = False, f"exit {proc.returncode}, no JSON result"
            tail = (err or out).decode("utf-8", "replace").strip()[-800:]
            raise ModelCallFailed(
                f"claude -p for the {call.role}{_about(call)} exited {proc.returncode} without a JSON "
                f"result: {tail or '(no output)'}", [*earlier, record],
            ) from None
        record.cost_usd = float(result.get("total_cost_usd") or 0.0)
        record.duration_ms = int(result.get("duration_ms") or 0)
        _record_usage(record, result)
        if result.get("is_error"):
            detail = result.get("errors") or result.get("result") or result.get("subtype")
            record.ok, record.error = False, f"{result.get('subtype')}: {detail}"[:2000]
            raise ModelCallFailed(
                f"claude -p for the {call.role}{_about(call)} failed ({result.get('subtype')}): "
                f"{str(detail)[:800]}", [*earlier, record],
            )
        structured = result.get("structured_output")
        if structured is None:
            text = str(result.get("result") or "")[:300]
            record.error = f"no structured output; the model answered with text: {text!r}"
        return structured, record


def _record_usage(record: ModelCall, result: dict[str, Any]) -> None:
    """Tokens from the result's `usage` (the cost is Claude's own `total_cost_usd`)."""
    usage = result.get("usage")
    if isinstance(usage, dict):
        for field, key in (("input_tokens", "input_tokens"), ("output_tokens", "output_tokens"),
                           ("cache_read_tokens", "cache_read_input_tokens"),
                           ("cache_creation_tokens", "cache_creation_input_tokens")):
            value = usage.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                setattr(record, field, value)


def _about(call: RoleCall[Any]) -> str:
    return f" (criterion {call.criterion_id})" if call.criterion_id else ""


def _killpg(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
