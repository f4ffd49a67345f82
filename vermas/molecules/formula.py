"""Formulas: `*.formula.toml` parsed (tomllib) into pydantic models, and `cook`, which turns a
formula plus vars into a resolved, validated `Proto` without writing anything.

Every failure is an InvalidInput naming the file, the step and the field, so whoever wrote the
formula can fix it from the message alone. Fields of bd's formula format that vermas does not
support are returned as warnings (by name), never a crash: bd's own files parse.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import BaseModel, Field, ValidationError

from vermas import validate
from vermas.errors import InvalidInput, NotFound

SUFFIX = ".formula.toml"
VAR_RE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_.-]*)\s*\}\}")
TOP_FIELDS = ("formula", "description", "version", "type", "vars", "steps")
VAR_FIELDS = ("description", "default", "required", "enum", "pattern")
STEP_FIELDS = ("id", "title", "description", "needs", "acceptance", "labels", "priority")
TEXT_FIELDS = ("title", "description", "acceptance")
# Bounds on user data: a formula is a checklist people and agents read, so these are far above
# any real one (bd's and Gas Town's largest have a few dozen steps), and they keep one hostile or
# mistaken file from costing every formula tool its time or memory.
MAX_STEPS = 500
STEP_LABEL = "step:"  # each step bead's label: step:<id> (so a step id must make a valid label)
FORMULA_LABEL = "formula:"  # the root's label: formula:<name>
ROOT_TITLE_CHARS = 200
MAX_FORMULA_BYTES = 1024 * 1024


class Var(BaseModel):
    description: str = ""
    default: str | None = None
    required: bool = False
    enum: list[str] | None = None
    pattern: str | None = None


class Step(BaseModel):
    id: str = Field(min_length=1)
    title: str = Field(min_length=1)
    description: str = ""
    needs: list[str] = []
    acceptance: str = ""
    labels: list[str] = []
    priority: int = Field(default=2, ge=0, le=4)


class Formula(BaseModel):
    formula: str = Field(min_length=1)
    description: str = ""
    version: int | str = 1
    type: str = "workflow"
    vars: dict[str, Var] = {}
    steps: list[Step]
    source: str = ""  # the file it came from ("builtin:<name>" for package data)
    warnings: list[str] = []


class Proto(BaseModel):
    """A formula resolved with its vars: what pour writes (and formula_show previews)."""

    formula: str
    description: str
    version: int | str
    source: str
    vars: dict[str, str]
    steps: list[Step]
    warnings: list[str] = []


class FormulaInfo(BaseModel):
    name: str
    description: str
    source: str
    steps: int
    warnings: int = 0  # fields vermas ignores (formula_show names them)
    error: str | None = None  # the file does not parse: why


def _fail(source: str, where: str, message: str) -> InvalidInput:
    return InvalidInput(f"{source}: {where}: {message}")


def _unknown(table: dict[str, Any], allowed: tuple[str, ...], where: str) -> list[str]:
    return [f"{where}: field {k!r} is not supported by vermas (ignored)" for k in table if k not in allowed]


def _model(cls: type[BaseModel], data: dict[str, Any], source: str, where: str) -> Any:
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "?"
        raise _fail(source, where, f"field {field!r}: {err['msg']}") from None


def parse(text: str, source: str) -> Formula:
    """A formula from TOML text; `source` names the file in every error and warning."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _fail(source, "toml", str(exc)) from None
    except RecursionError:  # tomllib recurses into nested arrays and inline tables
        raise _fail(source, "toml", "values nested too deeply") from None
    warnings = _unknown(data, TOP_FIELDS, "top level")
    if data.get("type", "workflow") != "workflow":
        raise _fail(source, "top level", f"field 'type': {data['type']!r} is not supported; allowed: 'workflow'")
    raw_vars = data.get("vars", {})
    if not isinstance(raw_vars, dict):
        raise _fail(source, "top level", "field 'vars' must be a table of [vars.<name>]")
    variables: dict[str, Var] = {}
    for name, table in raw_vars.items():
        if not isinstance(table, dict):
            table = {"default": str(table)}  # bd allows `name = "default"` shorthand
        warnings += _unknown(table, VAR_FIELDS, f"var {name!r}")
        var = _model(Var, {k: v for k, v in table.items() if k in VAR_FIELDS}, source, f"var {name!r}")
        if var.pattern is not None:
            try:
                re.compile(var.pattern)
            except re.error as exc:
                raise _fail(source, f"var {name!r}", f"field 'pattern' is not a regular expression: {exc}") from None
        variables[name] = var
    raw_steps = data.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        composed = [k for k in ("extends", "compose") if k in data]
        if composed:
            raise _fail(source, "top level", f"field {composed[0]!r}: formula composition (extends, compose) is "
                        "not supported by vermas; write the steps out as [[steps]]")
        raise _fail(source, "top level", "field 'steps' is missing: a formula needs at least one [[steps]]")
    if len(raw_steps) > MAX_STEPS:
        raise _fail(source, "top level", f"field 'steps': {len(raw_steps)} steps; at most {MAX_STEPS} are allowed")
    steps = []
    for n, table in enumerate(raw_steps, 1):
        where = f"step {table.get('id', f'#{n}')!r}" if isinstance(table, dict) else f"step #{n}"
        if not isinstance(table, dict):
            raise _fail(source, where, "each [[steps]] entry must be a table")
        warnings += _unknown(table, STEP_FIELDS, where)
        steps.append(_model(Step, {k: v for k, v in table.items() if k in STEP_FIELDS}, source, where))
    head: dict[str, Any] = {k: data[k] for k in ("formula", "description", "version") if k in data}
    if "formula" not in head:
        raise _fail(source, "top level", "field 'formula' (the formula's name) is missing")
    formula: Formula = _model(Formula, {**head, "vars": {}, "steps": []}, source, "top level")
    formula = formula.model_copy(update={"vars": variables, "steps": steps, "source": source, "warnings": warnings})
    check_graph(formula)
    return formula


