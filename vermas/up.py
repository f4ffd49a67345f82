"""Booting a town: which agent sessions should run, starting the missing ones, stopping
them, and the one-runner-per-town lock.

`plan_up` is pure; `up`/`down` are the thin effects. Hooked work lives in the store,
not in sessions, so `down` then `up` resumes it (GUPP) and no commit is ever touched.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING

from pydantic import BaseModel

from vermas import polecat
from vermas.addresses import Address, Role
from vermas.errors import Conflict
from vermas.proc import flock_held, pid_alive
from vermas.sessions.launch import kick_all, start_agent
from vermas.town import Town

if TYPE_CHECKING:  # tmux is imported only where a session is touched
    from vermas.sessions import TownSessions

class UpReport(BaseModel):
    started: list[str]
    already_running: list[str]
    kicked: list[str] = []
    repaired: list[str] = []  # polecats whose half-made spawn or broken sandbox was fixed first


def core_agents(town: Town) -> list[Address]:
    """The long-lived sessions: the mayor, and each rig's witness and refinery."""
    out = [Address(role=Role.MAYOR)]
    for rig in sorted(town.config.rigs):
        out += [Address(role=Role.WITNESS, rig=rig), Address(role=Role.REFINERY, rig=rig)]
    return out


def polecat_agents(town: Town) -> list[Address]:
    return [Address(role=Role.POLECAT, rig=p.rig, name=p.name) for p in polecat.list_polecats(town)]


def plan_up(desired: list[Address], alive: set[str]) -> list[Address]:
    """The desired sessions that are not running, in order (pure)."""
    return [a for a in desired if a.session_name not in alive]


def zygote_pid(town: Town) -> int | None:
    pid_file = town.layout.zygote_pid
    try:
        pid = int(pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    # A stale pid file (a SIGKILLed zygote, a reboot) may name an unrelated process now.
    if not pid_alive(pid) or b"vermas_mcp.zygote" not in cmdline or str(town.root).encode() not in cmdline:
        return None
    return pid


def start_zygote(town: Town, timeout: float = 30.0) -> int | None:
    """Start the town's MCP zygote (see vermas_mcp.zygote) so each session's vermas-mcp
    answers in milliseconds; wait until it is ready. Returns its pid, or None if it did
    not come up (sessions then start their servers the slow way, which still works)."""
    pid = zygote_pid(town)
    if pid is not None:
        return pid
    town.layout.runtime_dir.mkdir(exist_ok=True)
    log = town.layout.zygote_log.open("a")
    subprocess.Popen(
        [sys.executable, "-m", "vermas_mcp.zygote", "--town", str(town.root)],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, cwd=town.root,
    )
    log.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = zygote_pid(town)
        if pid is not None:
            return pid
        time.sleep(0.05)
    return None


def stop_zygote(town: Town) -> bool:
    pid = zygote_pid(town)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and zygote_pid(town) is not None:
        time.sleep(0.05)
    return True


def up(town: Town, sessions: TownSessions, wait: bool = True) -> UpReport:
    start_zygote(town)
    # Before any session starts: half-made spawns finished or rolled back, broken sandboxes
    # rebuilt, so no polecat is ever started in a folder that is not its git worktree.
    reports = polecat.repair_spawns(town, sessions)
    repaired = [f"{r.address}: {r.why}" + (f"; failed, not started: {r.error}" if r.error else "") for r in reports]
    broken = {r.address for r in reports if r.error}
    desired = core_agents(town) + [a for a in polecat_agents(town) if str(a) not in broken]
    alive = set(sessions.names())
    missing = plan_up(desired, alive)
    started = [a for a in missing if start_agent(town, sessions, a)]
    kicked = kick_all(town, sessions, started) if wait else []
    polecat.mark_nudged(town, kicked)  # the rest stay `started`: the patrol nudges them
    return UpReport(
        started=[str(a) for a in started],
        already_running=[str(a) for a in desired if a.session_name in alive],
        kicked=kicked, repaired=repaired,
    )


def down(town: Town, sessions: TownSessions) -> list[str]:
    """Stop every session of the town; the store, worktrees and hooks stay as they are."""
    stopped = []
    for name in sessions.names():
        if name.startswith("vermas-"):
            sessions.server.kill_session(name)
            stopped.append(name)
    sessions.kill_server()
    stop_zygote(town)
    return stopped


def runner_pid(town: Town) -> int | None:
    """The pid of the town's running runner: the lock file names it and its flock is held
    (a pid alone may be stale or reused)."""
    lock = town.layout.runner_lock
    text = lock.read_text().strip() if lock.is_file() else ""
    if text.isdigit() and pid_alive(int(text)) and flock_held(lock):
        return int(text)
    return None


class RunnerLock:
    """One runner per town: an flock the kernel releases if the runner dies."""

    def __init__(self, town: Town) -> None:
        town.layout.runtime_dir.mkdir(exist_ok=True)
        self.path = town.layout.runner_lock
        self._fh: IO[str] | None = None

    def acquire(self) -> None:
        fh = self.path.open("a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise Conflict(f"a runner is already running for this town (pid {holder}); "
                           "use `vermas-runner status` or `vermas-runner down`") from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._fh = fh

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None
