"""`vermas-runner demo` killed with SIGTERM part way (a CI timeout, a `kill`) still cleans up
as Ctrl-C does: its sessions and tmux server stopped, the stand-in model stopped, its folder
removed. The leak guard (tests/leakguard.py) fails this module if any process of it is left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from vermas.testing.standin import find_claude_binary

pytestmark = [
    pytest.mark.tmux, pytest.mark.claude, pytest.mark.slow,
    pytest.mark.skipif(find_claude_binary() is None, reason="Claude Code CLI not installed (scripts/setup.sh)"),
]
ROOT = Path(__file__).resolve().parents[1]


def test_a_demo_killed_with_sigterm_cleans_up(tmp_path: Path) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    tmux_dir = Path(tempfile.mkdtemp(prefix="vds-"))
    env = {**os.environ, "TMPDIR": str(temp), "TMUX_TMPDIR": str(tmux_dir)}
    env.pop("VERMAS_TOWN", None)
    runner = Path(sys.executable).parent / "vermas-runner"
    out = tmp_path / "demo.out"
    with out.open("w") as fh:
        proc = subprocess.Popen([str(runner), "demo", "--beads", "1"], cwd=ROOT, env=env, stdout=fh,
                                stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and "slung " not in out.read_text():
            assert proc.poll() is None, out.read_text()
            time.sleep(0.2)
        assert "slung " in out.read_text(), out.read_text()
        assert list(temp.glob("vermas-demo-*")), "the demo made no folder"
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc != 0, out.read_text()[-2000:]  # interrupted, not "done"
    assert list(temp.glob("vermas-demo-*")) == [], "the demo left its folder behind"
    live = [s for s in tmux_dir.rglob("*") if s.is_socket()
            and subprocess.run(["tmux", "-S", str(s), "ls"], capture_output=True).returncode == 0]
    assert live == [], f"tmux servers left running: {live}"
    subprocess.run(["rm", "-rf", str(tmux_dir)])
