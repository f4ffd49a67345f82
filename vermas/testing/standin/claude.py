"""Running the real Claude Code CLI against the stand-in: finding the binary, its environment
and a throw-away config home with the first-run screens answered."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from vermas.testing.standin.request import DUMMY_API_KEY

# --------------------------------------------------------------------------------------------
# Running the real CLI against it
# --------------------------------------------------------------------------------------------

REPO_ROOT = Path(__file__).resolve().parents[3]


def find_claude_binary() -> Path | None:
    """The Claude Code CLI to test with: ``$VERMAS_CLAUDE_BIN``, the project-local install made by
    ``scripts/install-claude.sh`` (``.tools/claude``), then ``claude`` on PATH; None if absent."""
    env_bin = os.environ.get("VERMAS_CLAUDE_BIN")
    if env_bin:
        p = Path(env_bin)
        return p if p.is_file() and os.access(p, os.X_OK) else None
    local = REPO_ROOT / ".tools" / "claude" / "node_modules" / ".bin" / "claude"
    if local.is_file() and os.access(local, os.X_OK):
        return local
    found = shutil.which("claude")
    return Path(found) if found else None


def claude_env(
    base_url: str,
    home: str | os.PathLike[str],
    api_key: str = DUMMY_API_KEY,
    extra: dict[str, str] | None = None,
    base: dict[str, str] | None = None,
) -> dict[str, str]:
    """Environment for running the real CLI against the stand-in, isolated from the user's setup.

    Why each part: ``HOME`` points at a private directory so ``~/.claude.json`` and ``~/.claude/``
    of the user are never read or written; every inherited ``CLAUDE*``/``ANTHROPIC*`` variable is
    dropped (``CLAUDECODE`` makes a nested session refuse to start; an inherited
    ``CLAUDE_CONFIG_DIR``, auth token or model override would leak the caller's setup);
    ``CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC`` stops telemetry/update/title traffic that has
    no network here.
    """
    env = {k: v for k, v in (base if base is not None else os.environ).items() if not k.startswith(("CLAUDE", "ANTHROPIC_"))}
    env.update(
        {
            "HOME": str(home),
            "ANTHROPIC_BASE_URL": base_url,
            "ANTHROPIC_API_KEY": api_key,
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_AUTOUPDATER": "1",
        }
    )
    env.update(extra or {})
    return env


def write_claude_home(
    home: str | os.PathLike[str],
    api_key: str = DUMMY_API_KEY,
    trusted_dirs: Iterable[str | os.PathLike[str]] = (),
    settings: dict[str, Any] | None = None,
) -> Path:
    """Write a Claude Code config under ``home`` with which the interactive TUI starts straight at
    its prompt (no onboarding, network check, API-key question, folder trust or bypass warning).

    ``~/.claude.json``: ``hasCompletedOnboarding`` (skips onboarding and its network check),
    ``customApiKeyResponses.approved`` = the key's last 20 characters (skips "Detected a custom API
    key"), ``projects[<dir>].hasTrustDialogAccepted`` for each trusted dir (skips folder trust;
    it also covers sessions started in a subdirectory).
    ``~/.claude/settings.json``: ``skipDangerousModePermissionPrompt`` (skips the
    ``--dangerously-skip-permissions`` warning) plus any ``settings`` given. Returns ``home``.
    """
    home_path = Path(home)
    (home_path / ".claude").mkdir(parents=True, exist_ok=True)
    projects: dict[str, dict[str, Any]] = {}
    for d in trusted_dirs:
        # Claude Code keys projects by the real path of the working directory.
        projects[os.path.realpath(d)] = {"hasTrustDialogAccepted": True}
    config = {
        "hasCompletedOnboarding": True,
        "customApiKeyResponses": {"approved": [api_key[-20:]], "rejected": []},
        "projects": projects,
    }
    (home_path / ".claude.json").write_text(json.dumps(config, indent=2) + "\n")
    merged: dict[str, Any] = {"skipDangerousModePermissionPrompt": True}
    merged.update(settings or {})
    (home_path / ".claude" / "settings.json").write_text(json.dumps(merged, indent=2) + "\n")
    return home_path
