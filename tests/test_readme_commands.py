"""The README's first command, the demo town, run exactly as written from the repository's
root (the second, `scripts/test.sh`, is what CI itself runs). It sets up (idempotent: nothing new
is installed after the first run) and boots a throwaway town on the stand-in model whose three
beads end merged on the sample repository's main by the refinery (tests and verification run),
closed, with their convoy landed; afterwards nothing of it is left: no tmux server, no folder."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import readme_block

ROOT = Path(__file__).resolve().parents[1]
HEADING = "## Two commands"


def demo_command() -> str:
    return readme_block(HEADING).strip()


@pytest.mark.slow
@pytest.mark.tmux
@pytest.mark.claude
def test_the_demo_command_as_written(tmp_path: Path) -> None:
    command = demo_command()
    assert command == "scripts/setup.sh && .venv/bin/vermas-runner demo"  # what a newcomer types
    tmux_dir = tmp_path / "tmux"
    tmux_dir.mkdir()
    temp = tmp_path / "tmp"  # the demo's town goes under TMPDIR: see what it leaves
    temp.mkdir()
    env = {**os.environ, "TMUX_TMPDIR": str(tmux_dir), "TMPDIR": str(temp)}
    env.pop("VERMAS_TOWN", None)
    proc = subprocess.run(["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    # the main job: every bead merged on the sample repository's main (the demo checks it with
    # git before it says so), closed, the convoy landed; the summary printed
    assert "demo done: every bead merged on main (3/3 merged)" in out, out[-3000:]
    assert "demo: beads merged on main (3/3)" in out and "\x1b" not in out  # progress as lines
    assert len(re.findall(r"^POLECAT_DONE ", out, re.M)) == 3  # one line per polecat
    merged = re.findall(r"^MERGED (sp-\w+) in ([0-9a-f]{12}) \((\d+\.\d) s after sling\)", out, re.M)
    assert len({bead for bead, _, _ in merged}) == 3, out[-3000:]
    assert re.search(r"^CONVOY_LANDED hq-\w+: 3/3 beads", out, re.M), out[-3000:]
    log = re.search(r"^main of the sample repository \(.*\), (\d+) commits:\n((?:  .*\n)+)", out, re.M)
    assert log is not None and int(log.group(1)) == 4, out[-3000:]  # squash: one commit per bead
    assert all(sha[:7] in log.group(2) for _, sha, _ in merged)
    assert "initial commit" in log.group(2)
    assert re.search(r"^sling to merged: p50 \d+\.\d s, max \d+\.\d s \(3 beads\)", out, re.M)
    # `down` reaps its agents' process groups, so no Claude Code process writes into the
    # folder after the demo removed it.
    assert list(temp.glob("vermas-demo-*")) == [], "the demo left its folder behind"
    servers = [p for p in tmux_dir.rglob("*") if p.is_socket()]
    alive = [s for s in servers
             if subprocess.run(["tmux", "-S", str(s), "ls"], capture_output=True).returncode == 0]
    assert alive == [], f"tmux servers left running: {alive}"
