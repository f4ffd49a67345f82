"""The README's line for a human's own Claude Code, run with the real CLI: `claude mcp add`
registers vermas as the overseer and `claude mcp list` connects to it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import readme_block
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


REPO_ROOT = Path(__file__).resolve().parents[1]
OVERSEER_SECTION = "## Use it from your own Claude Code session"


def readme_overseer_line() -> str:
    """The `claude mcp add` line of the README's overseer section, as a user copies it."""
    block = readme_block(OVERSEER_SECTION)
    lines = [line for line in block.splitlines() if " mcp add " in line]
    assert len(lines) == 1, block
    return lines[0]


def test_readme_overseer_line_names_the_installed_cli_and_user_scope() -> None:
    line = readme_overseer_line()
    assert line.startswith(".tools/claude/node_modules/.bin/claude mcp add ")
    assert "--scope user" in line.split(" -- ", 1)[0]


def test_readme_overseer_line_works_from_another_folder(tmp_path: Path) -> None:
    """The line as written, run in the repository's folder with the real CLI; then `claude mcp
    list` and `get` from a folder outside it see the server (user scope), and connect to it once
    that folder is trusted (the user ran `claude` there), as README says."""
    for needed in (".tools/claude/node_modules/.bin/claude", ".venv/bin/vermas-mcp"):
        if not (REPO_ROOT / needed).exists():
            pytest.skip(f"{needed} is missing (scripts/setup.sh installs it)")
    home = tmp_path / "home"
    home.mkdir()
    town, _ = Town.init(home / "town")  # the line's ~/town
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLAUDE", "ANTHROPIC_", "VERMAS_"))}
    env.update(HOME=str(home), CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1")

    added = subprocess.run(["bash", "-c", readme_overseer_line()], cwd=REPO_ROOT, env=env,
                           capture_output=True, text=True, timeout=120)
    assert added.returncode == 0, added.stderr

    def claude(*args: str) -> str:
        proc = subprocess.run([str(REPO_ROOT / ".tools/claude/node_modules/.bin/claude"), "mcp", *args],
                              cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    # A folder the user never started `claude` in: Claude Code (2.1.33x) lists the server but
    # starts no server there (README says so).
    listed = claude("list")
    assert "vermas:" in listed and "Not checked (folder not trusted" in listed, listed
    # Once the user has run `claude` there and accepted the folder (what Claude Code records in
    # ~/.claude.json), `claude mcp list` starts the server and it connects.
    config = home / ".claude.json"
    data = json.loads(config.read_text()) if config.exists() else {}
    data.setdefault("projects", {}).setdefault(os.path.realpath(elsewhere), {})["hasTrustDialogAccepted"] = True
    config.write_text(json.dumps(data))
    listed = claude("list")
    assert "vermas:" in listed and "Connected" in listed, listed
    shown = claude("get", "vermas")
    assert "User config" in shown and str(home / "town") in shown and "overseer" in shown, shown
    town.close()
