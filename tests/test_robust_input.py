"""Bad input at the edge (issue 8, items 6, 13, 17, 18): every tool's every string, integer and
bool parameter through the real MCP client (the SDK's in-memory transport), the id rule at
creation, and the runner's argv. Each bad call gets a clear error and writes nothing."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import types
import typing
import unicodedata
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import call, fail
from vermas import ids
from vermas.bdimport import import_file
from vermas.errors import InvalidInput
from vermas.export import export_town
from vermas.tools import MULTILINE_PARAMS, TOOLS, Param
from vermas.layout import TownLayout
from vermas.town import Town
from vermas.validate import LINE_BREAKING

RUNNER = str(Path(sys.executable).with_name("vermas-runner"))

# Every line separator and control character a single-line field must refuse (item 18).
BREAKERS = ["\n", "\r", "\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x00", "\t", "\x1b", "\x7f", "\x9f"]


def snapshot(town: Town) -> tuple[Any, ...]:
    """Every row of every table, plus the bytes of every export: what a tool could write.
    Not agent_events: every call, refused ones too, is the caller's activity (vermas.events)."""
    with town.db.read() as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                             "AND name != 'agent_events' ORDER BY 1")]
        rows = tuple(tuple(map(tuple, conn.execute(f'SELECT * FROM "{t}" ORDER BY 1'))) for t in tables)
    exports = tuple(sorted((p.name, p.read_bytes()) for p in town.layout.beads_dir.glob("*.jsonl")))
    return rows, exports


def _options(annotation: Any) -> tuple[Any, ...]:
    return typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)


def is_text(p: Param) -> bool:
    return any(o is str or typing.get_args(o) == (str,) for o in _options(p.python_type))


def is_list(p: Param) -> bool:
    return any(typing.get_origin(o) is list for o in _options(p.python_type))


def base_args(spec_name: str) -> dict[str, Any]:
    """Type-valid values for a tool's required parameters (the checks under test run first)."""
    return {p.name: (["x"] if is_list(p) else "x") for p in TOOLS[spec_name].params if p.required}


def with_text(p: Param, text: str) -> Any:
    return [text] if is_list(p) else text


TEXT_PARAMS = [(s.name, p) for s in TOOLS.values() for p in s.params if is_text(p)]
ONE_LINE_PARAMS = [(name, p) for name, p in TEXT_PARAMS if p.name not in MULTILINE_PARAMS]
INT_PARAMS = [(s.name, p) for s in TOOLS.values() for p in s.params if int in _options(p.python_type)]
BOOL_PARAMS = [(s.name, p) for s in TOOLS.values() for p in s.params if bool in _options(p.python_type)]


def _ids(params: list[tuple[str, Param]]) -> list[str]:
    return [f"{name}.{p.name}" for name, p in params]


def test_the_parameter_lists_cover_every_tool() -> None:
    """The class, not a sample: every tool with a parameter appears below, and every text
    parameter of every tool is checked (so a new tool is covered without anyone adding it)."""
    assert {name for name, _ in TEXT_PARAMS + INT_PARAMS + BOOL_PARAMS} == {
        s.name for s in TOOLS.values() if s.params}
    assert len(TEXT_PARAMS) >= 40 and len(INT_PARAMS) >= 4 and len(BOOL_PARAMS) >= 6


# ---- item 13: lone surrogates -----------------------------------------------------------------

@pytest.mark.parametrize(("tool", "param"), TEXT_PARAMS, ids=_ids(TEXT_PARAMS))
async def test_a_lone_surrogate_in_any_string_is_a_clear_error(
        client_for: Any, town: Town, tool: str, param: Param) -> None:
    async with client_for("overseer", "all") as c:
        before = snapshot(town)
        args = base_args(tool) | {param.name: with_text(param, "ok\ud800x")}
        message = await fail(c, tool, **args)
        field = f"{param.name}[0]" if is_list(param) else param.name
        assert f"{field} contains a lone surrogate (invalid Unicode) at position 2" in message
        assert snapshot(town) == before


