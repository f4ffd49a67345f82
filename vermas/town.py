"""A town: one directory holding its config (`town.toml`), its store and its rigs."""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import tomlkit
from pydantic import BaseModel, Field, ValidationError

from vermas import timeutil
from vermas.atomic import write_atomic
from vermas.errors import ConfigError, InvalidInput, TownNotFound
from vermas.export import export_town
from vermas.layout import BEADS_DIR, CONFIG_NAME, DB_NAME, TownLayout
from vermas.patrol_types import PatrolConfig
from vermas.prices import CostConfig
from vermas.refinery.types import MergeConfig
from vermas.store import EXPORT_KINDS, Database

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{0,15}$")
PREFIX_RULE = "a lowercase letter then up to 15 lowercase letters or digits (e.g. 'hq', 'gt')"
MAX_POLECATS_LIMIT = 64


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
    # Variables set for the inspector's `claude -p` on top of the runner's environment (e.g. the
    # stand-in model's ANTHROPIC_BASE_URL and a private HOME, which `up --model standin` writes).
    env: dict[str, str] = Field(default_factory=dict)


class RigConfig(BaseModel):
    name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")
    git_url: str
    prefix: str = Field(pattern=PREFIX_RE.pattern)
    max_polecats: int = Field(4, ge=1, le=MAX_POLECATS_LIMIT)
    test_command: str = ""
    default_branch: str = "main"
    verify_level: str = "shell"
    inspector: dict[str, Any] = Field(default_factory=dict)
    test_network: bool = Field(
        False,
        description="Let this rig's contained test runs (the Verifier's and the refinery's) use the host's "
                    "network. Off by default: where network namespaces work, a test gets only a loopback of "
                    "its own (it can listen on 127.0.0.1, not reach any other host or service).",
    )
    # `[rigs.<name>.merge]`: the merge queue's settings; defaults and their reasons are in MergeConfig.
    merge: MergeConfig = Field(default_factory=MergeConfig)


class TownConfig(BaseModel):
    name: str
    prefix: str = Field("hq", pattern=PREFIX_RE.pattern)
    agent: AgentCommand = Field(default_factory=AgentCommand)
    inspector: InspectorConfig = Field(default_factory=InspectorConfig)
    rigs: dict[str, RigConfig] = Field(default_factory=dict)
    # `[patrol]`: every witness and deacon threshold; defaults, bounds and reasons in PatrolConfig.
    patrol: PatrolConfig = Field(default_factory=PatrolConfig)
    # `[cost]`: price overrides per model family (vermas.prices; the defaults are estimates).
    cost: CostConfig = Field(default_factory=CostConfig)


def _require_text_path(path: Path) -> None:
    """A town's path and name are written into town.toml and its store as UTF-8 text, so a
    directory whose name is not UTF-8 (argv bytes arrive as lone surrogates) is refused
    before anything is created."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(
            f"town directory {os.fsencode(path)!r} is not valid UTF-8 text; choose a directory name in UTF-8"
        ) from None


def _first_missing(path: Path) -> Path | None:
    """The outermost directory of `path` that does not exist yet (what `init` would create)."""
    missing = None
    for candidate in (path, *path.parents):
        if candidate.exists():
            break
        missing = candidate
    return missing


def _undo_init(layout: TownLayout, made: Path | None, made_runtime: Path | None, wrote_config: bool,
               made_store: bool) -> None:
    """Remove what a failed `init` created, and only that: the directories that did not exist
    before it (with what is in them), the town.toml it wrote and the store it made."""
    if wrote_config:
        layout.config_file.unlink(missing_ok=True)
    if made_store:
        for suffix in ("", "-wal", "-shm", "-journal"):
            layout.store_path.with_name(layout.store_path.name + suffix).unlink(missing_ok=True)
    for directory in (made_runtime, made):
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)


def validate_prefix(prefix: str) -> str:
    if not isinstance(prefix, str) or not PREFIX_RE.fullmatch(prefix):
        raise InvalidInput(f"invalid prefix {str(prefix)[:40]!r}; allowed: {PREFIX_RULE}")
    return prefix


def describe_errors(exc: ValidationError) -> str:
    """pydantic's errors as `field.path: what is wrong (got value)`, one clause each."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "config"
        message = err["msg"]
        if "pattern" in message and where.endswith("prefix"):
            message = f"allowed: {PREFIX_RULE}"
        parts.append(f"{where}: {message} (got {str(err.get('input'))[:40]!r})")
    return "; ".join(parts)


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


