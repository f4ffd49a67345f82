"""Nudge text (issue 8, item 5): tmux never parses it, control characters never reach a
terminal, and a nudge is delivered whole and confirmed or queued as mail, never partly typed.

Pure tests for the text rules and the decisions; real tmux on a private socket, with a
stand-in for Claude Code's input box (tests/input_box_standin.py), for what arrives."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import fail

from vermas import mail, validate
from vermas.addresses import Address, parse_address
from vermas.errors import InvalidInput
from vermas.sessions import nudge
from vermas.sessions.tmux import TownSessions, paste_commands
from vermas.town import Town

STANDIN = Path(__file__).with_name("input_box_standin.py")
RUNNER = str(Path(sys.executable).with_name("vermas-runner"))
LINE_SPACES = "\t\n\v\f\r\x85\u2028\u2029"
CONTROLS = ([c for c in range(0x20) if chr(c) not in LINE_SPACES] + [0x7F]
            + [c for c in range(0x80, 0xA0) if chr(c) not in LINE_SPACES])
DASHED = ["- fix the failing tests first", "--help", "-t %0 kill-server", "-", "-- --",
          "ends with a semicolon;", "a backslash and a semicolon \\;", ";"]
LONG_DASHED = "A" * 200 + "-then run the tests again and report"


# ---- the text rules (pure) ------------------------------------------------------------------

@pytest.mark.parametrize("code", CONTROLS, ids=[f"U+{c:04X}" for c in CONTROLS])
def test_every_control_character_is_refused_by_name_and_position(code: int) -> None:
    with pytest.raises(InvalidInput) as err:
        validate.nudge_text(f"hello{chr(code)}world")
    message = str(err.value)
    assert f"control character U+{code:04X}" in message and "at position 5" in message
    assert "Allowed: printable text" in message


@pytest.mark.parametrize(("char", "name"), [("\x1b", "ESC"), ("\x03", "^C"), ("\x04", "^D"), ("\x15", "^U"),
                                            ("\x7f", "DEL"), ("\x00", "NUL"), ("\x9b", "CSI"), ("\x90", "C1 control")])
def test_the_dangerous_keys_are_named(char: str, name: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(f"({name}) at position 0")):
        validate.nudge_text(char + "x")


def test_tabs_and_line_breaks_become_single_spaces() -> None:
    assert validate.nudge_text("one" + LINE_SPACES + "two\r\n  three\t") == "one two three"
    assert nudge.flatten("line one\nline two") == "line one line two"


def test_lone_surrogates_empty_text_and_length_are_refused() -> None:
    with pytest.raises(InvalidInput, match=r"lone surrogate U\+DCFF at position 2"):
        validate.nudge_text("ab\udcff")
    with pytest.raises(InvalidInput, match="1 to 4000 characters"):
        validate.nudge_text(" \n\t ")
    with pytest.raises(InvalidInput, match="4001 characters; it must be 1 to 4000"):
        validate.nudge_text("x" * 4001)
    with pytest.raises(InvalidInput, match="must be text"):
        validate.nudge_text(b"bytes")
    assert validate.nudge_text("x" * 4000) == "x" * 4000


@pytest.mark.parametrize("text", DASHED + [LONG_DASHED])
def test_dashes_and_semicolons_are_kept_as_text(text: str) -> None:
    assert validate.nudge_text(text) == text


def test_chunks_cover_the_text_and_may_start_with_a_dash() -> None:
    pieces = nudge.chunks(LONG_DASHED)
    assert pieces[1].startswith("-") and "".join(pieces) == LONG_DASHED
    every = ("-" + "b" * 199) * 20
    assert all(p.startswith("-") and len(p) == nudge.CHUNK for p in nudge.chunks(every))
    assert "".join(nudge.chunks(every)) == every and len(every) == validate.MAX_NUDGE_CHARS


def test_the_text_is_never_a_tmux_argument() -> None:
    """The commands that type a text do not take it: it reaches tmux on stdin (load-buffer -),
    so no option parsing and no ';' separator applies to it; pasted without -p (no
    bracketed paste), and the buffer deleted (-d) once pasted."""
    load, paste = paste_commands("tmux", "sock", "vermas-nudge-1", "%0")
    assert load[3:] == ["load-buffer", "-b", "vermas-nudge-1", "-"]
    assert paste[3:] == ["paste-buffer", "-d", "-b", "vermas-nudge-1", "-t", "%0"]


def test_enter_only_when_the_whole_text_shows() -> None:
    text = "A" * 30 + "-then"
    partial = nudge.Screen(True, False, "A" * 30)
    assert nudge.next_step(partial, text, typed=True) is nudge.Step.WAIT
    assert nudge.next_step(partial, text, typed=True, overdue=True) is nudge.Step.ERASE
    wrapped = nudge.Screen(True, False, "A" * 20 + " " + "A" * 10 + "-then")  # split across rows
    assert nudge.next_step(wrapped, text, typed=True) is nudge.Step.ENTER
    pasted = nudge.Screen(True, False, "[Pasted text #1]")
    assert nudge.next_step(pasted, text, typed=True, overdue=True) is nudge.Step.ERASE
    longer = nudge.Screen(True, False, text + " and more")
    assert nudge.next_step(longer, text, typed=True) is nudge.Step.WAIT
    # After Enter a half-cleared box is waited on, never erased (it may be submitting).
    assert nudge.next_step(partial, text, typed=True, entered=True, overdue=True) is nudge.Step.WAIT


# ---- what arrives, in real tmux ----------------------------------------------------------------

@pytest.fixture
def private_tmux(town: Town) -> Iterator[TownSessions]:
    """The town's sessions on a tmux server of this test's own; killed with its socket after."""
    sessions = TownSessions(town.root, socket=f"vermas-test-nudge-{uuid.uuid4().hex[:10]}")
    try:
        yield sessions
    finally:
        sessions.kill_server()


def start_box(sessions: TownSessions, folder: Path, cap: int | None = None) -> tuple[Address, Path]:
    address = parse_address("mayor")
    log = folder / "submitted.jsonl"
    argv = [sys.executable, str(STANDIN), str(log), *([str(cap)] if cap else [])]
    assert sessions.start(address, folder, argv, env={})
    deadline = time.monotonic() + 15
    while not nudge.read_screen(sessions.capture(address)).ready:
        assert time.monotonic() < deadline, sessions.capture(address)
        time.sleep(0.1)
    return address, log


def submitted(log: Path) -> list[str]:
    return [json.loads(line)["submitted"] for line in log.read_text().splitlines()] if log.exists() else []


def send(town: Town, sessions: TownSessions, address: Address, text: str) -> nudge.NudgeResult:
    return nudge.nudge(town, sessions, address, text, sender="deacon", idle_timeout=20, poll=0.05)


def test_texts_starting_with_a_dash_or_ending_with_a_semicolon_arrive_whole(
    town: Town, private_tmux: TownSessions, tmp_path: Path,
) -> None:
    address, log = start_box(private_tmux, tmp_path)
    for n, text in enumerate(DASHED, start=1):
        result = send(town, private_tmux, address, text)
        assert result.submitted, result.reason
        assert submitted(log) == DASHED[:n]
    assert mail.inbox(town, address) == []


def test_long_texts_whose_chunks_start_with_a_dash_arrive_whole(
    town: Town, private_tmux: TownSessions, tmp_path: Path,
) -> None:
    every_chunk_dashed = ("-" + "b" * 199) * 5 + "-end"
    longest = " ".join(f"-w{i:04d}" for i in range(666))[: validate.MAX_NUDGE_CHARS]
    texts = [LONG_DASHED, every_chunk_dashed, longest]
    address, log = start_box(private_tmux, tmp_path)
    for n, text in enumerate(texts, start=1):
        result = send(town, private_tmux, address, text)
        assert result.submitted, result.reason
        assert submitted(log) == texts[:n]


def test_a_text_that_does_not_show_whole_is_erased_and_queued_never_submitted(
    town: Town, private_tmux: TownSessions, tmp_path: Path,
) -> None:
    address, log = start_box(private_tmux, tmp_path, cap=30)  # the box drops what passes 30 chars
    text = "A" * 30 + "-then run the tests"
    result = send(town, private_tmux, address, text)
    assert not result.submitted and result.queued_message_id, result
    assert "did not show whole" in result.reason and "erased it and queued it as mail" in result.reason
    assert submitted(log) == []
    assert nudge.read_screen(private_tmux.capture(address)) == nudge.Screen(True, False, "")
    [queued] = mail.inbox(town, address)
    assert queued.kind == "NUDGE" and queued.body == text


def test_control_characters_are_refused_before_anything_is_typed(
    town: Town, private_tmux: TownSessions, tmp_path: Path,
) -> None:
    address, log = start_box(private_tmux, tmp_path)
    for bad in ("stop\x03", "\x1b[2J clear", "undo\x15", "bye\x04", "rub\x7fout"):
        with pytest.raises(InvalidInput, match="control character"):
            send(town, private_tmux, address, bad)
    time.sleep(0.3)
    assert private_tmux.alive(address)  # a typed ^C would have ended the box, as it ends Claude Code
    assert nudge.read_screen(private_tmux.capture(address)) == nudge.Screen(True, False, "")
    assert submitted(log) == [] and mail.inbox(town, address) == []


# ---- the edges: the MCP tool and its shell twin -------------------------------------------------

async def test_the_nudge_tool_refuses_control_characters_and_writes_nothing(client_for: Any, town: Town) -> None:
    async with client_for("gt/witness") as witness:
        error = await fail(witness, "nudge", target="gt/polecats/nux", message="\x1b[2J\x03")
    assert "control character U+001B (ESC) at position 0" in error
    assert mail.inbox(town, parse_address("gt/polecats/nux")) == []


@pytest.mark.parametrize(("argument", "expected"), [
    (b"stop\x03now", "U+0003 (^C) at position 4"),
    (b"\x1b[A", "U+001B (ESC) at position 0"),
    (b"ok\xff", "is not valid UTF-8 text: byte 0xff at character 2"),  # refused before parsing (item 17)
])
def test_the_shell_twin_refuses_with_exit_2_and_one_line(town: Town, argument: bytes, expected: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("VERMAS_TOWN", "BD_ACTOR")}
    done = subprocess.run([RUNNER, "nudge", "gt/polecats/nux", argument, "--town", str(town.root)],
                          capture_output=True, env=env, timeout=60)
    err = done.stderr.decode()
    assert done.returncode == 2 and len(err.splitlines()) == 1 and expected in err, err
    assert mail.inbox(town, parse_address("gt/polecats/nux")) == []


# ---- the same through the real Claude Code TUI (stand-in model, no account) ---------------------

@pytest.fixture
def claude_bin() -> Path:
    from vermas.testing.standin import find_claude_binary

    path = find_claude_binary()
    if path is None:
        pytest.skip("Claude Code CLI not installed: run scripts/install-claude.sh (or set VERMAS_CLAUDE_BIN)")
    return path


def test_dashed_texts_reach_the_model_whole_through_claude_code(
    town: Town, private_tmux: TownSessions, tmp_path: Path, claude_bin: Path,
) -> None:
    from vermas.testing.standin import DUMMY_API_KEY, ScriptedPolicy, StandinModelServer, claude_env, write_claude_home

    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    subprocess.run(["git", "init", "-q", str(work)], check=True)
    write_claude_home(home, DUMMY_API_KEY, trusted_dirs=[work])
    texts = ["- fix the failing tests first", LONG_DASHED + ";", ("-" + "c" * 199) * 4 + "-end"]
    with StandinModelServer(ScriptedPolicy(["noted."] * len(texts))) as server:
        env = claude_env(server.base_url, home, extra={"IS_SANDBOX": "1"})
        keys = ("HOME", "ANTHROPIC_BASE_URL", "ANTHROPIC_API_KEY", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC",
                "DISABLE_AUTOUPDATER", "IS_SANDBOX")
        address = parse_address("mayor")
        private_tmux.start(address, work, [str(claude_bin), "--dangerously-skip-permissions"],
                           env={k: env[k] for k in keys})
        assert private_tmux.wait_for(address, "bypass permissions on", timeout=60), private_tmux.capture(address)
        for n, text in enumerate(texts, start=1):
            result = nudge.nudge(town, private_tmux, address, text, idle_timeout=60)
            assert result.submitted, (result.reason, private_tmux.capture(address))
            assert private_tmux.wait_for(address, "noted.", timeout=30)
            deadline = time.monotonic() + 30
            while len(server.main_requests()) < n and time.monotonic() < deadline:
                time.sleep(0.2)
            assert [r.last_user_text().strip() for r in server.main_requests()] == texts[:n]
        assert not server.errors


# ---- commands are never typed; who may nudge whom (issue 20 item 2) ------------------------------

@pytest.mark.parametrize(("text", "command"), [
    ("/clear", True), ("/compact now", True), ("!rm -rf ~", True), ("# remember this", True),
    ("fix /tmp/x", False), ("say !hi", False), ("- /clear", False), ("run the tests", False),
])
def test_a_line_that_claude_code_runs_as_a_command_is_recognised(text: str, command: bool) -> None:
    assert nudge.acts_as_command(validate.nudge_text(text)) is command


def test_a_slash_command_is_queued_as_mail_never_typed(
    town: Town, private_tmux: TownSessions, tmp_path: Path,
) -> None:
    address, log = start_box(private_tmux, tmp_path)
    for text in ("/clear", "   /clear", "!kill -9 -1"):
        result = send(town, private_tmux, address, text)
        assert not result.submitted and result.queued_message_id and "never typed" in result.reason, result
    time.sleep(0.5)
    assert submitted(log) == []
    assert nudge.read_screen(private_tmux.capture(address)) == nudge.Screen(True, False, "")  # nothing typed
    assert [(m.kind, m.body) for m in mail.inbox(town, address)] == [("NUDGE", "/clear"), ("NUDGE", "!kill -9 -1")]


async def test_a_polecat_may_nudge_only_its_own_witness(client_for: Any, town: Town) -> None:
    async with client_for("gt/polecats/nux", profile="all") as nux:
        for target in ("mayor", "deacon", "gt/polecats/slit", "zz/witness", "overseer"):
            error = await fail(nux, "nudge", target=target, message="/clear")
            assert f"may not nudge {target}" in error and "only its own rig's witness" in error, error
        assert all(mail.inbox(town, parse_address(t)) == [] for t in ("mayor", "deacon", "gt/polecats/slit"))
        allowed = await nux.call_tool("nudge", {"target": "gt/witness", "message": "stuck on the parser"})
    assert not allowed.is_error and allowed.structured_content["reason"] == "session not running"
    [queued] = mail.inbox(town, parse_address("gt/witness"))
    assert queued.kind == "NUDGE" and queued.sender == "gt/polecats/nux"


@pytest.fixture
def town_tmux(town: Town) -> Iterator[TownSessions]:
    """The town's own tmux server (the socket the shell's nudge uses); killed with its socket after."""
    sessions = TownSessions(town.root)
    try:
        yield sessions
    finally:
        sessions.kill_server()


@pytest.mark.tmux
def test_the_overseers_slash_clear_never_reaches_claude_code(
    town: Town, town_tmux: TownSessions, tmp_path: Path, claude_bin: Path,
) -> None:
    """`vermas-runner nudge mayor /clear` as the overseer, into a real Claude Code session (stand-in
    model): queued as NUDGE mail, not typed; the session keeps its context (no SessionEnd with
    reason clear, and the next turn still carries the earlier one)."""
    from vermas.testing.standin import DUMMY_API_KEY, ScriptedPolicy, StandinModelServer, claude_env, write_claude_home

    home, work, hook_log = tmp_path / "home", tmp_path / "work", tmp_path / "session-hooks.jsonl"
    home.mkdir()
    work.mkdir()
    subprocess.run(["git", "init", "-q", str(work)], check=True)
    log = shlex.quote(str(hook_log))
    record = {"hooks": [{"type": "command", "command": f"cat >> {log}; echo >> {log}"}]}
    write_claude_home(home, DUMMY_API_KEY, trusted_dirs=[work],
                      settings={"hooks": {"SessionStart": [record], "SessionEnd": [record]}})
    with StandinModelServer(ScriptedPolicy(["noted."] * 3)) as server:
        env = claude_env(server.base_url, home, extra={"IS_SANDBOX": "1"})
        keys = ("HOME", "ANTHROPIC_BASE_URL", "ANTHROPIC_API_KEY", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC",
                "DISABLE_AUTOUPDATER", "IS_SANDBOX")
        mayor = parse_address("mayor")
        town_tmux.start(mayor, work, [str(claude_bin), "--dangerously-skip-permissions"],
                        env={k: env[k] for k in keys})
        assert town_tmux.wait_for(mayor, "bypass permissions on", timeout=60), town_tmux.capture(mayor)
        first = nudge.nudge(town, town_tmux, mayor, "remember the word alpha", idle_timeout=60)
        assert first.submitted, (first.reason, town_tmux.capture(mayor))
        assert town_tmux.wait_for(mayor, "noted.", timeout=30)

        shell_env = {k: v for k, v in os.environ.items() if k not in ("VERMAS_TOWN", "BD_ACTOR")}
        done = subprocess.run([RUNNER, "nudge", "mayor", "/clear", "--json", "--town", str(town.root)],
                              capture_output=True, text=True, env=shell_env, timeout=120)
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert not result["submitted"] and result["queued_message_id"] and "never typed" in result["reason"]
        [queued] = mail.inbox(town, mayor)
        assert (queued.kind, queued.sender, queued.body) == ("NUDGE", "overseer", "/clear")

        time.sleep(2.0)  # what a typed /clear would have done by now
        second = nudge.nudge(town, town_tmux, mayor, "which word was it", idle_timeout=60)
        assert second.submitted, (second.reason, town_tmux.capture(mayor))
        deadline = time.monotonic() + 30
        while len(server.main_requests()) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        last = server.main_requests()[-1]
        assert last.last_user_text().strip() == "which word was it"
        assert "remember the word alpha" in json.dumps(last.messages)  # the context was kept
    events = [json.loads(line) for line in hook_log.read_text().splitlines() if line.strip()]
    assert any(e.get("hook_event_name") == "SessionStart" for e in events), events  # the hooks do run
    assert not [e for e in events if e.get("reason") == "clear" or e.get("source") == "clear"], events
