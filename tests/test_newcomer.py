"""Issue 7, item 3: a town runs for a newcomer.

`up` checks the agent command before it starts anything; a session that dies says why
(exit status or signal, and its last lines) in `status`, `status --json` and the runner log;
`up --model standin` runs the town on the stand-in model server the runner owns, and
`down` stops it; the status models are typed. Sessions run shell commands as their agent
(town.toml allows any command), on the town's own tmux socket in a private TMUX_TMPDIR.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import pytest
from pydantic import BaseModel

from tests.conftest import make_repo
from vermas import agents, polecat, rig, up
from vermas.errors import Conflict
from vermas.sessions import TownSessions
from vermas.sessions.tmux import dead_line_status, parse_panes, tail_lines, wait_status, zombie_status
from vermas.status import RunnerStatus, runner_status
from vermas.town import Town
from vermas_runner import demo

RUNNER = str(Path(sys.executable).with_name("vermas-runner"))
# The pause before exiting: tmux 3.3a can drop the output of a process that exits within
# moments of writing it (see TownSessions._dead_pane); a real CLI's exit is never that tight.
DYING = "echo starting up; echo 'fatal: no login found' >&2; sleep 0.2; exit 3"


@pytest.fixture
def tmux_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private TMUX_TMPDIR (short, for the socket path limit) for this test only."""
    folder = Path(tempfile.mkdtemp(prefix="vt-"))
    monkeypatch.setenv("TMUX_TMPDIR", str(folder))
    for name in ("VERMAS_TOWN", "BD_ACTOR", "CLAUDECODE"):
        monkeypatch.delenv(name, raising=False)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def shell_town(tmp_path: Path, tmux_dir: Path) -> Iterator[Town]:
    """A town whose agents are `/bin/sh -c SCRIPT` (set per test); `down` afterwards."""
    town, _ = Town.init(tmp_path / "town")
    yield town
    subprocess.run([RUNNER, "down", "--town", str(town.root)], capture_output=True, timeout=60)
    TownSessions(town.root).kill_server()
    town.close()


def set_agent(town: Town, script: str) -> None:
    town.config.agent.command = "/bin/sh"
    town.config.agent.args = ["-c", script]  # the generated flags become $0, $1...
    town.save_config()


