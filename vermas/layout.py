"""Where everything of a town lives on disk: the one owner of every path of its layout.

    <town>/town.toml                     config
    <town>/.beads/vermas.db              the store of record (SQLite)
    <town>/.beads/{issues,messages,routes}.jsonl   bd-compatible exports
    <town>/.runtime/                     runner lock and log, MCP zygote pid/log, nudge, spawn and GUPP locks,
                                         the stand-in model's state, one folder per agent session
                                         (mcp.json, settings, mcp.ready)
    <town>/<rig>/mayor/rig               the rig's canonical clone (its .beads/issues.jsonl)
    <town>/<rig>/refinery/rig            the refinery's worktree
    <town>/<rig>/polecats/<name>         one git worktree per polecat
    <town>/<rig>/polecats/.leftovers/    folders repair moved aside (never deleted)
    <town>/<rig>/crew/<name>             long-lived human-directed workspaces
    <town>/<rig>/witness                 the witness's folder
    <town>/<role>                        town-level agents (mayor, deacon)

Pure path arithmetic (nothing is created or read here), stdlib only, so any layer may use
it. Names that become path segments are checked, so an identity never escapes its folder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

CONFIG_NAME = "town.toml"
BEADS_DIR = ".beads"
DB_NAME = "vermas.db"
RUNTIME_DIR = ".runtime"
RIG_FOLDERS = ("polecats", "crew", "witness")

_SEGMENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _segment(value: str, what: str) -> str:
    if not isinstance(value, str) or not _SEGMENT_RE.fullmatch(value) or ".." in value:
        raise ValueError(f"invalid {what} {str(value)[:40]!r} for a path: letters, digits, '_', '.', '-'")
    return value


@dataclass(frozen=True)
class TownLayout:
    """The paths of one town, by its root directory."""

    root: Path

    # --- config and store -------------------------------------------------------------
    @property
    def config_file(self) -> Path:
        return self.root / CONFIG_NAME

    @property
    def beads_dir(self) -> Path:
        return self.root / BEADS_DIR

    @property
    def store_path(self) -> Path:
        return self.beads_dir / DB_NAME

    def is_town(self) -> bool:
        """A town is a folder holding both its config and its store."""
        return self.config_file.is_file() and self.store_path.is_file()

    def export_file(self, kind: str) -> Path:
        """`.beads/<kind>.jsonl` for kind issues, messages or routes."""
        return self.beads_dir / f"{_segment(kind, 'export kind')}.jsonl"

    @property
    def routes_file(self) -> Path:
        return self.export_file("routes")

    @property
    def export_state(self) -> Path:
        return self.beads_dir / ".export-state.json"

    @property
    def export_lock(self) -> Path:
        return self.beads_dir / ".export.lock"

    # --- runtime files ----------------------------------------------------------------
    @property
    def runtime_dir(self) -> Path:
        return self.root / RUNTIME_DIR

    @property
    def runner_lock(self) -> Path:
        return self.runtime_dir / "runner.lock"

    @property
    def runner_log(self) -> Path:
        return self.runtime_dir / "runner.log"

    @property
    def zygote_pid(self) -> Path:
        return self.runtime_dir / "mcp-zygote.pid"

    @property
    def zygote_log(self) -> Path:
        return self.runtime_dir / "mcp-zygote.log"

    @property
    def standin_state(self) -> Path:
        """The stand-in model server of `up --model standin`: its pid and URL (JSON)."""
        return self.runtime_dir / "standin.json"

    @property
    def standin_saved_agent(self) -> Path:
        """The town's own `[agent]` while the stand-in replaces it; `down` puts it back."""
        return self.runtime_dir / "standin-agent.json"

    @property
    def standin_saved_inspector(self) -> Path:
        """The town's own `[inspector]` (and rigs' inspector tables) while the stand-in replaces
        them; `down` puts them back."""
        return self.runtime_dir / "standin-inspector.json"

    @property
    def standin_log(self) -> Path:
        return self.runtime_dir / "standin.log"

    @property
    def standin_home(self) -> Path:
        """The private Claude Code home of the stand-in town's sessions."""
        return self.runtime_dir / "standin-home"

    @property
    def hook_failures(self) -> Path:
        """One line per Claude Code hook run that could not record its event (vermas.hookevent)."""
        return self.runtime_dir / "hook-failures.log"

    @property
    def locks_dir(self) -> Path:
        return self.runtime_dir / "locks"

    def agent_runtime_dir(self, session_name: str) -> Path:
        """Generated launch files of one agent session (mcp.json, settings.json)."""
        return self.runtime_dir / "agents" / _segment(session_name, "session name")

    def ready_marker(self, session_name: str) -> Path:
        """Written by the agent's vermas-mcp when it has started."""
        return self.agent_runtime_dir(session_name) / "mcp.ready"

    def spawn_lock(self, session_name: str) -> Path:
        """Held (flock) by the process making a polecat, so repair knows a spawn is abandoned."""
        return self.locks_dir / f"{_segment(session_name, 'session name')}.spawn.lock"

    def gupp_lock(self, session_name: str) -> Path:
        """Held (flock) by whoever is delivering an agent's GUPP nudge, so only one does."""
        return self.locks_dir / f"{_segment(session_name, 'session name')}.gupp.lock"

    # --- rigs -------------------------------------------------------------------------
    def rig_dir(self, rig: str) -> Path:
        return self.root / _segment(rig, "rig name")

    def canonical_clone(self, rig: str) -> Path:
        return self.rig_dir(rig) / "mayor" / "rig"

    def clone_route(self, rig: str) -> str:
        """The canonical clone relative to the town root, as routes.jsonl records it."""
        return self.canonical_clone(rig).relative_to(self.root).as_posix()

    def rig_export_file(self, rig: str) -> Path:
        """The rig's own beads, inside its canonical clone so they travel with its code (exported
        there only while the repository does not track the file: vermas.export.repo_tracks)."""
        return self.canonical_clone(rig) / BEADS_DIR / "issues.jsonl"

    def refinery_worktree(self, rig: str) -> Path:
        return self.rig_dir(rig) / "refinery" / "rig"

    def polecats_dir(self, rig: str) -> Path:
        return self.rig_dir(rig) / "polecats"

    def polecat_worktree(self, rig: str, name: str) -> Path:
        return self.polecats_dir(rig) / _segment(name, "polecat name")

    def polecat_leftover(self, rig: str, name: str, stamp: str) -> Path:
        """Where repair moves a polecat folder that is not its git worktree (files kept, not deleted)."""
        return self.polecats_dir(rig) / ".leftovers" / f"{_segment(name, 'polecat name')}-{_segment(stamp, 'stamp')}"

    def crew_dir(self, rig: str, name: str | None = None) -> Path:
        folder = self.rig_dir(rig) / "crew"
        return folder / _segment(name, "crew name") if name is not None else folder

    def witness_dir(self, rig: str) -> Path:
        return self.rig_dir(rig) / "witness"

    def rig_sync_lock(self, rig: str) -> Path:
        """Held while `rig sync` fetches and fast-forwards the rig's canonical clone."""
        return self.locks_dir / f"{_segment(rig, 'rig name')}.sync.lock"

    def rig_folders(self, rig: str) -> list[Path]:
        """The folders `rig add` creates beside the clone and the refinery worktree."""
        return [self.rig_dir(rig) / folder for folder in RIG_FOLDERS]

    def role_dir(self, role: str) -> Path:
        """Town-level agents (mayor, deacon, overseer) work in a folder named for the role."""
        return self.root / _segment(role, "role")
