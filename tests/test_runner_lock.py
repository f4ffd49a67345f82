"""One runner per town: a second `up` is refused while a runner lives, and a runner killed
with SIGKILL leaves no stuck lock. Sessions run a stand-in agent command (bash sleeping),
which `town.toml` allows, so no model is involved."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import process_gone
from vermas.sessions import TownSessions
from vermas.town import Town

RUNNER = str(Path(sys.executable).with_name("vermas-runner"))


@pytest.fixture
def town(tmp_path: Path) -> Iterator[Town]:
    town, _ = Town.init(tmp_path / "town")
    town.config.agent.command = "bash"
    town.config.agent.args = ["-c", "sleep 600", "--"]  # the generated flags become $0, $1...
    town.save_config()
    yield town
    subprocess.run([RUNNER, "down", "--town", str(town.root)], capture_output=True, timeout=60)
    TownSessions(town.root).kill_server()
    town.close()


def runner(town: Town, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([RUNNER, *args, "--town", str(town.root)], capture_output=True, text=True, timeout=120)


def start_foreground(town: Town) -> subprocess.Popen[str]:
    proc = subprocess.Popen([RUNNER, "up", "--no-wait", "--town", str(town.root)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("patrolling"):
            return proc
    raise AssertionError(f"runner exited early with {proc.wait()}")


def test_second_runner_is_refused_and_a_killed_one_leaves_no_stuck_lock(town: Town) -> None:
    first = start_foreground(town)
    try:
        status = json.loads(runner(town, "status", "--json").stdout)
        assert status["runner_pid"] == first.pid
        assert [a["alive"] for a in status["agents"]] == [True]  # the mayor (no rigs yet)
        second = runner(town, "up", "--once", "--no-wait")
        assert second.returncode == 2 and f"already running for this town (pid {first.pid})" in second.stderr
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    assert json.loads(runner(town, "status", "--json").stdout)["runner_pid"] is None
    third = runner(town, "up", "--once", "--no-wait")
    assert third.returncode == 0 and "already running mayor" in third.stdout  # sessions outlive runners


def test_detached_runner_is_stopped_by_down(town: Town) -> None:
    out = runner(town, "up", "--detach")
    assert out.returncode == 0 and "runner started in the background" in out.stdout
    deadline = time.monotonic() + 60
    pid, mayor_alive = None, False
    while time.monotonic() < deadline and not (pid and mayor_alive):
        status = json.loads(runner(town, "status", "--json").stdout)
        pid, mayor_alive = status["runner_pid"], status["agents"][0]["alive"]
        time.sleep(0.2)
    assert pid is not None and mayor_alive
    down = runner(town, "down")
    assert f"stopped runner (pid {pid})" in down.stdout and "stopped 1 session(s)" in down.stdout
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        time.sleep(0.1)
    assert not Path(f"/proc/{pid}").exists() or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
    assert not any(a["alive"] for a in json.loads(runner(town, "status", "--json").stdout)["agents"])


def _group_of(pgrp: int) -> list[int]:
    """Running members of a process group, from /proc."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text.rpartition(")")[2].split()
        if fields[0] != "Z" and int(fields[2]) == pgrp:
            out.append(int(stat.parent.name))
    return out


def test_down_reaps_agents_that_ignore_the_hangup(town: Town) -> None:
    """An agent (and its children) that outlives tmux's SIGHUP is killed by `down`, so nothing
    of the town writes on after `down` returns."""
    town.config.agent.args = ["-c", "trap '' HUP; sleep 600 & wait", "--"]
    town.save_config()
    assert runner(town, "up", "--once", "--no-wait").returncode == 0
    deadline = time.monotonic() + 30
    members: list[int] = []
    while time.monotonic() < deadline and len(members) < 2:  # bash and its sleep
        panes = TownSessions(town.root).panes()
        pgrp = next((s.pid for s in panes.values() if s.pid), None)
        members = _group_of(pgrp) if pgrp else []
        time.sleep(0.1)
    assert len(members) >= 2, members
    started = time.monotonic()
    assert runner(town, "down").returncode == 0
    took = time.monotonic() - started
    assert all(process_gone(pid, within=2.0) for pid in members), members
    assert took < 30, took


def test_group_members_skips_zombies_and_other_groups() -> None:
    from vermas.proc import group_members
    stats = ["10 (bash) S 1 10 10 0", "11 (sleep (x)) S 10 10 10 0", "12 (old) Z 10 10 10 0",
             "13 (other) R 1 13 13 0"]
    assert group_members(stats, {10}) == {10}
    assert group_members(stats[2:3], {10}) == set()
    assert group_members(stats, {13, 99}) == {13}
