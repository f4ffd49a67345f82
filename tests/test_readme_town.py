"""The README's "A town in six commands", run as written.

The `sh` block is parsed out of README.md and run by bash, unchanged, in a temp HOME (so
`~/town` and `~/src/myproj` are there), with `.venv/bin` first on PATH as the README asks,
and a private TMUX_TMPDIR (the town's own tmux socket lives there). The block uses the
stand-in switch (`up --model standin`), so the real Claude Code CLI runs every session with
no account. `~/src/myproj` is what users have: a normal repository with main checked out
(and a test, since the block says `--test-command "pytest -q"`). Afterwards the slung bead must
be merged by the refinery onto that repository's main (tested, verified, closed, its checkout
following main), and `down` must stop the sessions, the runner and the stand-in model server,
and put the town's `[agent]` back.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import git, make_repo, readme_block, stop_detached_town
from vermas import beads
from vermas.refinery import ledger
from vermas.refinery.types import MRState
from vermas.testing.standin import find_claude_binary
from vermas.town import Town
from vermas_runner import demo

pytestmark = [
    pytest.mark.tmux, pytest.mark.claude, pytest.mark.slow,
    pytest.mark.skipif(find_claude_binary() is None,
                       reason="Claude Code CLI not installed (scripts/setup.sh installs it)"),
]
HEADING = "## A town in six commands"


def readme_commands() -> str:
    """The first ```sh block under the heading, exactly as written."""
    return readme_block(HEADING)


@pytest.fixture
def newcomer(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A newcomer's shell: fresh HOME holding ~/src/myproj, venv on PATH, private tmux dir."""
    home = tmp_path / "home"
    repo = make_repo(home / "src" / "myproj")  # non-bare, main checked out: a user's own repository
    (repo / "tests").mkdir()
    (repo / "tests" / "test_smoke.py").write_text("def test_smoke():\n    assert True\n")
    git(repo, "add", "tests")
    git(repo, "commit", "-q", "-m", "a test, as a user's project has")
    tmux_dir = Path(tempfile.mkdtemp(prefix="vt-"))  # short: a unix socket path is limited
    env = {k: v for k, v in os.environ.items() if k not in ("VERMAS_TOWN", "BD_ACTOR", "CLAUDECODE")}
    env.update(HOME=str(home), TMUX_TMPDIR=str(tmux_dir),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', os.defpath)}")
    yield env
    stop_detached_town(home / "town", env, tmux_dir)


def test_readme_block_is_five_commands_on_the_standin_switch() -> None:
    lines = [line for line in readme_commands().splitlines() if line.strip()]
    runner_lines = [line for line in lines if "vermas-runner" in line]
    assert len(runner_lines) == len(lines) == 6  # init, rig add, up, (bead create,) sling, status
    assert "--model standin" in lines[2] and lines[2].startswith("vermas-runner up ")


def test_readme_town_in_five_commands_works_as_written(newcomer: dict[str, str], tmp_path: Path) -> None:
    script = readme_commands()
    run = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=tmp_path, env=newcomer,
                         capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, f"README commands failed:\n{run.stdout}\n{run.stderr}"
    out = run.stdout
    assert "created town 'town'" in out and "added rig myproj (prefix mp" in out
    assert "agent: the scripted stand-in model at http://127.0.0.1:" in out
    assert re.search(r"spawned myproj/polecats/\w+ on polecat/\w+/mp-\w+ for mp-\w+", out), out
    assert re.search(r"runner:\s+pid \d+", out) and "rig myproj (prefix mp, branch main)" in out, out

    root = Path(newcomer["HOME"]) / "town"
    repo = Path(newcomer["HOME"]) / "src" / "myproj"
    before = git(repo, "rev-parse", "main")
    town = Town.open(root)
    bead_id = re.search(r"for (mp-\w+)", out).group(1)  # type: ignore[union-attr]
    deadline = time.monotonic() + 300
    merged: list[ledger.MergeRequestRow] = []
    while time.monotonic() < deadline and not merged:
        merged = ledger.list_requests(town, bead=bead_id, states=[MRState.MERGED])
        time.sleep(1)
    status = json.loads(subprocess.run(["vermas-runner", "status", "--json", "--town", str(root)], env=newcomer,
                                       capture_output=True, text=True, timeout=60).stdout)
    assert merged, f"{bead_id} was not merged; status: {json.dumps(status, indent=1)[-6000:]}"
    # merged onto the user's own repository's main, by the refinery: tested, verified, closed
    sha = merged[-1].merged_sha
    assert sha and git(repo, "rev-parse", "main") == sha and git(repo, "rev-parse", f"{sha}~1") == before
    assert git(repo, "status", "--porcelain") == ""  # the checkout follows main: nothing shows as changed
    assert len(git(repo, "ls-files", "notes").splitlines()) == 1  # the polecat's note is in the user's files
    assert beads.show(town, bead_id).status == "closed"
    steps = [e.evidence for e in ledger.show(town, merged[-1].id).events]
    assert any(e.get("check") == "verify" and e.get("outcome") == "passed" for e in steps), steps
    assert any(e.get("command") == "pytest -q" and e.get("exit_status") == 0 for e in steps), steps
    agents = {a["address"]: a for a in status["agents"]}
    assert all(agents[a]["alive"] for a in ("mayor", "myproj/witness", "myproj/refinery")), agents
    assert not any(a["death"] for a in status["agents"]), agents
    standin = demo.standin_state(town)
    assert standin is not None

    down = subprocess.run(["vermas-runner", "down", "--town", str(root)], env=newcomer, capture_output=True,
                          text=True, timeout=120)
    assert down.returncode == 0, down.stderr
    assert f"stopped the stand-in model (pid {standin.pid})" in down.stdout
    assert demo.standin_state(town) is None
    town.reload_config()
    assert town.config.agent.command == "claude" and town.config.agent.env == {}
    assert not any(Path(newcomer["TMUX_TMPDIR"]).rglob("vermas-*"))  # the town's tmux server is gone
    town.close()