def check_graph(formula: Formula) -> None:
    """Duplicate step ids, unknown ids in needs, and cycles (named, e.g. `a -> b -> a`)."""
    seen: set[str] = set()
    for step in formula.steps:
        if step.id in seen:
            raise _fail(formula.source, f"step {step.id!r}", "field 'id': duplicate step id")
        seen.add(step.id)
    for step in formula.steps:
        for need in step.needs:
            if need not in seen:
                raise _fail(formula.source, f"step {step.id!r}",
                            f"field 'needs': unknown step id {need!r}; steps: {', '.join(sorted(seen))}")
    cycle = find_cycle({s.id: s.needs for s in formula.steps})
    if cycle:
        raise _fail(formula.source, f"step {cycle[0]!r}", f"field 'needs': cycle {' -> '.join(cycle)}")


def find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """The first cycle found in `graph` (id -> ids it needs) as a closed path, or None (pure).
    An explicit stack, never recursion: the graph is user data, and a long `needs` chain must
    be an answer, not a RecursionError."""
    state: dict[str, int] = {}  # 1 = on the path, 2 = done
    for start in graph:
        if start in state:
            continue
        state[start] = 1
        path = [start]
        todo = [iter(graph.get(start, []))]  # per node on the path: the needs still to visit
        while todo:
            nxt = next(todo[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                todo.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                todo.append(iter(graph.get(nxt, [])))
    return None


def resolve_vars(formula: Formula, given: dict[str, str]) -> dict[str, str]:
    """Given vars checked against the formula's declarations, defaults filled in."""
    src = formula.source
    for name in given:
        if name not in formula.vars:
            known = ", ".join(sorted(formula.vars)) or "none"
            raise _fail(src, f"var {name!r}", f"not declared by the formula; declared vars: {known}")
    values: dict[str, str] = {}
    for name, var in formula.vars.items():
        value = given.get(name, var.default)
        if value is None:
            if var.required:
                raise _fail(src, f"var {name!r}", f"required var is missing ({var.description or 'no description'})")
            continue
        if var.enum is not None and value not in var.enum:
            raise _fail(src, f"var {name!r}", f"field 'enum': {value!r} is not one of {', '.join(var.enum)}")
        if var.pattern is not None and not re.fullmatch(var.pattern, value):
            raise _fail(src, f"var {name!r}", f"field 'pattern': {value!r} does not match {var.pattern!r}")
        values[name] = value
    return values


def parse_vars(items: list[str] | None) -> dict[str, str]:
    """`name=value` strings (the tools' and the shell's form) to a dict."""
    values: dict[str, str] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise InvalidInput(f"var {item[:40]!r} is not name=value; pass each var as name=value")
        values[name.strip()] = value
    return values


# Handlebars words that bd's and Gas Town's formulas use in step text for the agent to read
# (`{{#each x}} ... {{else}} ... {{/each}}`): left as written, never taken for vars.
TEMPLATE_WORDS = frozenset({"else", "this"})


def substitute(text: str, values: dict[str, str], source: str, where: str,
               declared: frozenset[str] = frozenset()) -> str:
    """`{{var}}` replaced by its value. A declared var with no value (optional, no default)
    becomes empty; `{{else}}`, `{{this}}` and a field of a declared var (`{{convoy.title}}`)
    stay as written, for the agent; any other name is an error naming it."""
    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in values:
            return values[name]
        if name in declared:
            return ""
        if name in TEMPLATE_WORDS or name.split(".", 1)[0] in declared:
            return match.group(0)
        known = ", ".join(sorted(values)) or "none"
        raise _fail(source, where, f"unknown {{{{{name}}}}}; vars with values: {known}")

    return VAR_RE.sub(one, text)


def cook(formula: Formula, given: dict[str, str] | None = None) -> Proto:
    """The formula resolved with `given` vars: validated, substituted, nothing written. What
    pour would write is checked here with the tools' own rules (vermas.validate), so a formula
    never pours a bead that bead tools, mol_step_done or the export's re-import would refuse."""
    values = resolve_vars(formula, given or {})
    declared = frozenset(formula.vars)
    steps = []
    for step in formula.steps:
        update = {f: substitute(getattr(step, f), values, formula.source, f"step {step.id!r}: field {f!r}", declared)
                  for f in TEXT_FIELDS}
        steps.append(check_step(step.model_copy(update=update), formula.source))
    proto = Proto(formula=formula.formula, description=substitute(formula.description, values, formula.source,
                  "top level: field 'description'", declared), version=formula.version, source=formula.source,
                  vars=values, steps=steps, warnings=formula.warnings)
    _checked(formula.source, "top level: field 'formula'", validate.labels, [FORMULA_LABEL + proto.formula])
    _checked(formula.source, "top level", validate.title, root_title(proto))
    return proto


def _checked(source: str, where: str, check: Any, value: Any) -> Any:
    try:
        return check(value)
    except InvalidInput as exc:
        raise _fail(source, where, str(exc)) from None


def check_step(step: Step, source: str) -> Step:
    """One cooked step against the rules its bead will meet: the title one line of at most
    validate.MAX_TITLE_CHARS, description and acceptance valid text, and the labels (its own and
    step:<id>) valid labels. The step, its title stripped as bead_create stores it."""
    where = f"step {step.id!r}"
    title = _checked(source, f"{where}: field 'title'", validate.title, step.title)
    _checked(source, f"{where}: field 'description'", lambda v: validate.body(v, "description"), step.description)
    _checked(source, f"{where}: field 'acceptance'", lambda v: validate.body(v, "acceptance"), step.acceptance)
    _checked(source, f"{where}: field 'id'", validate.labels, [STEP_LABEL + step.id])
    _checked(source, f"{where}: field 'labels'", validate.labels, [STEP_LABEL + step.id, *step.labels])
    return step.model_copy(update={"title": title})


def root_title(proto: Proto) -> str:
    """The molecule root's title: `<formula>: <first line of the description>` (pure)."""
    lines = proto.description.strip().splitlines()
    return f"{proto.formula}: {lines[0].strip() if lines else proto.formula}"[:ROOT_TITLE_CHARS]


# --- Discovery: rig canonical clone, then the town, then built-ins -------------------------


def search_dirs(town_root: Path, rig_clone: Path | None) -> list[Path]:
    dirs = [rig_clone / ".beads" / "formulas"] if rig_clone is not None else []
    return dirs + [town_root / ".beads" / "formulas"]


class Found(NamedTuple):
    """A formula file found: its text, or why it could not be read (then text is None)."""

    source: str
    text: str | None
    error: str | None = None


def _builtins() -> dict[str, Found]:
    found = {}
    for entry in resources.files("vermas.molecules").joinpath("formulas").iterdir():
        if entry.name.endswith(SUFFIX):
            found[entry.name[: -len(SUFFIX)]] = Found(f"builtin:{entry.name}", entry.read_text(encoding="utf-8"))
    return found


def read_formula_file(path: Path) -> Found:
    """A formula file's text, read without ever blocking or reading without bound: opened
    O_NONBLOCK and checked to be a regular file (a FIFO or device is refused, not waited on),
    at most MAX_FORMULA_BYTES, UTF-8. Any failure is the error, never an exception."""
    source = str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as exc:
        return Found(source, None, f"{source}: cannot open: {exc.strerror or exc}")
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return Found(source, None, f"{source}: not a regular file; a formula is a *{SUFFIX} file")
        if info.st_size > MAX_FORMULA_BYTES:
            return Found(source, None, f"{source}: {info.st_size} bytes; at most {MAX_FORMULA_BYTES} are allowed")
        data = os.read(fd, MAX_FORMULA_BYTES + 1)
    except OSError as exc:
        return Found(source, None, f"{source}: cannot read: {exc.strerror or exc}")
    finally:
        os.close(fd)
    try:
        return Found(source, data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return Found(source, None, f"{source}: not UTF-8 text (byte {exc.start})")


def available(town_root: Path, rig_clone: Path | None = None) -> dict[str, Found]:
    """name -> the file found for each formula (the first place wins); an unreadable file is
    found too, with its error, so it shadows a later one of its name as it would if it read."""
    found: dict[str, Found] = {}
    for directory in search_dirs(town_root, rig_clone):
        if directory.is_dir():
            for path in sorted(directory.glob("*" + SUFFIX)):
                name = path.name[: -len(SUFFIX)]
                if name not in found:
                    found[name] = read_formula_file(path)
    for name, item in _builtins().items():
        found.setdefault(name, item)
    return found


def load(name: str, town_root: Path, rig_clone: Path | None = None) -> Formula:
    """The formula named `name` from the first place that has it."""
    found = available(town_root, rig_clone)
    if name not in found:
        raise NotFound(f"no formula {name!r}; formulas: {', '.join(sorted(found)) or 'none'}")
    item = found[name]
    if item.text is None:
        raise InvalidInput(item.error or f"{item.source}: cannot be read")
    return parse(item.text, item.source)


def list_formulas(town_root: Path, rig_clone: Path | None = None) -> list[FormulaInfo]:
    """Every formula found, in name order; one that cannot be read or parsed is listed with
    its error (a broken file in a rig must not hide the others)."""
    infos = []
    for name, item in sorted(available(town_root, rig_clone).items()):
        try:
            if item.text is None:
                raise InvalidInput(item.error or f"{item.source}: cannot be read")
            formula = parse(item.text, item.source)
        except Exception as exc:  # noqa: BLE001 - one broken file is listed as broken, never hides the rest
            error = str(exc) if isinstance(exc, InvalidInput) else f"{item.source}: {type(exc).__name__}: {exc}"
            infos.append(FormulaInfo(name=name, description="", source=item.source, steps=0, error=error[:500]))
            continue
        infos.append(FormulaInfo(name=name, description=formula.description, source=item.source,
                                 steps=len(formula.steps), warnings=len(formula.warnings)))
    return infos
