"""Agent sessions in tmux: one tmux server per town on its own socket, so a town never
touches any other tmux server, and tests can kill exactly what they started.

Identity goes in through tmux's environment (`new-session -e`), never a shell string,
and the agent command is quoted with shlex so no value is ever run as code.
"""

from __future__ import annotations

import hashlib
import os
import shlex
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