def _patrol_changes(patrol: PatrolConfig) -> dict[str, Any]:
    """The `[patrol]` values that differ from the defaults (a town that keeps them writes no table)."""
    defaults = PatrolConfig().model_dump()
    return {k: v for k, v in patrol.model_dump().items() if v != defaults[k]}


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
    changed = _patrol_changes(config.patrol)
    if changed:
        lines += ["", "[patrol]"] + [f"{key} = {_toml_value(value)}" for key, value in changed.items()]
    for rig in config.rigs.values():
        lines += ["", f"[rigs.{_toml_key(rig.name)}]"]
        for key, value in rig.model_dump(exclude={"name"}).items():
            lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def load_config(path: Path) -> TownConfig:
    """Read and validate the whole config; a bad file is one ConfigError naming it and the problem.

    Every way a hand-edited or truncated file can fail (unreadable, not UTF-8, not TOML, a
    table where a value belongs, a missing or bad field) ends here, never as a traceback."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}: not UTF-8 text (line {line}, byte {exc.start}); save it as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {_one_line(str(exc))}") from None
    try:
        return TownConfig.model_validate(_config_fields(path, data))
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_one_line(describe_errors(exc))}") from None


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _table(path: Path, data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: [{key}] must be a table, got {type(value).__name__} {str(value)[:40]!r}")
    return value


def _config_fields(path: Path, data: dict[str, Any]) -> dict[str, Any]:
    """The file's tables as TownConfig's fields. `[town] prefix` is required: a file that lost
    it (truncated, half-saved) would otherwise give new beads the default prefix silently."""
    town = _table(path, data, "town")
    if "prefix" not in town:
        raise ConfigError(
            f"{path}: [town] has no prefix (the file may be truncated); add e.g. prefix = \"hq\" "
            "with the prefix this town's bead ids start with"
        )
    rigs = _table(path, data, "rigs")
    bad = [name for name, values in rigs.items() if not isinstance(values, dict)]
    if bad:
        raise ConfigError(f"{path}: rigs.{bad[0]} must be a table ([rigs.{bad[0]}] with git_url = ...)")
    return {
        "name": town.get("name", path.parent.name),
        "prefix": town["prefix"],
        "agent": _table(path, data, "agent"),
        "inspector": _table(path, data, "inspector"),
        "patrol": _table(path, data, "patrol"),
        "cost": _table(path, data, "cost"),  # read only: a town's own [cost] is never rewritten
        "rigs": {name: {**values, "name": name} for name, values in rigs.items()},
    }


def _sections(config: TownConfig) -> dict[str, Any]:
    """The config as the TOML document's tables hold it."""
    return {
        "town": {"name": config.name, "prefix": config.prefix},
        "agent": config.agent.model_dump(),
        "inspector": config.inspector.model_dump(),
        "patrol": config.patrol.model_dump(),
        "rigs": {name: rig.model_dump(exclude={"name"}) for name, rig in config.rigs.items()},
    }


def _item(value: Any) -> Any:
    """Dict values as inline tables (`inspector = { model = "opus" }`), as dump_config writes them."""
    if isinstance(value, dict):
        inline = tomlkit.inline_table()
        inline.update(value)
        return inline
    return value


def _merge(table: Any, values: dict[str, Any], defaults: dict[str, Any]) -> None:
    """Set in `table` the values that changed; a key the file leaves out stays out while it
    holds its default. Everything else of the user's file (comments, order) is kept."""
    for key, value in values.items():
        if key in table:
            if table[key] != value:
                table[key] = _item(value)
        elif value != defaults.get(key, object()):
            table[key] = _item(value)


def update_config_text(text: str, config: TownConfig) -> str:
    """Rewrite a town.toml's text for a changed config, keeping the user's comments and layout."""
    doc = tomlkit.parse(text)
    wanted = _sections(config)
    defaults = _sections(TownConfig(name=config.name))
    for section in ("town", "agent", "inspector"):
        if section not in doc:
            doc[section] = tomlkit.table()
        _merge(doc[section], wanted[section], defaults[section])
    if "patrol" in doc or _patrol_changes(config.patrol):  # no empty [patrol] table in a file without one
        if "patrol" not in doc:
            doc["patrol"] = tomlkit.table()
        _merge(doc["patrol"], wanted["patrol"], defaults["patrol"])
    rigs = doc.get("rigs")
    if wanted["rigs"] and rigs is None:
        rigs = doc["rigs"] = tomlkit.table(is_super_table=True)
    if rigs is not None:
        for name in [n for n in rigs if n not in wanted["rigs"]]:
            del rigs[name]
        for name, values in wanted["rigs"].items():
            if name not in rigs:
                table = tomlkit.table()
                for key, value in values.items():
                    table[key] = _item(value)
                rigs[name] = table
            else:
                _merge(rigs[name], values, {})
    return tomlkit.dumps(doc)


