"""Slimmer JSON schemas for tools/list: every byte of a tool schema is paid in every session.

Pydantic's schemas carry titles, `default: null` (or `""`) and `anyOf: [X, null]` wrappers that say
nothing a validator or a model needs; removing them keeps validation identical.
"""

from typing import Any

DROP_KEYS = {"title"}


def slim(schema: Any) -> Any:
    if isinstance(schema, list):
        return [slim(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in DROP_KEYS and not isinstance(value, dict):
            continue
        if key == "default" and value in (None, ""):  # absent already means null / empty text
            continue
        if key == "properties" and isinstance(value, dict):
            out[key] = {name: slim(prop) for name, prop in value.items()}
            continue
        out[key] = slim(value)
    options = out.get("anyOf")
    if isinstance(options, list) and len(options) == 2 and {"type": "null"} in options:
        other = next(o for o in options if o != {"type": "null"})
        if set(other) == {"type"} and isinstance(other["type"], str):
            del out["anyOf"]
            out["type"] = [other["type"], "null"]
    return out


def _kind(prop: dict[str, Any], defs: dict[str, Any] | None = None) -> Any:
    """The JSON type(s) of a property, with references and unions reduced to type names
    (a reference to an enum of strings is a string, to a model an object)."""
    if "$ref" in prop:
        target = (defs or {}).get(str(prop["$ref"]).rpartition("/")[2], {})
        return target.get("type", "object")
    if "type" in prop:
        return prop["type"]
    kinds: list[str] = []
    for option in prop.get("anyOf", []):
        kind = _kind(option, defs)
        for k in kind if isinstance(kind, list) else [kind]:
            if k not in kinds:
                kinds.append(k)
    return kinds[0] if len(kinds) == 1 else kinds


def shallow_output(schema: dict[str, Any]) -> dict[str, Any]:
    """An output schema that names the top-level fields and their types, nothing deeper.

    Models never see output schemas (Claude Code sends them only names, descriptions and
    input schemas); clients use them to check structured results, for which field names
    and types suffice (our results always carry every field, pydantic sees to that). The full
    nested schema tripled the bytes of tools/list.
    """
    defs = schema.get("$defs", {})
    properties = {name: {"type": _kind(prop, defs)} for name, prop in schema.get("properties", {}).items()}
    return {"type": "object", "properties": properties}
