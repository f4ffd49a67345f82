"""A town: one directory holding its config (`town.toml`), its store and its rigs."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from vermas import timeutil
from vermas.errors import InvalidInput, TownNotFound
from vermas.store import Database

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{0,15}$")
CONFIG_NAME = "town.toml"
BEADS_DIR = ".beads"
DB_NAME = "vermas.db"


class AgentCommand(BaseModel):
    """How an agent session is started; another MCP-capable CLI can be configured."""

    command: str = "claude"
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)


class InspectorConfig(BaseModel):
    """How the VerMAS inspector calls its model (`claude -p`) and runs tests.

    The town-wide defaults live in `[inspector]`; a rig overrides any of them with
    `inspector = { model = "opus" }` (or a `[rigs.<name>.inspector]` table)."""

    model_config = {"extra": "forbid"}

    command: str = "claude"
    args: list[str] = Field(default_factory=list)
    model: str = "sonnet"
    budget_usd: float = 1.0
    timeout: int = 300
    parallelism: int = 4
    min_confidence: float = 0.7
    level: str = "shell"
    pass_env: list[str] = Field(default_factory=list)


class RigConfig(BaseModel):
    name: str
    git_url: str
    prefix: str
    max_polecats: int = 4
    test_command: str = ""
    default_branch: str = "main"
    verify_level: str = "shell"
    inspector: dict[str, Any] = Field(default_factory=dict)


class TownConfig(BaseModel):
    name: str
    prefix: str = "hq"
    agent: AgentCommand = Field(default_factory=AgentCommand)
    inspector: InspectorConfig = Field(default_factory=InspectorConfig)
    rigs: dict[str, RigConfig] = Field(default_factory=dict)


def validate_prefix(prefix: str) -> str:
    if not isinstance(prefix, str) or not PREFIX_RE.fullmatch(prefix):
        raise InvalidInput(
            f"invalid prefix {str(prefix)[:40]!r}; allowed: a lowercase letter then up to 15 "
            "lowercase letters or digits (e.g. 'hq', 'gt')"
        )
    return prefix


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _toml_key(key: str) -> str:
    return key if re.match(r"^[A-Za-z0-9_-]+$", key) else _toml_value(key)


def dump_config(config: TownConfig) -> str:
    """Serialise the config; tomllib reads only, and the shape here is small and fixed."""
    lines = ["# vermas town configuration", "[town]"]
    lines += [f"name = {_toml_value(config.name)}", f"prefix = {_toml_value(config.prefix)}", ""]
    lines.append("[agent]")
    for key, value in config.agent.model_dump().items():
        lines.append(f"{key} = {_toml_value(value)}")
    lines += ["", "[inspector]"]
    for key, value in config.inspector.model_dump().items():
        lines.append(f"{key} = {_toml_value(value)}")
    for rig in config.rigs.values():
        lines += ["", f"[rigs.{_toml_key(rig.name)}]"]
        for key, value in rig.model_dump(exclude={"name"}).items():
            lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def load_config(path: Path) -> TownConfig:
    with path.open("rb") as fh:
        data = tomllib.load(fh)
    town = data.get("town", {})
    rigs = {name: RigConfig(name=name, **values) for name, values in data.get("rigs", {}).items()}
    return TownConfig(
        name=town.get("name", path.parent.name),
        prefix=town.get("prefix", "hq"),
        agent=AgentCommand(**data.get("agent", {})),
        inspector=InspectorConfig(**data.get("inspector", {})),
        rigs=rigs,
    )


def write_atomic(path: Path, text: str) -> None:
    """Write via temp file, fsync and rename so readers never see a partial file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class Town:
    """An open town: its root, config and store connection."""

    def __init__(self, root: Path, config: TownConfig, db: Database) -> None:
        self.root = root
        self.config = config
        self.db = db

    @property
    def beads_dir(self) -> Path:
        return self.root / BEADS_DIR

    @classmethod
    def open(cls, root: str | os.PathLike[str]) -> "Town":
        path = Path(root).expanduser().resolve()
        config_path = path / CONFIG_NAME
        db_path = path / BEADS_DIR / DB_NAME
        if not config_path.is_file() or not db_path.is_file():
            raise TownNotFound(
                f"no vermas town at {path} (missing {CONFIG_NAME} or {BEADS_DIR}/{DB_NAME}); "
                "create one with: vermas-runner init DIR"
            )
        return cls(path, load_config(config_path), Database(db_path))

    @classmethod
    def init(cls, root: str | os.PathLike[str], prefix: str = "hq") -> tuple["Town", bool]:
        """Create a town, or open it unchanged when it exists. Returns (town, created)."""
        validate_prefix(prefix)
        path = Path(root).expanduser().resolve()
        if (path / CONFIG_NAME).is_file() and (path / BEADS_DIR / DB_NAME).is_file():
            return cls.open(path), False
        (path / BEADS_DIR).mkdir(parents=True, exist_ok=True)
        for private in (path / BEADS_DIR, path / ".runtime"):  # store, mail, pids, logs, temp HOMEs
            private.mkdir(mode=0o700, exist_ok=True)
            private.chmod(0o700)
        config = TownConfig(name=path.name or "town", prefix=prefix)
        if not (path / CONFIG_NAME).is_file():
            write_atomic(path / CONFIG_NAME, dump_config(config))
        else:
            config = load_config(path / CONFIG_NAME)
        db = Database(path / BEADS_DIR / DB_NAME, create=True)
        town = cls(path, config, db)
        with db.write() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO routes(prefix, path, rig) VALUES (?, '.', NULL)",
                (config.prefix + "-",),
            )
            conn.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES ('created_at', ?)",
                (timeutil.now()[0],),
            )
            db.touch("issues", "messages", "routes")
        from vermas.export import export_town

        export_town(town)
        return town, True

    def save_config(self) -> None:
        write_atomic(self.root / CONFIG_NAME, dump_config(self.config))

    def reload_config(self) -> None:
        self.config = load_config(self.root / CONFIG_NAME)

    def prefix_for_rig(self, rig: str | None) -> str:
        if rig and rig in self.config.rigs:
            return self.config.rigs[rig].prefix
        return self.config.prefix

    def close(self) -> None:
        self.db.close()


def find_town(start: Path | None = None) -> Path | None:
    """Walk up from start (default cwd) to the nearest directory holding a town.toml."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / CONFIG_NAME).is_file() and (folder / BEADS_DIR / DB_NAME).is_file():
            return folder
    return None
