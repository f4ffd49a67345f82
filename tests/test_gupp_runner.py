"""The GUPP nudge belongs to the runner: a one-shot caller (`claude -p "sling ..."`) slings a
bead to a rig through MCP and exits at once; the thread of its vermas-mcp that was to nudge
the new polecat dies with it, and the runner's patrol delivers the nudge instead. The state
says what happened: `started` until the nudge is confirmed delivered, then `working`, then
`done` after polecat_done.

Real tmux (the town's private socket), the real Claude Code CLI, vermas-mcp over stdio in a
client process of its own, the runner's patrol code; only the model is a stand-in."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from vermas import beads, patrol, polecat, rig
from vermas.addresses import parse_address
from vermas.protocol import PolecatState
from vermas.sessions import TownSessions
from vermas.sessions.launch import GUPP_NUDGE
from vermas.testing.standin import StandinModelServer, find_claude_binary
from vermas.town import Town
from vermas_runner import demo

pytestmark = [
    pytest.mark.tmux, pytest.mark.claude, pytest.mark.slow,
    pytest.mark.skipif(find_claude_binary() is None,
                       reason="Claude Code CLI not installed (scripts/setup.sh installs it)"),
]
VERMAS_MCP = shutil.which("vermas-mcp", path=str(Path(sys.executable).parent))

# A caller that slings and is gone: one tool call over stdio, then exit (as `claude -p` does).
ONE_SHOT = """
import asyncio, os, sys
from mcp import Client, StdioServerParameters

async def main():
    # the caller's environment, as Claude Code gives its MCP servers (the SDK's default keeps only
    # a few variables, and the town's tmux folder, TMUX_TMPDIR, must be the runner's)
    params = StdioServerParameters(command=sys.argv[1], args=["--town", sys.argv[2], "--actor", "mayor",
                                   "--profile", "mayor"], env=dict(os.environ))
    async with Client(params, read_timeout_seconds=120) as client:
        result = await client.call_tool("sling", {"bead_id": sys.argv[3], "target": "sample"})
        assert not result.is_error, result.content
        print(result.structured_content["assignee"])

asyncio.run(main())
"""


def states(town: Town) -> list[PolecatState]:
    return [p.state for p in polecat.list_polecats(town)]


def test_runner_delivers_the_gupp_nudge_of_a_caller_that_exited(tmp_path: Path) -> None:
    assert VERMAS_MCP, "vermas-mcp console script not found"
    town, _ = Town.init(tmp_path / "town")
    repo = demo.sample_repo(tmp_path / "sample-src")
    sessions = TownSessions(town.root)
    stop = threading.Event()
    seen: list[PolecatState] = []

    def runner_patrol() -> None:  # the runner's patrol rounds (run_forever minus its signal handlers)
        while not stop.is_set():
            patrol.patrol_once(town, sessions)
            stop.wait(0.5)

    def watch() -> None:  # every state the slot goes through
        while not stop.is_set():
            for state in states(town)[:1]:
                if not seen or seen[-1] is not state:
                    seen.append(state)
            stop.wait(0.05)

    with StandinModelServer(demo.standin_policy()) as server:
        demo.use_standin(town, server.base_url, tmp_path / "claude-home")
        rig.add(town, "sample", str(repo), prefix="sp", max_polecats=2)
        bead = beads.create(town, parse_address("mayor"), "Write a note", rig="sample")
        threads = [threading.Thread(target=f, daemon=True) for f in (runner_patrol, watch)]
        try:
            for t in threads:
                t.start()
            env = {k: v for k, v in os.environ.items() if k not in ("VERMAS_TOWN", "BD_ACTOR", "CLAUDECODE")}
            caller = subprocess.run([sys.executable, "-c", ONE_SHOT, VERMAS_MCP, str(town.root), bead.id],
                                    capture_output=True, text=True, timeout=120, env=env)
            assert caller.returncode == 0, caller.stderr
            address = caller.stdout.strip()
            assert address == "sample/polecats/nux"
            # The caller and its vermas-mcp are gone, and with them their try at the nudge.
            assert states(town) == [PolecatState.STARTED], "not `working` before a nudge was delivered"

            deadline = time.monotonic() + 150
            while time.monotonic() < deadline and states(town) != [PolecatState.DONE]:
                time.sleep(0.5)
            screen = sessions.capture(parse_address(address))
            assert states(town) == [PolecatState.DONE], f"polecat never finished; states {seen}; screen:\n{screen}"
            stop.set()
            for t in threads:
                t.join(timeout=150)
            # the sampler may miss the brief `spawning` under load; the rest must come in this order
            assert seen in ([PolecatState.SPAWNING, PolecatState.STARTED, PolecatState.WORKING, PolecatState.DONE],
                            [PolecatState.STARTED, PolecatState.WORKING, PolecatState.DONE]), seen
            with town.db.read() as conn:
                body = conn.execute("SELECT body FROM messages WHERE kind = 'POLECAT_DONE' AND subject LIKE ?",
                                    (f"%{bead.id}",)).fetchone()[0]
            assert f"polecat: {address}" in body
            # The runner nudged it once: the model saw the GUPP line exactly once in its conversation.
            convos = [r for r in server.requests if GUPP_NUDGE in json.dumps(r.messages)]
            assert convos and json.dumps(convos[-1].messages).count(GUPP_NUDGE) == 1
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=150)
            sessions.kill_server()
            town.close()