PRIVATE_FOLDER_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def private_modes(layout: TownLayout) -> None:
    """Owner-only `.beads/` and `.runtime/` (0700) and owner-only exports of the town folder
    (0600: `messages.jsonl` holds every mail body, `issues.jsonl` every bead). Run on every
    open, so a town made before this rule (0755 folders, 0644 files under umask 022) is
    repaired; a rewrite of an export keeps the file's mode (vermas.atomic.write_atomic).
    A rig clone's `.beads/issues.jsonl` is shared, git-tracked content and is left alone."""
    targets = [(layout.beads_dir, PRIVATE_FOLDER_MODE), (layout.runtime_dir, PRIVATE_FOLDER_MODE)]
    targets += [(layout.export_file(kind), PRIVATE_FILE_MODE) for kind in EXPORT_KINDS]
    targets.append((layout.export_state, PRIVATE_FILE_MODE))
    for path, mode in targets:
        try:
            os.chmod(path, mode)
        except (FileNotFoundError, PermissionError):
            pass  # not made yet (created private), or not ours to change


class Town:
    """An open town: its root, config and store connection."""

    def __init__(self, root: Path, config: TownConfig, db: Database) -> None:
        self.root = root
        self.layout = TownLayout(root)
        self.config = config
        self.db = db

    @property
    def beads_dir(self) -> Path:
        return self.layout.beads_dir

    @classmethod
    def open(cls, root: str | os.PathLike[str]) -> "Town":
        path = Path(root).expanduser().resolve()
        layout = TownLayout(path)
        if not layout.is_town():
            raise TownNotFound(
                f"no vermas town at {path} (missing {CONFIG_NAME} or {BEADS_DIR}/{DB_NAME}); "
                "create one with: vermas-runner init DIR"
            )
        private_modes(layout)  # before anything reads or writes mail: repairs an older town
        return cls(path, load_config(layout.config_file), Database(layout.store_path))

    @classmethod
    def init(cls, root: str | os.PathLike[str], prefix: str = "hq") -> tuple["Town", bool]:
        """Create a town, or open it unchanged when it exists. Returns (town, created)."""
        validate_prefix(prefix)
        path = Path(root).expanduser().resolve()
        _require_text_path(path)
        layout = TownLayout(path)
        if layout.is_town():
            return cls.open(path), False
        made = _first_missing(path) or (layout.beads_dir if not layout.beads_dir.exists() else None)
        made_runtime = None if layout.runtime_dir.exists() else layout.runtime_dir
        wrote_config = not layout.config_file.exists()
        made_store = not layout.store_path.exists()
        town: Town | None = None
        try:
            town = cls._create(path, layout, prefix)
            return town, True
        except BaseException:
            # A half-made town is worse than none: `init` again would open it as a town.
            if town is not None:
                town.close()
            _undo_init(layout, made, made_runtime, wrote_config, made_store)
            raise

    @classmethod
    def _create(cls, path: Path, layout: TownLayout, prefix: str) -> "Town":
        layout.beads_dir.mkdir(parents=True, exist_ok=True)
        for private in (layout.beads_dir, layout.runtime_dir):  # store, mail, pids, logs, temp HOMEs
            private.mkdir(mode=0o700, exist_ok=True)
            private.chmod(0o700)
        config = TownConfig(name=path.name or "town", prefix=prefix)
        if not layout.config_file.is_file():
            write_atomic(layout.config_file, dump_config(config))
        else:
            config = load_config(layout.config_file)
        db = Database(layout.store_path, create=True)
        town = cls(path, config, db)
        try:
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
            export_town(town)
            private_modes(layout)  # the first exports are made owner-only; rewrites keep the mode
        except BaseException:
            town.close()
            raise
        return town

    def save_config(self) -> None:
        """Write the config back; an existing town.toml keeps its comments and layout."""
        path = self.layout.config_file
        text = update_config_text(path.read_text(), self.config) if path.is_file() else dump_config(self.config)
        write_atomic(path, text)

    def reload_config(self) -> None:
        self.config = load_config(self.layout.config_file)

    def refresh_config(self) -> ConfigError | None:
        """Reload for a long-running loop: a bad file keeps the last good config and is returned,
        so the loop can log it and go on instead of dying."""
        try:
            self.reload_config()
        except ConfigError as exc:
            return exc
        return None

    def require_rig(self, rig: str | None) -> None:
        """Refuse a rig name this town does not have (None: no rig named, fine)."""
        if rig is not None and rig not in self.config.rigs:
            known = ", ".join(sorted(self.config.rigs)) or "none yet"
            raise InvalidInput(f"unknown rig {rig[:40]!r}; rigs in this town: {known}")

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
        if TownLayout(folder).is_town():
            return folder
    return None
