"""Agent sessions in tmux: one tmux server per town on its own socket, so a town never
touches any other tmux server, and tests can kill exactly what they started.

Identity goes in through tmux's environment (`new-session -e`), never a shell string,
and the agent command is quoted with shlex so no value is ever run as code.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import shlex
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import libtmux
from libtmux.exc import LibTmuxException

from vermas.addresses import Address


def socket_name(town_root: Path) -> str:
    """A stable private socket per town directory."""
    digest = hashlib.sha256(str(town_root.resolve()).encode()).hexdigest()[:10]
    return f"vermas-{digest}"


# How many lines of a dead pane are kept as its "last lines" (its own output, bottom first).
DEAD_TAIL = 12
PANE_FORMAT = "#{session_name}\t#{pane_dead}\t#{pane_dead_status}\t#{pane_dead_signal}\t#{pane_pid}"


@dataclass(frozen=True)
class PaneState:
    """What tmux knows of a session's active pane: alive, or dead with its exit status or
    the signal that killed it (kept because every session runs with remain-on-exit on)."""

    dead: bool
    exit_status: int | None = None
    signal: int | None = None
    pid: int | None = None


def _int(text: str) -> int | None:
    return int(text) if text.strip().lstrip("-").isdigit() else None


def parse_panes(lines: list[str]) -> dict[str, PaneState]:
    """`list-panes -a -F PANE_FORMAT` output by session name (the first pane of each; pure)."""
    out: dict[str, PaneState] = {}
    for line in lines:
        parts = line.split("\t")
        if len(parts) != 5 or parts[0] in out:
            continue
        name, dead, status, sig, pid = parts
        out[name] = PaneState(dead=dead == "1", exit_status=_int(status) if dead == "1" else None,
                              signal=_int(sig) if dead == "1" else None, pid=_int(pid))
    return out


def wait_status(status: int) -> tuple[int | None, int | None]:
    """(exit status, signal) from a waitpid(2) status word (pure)."""
    if status & 0x7F == 0:
        return (status >> 8) & 0xFF, None
    return None, status & 0x7F


def zombie_status(stat: str) -> tuple[int | None, int | None] | None:
    """(exit status, signal) of a zombie from its /proc/PID/stat text (field 52, exit_code,
    Linux 3.5+); None if the process is not a zombie (pure)."""
    fields = stat.rpartition(")")[2].split()
    if len(fields) < 50 or fields[0] != "Z" or not fields[49].isdigit():
        return None
    return wait_status(int(fields[49]))


def _from_zombie(state: PaneState) -> PaneState:
    """tmux 3.3a sometimes misses the SIGCHLD of an agent that exits at once: the pane is
    dead but its process is an unreaped zombie, and `pane_dead_status` stays empty until
    another child exits. The kernel still holds the status; read it there."""
    if not state.dead or state.exit_status is not None or state.signal is not None or state.pid is None:
        return state
    try:
        found = zombie_status(Path(f"/proc/{state.pid}/stat").read_text())
    except OSError:
        return state
    if found is None:
        return state
    return PaneState(dead=True, exit_status=found[0], signal=found[1], pid=state.pid)


DEAD_LINE = re.compile(r"^Pane is dead \((status|signal) (\d+)", re.M)


def dead_line_status(text: str) -> tuple[int | None, int | None] | None:
    """(exit status, signal) from tmux's own "Pane is dead (status N, ...)" line (pure)."""
    match = DEAD_LINE.search(text)
    if match is None:
        return None
    value = int(match.group(2))
    return (value, None) if match.group(1) == "status" else (None, value)


def tail_lines(text: str, count: int = DEAD_TAIL) -> list[str]:
    """The last `count` non-blank lines of a dead pane's capture, without tmux's own
    "Pane is dead" line (pure)."""
    lines = [line.rstrip() for line in text.splitlines()]
    lines = [line for line in lines if line.strip() and not line.startswith("Pane is dead")]
    return lines[-count:]


_buffer_numbers = itertools.count()


