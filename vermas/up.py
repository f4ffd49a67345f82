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
from collections.abc import Iterable
from pathlib import Path
from typing import IO, TYPE_CHECKING

from pydantic import BaseModel, computed_field

from vermas import agents, polecat
from vermas.addresses import Address, Role
from vermas.errors import Conflict, InvalidInput
from vermas.inspector import readiness
from vermas.proc import flock_held, pid_alive, reap_groups
from vermas.progress import ProgressEvent, ProgressFn, ignore
from vermas.protocol import SESSION_STATES, PolecatState
from vermas.sessions.launch import kick_all, start_agent
from vermas.town import Town

if TYPE_CHECKING:  # tmux is imported only where a session is touched
    from vermas.sessions import SessionInfo, TownSessions



class SessionDeath(BaseModel):
    """Why an agent's session is dead, from what tmux kept of its pane (remain-on-exit):
    the exit status or the killing signal, and the last lines it printed."""

    exit_status: int | None = None
    signal: int | None = None
    last_lines: list[str] = []

    @computed_field  # type: ignore[prop-decorator]
    @property
    def reason(self) -> str:
        how = (f"killed by signal {self.signal}" if self.signal
               else f"exit status {self.exit_status}" if self.exit_status is not None else "exited")
        return how + (f": {self.last_lines[-1]}" if self.last_lines else "")


class UpReport(BaseModel):
    started: list[str]
    already_running: list[str]
    kicked: list[str] = []
    restarted_dead: dict[str, SessionDeath] = {}  # dead sessions `up` replaced, and why they died
    repaired: list[str] = []  # polecats whose half-made spawn or broken sandbox was fixed first


def core_agents(town: Town) -> list[Address]:
    """The long-lived sessions: the mayor, and each rig's witness and refinery."""
    out = [Address(role=Role.MAYOR)]
    for rig in sorted(town.config.rigs):
        out += [Address(role=Role.WITNESS, rig=rig), Address(role=Role.REFINERY, rig=rig)]
    return out


def polecat_agents(town: Town) -> list[Address]:
    """Every polecat slot's address (status, the dashboard and the death watch show them all)."""
    return [Address(role=Role.POLECAT, rig=p.rig, name=p.name) for p in polecat.list_polecats(town)]


def polecats_to_run(slots: Iterable[tuple[Address, PolecatState]]) -> list[Address]:
    """The polecats whose session should run (pure): started or working. A finished one (done,
    escalated, deferred) is not started again by `up`; a spawning one is repair's to finish."""
    return [address for address, state in slots if state in SESSION_STATES]


def plan_up(desired: list[Address], alive: set[str]) -> list[Address]:
    """The desired sessions that are not running, in order (pure)."""
    return [a for a in desired if a.session_name not in alive]


# --- the agent command, checked before anything starts ---------------------------------------

def missing_agent_message(config_file: Path, command: str, setup_cli: Path | None) -> str:
    """One line: what is missing, where to set it, and the two ways out (pure)."""
    what = "is not on PATH" if "/" not in command else "is not an absolute path to an executable"
    if setup_cli is not None:
        fix = f'command = "{setup_cli}" (the Claude Code CLI scripts/setup.sh installed)'
    else:
        fix = f"command = the CLI's absolute path (scripts/setup.sh installs Claude Code as {agents.SETUP_CLI})"
    return (f"agent command {command!r} {what}; set it in {config_file} under [agent]: {fix}, "
            "or boot on the scripted stand-in model: vermas-runner up --model standin")


def resolve_agent_command(town: Town) -> str:
    """The town's agent command as an executable path, or InvalidInput before anything is
    started: a missing CLI would otherwise give sessions that die at once, unexplained."""
    agent = town.config.agent
    found = agents.resolve_command(agent.command, agent.env.get("PATH") or os.environ.get("PATH", os.defpath))
    if found is None:
        raise InvalidInput(missing_agent_message(town.layout.config_file, agent.command, agents.setup_cli()))
    return found


# --- dead sessions ---------------------------------------------------------------------------

def death_of(info: SessionInfo) -> SessionDeath | None:
    """The death of a session whose pane tmux kept (None if it runs or has no session)."""
    if not info.dead:
        return None
    return SessionDeath(exit_status=info.exit_status, signal=info.signal, last_lines=info.last_lines)


def describe_death(address: str, death: SessionDeath, lines: int = 5) -> str:
    """The runner log's entry for a dead session: one line of why, then its last lines."""
    tail = "".join(f"\n    | {line}" for line in death.last_lines[-lines:])
    return f"{address} died ({death.reason.split(': ', 1)[0]}); last lines of its pane:{tail or ' (none)'}"


