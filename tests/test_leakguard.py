"""The leak guard finds what a test leaves: a process of this run (even re-parented to init,
as a tmux server is) and a tmux socket file; and it finds nothing once they are gone."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests import leakguard


def test_a_process_of_this_run_is_found_until_it_ends() -> None:
    before = set(leakguard.processes_of_run(leakguard.token()))
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        found = leakguard.leaks(before, leakguard.tmux_sockets(), grace=0.5)
        assert any(f"process {proc.pid} still running: sleep 60" == line for line in found), found
    finally:
        proc.kill()
        proc.wait()
    assert leakguard.leaks(before, leakguard.tmux_sockets(), grace=2.0) == []


def test_a_process_of_another_run_is_never_counted() -> None:
    before = set(leakguard.processes_of_run(leakguard.token()))
    env = {**os.environ, leakguard.ENV: "another-run"}
    proc = subprocess.Popen(["sleep", "60"], env=env, start_new_session=True)
    try:
        assert leakguard.leaks(before, leakguard.tmux_sockets(), grace=0.2) == []
    finally:
        proc.kill()
        proc.wait()


def test_a_tmux_server_left_in_the_tmux_folder_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    folder = Path(tempfile.mkdtemp(prefix="vlg-"))
    monkeypatch.setenv("TMUX_TMPDIR", str(folder))
    try:
        before_sockets = leakguard.tmux_sockets()
        before = set(leakguard.processes_of_run(leakguard.token()))
        subprocess.run(["tmux", "-L", "leaky", "new-session", "-d", "sleep 60"], check=True)
        found = leakguard.leaks(before, before_sockets, grace=0.5)
        assert "tmux socket left: leaky" in found and any("tmux" in line for line in found if "process" in line)
        subprocess.run(["tmux", "-L", "leaky", "kill-server"], check=True)
        (folder / f"tmux-{os.getuid()}" / "leaky").unlink(missing_ok=True)
        assert leakguard.leaks(before, before_sockets, grace=3.0) == []
    finally:
        subprocess.run(["tmux", "-L", "leaky", "kill-server"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def test_a_process_without_the_marker_that_names_the_runs_temp_folder_is_found(tmp_path: Path) -> None:
    """What the MCP SDK's stdio client starts gets a scrubbed environment (no marker), but a
    tmux server it starts for a test town names the town's folder, under the run's basetemp."""
    root = str(tmp_path.parent)  # pytest's basetemp
    env = {k: v for k, v in os.environ.items() if k != leakguard.ENV}
    before = set(leakguard.processes_of_run(leakguard.token(), root))
    proc = subprocess.Popen(["sh", "-c", "sleep 60; :", str(tmp_path)], env=env, start_new_session=True)
    try:
        assert leakguard.leaks(before, leakguard.tmux_sockets(), grace=0.5) == []  # the marker alone misses it
        found = leakguard.leaks(before, leakguard.tmux_sockets(), grace=0.5, temp_root=root)
        assert any(f"process {proc.pid} still running" in line for line in found), found
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # sh and its sleep
        proc.wait()
