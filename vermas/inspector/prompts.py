"""Role templates: the system prompt of each inspector role.

Looked up first in the town (`<town>/templates/inspector/<role>.md`, so a town can tune its
inspectors without touching vermas), then in vermas's own `vermas/templates/inspector/`
(package data, found through importlib.resources so a wheel install has them).
"""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from vermas.errors import VermasError

ROLES = ("designer", "strategist", "auditor", "advocate", "critic", "judge")
BUILTIN_DIR: Traversable = resources.files("vermas") / "templates" / "inspector"


def template_dirs(town_root: Path | None) -> list[Traversable]:
    dirs: list[Traversable] = [town_root / "templates" / "inspector"] if town_root is not None else []
    return [*dirs, BUILTIN_DIR]


def role_template(role: str, town_root: Path | None = None) -> str:
    if role not in ROLES:
        raise ValueError(f"unknown inspector role {role!r}; roles: {', '.join(ROLES)}")
    for folder in template_dirs(town_root):
        path = folder / f"{role}.md"
        if path.is_file():
            return path.read_text(encoding="utf-8")
    searched = ", ".join(str(d) for d in template_dirs(town_root))
    raise VermasError(f"no template for the inspector role {role!r}; looked for {role}.md in {searched}")
