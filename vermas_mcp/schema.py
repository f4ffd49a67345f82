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
        # {"type": [X, "null"], ...X's other keywords}: the same values validate, since keywords
        # such as `items` or `enum`... apply only to their own type (enum is excluded: null would
        # have to be listed in it).
        if isinstance(other.get("type"), str) and "enum" not in other and "const" not in other \
                and not set(other) & set(out) - {"anyOf"}:
            del out["anyOf"]
            out.update(other)
            out["type"] = [other["type"], "null"]
    return out


def shallow_output(schema: dict[str, Any]) -> dict[str, Any]:
    """An output schema that names the result's top-level fields, each `{}` (any value).

    Models never see output schemas (Claude Code sends them only names, descriptions and
    input schemas), and every result is a pydantic model, typed and validated where it is
    made; a client learns the field names from this. Types per field cost ~16 bytes each:
    with them the polecat's tools/list was 8,480 B (8 KB is its budget), without 6.3 KB, and
    the full nested schemas had tripled it.
    """
    return {"type": "object", "properties": {name: {} for name in schema.get("properties", {})}}