async def test_a_low_surrogate_deep_in_a_body_and_in_a_later_label(client_for: Any, town: Town) -> None:
    async with client_for("overseer", "all") as c:
        before = snapshot(town)
        message = await fail(c, "bead_create", title="t", description="é" * 1000 + "\udc80")
        assert "description contains a lone surrogate (invalid Unicode) at position 1000" in message
        message = await fail(c, "bead_create", title="t", labels=["ok", "b\udfff"])
        assert "labels[1] contains a lone surrogate" in message
        assert snapshot(town) == before
        # Valid astral text (a real surrogate pair in JSON) is fine and round-trips.
        bead = await call(c, "bead_create", title="ship it \U0001f680", description="emoji \U0001f600")
        assert (await call(c, "bead_show", bead_id=bead["id"]))["title"] == "ship it \U0001f680"


# ---- item 18: single-line fields refuse every line break and control character ----------------

@pytest.mark.parametrize(("tool", "param"), ONE_LINE_PARAMS, ids=_ids(ONE_LINE_PARAMS))
async def test_single_line_fields_refuse_every_separator_and_control(
        client_for: Any, town: Town, tool: str, param: Param) -> None:
    async with client_for("overseer", "all") as c:
        before = snapshot(town)
        for ch in BREAKERS:
            args = base_args(tool) | {param.name: with_text(param, f"ab{ch}c")}
            message = await fail(c, tool, **args)
            assert "must be a single line of text without control characters" in message, (ch, message)
            assert f"U+{ord(ch):04X}" in message and "at position 2" in message
        assert snapshot(town) == before


async def test_titles_and_subjects_by_name(client_for: Any, town: Town) -> None:
    """The cases of the finding, with the hint each field's message gives."""
    async with client_for("overseer", "all") as c:
        before = snapshot(town)
        message = await fail(c, "bead_create", title="a\u2028b")
        assert "title must be a single line" in message and "U+2028 (line separator)" in message
        assert "U+0085 (next line)" in await fail(c, "mail_send", to="mayor", subject="hi\x85there")
        assert "U+0000 (NUL)" in await fail(c, "convoy_create", title="c\x00", bead_ids=["hq-abcd"])
        assert snapshot(town) == before
        # Bodies keep their lines (and tabs).
        bead = await call(c, "bead_create", title="t", description="line 1\nline 2\n\tindented")
        assert bead["description"] == "line 1\nline 2\n\tindented"


def test_the_single_line_rule_is_the_unicode_categories() -> None:
    """LINE_BREAKING is exactly the control characters and line/paragraph separators."""
    for code in range(0x110000):
        ch = chr(code)
        if 0xD800 <= code <= 0xDFFF:
            continue
        expected = unicodedata.category(ch) in ("Cc", "Zl", "Zp")
        assert (LINE_BREAKING.search(ch) is not None) == expected, hex(code)


# ---- item 18: strict types at the edge ----------------------------------------------------------

@pytest.mark.parametrize(("tool", "param"), INT_PARAMS, ids=_ids(INT_PARAMS))
async def test_integer_parameters_take_integers_only(
        client_for: Any, town: Town, tool: str, param: Param) -> None:
    async with client_for("overseer", "all") as c:
        await call(c, "bead_create", title="existing")
        before = snapshot(town)
        for bad in (True, False, "5", "2", 2.0, "two"):
            message = await fail(c, tool, **base_args(tool), **{param.name: bad})
            assert f"{param.name}: Input should be a valid integer (got {bad!r})" in message, (bad, message)
        assert snapshot(town) == before


@pytest.mark.parametrize(("tool", "param"), BOOL_PARAMS, ids=_ids(BOOL_PARAMS))
async def test_bool_parameters_take_bools_only(client_for: Any, town: Town, tool: str, param: Param) -> None:
    async with client_for("overseer", "all") as c:
        before = snapshot(town)
        for bad in (1, 0, "true", "false", "yes"):
            message = await fail(c, tool, **base_args(tool), **{param.name: bad})
            assert f"{param.name}: Input should be a valid boolean (got {bad!r})" in message, (bad, message)
        assert snapshot(town) == before


