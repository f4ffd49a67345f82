"""Issue 20, items 4 and 7: one formula file must never break the formula tools, and a step a
formula pours must be one every tool accepts. Over the real MCP protocol (SDK client) and the
real shell twin, on real files (a FIFO, a non-UTF-8 file, a folder) in a real town.

- A 1,200-step `needs` chain is refused with an error naming the file (a limit on steps), and a
  chain under the limit is walked without recursion (it raised RecursionError).
- A broken formula file (too many steps, a FIFO, not UTF-8, a folder) is listed as broken by
  formula_list, and every other formula is still listed and usable.
- An unexpected exception in any tool is one line naming the tool and the exception type, its
  traceback logged (stderr of the server and the town's .runtime/tool-errors.log), never the
  SDK's bare "Error executing tool X"; the shell twin answers the same line, exit 2.
- Multi-line step titles (and other text the tools refuse) are refused at cook time.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import call, fail
from vermas.errors import InvalidInput
from vermas.molecules import formula as f
from vermas.tools import TOOL_ERRORS_FILE
from vermas.town import Town


def chain(name: str, steps: int) -> str:
    """A formula whose steps form one `needs` chain: s1 <- s2 <- ... <- sN."""
    parts = [f'formula = "{name}"\ndescription = "a long chain"\n']
    for n in range(1, steps + 1):
        needs = f'needs = ["s{n - 1}"]\n' if n > 1 else ""
        parts.append(f'[[steps]]\nid = "s{n}"\ntitle = "Step {n}"\n{needs}')
    return "\n".join(parts)


def formulas_dir(town: Town) -> Path:
    folder = town.root / ".beads" / "formulas"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_find_cycle_walks_a_long_chain_without_recursion() -> None:
    n = 20_000  # far past Python's recursion limit
    graph = {f"s{i}": [f"s{i - 1}"] if i else [] for i in range(n)}
    assert f.find_cycle(graph) is None
    graph["s0"] = [f"s{n - 1}"]  # close it: the cycle is the whole chain
    cycle = f.find_cycle(graph)
    assert cycle is not None and cycle[0] == cycle[-1] and len(cycle) == n + 1
    assert f.find_cycle({"a": ["b"], "b": ["c"], "c": ["b"]}) == ["b", "c", "b"]


def test_a_chain_at_the_limit_parses_and_cooks() -> None:
    proto = f.cook(f.parse(chain("long", f.MAX_STEPS), "long.formula.toml"))
    assert len(proto.steps) == f.MAX_STEPS and proto.steps[-1].needs == [f"s{f.MAX_STEPS - 1}"]


def test_deeply_nested_toml_is_an_error_not_a_crash() -> None:
    text = 'formula = "deep"\nx = ' + "[" * 5000 + "]" * 5000 + "\n"
    with pytest.raises(InvalidInput, match="deep.formula.toml: toml: values nested too deeply"):
        f.parse(text, "deep.formula.toml")


async def test_a_1200_step_chain_is_refused_by_name_and_hides_nothing(town: Town, client_for: Any) -> None:
    folder = formulas_dir(town)
    (folder / "huge.formula.toml").write_text(chain("huge", 1200))
    (folder / "medium.formula.toml").write_text(chain("medium", 400))
    async with client_for("mayor") as mayor:
        listed = {x["name"]: x for x in (await call(mayor, "formula_list"))["formulas"]}
        assert {"polecat-work", "review", "test-first", "medium"} <= set(listed)
        assert listed["medium"]["error"] is None and listed["medium"]["steps"] == 400
        error = listed["huge"]["error"]
        assert error is not None and "huge.formula.toml" in error and "1200 steps; at most 500" in error
        for tool in ("formula_show", "mol_pour"):
            text = await fail(mayor, tool, formula="huge")
            assert "huge.formula.toml" in text and "1200 steps; at most 500" in text, text
        shown = await call(mayor, "formula_show", formula="medium")
        assert len(shown["steps"]) == 400
        poured = await call(mayor, "mol_pour", formula="medium")
        assert len(poured["steps"]) == 400 and poured["current"]["step"] == "s1"
        assert (await call(mayor, "formula_show", formula="review", vars=["target=x"]))["steps"]


async def test_unreadable_formula_files_are_listed_as_broken_without_blocking(town: Town, client_for: Any) -> None:
    folder = formulas_dir(town)
    os.mkfifo(folder / "fifo.formula.toml")  # opened plainly, a read would wait for a writer forever
    (folder / "latin.formula.toml").write_bytes(b'formula = "latin"\ndescription = "caf\xe9"\n')
    (folder / "folder.formula.toml").mkdir()
    (folder / "fine.formula.toml").write_text(chain("fine", 2))
    async with client_for("mayor") as mayor:
        started = time.monotonic()
        listed = {x["name"]: x for x in (await call(mayor, "formula_list"))["formulas"]}
        assert time.monotonic() - started < 30
        assert "not a regular file" in listed["fifo"]["error"] and "fifo.formula.toml" in listed["fifo"]["error"]
        assert "not UTF-8" in listed["latin"]["error"]
        assert listed["folder"]["error"] is not None and "folder.formula.toml" in listed["folder"]["error"]
        assert listed["fine"]["error"] is None and listed["review"]["error"] is None
        assert "not a regular file" in await fail(mayor, "formula_show", formula="fifo")
        assert "not UTF-8" in await fail(mayor, "mol_pour", formula="latin")


def drop_issues_table(town: Town) -> None:
    """Break the store under the running tools: an unexpected failure, not a domain error."""
    conn = sqlite3.connect(town.layout.store_path)
    try:
        conn.execute("DROP TABLE issues")
        conn.commit()
    finally:
        conn.close()


async def test_an_unexpected_exception_is_one_line_naming_tool_and_type_and_is_logged(
        town: Town, client_for: Any, caplog: pytest.LogCaptureFixture) -> None:
    async with client_for("mayor") as mayor:
        bead = await call(mayor, "bead_create", title="a bead")
        drop_issues_table(town)
        with caplog.at_level(logging.ERROR, logger="vermas_mcp"):
            text = await fail(mayor, "bead_show", bead_id=bead["id"])
    assert "\n" not in text
    assert "bead_show failed: unexpected OperationalError: no such table: issues" in text, text
    assert text != "Error executing tool bead_show"
    logged = [r for r in caplog.records if r.name == "vermas_mcp" and r.exc_info]
    assert logged and "bead_show" in logged[0].getMessage()
    trace = (town.layout.runtime_dir / TOOL_ERRORS_FILE).read_text()
    assert "tool bead_show actor mayor" in trace and "Traceback" in trace and "no such table: issues" in trace
    assert (town.layout.runtime_dir / TOOL_ERRORS_FILE).stat().st_mode & 0o777 == 0o600


def test_the_shell_twin_answers_the_same_one_line_with_exit_2(town: Town) -> None:
    runner = Path(sys.executable).parent / "vermas-runner"
    env = {"VERMAS_TOWN": str(town.root), "BD_ACTOR": "mayor", "PATH": str(Path(sys.executable).parent)}
    drop_issues_table(town)
    out = subprocess.run([str(runner), "bead", "show", "hq-abcd"], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert "bead_show failed: unexpected OperationalError: no such table: issues" in lines[0]
    assert "Traceback" in (town.layout.runtime_dir / TOOL_ERRORS_FILE).read_text()


# --- item 7: what a formula pours must be what the tools accept -------------------------------

def one_step(title: str, extra: str = "") -> str:
    return f'formula = "t"\n[[steps]]\nid = "a"\ntitle = """{title}"""\n{extra}'


@pytest.mark.parametrize(("title", "found"), [  # as written in the TOML file
    ("first line\nsecond line", "U+000A (line feed)"),
    ("tab\\there", "U+0009 (tab)"),
    ("escape \\u001b[31m red", "U+001B (escape)"),
    ("next\\u2028line", "U+2028"),
])
def test_a_step_title_that_is_not_one_line_is_refused_at_cook(title: str, found: str) -> None:
    with pytest.raises(InvalidInput, match=r"t.formula.toml: step 'a': field 'title': title must be a single line") \
            as err:
        f.cook(f.parse(one_step(title), "t.formula.toml"))
    assert found in str(err.value)


def test_a_var_that_makes_a_title_multi_line_is_refused_at_cook() -> None:
    text = 'formula = "t"\n[vars.who]\ndefault = "x"\n[[steps]]\nid = "a"\ntitle = "Do {{who}}"\n'
    with pytest.raises(InvalidInput, match="step 'a': field 'title': title must be a single line"):
        f.cook(f.parse(text, "t.formula.toml"), {"who": "a\nb"})


def test_other_fields_meet_the_tools_rules_at_cook() -> None:
    with pytest.raises(InvalidInput, match="step 'a': field 'labels': invalid label 'two words'"):
        f.cook(f.parse(one_step("ok", 'labels = ["two words"]\n'), "t.formula.toml"))
    with pytest.raises(InvalidInput, match="step 'a b': field 'id': invalid label 'step:a b'"):
        f.cook(f.parse('formula = "t"\n[[steps]]\nid = "a b"\ntitle = "x"\n', "t.formula.toml"))
    with pytest.raises(InvalidInput, match="step 'a': field 'title': title is 501 characters"):
        f.cook(f.parse(one_step("x" * 501), "t.formula.toml"))
    with pytest.raises(InvalidInput, match="top level: field 'formula': invalid label 'formula:has space'"):
        f.cook(f.parse('formula = "has space"\n[[steps]]\nid = "a"\ntitle = "x"\n', "t.formula.toml"))
    multi = 'formula = "t"\ndescription = """Line one.\nLine two."""\n[[steps]]\nid = "a"\ntitle = "x"\n'
    assert f.root_title(f.cook(f.parse(multi, "t.formula.toml"))) == "t: Line one."


async def test_a_multi_line_title_pours_nothing_over_mcp(town: Town, client_for: Any) -> None:
    (formulas_dir(town) / "multi.formula.toml").write_text(one_step("Implement it\nthen more"))
    async with client_for("mayor") as mayor:
        text = await fail(mayor, "mol_pour", formula="multi")
        assert "multi.formula.toml: step 'a': field 'title': title must be a single line" in text, text
        assert (await call(mayor, "bead_list"))["beads"] == []


async def test_over_stdio_the_traceback_goes_to_the_servers_stderr(tmp_path: Path) -> None:
    """`vermas-mcp` as Claude Code runs it: the reply is the one line; the server's stderr (which
    Claude Code keeps as the MCP server's log) has the traceback."""
    from mcp import Client, StdioServerParameters
    from mcp.client.stdio import stdio_client

    from tests.test_stdio import err, mcp_command, ok

    town, _ = Town.init(tmp_path / "town")
    params = StdioServerParameters(command=mcp_command(), env={"VERMAS_TOWN": str(town.root), "BD_ACTOR": "mayor"})
    stderr = tmp_path / "server-stderr.log"
    try:
        with stderr.open("w") as errlog:
            async with Client(stdio_client(params, errlog=errlog), mode="legacy", read_timeout_seconds=60) as client:
                bead = await ok(client, "bead_create", title="a bead")
                drop_issues_table(town)
                text = await err(client, "bead_show", bead_id=bead["id"])
    finally:
        town.close()
    assert "\n" not in text and "bead_show failed: unexpected OperationalError: no such table: issues" in text
    logged = stderr.read_text()
    # the SDK's rich log handler wraps lines; the traceback shows its frames (beads.fetch_row)
    assert "tool bead_show (actor mayor) raised" in logged and "def fetch_row" in logged, logged[-2000:]
