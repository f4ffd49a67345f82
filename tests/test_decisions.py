"""Pure decision functions, tested without tmux, git or Claude: screen reading and nudge
steps, which sessions `up` starts, polecat name allocation, patrol actions, schema slimming."""

from __future__ import annotations

import pytest

from vermas import patrol, polecat, up
from vermas.addresses import Address, Role, parse_address
from vermas.sessions import nudge
from vermas_mcp.schema import shallow_output, slim

RULE = "─" * 60
IDLE = f"""
 ▐▛███▛█   Claude Code v2.1.330
❯ earlier message
● earlier answer
{RULE}
❯ \u00a0
{RULE}
  ⏵⏵ accept edits on (shift+tab to cycle)
"""
TYPED = IDLE.replace("❯ \u00a0", "❯ vermas: call hook_check now")
BUSY = f"""
❯ vermas: call hook_check now
✻ Thinking…
{RULE}
❯ \u00a0
{RULE}
  ⏵⏵ accept edits on (shift+tab to cycle) · esc to interrupt
"""
WRAPPED = f"""
{RULE}
❯ a very long message that the terminal
  wrapped onto a second line
{RULE}
"""
DIALOG = """
 Do you want to proceed?
 ❯ 1. Yes
   2. No
"""


def test_read_screen() -> None:
    assert nudge.read_screen(IDLE) == nudge.Screen(ready=True, busy=False, input_text="")
    assert nudge.read_screen(TYPED).input_text == "vermas: call hook_check now"
    assert nudge.read_screen(BUSY) == nudge.Screen(ready=True, busy=True, input_text="")
    assert nudge.read_screen(WRAPPED).input_text == "a very long message that the terminal wrapped onto a second line"
    assert nudge.read_screen(DIALOG).ready is False
    assert nudge.read_screen("").ready is False


TEXT = "vermas: call hook_check now"


@pytest.mark.parametrize(
    ("screen", "typed", "entered", "expected"),
    [
        (nudge.Screen(False, False, ""), False, False, nudge.Step.WAIT),  # still starting
        (nudge.Screen(True, True, ""), False, False, nudge.Step.WAIT),  # busy: never interrupt
        (nudge.Screen(True, False, ""), False, False, nudge.Step.TYPE),
        (nudge.Screen(True, False, "human typing"), False, False, nudge.Step.FOREIGN),
        # Left in the box by a nudger that died before its Enter (a killed runner): the whole
        # text is submitted (the same nudge, once), a part of it erased and typed again.
        (nudge.Screen(True, False, TEXT), False, False, nudge.Step.ENTER),
        (nudge.Screen(True, False, "vermas: call hook_"), False, False, nudge.Step.CLEAR),
        (nudge.Screen(True, False, "vermas:"), False, False, nudge.Step.FOREIGN),  # too short to be sure
        (nudge.Screen(True, False, "vermas: call the mayor"), False, False, nudge.Step.FOREIGN),
        (nudge.Screen(True, True, TEXT), False, False, nudge.Step.WAIT),  # busy: never interrupt
        (nudge.Screen(True, False, ""), True, False, nudge.Step.WAIT),  # typed, not echoed yet
        (nudge.Screen(True, False, TEXT), True, False, nudge.Step.ENTER),
        (nudge.Screen(True, False, TEXT), True, True, nudge.Step.ENTER),  # Enter swallowed: again
        (nudge.Screen(True, False, ""), True, True, nudge.Step.DONE),
        (nudge.Screen(True, True, ""), True, True, nudge.Step.DONE),
        (nudge.Screen(False, False, ""), True, True, nudge.Step.WAIT),
    ],
)
def test_next_step(screen: nudge.Screen, typed: bool, entered: bool, expected: nudge.Step) -> None:
    assert nudge.next_step(screen, TEXT, typed, entered) is expected


def test_flatten_never_sends_newlines() -> None:
    assert nudge.flatten("line one\nline two\r\n  three\t") == "line one line two three"


def test_plan_up_starts_only_missing_sessions() -> None:
    mayor, witness = parse_address("mayor"), parse_address("gt/witness")
    refinery = parse_address("gt/refinery")
    desired = [mayor, witness, refinery]
    assert up.plan_up(desired, set()) == desired
    assert up.plan_up(desired, {mayor.session_name, refinery.session_name}) == [witness]
    assert up.plan_up(desired, {a.session_name for a in desired}) == []


def test_choose_name_respects_pool_and_limit() -> None:
    pool = ("nux", "slit", "toast")
    assert polecat.choose_name(pool, set(), 2) == "nux"
    assert polecat.choose_name(pool, {"nux"}, 2) == "slit"
    assert polecat.choose_name(pool, {"nux", "slit"}, 2) is None  # max_polecats reached
    assert polecat.choose_name(pool, {"nux", "slit", "toast"}, 5) == "polecat4"
    assert polecat.branch_name("nux", "gt-a1b2") == "polecat/nux/gt-a1b2"


def test_patrol_decides_export_and_kicks() -> None:
    quiet = patrol.Observed(stale_exports=(), started_polecats=())
    assert patrol.decide(quiet) == []
    busy = patrol.Observed(stale_exports=("issues",), started_polecats=(
        patrol.StartedPolecat("gt", "nux", alive=True, nudging=False),
        patrol.StartedPolecat("gt", "slit", alive=False, nudging=False),
        patrol.StartedPolecat("gt", "toast", alive=True, nudging=True)))  # someone is delivering it
    assert patrol.decide(busy) == [patrol.Action("export"), patrol.Action("kick", "gt/polecats/nux")]


def test_session_names_are_tmux_safe() -> None:
    for text in ("mayor", "gt/witness", "gt/polecats/nux", "my_rig/crew/a-b"):
        name = parse_address(text).session_name
        assert name.startswith("vermas-") and "/" not in name and "." not in name and ":" not in name
    assert Address(role=Role.POLECAT, rig="gt", name="nux").session_name == "vermas-gt-polecats-nux"


def test_slim_keeps_validation_meaning() -> None:
    schema = {"title": "X", "type": "object", "properties": {
        "title": {"title": "Title", "type": "string"},
        "parent": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None, "title": "Parent"},
        "limit": {"default": 20, "type": "integer"}}}
    assert slim(schema) == {"type": "object", "properties": {
        "title": {"type": "string"}, "parent": {"type": ["string", "null"]},
        "limit": {"default": 20, "type": "integer"}}}
    out = shallow_output({"type": "object", "required": ["bead"], "properties": {
        "bead": {"anyOf": [{"$ref": "#/$defs/Bead"}, {"type": "null"}]}, "n": {"type": "integer"}}})
    assert out == {"type": "object", "properties": {"bead": {}, "n": {}}}


def test_slim_merges_nullable_arrays_without_changing_what_validates() -> None:
    import jsonschema

    prop = {"anyOf": [{"items": {"type": "string"}, "type": "array"}, {"type": "null"}], "default": None,
            "title": "Labels"}
    enum = {"anyOf": [{"enum": ["a", "b"], "type": "string"}, {"type": "null"}]}
    assert slim(prop) == {"items": {"type": "string"}, "type": ["array", "null"]}
    assert slim(enum) == enum  # null would have to be listed in the enum: left as it is
    def valid(value: object, schema: dict[str, object]) -> bool:
        try:
            jsonschema.validate(value, schema)
        except jsonschema.ValidationError:
            return False
        return True

    for original in (prop, enum):
        for value in (None, [], ["x"], [1], "x", "a", 3, {"a": 1}):
            assert valid(value, original) == valid(value, slim(original)), (original, value)