async def test_priority_true_is_not_stored_as_one_and_real_values_still_work(client_for: Any, town: Town) -> None:
    async with client_for("overseer", "all") as c:
        assert "priority" in await fail(c, "bead_create", title="x", priority=True)
        assert "limit" in await fail(c, "bead_list", limit="5")
        with town.db.read() as conn:
            assert conn.execute("SELECT count(*) FROM issues").fetchone()[0] == 0
        bead = await call(c, "bead_create", title="x", priority=0)
        assert bead["priority"] == 0
        updated = await call(c, "bead_update", bead_id=bead["id"], priority=4)
        assert updated["priority"] == 4
        assert len((await call(c, "bead_list", limit=5))["beads"]) == 1
        assert (await call(c, "convoy_list", include_landed=True))["convoys"] == []


def test_the_shell_still_reads_numbers_from_argv(town: Town, capsys: pytest.CaptureFixture[str]) -> None:
    from vermas_runner import cli

    def run(*args: str) -> tuple[int, str]:
        try:
            cli.main([*args, "--town", str(town.root), "--json"])
        except SystemExit as exc:
            return int(exc.code or 0), capsys.readouterr().err
        return 0, capsys.readouterr().out

    code, out = run("bead", "create", "from the shell", "--priority", "1")
    assert code == 0 and '"priority": 1' in out
    code, out = run("bead", "list", "--limit", "5")
    assert code == 0 and "from the shell" in out
    code, err = run("bead", "create", "x", "--priority", "1.5")
    assert code == 2 and "priority: Input should be a valid integer" in err


# ---- item 6: the id rule at creation -----------------------------------------------------------

async def test_children_stop_at_the_deepest_valid_id(client_for: Any, town: Town, tmp_path: Path) -> None:
    async with client_for("mayor") as c:
        bead = await call(c, "bead_create", title="level 0")
        chain = [bead["id"]]
        for level in range(1, ids.MAX_DEPTH + 1):
            bead = await call(c, "bead_create", title=f"level {level}", parent=chain[-1])
            chain.append(bead["id"])
        deepest = chain[-1]
        assert ids.depth(deepest) == ids.MAX_DEPTH and ids.is_bead_id(deepest)
        assert (await call(c, "bead_show", bead_id=deepest))["id"] == deepest  # every tool takes it
        before = snapshot(town)
        message = await fail(c, "bead_create", title="too deep", parent=deepest)
        assert f"parent {deepest} is already {ids.MAX_DEPTH} levels deep" in message
        assert "shallower parent" in message
        assert snapshot(town) == before
    # The town's own export re-imports (a depth-9 id made this fail: "line 13: invalid bead id").
    export_town(town, force=True)
    other, _ = Town.init(tmp_path / "other")
    try:
        import_file(other, town.layout.export_file("issues"))
        with other.db.read() as conn:
            assert {r[0] for r in conn.execute("SELECT id FROM issues")} == set(chain)
    finally:
        other.close()


def test_a_child_id_that_would_break_the_rule_is_refused_inside_the_transaction() -> None:
    """The two other ways a child id could break the rule: a seventh digit, an overlong id."""
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE issues (id TEXT PRIMARY KEY)")
    conn.execute("INSERT INTO issues VALUES ('hq-abcd'), ('hq-abcd.999999')")
    with pytest.raises(InvalidInput, match="at most 6 digits per level"):
        ids.new_child_id(conn, "hq-abcd")
    long_parent = "hq-" + "a" * (ids.MAX_ID_LEN - 4)
    with pytest.raises(InvalidInput, match="would exceed 96"):
        ids.new_child_id(conn, long_parent)
    assert ids.new_child_id(conn, "hq-zzzz") == "hq-zzzz.1"


# ---- item 17: argv that is not UTF-8 -----------------------------------------------------------