def paste_commands(tmux_bin: str, socket: str, buffer: str, pane_id: str) -> tuple[list[str], list[str]]:
    """The two tmux commands that type text: load it into a named buffer from stdin, then
    paste (and delete) that buffer into the pane. The text is never a tmux argument, so tmux
    never parses it: `send-keys -l "- fix"` reads "- fix" as flags and types nothing, and
    an argument ending in ';' loses the ';' (tmux takes it as a command separator).
    No `-p`: no bracketed paste; no `-r` is moot as the text has no newlines."""
    load = [tmux_bin, "-L", socket, "load-buffer", "-b", buffer, "-"]
    paste = [tmux_bin, "-L", socket, "paste-buffer", "-d", "-b", buffer, "-t", pane_id]
    return load, paste


@dataclass
class SessionInfo:
    address: str
    session_name: str
    alive: bool
    pid: int | None = None
    last_activity: float | None = None
    dead: bool = False  # the session exists but its agent exited (see exit_status / signal)
    exit_status: int | None = None
    signal: int | None = None
    last_lines: list[str] = field(default_factory=list)


class TownSessions:
    """The tmux server of one town."""

    def __init__(self, town_root: Path, socket: str | None = None) -> None:
        self.socket = socket or socket_name(town_root)
        # A tmux server inherits the environment of the client that starts it; an agent
        # started from inside Claude Code must not pass CLAUDECODE on (Gas Town #1666).
        os.environ.pop("CLAUDECODE", None)
        self.server = libtmux.Server(socket_name=self.socket)

    def _session(self, name: str) -> libtmux.Session | None:
        try:
            if not self.server.has_session(name):
                return None
            return self.server.sessions.get(session_name=name)
        except (LibTmuxException, Exception):  # no server running yet
            return None

    def panes(self) -> dict[str, PaneState]:
        """Every session's pane state in one tmux call ({} when no server runs)."""
        try:
            result = self.server.cmd("list-panes", "-a", "-F", PANE_FORMAT)
        except (LibTmuxException, Exception):  # no server running yet
            return {}
        panes = parse_panes(result.stdout if not result.stderr else [])
        return {name: _from_zombie(state) for name, state in panes.items()}

    def created(self) -> dict[str, float]:
        """Every session's creation time (whole seconds, rounded down by tmux) in one tmux
        call ({} when no server runs): hook events older than it belong to an earlier session."""
        try:
            result = self.server.cmd("list-sessions", "-F", "#{session_name}\t#{session_created}")
        except (LibTmuxException, Exception):  # no server running yet
            return {}
        out: dict[str, float] = {}
        for line in result.stdout if not result.stderr else []:
            name, _, stamp = line.partition("\t")
            if stamp.strip().isdigit():
                out[name] = float(stamp)
        return out

    def alive(self, address: Address) -> bool:
        """The session exists and its agent still runs (a dead pane kept by remain-on-exit
        is not alive)."""
        state = self.panes().get(address.session_name)
        return state is not None and not state.dead

    def start(
        self, address: Address, cwd: Path, argv: list[str], env: dict[str, str],
        width: int = 220, height: int = 50,
    ) -> bool:
        """Start the agent's session unless it runs already (a dead one is replaced).
        Returns True if started."""
        state = self.panes().get(address.session_name)
        if state is not None and not state.dead:
            return False
        if state is not None:
            self.kill(address)
        return self._new_session(address.session_name, cwd, shlex.join(["env", "-u", "CLAUDECODE", *argv]),
                                 env, width, height)

    def _new_session(self, name: str, cwd: Path, command: str, env: dict[str, str],
                     width: int, height: int) -> bool:
        """new-session and `remain-on-exit on` in one tmux command list, so the window
        option is set before the server handles the child's exit: an agent that dies at
        once keeps its pane, exit status and last output for `status` to report. False if
        another process started the same session first (the runner and a `sling` may race)."""
        args = ["new-session", "-d", "-s", name, "-c", str(cwd), "-x", str(width), "-y", str(height)]
        for key, value in env.items():
            args += ["-e", f"{key}={value}"]
        args += [command, ";", "set-option", "-w", "-t", f"={name}:", "remain-on-exit", "on"]
        result = self.server.cmd(*args)
        for _ in range(20):  # killing a dead last session makes the server exit; wait it out
            if not any("server exited unexpectedly" in line for line in result.stderr):
                break
            time.sleep(0.1)
            result = self.server.cmd(*args)
        if result.stderr and any("duplicate session" in line for line in result.stderr):
            return False
        if result.stderr:
            raise LibTmuxException(f"tmux new-session {name}: {' '.join(result.stderr)}")
        return True

    def kill(self, address: Address) -> bool:
        session = self._session(address.session_name)
        if session is None:
            return False
        session.kill()
        return True

    def pane(self, address: Address) -> libtmux.Pane | None:
        session = self._session(address.session_name)
        return session.active_pane if session is not None else None

    def type_literal(self, address: Address, text: str) -> bool:
        """Type `text` into the agent's pane exactly as given (no key names, no options, no
        separators). False if tmux refused or timed out; the caller then erases whatever of
        it may have arrived."""
        pane = self.pane(address)
        if pane is None or not pane.pane_id:
            return False
        buffer = f"vermas-nudge-{os.getpid()}-{threading.get_ident()}-{next(_buffer_numbers)}"
        load, paste = paste_commands(self.server.tmux_bin or "tmux", self.socket, buffer, pane.pane_id)
        try:
            if subprocess.run(load, input=text.encode("utf-8"), capture_output=True, timeout=10).returncode:
                return False
            if subprocess.run(paste, capture_output=True, timeout=10).returncode == 0:
                return True
        except (OSError, subprocess.TimeoutExpired):
            pass
        # The paste failed: drop the buffer so it neither lingers nor gets pasted by anyone later.
        try:
            subprocess.run([*load[:3], "delete-buffer", "-b", buffer], capture_output=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            pass
        return False

    def capture(self, address: Address) -> str:
        pane = self.pane(address)
        if pane is None:
            return ""
        return "\n".join(pane.capture_pane())

    def _history(self, address: Address) -> str:
        """The pane with its history (a short-lived command's output may have scrolled
        above tmux's "Pane is dead" line)."""
        try:
            result = self.server.cmd("capture-pane", "-p", "-J", "-S", "-200", "-t", f"={address.session_name}:")
        except (LibTmuxException, Exception):
            return ""
        return "\n".join(result.stdout)

    def _dead_pane(self, address: Address, state: PaneState, settle: float = 1.0) -> tuple[PaneState, list[str]]:
        """A dead pane's status and last lines. tmux may mark the pane dead (its pty closed)
        a moment before it reaps the process, so an unknown status (or a blank screen) is
        looked at again for up to `settle` seconds, in the pane's own "Pane is dead" line
        as well. Known limit (tmux 3.3a): when a process exits within moments of its last
        write, tmux can handle the exit before reading the pty and drop that output; the
        status is still reported, the last lines may then be missing."""
        deadline = time.monotonic() + settle
        while True:
            text = self._history(address)
            if state.exit_status is None and state.signal is None:
                found = dead_line_status(text)
                if found is not None:
                    state = PaneState(dead=True, exit_status=found[0], signal=found[1], pid=state.pid)
            known = state.exit_status is not None or state.signal is not None
            if (known and tail_lines(text)) or time.monotonic() > deadline:
                return state, tail_lines(text)
            time.sleep(0.05)
            state = self.panes().get(address.session_name, state)

    def info(self, address: Address) -> SessionInfo:
        state = self.panes().get(address.session_name)
        session = self._session(address.session_name) if state is not None else None
        if state is None or session is None:
            return SessionInfo(str(address), address.session_name, False)
        activity = session.session_activity
        info = SessionInfo(str(address), address.session_name, not state.dead, state.pid,
                           float(activity) if activity else None)
        if state.dead:
            state, info.last_lines = self._dead_pane(address, state)
            info.dead, info.exit_status, info.signal = True, state.exit_status, state.signal
        return info

    def names(self) -> list[str]:
        try:
            return [s.session_name or "" for s in self.server.sessions]
        except (LibTmuxException, Exception):
            return []

    def kill_server(self) -> None:
        try:
            if self.server.is_alive():
                self.server.kill()
        except LibTmuxException:
            pass
        folder = Path(os.environ.get("TMUX_TMPDIR") or "/tmp") / f"tmux-{os.getuid()}"
        (folder / self.socket).unlink(missing_ok=True)  # tmux leaves its socket file behind

    def wait_for(self, address: Address, text: str, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.capture(address):
                return True
            time.sleep(0.2)
        return False
