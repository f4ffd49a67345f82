"""The README's line for a human's own Claude Code, run with the real CLI: `claude mcp add`
registers vermas as the overseer and `claude mcp list` connects to it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vermas.testing.standin import find_claude_binary
from vermas.town import Town

CLAUDE = find_claude_binary()
pytestmark = pytest.mark.skipif(CLAUDE is None, reason="Claude Code CLI not installed (scripts/setup.sh)")


def test_claude_mcp_add_then_list_shows_connected(tmp_path: Path) -> None:
    town, _ = Town.init(tmp_path / "town")
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLAUDE", "ANTHROPIC_"))}
    env.update(HOME=str(home), CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1")
    server = str(Path(sys.executable).with_name("vermas-mcp"))

    def claude(*args: str) -> str:
        proc = subprocess.run([str(CLAUDE), "mcp", *args], cwd=town.root, env=env, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    claude("add", "vermas", "--", server, "--town", str(town.root), "--actor", "overseer")
    listed = claude("list")
    assert "vermas:" in listed and "Connected" in listed, listed
    town.close()