def runner(town: Town, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([RUNNER, *args, "--town", str(town.root)], capture_output=True, text=True,
                          timeout=timeout)


def status_json(town: Town) -> dict[str, Any]:
    out = runner(town, "status", "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def wait_for_death(town: Town, address: str = "mayor", within: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        row = next(a for a in status_json(town)["agents"] if a["address"] == address)
        if row["death"] is not None:
            return row  # type: ignore[no-any-return]
        time.sleep(0.2)
    raise AssertionError(f"{address} was not reported dead within {within}s: {row}")


# --- the agent command -----------------------------------------------------------------------

def test_which_agent_accepts_a_name_on_path_or_an_absolute_executable(tmp_path: Path) -> None:
    assert agents.resolve_command("sh", os.defpath) == shutil.which("sh", path=os.defpath)
    assert agents.resolve_command("vermas-no-such-cli", os.defpath) is None
    assert agents.resolve_command("", os.defpath) is None
    script = tmp_path / "agent"
    script.write_text("#!/bin/sh\n")
    assert agents.resolve_command(str(script), "") is None  # not executable
    script.chmod(0o755)
    assert agents.resolve_command(str(script), "") == str(script)
    assert agents.resolve_command("bin/agent", "") is None  # relative: the sessions start elsewhere
    assert agents.resolve_command("~/agent", "") is None  # tmux gets it quoted, so no ~


def test_missing_agent_message_is_one_line_saying_where_and_how(tmp_path: Path) -> None:
    cli = tmp_path / ".tools/claude/node_modules/.bin/claude"
    message = up.missing_agent_message(tmp_path / "town.toml", "claude", cli)
    assert "\n" not in message
    assert message.startswith("agent command 'claude' is not on PATH")
    assert f"set it in {tmp_path / 'town.toml'} under [agent]" in message
    assert f'command = "{cli}"' in message and "scripts/setup.sh" in message
    assert "vermas-runner up --model standin" in message
    without = up.missing_agent_message(tmp_path / "town.toml", "/opt/x/claude", None)
    assert "is not an absolute path to an executable" in without
    assert ".tools/claude/node_modules/.bin/claude" in without


def test_up_refuses_a_missing_agent_command_before_starting_anything(town: Town, tmux_dir: Path) -> None:
    town.config.agent.command = "vermas-no-such-cli"
    town.save_config()
    for args in (("up", "--detach"), ("up", "--once", "--no-wait")):
        out = runner(town, *args)
        assert out.returncode == 2, out
        assert out.stdout == ""
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1, out.stderr
        assert lines[0].startswith("vermas-runner: agent command 'vermas-no-such-cli' is not on PATH; set it in "
                                   f"{town.layout.config_file} under [agent]")
        setup_cli = Path(up.__file__).resolve().parents[1] / ".tools/claude/node_modules/.bin/claude"
        if setup_cli.is_file():
            assert f'command = "{setup_cli}"' in lines[0]
    # nothing started: no runner, no log, no MCP zygote, no tmux server
    assert not town.layout.runner_log.exists()
    assert up.runner_pid(town) is None and up.zygote_pid(town) is None
    assert not any(tmux_dir.rglob("vermas-*"))


# --- dead sessions ---------------------------------------------------------------------------

def test_pane_listing_and_tail_are_parsed() -> None:
    panes = parse_panes(["vermas-mayor\t1\t3\t\t41", "vermas-a-witness\t0\t\t\t42", "vermas-mayor\t0\t\t\t43",
                         "garbage"])
    assert panes["vermas-mayor"] == type(panes["vermas-mayor"])(dead=True, exit_status=3, signal=None, pid=41)
    assert not panes["vermas-a-witness"].dead and panes["vermas-a-witness"].exit_status is None
    text = "one\n\ntwo   \nPane is dead (status 3, Wed Dec  2 17:07:32 2026)\n\n"
    assert tail_lines(text) == ["one", "two"] and tail_lines(text, 1) == ["two"]
    assert dead_line_status(text) == (3, None)
    assert dead_line_status("x\nPane is dead (signal 9, Wed Dec  2 17:29:27 2026)") == (None, 9)
    assert dead_line_status("Pane is dead (Wed Dec  2 17:29:27 2026)") is None


def test_exit_status_of_an_unreaped_zombie_is_read_from_proc() -> None:
    """tmux 3.3a sometimes misses a fast-exiting pane's SIGCHLD (the pane is dead, its
    process an unreaped zombie, pane_dead_status empty); the kernel's exit_code field has it."""
    assert wait_status(7 << 8) == (7, None) and wait_status(9) == (None, 9) and wait_status(0) == (0, None)

    def stat(state: str, exit_code: int) -> str:
        rest = [state] + ["0"] * 48 + [str(exit_code)]  # fields 3..52
        return "4242 (sh -c x) " + " ".join(rest) + "\n"

    assert zombie_status(stat("Z", 3 << 8)) == (3, None)
    assert zombie_status(stat("Z", 15)) == (None, 15)
    assert zombie_status(stat("S", 0)) is None  # not dead: no status to read
    assert zombie_status("4242 (sh) Z 1 2") is None  # an old kernel without the field


@pytest.mark.tmux
def test_dead_session_is_reported_with_exit_status_and_last_lines(shell_town: Town) -> None:
    set_agent(shell_town, DYING)
    out = runner(shell_town, "up", "--once", "--no-wait")
    assert out.returncode == 0 and "started mayor" in out.stdout, out
    row = wait_for_death(shell_town)
    assert row["alive"] is False
    assert row["death"]["exit_status"] == 3 and row["death"]["signal"] is None
    assert row["death"]["last_lines"][-2:] == ["starting up", "fatal: no login found"]
    assert row["death"]["reason"] == "exit status 3: fatal: no login found"
    table = runner(shell_town, "status").stdout
    assert "dead (exit 3)" in table
    assert "mayor died (exit status 3); last lines of its pane:" in table
    assert "| fatal: no login found" in table
    # A second `up` replaces the dead session (it is not "already running") and says why it had died.
    again = runner(shell_town, "up", "--once", "--no-wait")
    assert "restarted mayor, which had died (exit status 3: fatal: no login found)" in again.stdout
    assert "started mayor" in again.stdout and "already running" not in again.stdout


@pytest.mark.tmux
def test_a_killed_agent_is_reported_with_its_signal(shell_town: Town) -> None:
    set_agent(shell_town, "echo working; exec sleep 600")
    assert runner(shell_town, "up", "--once", "--no-wait").returncode == 0
    sessions = TownSessions(shell_town.root)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "working" not in sessions.capture(up.core_agents(shell_town)[0]):
        time.sleep(0.1)
    mayor = status_json(shell_town)["agents"][0]
    assert mayor["alive"] is True and mayor["death"] is None
    pid = sessions.info(up.core_agents(shell_town)[0]).pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    row = wait_for_death(shell_town)
    assert row["death"]["signal"] == 9 and row["death"]["reason"] == "killed by signal 9: working"


@pytest.mark.tmux
def test_runner_log_says_why_a_session_died(shell_town: Town) -> None:
    set_agent(shell_town, DYING)
    out = runner(shell_town, "up", "--detach")
    assert out.returncode == 0, out
    log = shell_town.layout.runner_log
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "| fatal: no login found" not in (log.read_text() if log.exists() else ""):
        time.sleep(0.2)
    text = log.read_text()
    assert "mayor died (exit status 3); last lines of its pane:\n    | starting up\n    | fatal: no login found" in text
    assert text.count("mayor died") == 1  # reported once, not on every patrol pass


# --- the stand-in model, owned by the runner -------------------------------------------------

def test_standin_server_is_owned_by_the_town_and_stopped_by_down(town: Town, tmux_dir: Path) -> None:
    state = demo.start_standin(town)
    try:
        assert demo.start_standin(town) == state  # a second start reuses it
        with urllib.request.urlopen(state.url + "/", timeout=5) as reply:
            assert json.loads(reply.read())["server"] == "vermas-standin-model"
        # `up` without --model would mix your login into a stand-in town: refused, with the way out.
        refused = runner(town, "up", "--once", "--no-wait")
        assert refused.returncode == 2
        assert (f"this town runs on the stand-in model (pid {state.pid}) until `vermas-runner down`"
                in refused.stderr)
        with pytest.raises(Conflict):
            demo.choose_model(town, "claude")
        down = runner(town, "down")
        assert f"stopped the stand-in model (pid {state.pid})" in down.stdout
        assert demo.standin_state(town) is None and not town.layout.standin_state.exists()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and Path(f"/proc/{state.pid}/cmdline").exists() \
                and Path(f"/proc/{state.pid}/cmdline").read_bytes():
            time.sleep(0.05)
        assert not Path(f"/proc/{state.pid}/cmdline").exists() or not Path(f"/proc/{state.pid}/cmdline").read_bytes()
    finally:
        demo.stop_standin(town)


def test_standin_replaces_agent_until_down_puts_the_towns_own_back(town: Town, tmux_dir: Path) -> None:
    from vermas.testing.standin import find_claude_binary

    binary = find_claude_binary()
    if binary is None:
        pytest.skip("Claude Code CLI not installed (scripts/setup.sh installs it)")
    path = town.layout.config_file
    path.write_text("# my town\n" + path.read_text())
    try:
        line = demo.choose_model(town, "standin")
        state = demo.standin_state(town)
        assert state is not None and f"stand-in model at {state.url} (pid {state.pid})" in line
        on_disk = Town.open(town.root)
        assert on_disk.config.agent.command == str(binary)
        assert on_disk.config.agent.env["ANTHROPIC_BASE_URL"] == state.url
        assert on_disk.config.agent.env["HOME"] == str(town.layout.standin_home)
        on_disk.close()
        assert demo.choose_model(town, "standin") == line  # idempotent: same server, same config
    finally:
        out = runner(town, "down")
    assert "stopped the stand-in model" in out.stdout and "is the town's own again" in out.stdout
    restored = Town.open(town.root)
    assert restored.config.agent.command == "claude" and restored.config.agent.env == {}
    assert path.read_text().startswith("# my town\n")
    restored.close()


# --- typed status ----------------------------------------------------------------------------

def _untyped(annotation: Any) -> bool:
    """A dict of objects or a bare object anywhere in a field's type."""
    if annotation is object:
        return True
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return any(_untyped(f.annotation) for f in annotation.model_fields.values())
    return any(_untyped(a) for a in get_args(annotation))


def test_runner_status_is_typed_through_and_through(town: Town, tmp_path: Path, tmux_dir: Path) -> None:
    assert not any(_untyped(f.annotation) for f in RunnerStatus.model_fields.values())
    rig.add(town, "sample", str(make_repo(tmp_path / "src")), prefix="sp")
    status = runner_status(town, TownSessions(town.root))
    assert isinstance(status.rigs[0], rig.RigInfo) and status.rigs[0].name == "sample"
    assert all(isinstance(p, polecat.PolecatInfo) for p in status.polecats)
    assert [a.address for a in status.agents] == ["mayor", "sample/witness", "sample/refinery"]
    assert all(a.alive is False and a.death is None for a in status.agents)  # never started
    assert RunnerStatus.model_validate_json(status.model_dump_json()) == status
