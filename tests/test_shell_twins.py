"""Shell twins of the MCP tools: generated from the one registry, validated the same way,
acting as --actor / $BD_ACTOR / overseer; tables for people, --json for scripts."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import fail

from vermas import beads
from vermas.addresses import parse_address
from vermas.tools import TOOLS
from vermas.town import Town
from vermas_runner import cli

RUNNER = str(Path(sys.executable).with_name("vermas-runner"))


def shell(town: Town, *args: str, actor_env: str | None = None) -> subprocess.CompletedProcess[str]:
    """The real console script, as a user types it."""
    env = {k: v for k, v in os.environ.items() if k not in ("VERMAS_TOWN", "BD_ACTOR")}
    if actor_env:
        env["BD_ACTOR"] = actor_env
    return subprocess.run([RUNNER, *args, "--town", str(town.root)], capture_output=True, text=True,
                          env=env, timeout=60)


def in_process(town: Town, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """main(argv) in this process: (exit code, stdout, stderr)."""
    code = 0
    try:
        cli.main([*args, "--town", str(town.root)])
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def bead_count(town: Town) -> int:
    with town.db.read() as conn:
        return conn.execute("SELECT count(*) FROM issues").fetchone()[0]


def test_bead_round_trip_in_tables_and_json(town: Town) -> None:
    made = shell(town, "bead", "create", "Fix the parser", "--priority", "1", "--labels", "a",
                 "--labels", "b", "--json")
    assert made.returncode == 0, made.stderr
    bead = json.loads(made.stdout)
    assert bead["priority"] == 1 and bead["labels"] == ["a", "b"] and bead["created_by"] == "overseer"
    table = shell(town, "bead", "list", "--status", "open")
    assert table.returncode == 0 and bead["id"] in table.stdout and "Fix the parser" in table.stdout
    assert "┃" in table.stdout and "\t" not in table.stdout  # a rich table, not TSV
    ready = json.loads(shell(town, "bead", "ready", "--json").stdout)
    assert [b["id"] for b in ready["beads"]] == [bead["id"]]
    shown = shell(town, "bead", "show", bead["id"])
    assert shown.returncode == 0 and "Fix the parser" in shown.stdout and "created by" in shown.stdout
    assert json.loads(shell(town, "bead", "show", bead["id"], "--json").stdout)["id"] == bead["id"]


def test_actor_from_flag_env_or_overseer(town: Town, capsys: pytest.CaptureFixture[str]) -> None:
    by_env = json.loads(shell(town, "bead", "create", "env", "--json", actor_env="mayor").stdout)
    assert by_env["created_by"] == "mayor"
    code, out, _ = in_process(town, capsys, "bead", "create", "flag", "--actor", "deacon", "--json")
    assert code == 0 and json.loads(out)["created_by"] == "deacon"
    os.environ.pop("BD_ACTOR", None)
    code, out, _ = in_process(town, capsys, "bead", "create", "default", "--json")
    assert json.loads(out)["created_by"] == "overseer"


@pytest.mark.parametrize("args, mcp_args, expected", [
    (["bead", "create", "x", "--priority", "9"], ("bead_create", {"title": "x", "priority": 9}),
     "invalid priority '9'"),
    (["bead", "create", ""], ("bead_create", {"title": ""}), "title"),
    (["bead", "show", "no/such"], ("bead_show", {"bead_id": "no/such"}), "invalid bead_id"),
    (["bead", "show", "hq-zzzz"], ("bead_show", {"bead_id": "hq-zzzz"}), "no bead 'hq-zzzz'"),
])
async def test_same_invalid_input_same_message_nothing_written(
        town: Town, client_for: Any, capsys: pytest.CaptureFixture[str],
        args: list[str], mcp_args: tuple[str, dict[str, Any]], expected: str) -> None:
    async with client_for("overseer") as c:
        via_mcp = await fail(c, mcp_args[0], **mcp_args[1])
    code, out, err = in_process(town, capsys, *args)
    assert code == 2 and out == "" and err.startswith("vermas-runner: ")
    via_shell = err.removeprefix("vermas-runner: ").strip()
    assert expected in via_shell and via_mcp == f"Error executing tool {mcp_args[0]}: {via_shell}"  # SDK prefix
    assert "\n" not in via_shell and bead_count(town) == 0


def test_non_integer_priority_is_refused_by_the_signature(town: Town, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = in_process(town, capsys, "bead", "create", "x", "--priority", "high")
    assert code == 2 and "priority: Input should be a valid integer" in err and bead_count(town) == 0


def test_errors_name_the_shell_command_too(town: Town, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = in_process(town, capsys, "mail", "read", "msg-nothere0001")
    assert code == 2 and "mail_inbox / `vermas-runner mail inbox`" in err
    code, _, err = in_process(town, capsys, "convoy", "create", "batch", "hq-zzzz")
    assert "bead_list / `vermas-runner bead list`" in err


def test_mail_and_convoy_twins(town: Town, capsys: pytest.CaptureFixture[str]) -> None:
    bead = beads.create(town, parse_address("overseer"), "tracked")
    code, out, _ = in_process(town, capsys, "mail", "send", "mayor", "HELP stuck", "--body", "hi", "--json")
    message = json.loads(out)
    assert code == 0 and message["kind"] == "HELP" and message["sender"] == "overseer"
    code, out, _ = in_process(town, capsys, "mail", "inbox", "--actor", "mayor", "--json")
    assert [m["id"] for m in json.loads(out)["messages"]] == [message["id"]]
    code, out, _ = in_process(town, capsys, "convoy", "create", "batch", bead.id, "--json")
    convoy = json.loads(out)
    assert convoy["total"] == 1
    code, out, _ = in_process(town, capsys, "convoy", "list")
    assert code == 0 and convoy["id"] in out and "batch" in out
    code, out, _ = in_process(town, capsys, "bead", "close", bead.id, "--reason", "done")
    code, out, _ = in_process(town, capsys, "convoy", "status", convoy["id"], "--json")
    assert json.loads(out)["landed"] is True


def test_every_registry_tool_has_a_shell_command() -> None:
    parser = cli.build_parser()
    for spec in TOOLS.values():
        node = parser
        for word in spec.shell:
            sub = next(a for a in node._actions if isinstance(a, argparse._SubParsersAction))
            assert word in sub.choices, f"{spec.name}: no `{' '.join(spec.shell)}`"
            node = sub.choices[word]
        dests = {a.dest for a in node._actions}
        assert {p.name for p in spec.params} <= dests and {"town", "json", "actor"} <= dests, spec.name


def _parsers(parser: argparse.ArgumentParser, path: str = "vermas-runner") -> Any:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, child in action.choices.items():
                assert helps.get(name), f"`{path} {name}` has no help"
                yield from _parsers(child, f"{path} {name}")


def test_help_on_every_command_and_option() -> None:
    seen = 0
    for path, parser in _parsers(cli.build_parser()):
        for action in parser._actions:
            assert action.help and action.help.strip(), f"`{path}` {action.option_strings or action.dest}: no help"
            seen += 1
    assert seen > 150


def test_sling_to_an_address_is_the_tool_and_unsling_undoes_it(town: Town, capsys: pytest.CaptureFixture[str]) -> None:
    bead = beads.create(town, parse_address("overseer"), "for the mayor")
    code, out, err = in_process(town, capsys, "sling", bead.id, "mayor", "--json")
    assert code == 0, err
    assert json.loads(out)["status"] == "hooked" and json.loads(out)["assignee"] == "mayor"
    code, out, _ = in_process(town, capsys, "hook", "check", "--actor", "mayor", "--json")
    assert json.loads(out)["bead"]["id"] == bead.id
    code, out, _ = in_process(town, capsys, "unsling", bead.id, "--json")
    assert code == 0 and json.loads(out)["status"] == "open"


def test_polecat_list_and_rig_list_are_tables_or_json(town: Town, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from conftest import make_repo

    from vermas import polecat, rig

    rig.add(town, "gt", str(make_repo(tmp_path / "upstream")))
    bead = beads.create(town, parse_address("overseer"), "work", rig="gt")
    info = polecat.allocate(town, parse_address("overseer"), bead.id, "gt")
    code, out, _ = in_process(town, capsys, "polecat", "list")
    assert code == 0 and info.address in out and "┃" in out and "\t" not in out
    code, out, _ = in_process(town, capsys, "polecat", "list", "--json")
    assert [p["address"] for p in json.loads(out)] == [info.address]
    code, out, _ = in_process(town, capsys, "rig", "list", "--json")
    assert [r["name"] for r in json.loads(out)] == ["gt"]


def test_rig_add_help_describes_its_options() -> None:
    out = subprocess.run([RUNNER, "rig", "add", "--help"], capture_output=True, text=True, timeout=30).stdout
    for text in ("--max-polecats", "most polecats working at once", "--test-command", "--prefix", "git_url"):
        assert text in out


def test_id_option_prints_only_the_new_id(town: Town) -> None:
    """`bead=$(vermas-runner bead create ... --id)`: scripts get the id without parsing JSON."""
    made = shell(town, "bead", "create", "Scripted", "--id")
    assert made.returncode == 0, made.stderr
    bead_id = made.stdout.strip()
    assert made.stdout == bead_id + "\n"
    assert json.loads(shell(town, "bead", "show", bead_id, "--json").stdout)["title"] == "Scripted"
    sent = shell(town, "mail", "send", "mayor", "hello", "--id")
    assert sent.returncode == 0 and sent.stdout.strip().startswith("msg-"), sent
    assert "--id" not in shell(town, "bead", "list", "--help").stdout  # only tools that create a record


def test_a_shell_write_is_in_the_export_when_the_command_returns(town: Town) -> None:
    """Issue 20 item 10: `vermas-runner bead create` (and every writing shell command) leaves
    `.beads/issues.jsonl` current when it exits; no MCP server or patrol runs here."""
    from vermas.export import stale_kinds

    export = town.layout.export_file("issues")
    before = export.read_text() if export.exists() else ""
    made = shell(town, "bead", "create", "Shell-made bead", "--id")
    assert made.returncode == 0, made.stderr
    bead_id = made.stdout.strip()
    lines = [json.loads(line) for line in export.read_text().splitlines()]
    assert bead_id not in before and [x["title"] for x in lines if x["id"] == bead_id] == ["Shell-made bead"]
    sent = shell(town, "mail", "send", "gt/witness", "from the shell", "--body", "hello")
    assert sent.returncode == 0, sent.stderr
    assert "from the shell" in town.layout.export_file("messages").read_text()
    assert stale_kinds(town) == []
    state = town.layout.export_state.stat().st_mtime_ns
    listed = shell(town, "bead", "list")  # a read writes nothing, so it exports nothing
    assert listed.returncode == 0 and town.layout.export_state.stat().st_mtime_ns == state