def runner_bytes(*args: bytes | str, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in ("VERMAS_TOWN", "BD_ACTOR")}
    return subprocess.run([RUNNER, *args], capture_output=True, env=env, cwd=cwd, timeout=60)


def test_init_with_an_undecodable_name_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    result = runner_bytes(b"init", b"bad\xffname", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.decode("utf-8", "replace").strip().splitlines()
    assert len(lines) == 1 and "not valid UTF-8" in lines[0] and "0xff" in lines[0]
    assert "Traceback" not in lines[0] and result.stdout == b""
    assert list(tmp_path.iterdir()) == []


def test_init_inside_an_undecodable_directory_leaves_nothing(tmp_path: Path) -> None:
    """The argument is fine ('.'), the directory's real name is not: refused before writing."""
    odd = Path(os.fsdecode(bytes(tmp_path) + b"/odd\xfe"))
    odd.mkdir()
    result = runner_bytes(b"init", b".", cwd=odd)
    assert result.returncode == 2 and b"Traceback" not in result.stderr
    assert b"is not valid UTF-8 text" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert list(odd.iterdir()) == []


def test_nudge_with_an_undecodable_message_is_one_line(tmp_path: Path) -> None:
    town, _ = Town.init(tmp_path / "t")
    town.close()
    before = {p: p.read_bytes() for p in town.root.rglob("*") if p.is_file()}
    for args in ([b"nudge", b"mayor", b"\xff"], [b"bead", b"create", b"caf\xe9"],
                 [b"mail", b"send", b"mayor", b"s\x80"]):
        result = runner_bytes(*args, b"--town", str(town.root), cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        stderr = result.stderr.decode("utf-8", "replace").strip().splitlines()
        assert len(stderr) == 1 and "is not valid UTF-8 text" in stderr[0], stderr
    assert {p: p.read_bytes() for p in town.root.rglob("*") if p.is_file()} == before


def test_a_failed_init_removes_what_it_made(tmp_path: Path) -> None:
    """A real failure half way (town.toml's place is taken by a directory): no .beads/, no
    .runtime/, no temp file left for the next `init` to mistake for a town."""
    root = tmp_path / "half"
    (root / "town.toml").mkdir(parents=True)
    with pytest.raises(OSError):
        Town.init(root)
    assert sorted(p.name for p in root.iterdir()) == ["town.toml"]
    # Failing later (the store's place is taken): the town.toml it wrote goes too, and the
    # .beads/ that was there before stays.
    root = tmp_path / "later"
    town_layout = TownLayout(root)
    town_layout.store_path.mkdir(parents=True)
    with pytest.raises(Exception):  # noqa: B017 - sqlite3 or OS error, both real
        Town.init(root)
    assert sorted(p.name for p in root.iterdir()) == [".beads"]
    assert [p.name for p in town_layout.beads_dir.iterdir()] == [town_layout.store_path.name]


async def test_an_unknown_parameter_is_refused_not_dropped(client_for: Any, town: Town) -> None:
    """The SDK drops unknown arguments: `prority=0` made a bead at priority 2 and said success."""
    async with client_for("overseer", "all") as c:
        before = snapshot(town)
        message = await fail(c, "bead_create", title="typo", prority=0)
        assert "unknown parameter 'prority'; allowed: title, description" in message, message
        assert snapshot(town) == before


async def test_a_json_looking_string_stays_a_string(client_for: Any, town: Town) -> None:
    """Only list parameters take JSON text (Claude Desktop sends lists that way); a title or
    comment that happens to be valid JSON is stored as written."""
    async with client_for("overseer", "all") as c:
        bead = await call(c, "bead_create", title="draft", labels='["a", "b"]')
        assert bead["labels"] == ["a", "b"]
        updated = await call(c, "bead_update", bead_id=bead["id"], title='["draft"]', comment='{"a": 1}')
        assert updated["title"] == '["draft"]'
        shown = await call(c, "bead_show", bead_id=bead["id"])
        assert [x["text"] for x in shown["comments"]] == ['{"a": 1}']