def dead_sessions(town: Town, sessions: TownSessions) -> dict[str, SessionDeath]:
    """Every town agent whose session is dead, with why (one tmux call when none is)."""
    panes = sessions.panes()
    out: dict[str, SessionDeath] = {}
    for address in core_agents(town) + polecat_agents(town):
        state = panes.get(address.session_name)
        if state is not None and state.dead:
            death = death_of(sessions.info(address))
            if death is not None:
                out[str(address)] = death
    return out


class DeathWatch:
    """The runner log's view of deaths: each one reported once, as it is noticed (a session
    restarted and dead again has a new pane pid, so it is reported again)."""

    def __init__(self, town: Town, sessions: TownSessions) -> None:
        self.town, self.sessions = town, sessions
        self._seen: set[tuple[str, int | None]] = set()

    def check(self) -> list[str]:
        panes = self.sessions.panes()
        out = []
        for address in core_agents(self.town) + polecat_agents(self.town):
            state = panes.get(address.session_name)
            key = (address.session_name, state.pid if state else None)
            if state is None or not state.dead or key in self._seen:
                continue
            death = death_of(self.sessions.info(address))
            if death is not None:
                self._seen.add(key)
                out.append(describe_death(str(address), death))
        return out


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


def up(town: Town, sessions: TownSessions, wait: bool = True, progress: ProgressFn = ignore) -> UpReport:
    """Start every session that should run and is not; with `wait`, each new one is waited for
    until its prompt is ready and then nudged (GUPP). `progress` hears each session's steps."""
    resolve_agent_command(town)
    readiness.check_town(town)  # every rig that verifies with a model can run its inspector
    start_zygote(town)
    # Before any session starts: half-made spawns finished or rolled back, broken sandboxes
    # rebuilt, so no polecat is ever started in a folder that is not its git worktree.
    reports = polecat.repair_spawns(town, sessions)
    repaired = [f"{r.address}: {r.why}" + (f"; failed, not started: {r.error}" if r.error else "") for r in reports]
    broken = {r.address for r in reports if r.error}
    slots = [(Address(role=Role.POLECAT, rig=p.rig, name=p.name), p.state) for p in polecat.list_polecats(town)]
    desired = core_agents(town) + [a for a in polecats_to_run(slots) if str(a) not in broken]
    alive = live_session_names(sessions)
    died = dead_sessions(town, sessions)
    missing = plan_up(desired, alive)
    started = [a for a in missing if _start(town, sessions, a, progress, wait)]
    kicked = kick_all(town, sessions, started, progress) if wait else []
    polecat.mark_nudged(town, kicked)  # the rest stay `started`: the patrol nudges them
    return UpReport(
        started=[str(a) for a in started],
        already_running=[str(a) for a in desired if a.session_name in alive],
        kicked=kicked, repaired=repaired,
        restarted_dead={a: d for a, d in died.items() if a in {str(x) for x in started}},
    )


def _start(town: Town, sessions: TownSessions, address: Address, progress: ProgressFn, wait: bool) -> bool:
    progress(ProgressEvent(str(address), "starting its session"))
    made = start_agent(town, sessions, address)
    progress(ProgressEvent(str(address), "session up" if made else "another process made it first",
                           finished=not (made and wait)))
    return made


def live_session_names(sessions: TownSessions) -> set[str]:
    """Sessions whose agent runs (a dead pane kept by remain-on-exit is to be replaced)."""
    return {name for name, state in sessions.panes().items() if not state.dead}


# How long the agents of a stopped town get to exit on their own before they are killed.
DOWN_GRACE_S = 3.0


def down(town: Town, sessions: TownSessions) -> list[str]:
    """Stop every session of the town; the store, worktrees and hooks stay as they are.

    Each pane's process group (the agent and the MCP servers it started) is reaped: given
    DOWN_GRACE_S to exit after tmux's SIGHUP, then killed, so nothing of the town outlives
    `down`."""
    stopped = []
    panes = sessions.panes()
    groups = {s.pid for n, s in panes.items()
              if n.startswith("vermas-") and not s.dead and s.pid is not None}
    for name in sessions.names():
        if name.startswith("vermas-"):
            sessions.server.kill_session(name)
            stopped.append(name)
    sessions.kill_server()
    stop_zygote(town)
    reap_groups(groups, DOWN_GRACE_S)
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
