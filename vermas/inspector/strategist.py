"""Strategist: a Specification -> TestSpecs, objective shell commands where exit 0 means pass."""

from __future__ import annotations

from pathlib import Path

from vermas import git
from vermas.inspector.backend import RoleCall
from vermas.inspector.models import MAX_TEST_TIMEOUT, Specification, TestPlan

READ_TOOLS = ("Read", "Glob", "Grep")
MAX_LISTED_FILES = 300


def file_listing(worktree: Path) -> str:
    """Tracked files of the work tree, so commands name real paths without a tool call."""
    try:
        files = git.run(worktree, "ls-files").splitlines()
    except (git.GitError, OSError):
        return ""
    more = f"\n... and {len(files) - MAX_LISTED_FILES} more" if len(files) > MAX_LISTED_FILES else ""
    return "\n".join(files[:MAX_LISTED_FILES]) + more


def prompt(spec: Specification, worktree: Path | None, test_command: str) -> str:
    parts = ["## Specification", spec.model_dump_json(indent=2)]
    if test_command:
        parts += ["", f"The project's own test command is: {test_command}"]
    if worktree is not None:
        listing = file_listing(worktree)
        if listing:
            parts += ["", "## Files tracked in the work tree", listing]
    parts += ["", f"Plan the tests. Timeouts are seconds, at most {MAX_TEST_TIMEOUT:g}."]
    return "\n".join(parts)


def call(spec: Specification, system: str, worktree: Path | None, test_command: str = "") -> RoleCall[TestPlan]:
    """Read-only tools in the work tree when there is one: the Strategist must see real paths."""
    return RoleCall(role="strategist", system=system, prompt=prompt(spec, worktree, test_command),
                    output=TestPlan, context={"spec": spec},
                    tools=READ_TOOLS if worktree is not None else (), cwd=worktree)
