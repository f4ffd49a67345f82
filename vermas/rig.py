"""Rigs: projects in a town, in Gas Town's layout.

    <town>/<rig>/mayor/rig        canonical clone (its .beads/issues.jsonl carries the rig's beads)
    <town>/<rig>/refinery/rig     the refinery's worktree, where merges are made and tested
    <town>/<rig>/polecats/<name>  one git worktree per polecat
    <town>/<rig>/crew/<name>      long-lived human-directed workspaces
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from pydantic import BaseModel, ValidationError

from vermas import git
from vermas.addresses import RIG_RE, TOWN_ROLES
from vermas.errors import Conflict, InvalidInput
from vermas.town import MAX_POLECATS_LIMIT, RigConfig, Town, describe_errors, validate_prefix  # noqa: F401


class RigInfo(BaseModel):
    name: str
    prefix: str
    git_url: str
    path: str
    default_branch: str
    max_polecats: int
    test_command: str
    polecats: int


def canonical_clone(town: Town, rig: str) -> Path:
    return town.layout.canonical_clone(rig)


def refinery_worktree(town: Town, rig: str) -> Path:
    return town.layout.refinery_worktree(rig)


def default_prefix(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name)[:12] or "rig"


def add(
    town: Town, name: str, git_url: str, prefix: str | None = None, max_polecats: int = 4,
    test_command: str = "",
) -> RigInfo:
    if not isinstance(name, str) or not RIG_RE.fullmatch(name) or name in TOWN_ROLES:
        raise InvalidInput(
            f"invalid rig name {str(name)[:40]!r}; allowed: a lowercase letter then up to 31 of "
            "[a-z0-9_-], not mayor/deacon/overseer"
        )
    prefix = validate_prefix(prefix or default_prefix(name))
    try:  # the config model's bounds, checked before anything is cloned or written
        config = RigConfig(name=name, git_url=git_url, prefix=prefix, max_polecats=max_polecats,
                           test_command=test_command)
    except ValidationError as exc:
        raise InvalidInput(f"rig {name}: {describe_errors(exc)}") from None
    town.reload_config()
    if name in town.config.rigs:
        raise Conflict(f"rig {name!r} exists already (rig list shows rigs)")
    taken = {r.prefix for r in town.config.rigs.values()} | {town.config.prefix}
    if prefix in taken:
        raise Conflict(f"prefix {prefix!r} is used already; choose another with --prefix")
    if town.layout.rig_dir(name).exists():
        raise Conflict(f"{town.layout.rig_dir(name)} exists already; remove it or choose another rig name")
    clone = canonical_clone(town, name)
    clone.parent.mkdir(parents=True)
    try:
        git.run(town.root, "clone", "--quiet", git_url, str(clone), timeout=600)
        branch = git.run(clone, "symbolic-ref", "--short", "HEAD")
        git.run(clone, "worktree", "add", "--quiet", "--detach", str(refinery_worktree(town, name)), branch)
        for folder in town.layout.rig_folders(name):
            folder.mkdir()
    except Exception:
        shutil.rmtree(town.layout.rig_dir(name), ignore_errors=True)
        raise
    town.config.rigs[name] = config.model_copy(update={"default_branch": branch})
    town.save_config()
    with town.db.write() as conn:
        conn.execute(
            "INSERT OR REPLACE INTO routes(prefix, path, rig) VALUES (?, ?, ?)",
            (prefix + "-", town.layout.clone_route(name), name),
        )
        town.db.touch("routes", "issues")
    return info(town, name)


def info(town: Town, name: str) -> RigInfo:
    rig = town.config.rigs[name]
    with town.db.read() as conn:
        count = conn.execute("SELECT COUNT(*) FROM polecats WHERE rig = ?", (name,)).fetchone()[0]
    return RigInfo(
        name=name, prefix=rig.prefix, git_url=rig.git_url, path=str(canonical_clone(town, name)),
        default_branch=rig.default_branch, max_polecats=rig.max_polecats,
        test_command=rig.test_command, polecats=count,
    )


def list_rigs(town: Town) -> list[RigInfo]:
    town.reload_config()
    return [info(town, name) for name in sorted(town.config.rigs)]
