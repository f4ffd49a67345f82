"""Agent sessions in tmux: one tmux server per town on its own socket, so a town never
touches any other tmux server, and tests can kill exactly what they started.

Identity goes in through tmux's environment (`new-session -e`), never a shell string,
and the agent command is quoted with shlex so no value is ever run as code.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import shlex
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import libtmux
from libtmux.exc import LibTmuxException

from vermas.addresses import Address


def socket_name(town_root: Path) -> str:
    """A stable private socket per town directory."""
    digest = hashlib.sha256(str(town_root.resolve()).encode()).hexdigest()[:10]
    return f"vermas-{digest}"


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

    def alive(self, address: Address) -> bool:
        return self._session(address.session_name) is not None

    def start(
        self, address: Address, cwd: Path, argv: list[str], env: dict[str, str],
        width: int = 220, height: int = 50,
    ) -> bool:
        """Start the agent's session unless it runs already. Returns True if started."""
        if self.alive(address):
            return False
        command = shlex.join(["env", "-u", "CLAUDECODE", *argv])
        self.server.new_session(
            session_name=address.session_name, start_directory=str(cwd), window_command=command,
            environment=env, x=width, y=height, attach=False,
        )
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

    def info(self, address: Address) -> SessionInfo:
        session = self._session(address.session_name)
        if session is None:
            return SessionInfo(str(address), address.session_name, False)
        pid = session.active_pane.pane_pid if session.active_pane else None
        activity = session.session_activity
        return SessionInfo(
            str(address), address.session_name, True, int(pid) if pid else None,
            float(activity) if activity else None,
        )

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
