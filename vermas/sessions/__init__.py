"""Agent sessions: tmux behind a small interface (`tmux`), nudging text into them (`nudge`)
and starting agents in them (`launch`).

`from vermas.sessions import TownSessions` keeps working; the tmux names are loaded on first
use, so importing `vermas.sessions.nudge` or `.launch` does not load libtmux.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vermas.sessions.tmux import SessionInfo, TownSessions, socket_name

__all__ = ["SessionInfo", "TownSessions", "socket_name"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from vermas.sessions import tmux  # deferred: libtmux costs ~70 ms and the MCP server never needs it

        return getattr(tmux, name)
    raise AttributeError(f"module 'vermas.sessions' has no attribute {name!r}")
