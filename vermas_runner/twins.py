"""Shell twins of the MCP tools, generated from the one registry (vermas/tools.py).

Required parameters become positionals, optional ones `--options` (bool: --flag/--no-flag,
list: a repeatable option). Arguments are validated by a pydantic model built from the
tool's signature, as the MCP layer does, then the same core function runs as the actor from
--actor, $BD_ACTOR or `overseer`. People get a rich table; --json gives the result model.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import types
import typing
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ValidationError, create_model
from rich.console import Console
from rich.table import Table

from vermas.addresses import parse_address
from vermas.errors import InvalidInput, VermasError
from vermas.progress import ProgressEvent, Reporter
from vermas.tools import TOOLS, Call, Kind, Param, ToolSpec, report_unexpected
from vermas.town import Town
from vermas.validate import pydantic_problems

DEFAULT_ACTOR = "overseer"
SHELL_NUDGE_WAIT = 45.0  # seconds; the runner's nudges wait as long (vermas.nudge's default)


def actor_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--actor", help=f"who acts (default: $BD_ACTOR, else {DEFAULT_ACTOR})")


def resolve_actor(text: str | None) -> Any:
    return parse_address(text or os.environ.get("BD_ACTOR") or DEFAULT_ACTOR)


def _is_list(annotation: Any) -> bool:
    options = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    return any(typing.get_origin(o) is list for o in options)


def _is_bool(annotation: Any) -> bool:
    return annotation is bool


def _is_int(annotation: Any) -> bool:
    options = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    return int in options


def argv_values(spec: ToolSpec, given: dict[str, Any]) -> dict[str, Any]:
    """Argv is text: an integer parameter's digits become the int an MCP client would send
    (the registry validates strictly, so "5" is refused over MCP); anything else stays text
    for the same strict validation to refuse with the MCP layer's message."""
    out = dict(given)
    for p in spec.params:
        value = out.get(p.name)
        if _is_int(p.python_type) and isinstance(value, str) and re.fullmatch(r"[+-]?[0-9]{1,18}", value.strip()):
            out[p.name] = int(value)
    return out


def add_param(parser: argparse.ArgumentParser, p: Param) -> None:
    help_text = p.help or p.name.replace("_", " ")
    shape = p.python_type
    if p.required:
        parser.add_argument(p.name, nargs="+" if _is_list(shape) else None,
                            metavar=p.name.upper(), help=help_text)
        return
    flag = "--" + p.name.replace("_", "-")
    if _is_bool(shape):
        parser.add_argument(flag, dest=p.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                            help=f"{help_text} (default: {'yes' if p.default else 'no'})")
    elif _is_list(shape):
        parser.add_argument(flag, dest=p.name, action="append", default=argparse.SUPPRESS, metavar="VALUE",
                            help=help_text)
    else:
        shown = "" if p.default in (None, "") else f" (default: {p.default})"
        parser.add_argument(flag, dest=p.name, default=argparse.SUPPRESS, metavar="VALUE",
                            help=help_text + shown)


def arguments_model(spec: ToolSpec) -> type[BaseModel]:
    """The same validation the MCP layer derives from the registry's strict types (pydantic)."""
    fields: dict[str, Any] = {
        p.name: (p.annotation, ... if p.required else p.default) for p in spec.params
    }
    return create_model(f"{spec.name}Arguments", **fields)


def validate(spec: ToolSpec, given: dict[str, Any]) -> dict[str, Any]:
    try:
        model = arguments_model(spec).model_validate(given)
    except ValidationError as exc:
        raise InvalidInput(f"invalid arguments for {spec.name}: {pydantic_problems(exc)}") from None
    return {p.name: getattr(model, p.name) for p in spec.params}


def arguments(spec: ToolSpec, args: argparse.Namespace) -> dict[str, Any]:
    """The parsed arguments of a tool's command, validated as the MCP layer validates them
    (defaults filled in for options not given)."""
    return validate(spec, argv_values(spec, {p.name: getattr(args, p.name) for p in spec.params
                                             if hasattr(args, p.name)}))


def run_tool(spec: ToolSpec, town: Town, args: argparse.Namespace) -> Any:
    """Validate the parsed arguments and call the tool's core function as the shell's actor."""
    kwargs = arguments(spec, args)
    # Progress (verify: per criterion) on stderr: a bar on a terminal, one plain line per step elsewhere.
    task = " ".join([spec.name.replace("_", " "), *[str(v) for v in kwargs.values() if isinstance(v, str)][:1]])
    with Reporter(sys.stderr) as show:
        async def progress(done: float, total: float | None, message: str) -> None:
            if not getattr(args, "quiet", False):
                show(ProgressEvent(task, message, done, total))

        call = Call(town, resolve_actor(args.actor), progress=progress if spec.progress else None,
                    nudge_wait=SHELL_NUDGE_WAIT)
        try:
            if spec.is_async:
                return asyncio.run(spec.fn(call, **kwargs))
            return spec.fn(call, **kwargs)
        except VermasError:
            raise
        except Exception as exc:  # noqa: BLE001 - as the MCP layer: one line (exit 2), traceback logged
            raise VermasError(report_unexpected(town, call.actor, spec.name, exc)) from exc


# ---- output for people ----------------------------------------------------------------------

def _cell(value: Any, width: int = 60) -> str:
    if value is None or value == "" or value == []:
        return "-"
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, list):
        if all(isinstance(v, (str, int, float)) for v in value):
            text = ", ".join(str(v) for v in value)
        else:
            text = f"{len(value)} item(s)"
    elif isinstance(value, dict):
        text = ", ".join(f"{k}={v}" for k, v in value.items()) if len(value) <= 6 else f"{len(value)} entries"
    else:
        text = str(getattr(value, "value", value))
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _list_field(result: BaseModel) -> list[BaseModel] | None:
    """The rows of a result that is one list of models (BeadList, MessageList, ...)."""
    values = [getattr(result, name) for name in type(result).model_fields]
    if len(values) == 1 and isinstance(values[0], list):
        return values[0]
    return None


# Fields a row of a table leaves out (`show` / --json give them): the table must fit a terminal.
DETAIL_FIELDS = {"body_truncated", "thread_id", "reply_to", "read_at", "acked_at", "description", "design",
                 "notes", "owner", "external_ref", "ephemeral", "updated_at", "started_at", "closed_at",
                 "close_reason", "acceptance_criteria"}


def rows_table(rows: list[BaseModel], title: str | None = None) -> Table:
    """One row per model; columns are the scalar fields (long text clipped)."""
    table = Table(title=title)
    if not rows:
        table.add_column("(none)")
        return table
    names = list(getattr(type(rows[0]), "TABLE_COLUMNS", ())) or [
        n for n, v in rows[0]
        if n not in DETAIL_FIELDS and (not isinstance(v, (list, dict, BaseModel)) or n == "labels")]
    for name in names:
        table.add_column(name.replace("_", " "))
    for row in rows:
        table.add_row(*(_cell(getattr(row, n), 40) for n in names))
    return table


def object_table(result: BaseModel) -> Table:
    """Key/value panel for one object; nested lists of models follow as their own tables."""
    table = Table("field", "value", show_header=False)
    for name, value in result:
        table.add_row(name.replace("_", " "), _cell(value, 100))
    return table


def render(result: Any, console: Console | None = None) -> None:
    console = console or Console()
    if isinstance(result, BaseModel):
        rows = _list_field(result)
        if rows is not None:
            console.print(rows_table(rows))
            return
        console.print(object_table(result))
        for name, value in result:
            if isinstance(value, list) and value and all(isinstance(v, BaseModel) for v in value):
                console.print(rows_table(value, title=name.replace("_", " ")))
        return
    if isinstance(result, list):
        console.print(rows_table(result))
        return
    console.print(str(result))


def emit(result: Any, as_json: bool, id_only: bool = False) -> None:
    if id_only:  # `bead=$(vermas-runner bead create ... --id)`; a poured molecule's id is its root
        print(getattr(result, "id", None) or result.root)
        return
    if as_json:
        if isinstance(result, BaseModel):
            print(result.model_dump_json(indent=2))
        else:
            print(json.dumps([r.model_dump(mode="json") if isinstance(r, BaseModel) else r for r in result],
                             indent=2))
        return
    render(result)


# ---- argparse ---------------------------------------------------------------------------------

def creates_with_id(spec: ToolSpec) -> bool:
    """A tool that adds a record with an id (bead_create, mail_send, convoy_create)."""
    return spec.kind is Kind.ADD and bool({"id", "root"} & set(getattr(spec.result, "model_fields", {})))


Handler = Callable[[ToolSpec, argparse.Namespace], None]


def add_tool_commands(sub: Any, groups: dict[str, Any], common: argparse.ArgumentParser,
                      handler: Handler, extra: dict[str, Callable[[argparse.ArgumentParser], None]]) -> None:
    """A subcommand per registry tool: top-level, or under its group (`bead`, `mail`, ...).

    `groups` maps a group name to its subparsers action (created here when missing); `extra`
    adds shell-only options to a tool's parser (e.g. sling's --no-wait).
    """
    for spec in TOOLS.values():
        words = spec.shell
        if len(words) == 2:
            if words[0] not in groups:
                group = sub.add_parser(words[0], help=f"{words[0]} commands (the {words[0]}_* tools)")
                groups[words[0]] = group.add_subparsers(dest=f"{words[0]}_command", required=True,
                                                        metavar="COMMAND", help=f"{words[0]} command")
            parent_sub, name = groups[words[0]], words[1]
        else:
            parent_sub, name = sub, words[0]
        p = parent_sub.add_parser(name, parents=[common], help=spec.shell_help + f" (tool {spec.name})",
                                  description=spec.description)
        actor_option(p)
        for param in spec.params:
            add_param(p, param)
        if spec.progress:
            p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
        if creates_with_id(spec):
            p.add_argument("--id", dest="id_only", action="store_true",
                           help="print only the new record's id (for scripts: id=$(... --id))")
        if spec.name in extra:
            extra[spec.name](p)
        p.set_defaults(fn=lambda args, spec=spec: handler(spec, args))
