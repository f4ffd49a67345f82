"""How an agent session is launched: its working directory, identity environment, MCP
config, Claude Code settings and role prompt.

Everything is generated into `<town>/.runtime/agents/<session>/` so a session never
depends on the user's global Claude Code setup beyond their login.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import time
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from vermas import hookevent
from vermas.addresses import Address, Role
from vermas.atomic import write_atomic
from vermas.errors import Conflict
from vermas.town import Town

SETUP_CLI = Path(".tools") / "claude" / "node_modules" / ".bin" / "claude"  # scripts/setup.sh's install


def resolve_command(command: str, path: str) -> str | None:
    """The executable a command names (the agent's, the inspector's): a bare name is looked up
    on `path`; anything with a slash must be an absolute path to an executable (sessions and
    `claude -p` start in other folders, and tmux gets it quoted, so no `~`). None when it does
    not resolve."""
    if not command.strip():
        return None
    if "/" in command:
        candidate = Path(command)
        ok = candidate.is_absolute() and candidate.is_file() and os.access(candidate, os.X_OK)
        return str(candidate) if ok else None
    return shutil.which(command, path=path)


def setup_cli() -> Path | None:
    """The Claude Code CLI scripts/setup.sh installs into the checkout, if it is there."""
    candidate = Path(__file__).resolve().parents[1] / SETUP_CLI
    return candidate if candidate.is_file() and os.access(candidate, os.X_OK) else None

# Role prompts ship inside the package (package data), so a wheel install has them too.
TEMPLATES: Traversable = resources.files("vermas") / "templates"
ALLOWED_TOOLS = ["mcp__vermas", "Bash", "Edit", "Write", "Read", "Glob", "Grep", "MultiEdit", "TodoWrite"]


class LaunchSpec(BaseModel):
    address: str
    cwd: str
    argv: list[str]
    env: dict[str, str]
    runtime_dir: str


def workdir(town: Town, address: Address) -> Path:
    """Where an agent works: polecats in their worktree, the refinery in its worktree."""
    if address.role is Role.POLECAT:
        return town.layout.polecat_worktree(str(address.rig), str(address.name))
    if address.role is Role.CREW:
        return town.layout.crew_dir(str(address.rig), str(address.name))
    if address.role is Role.REFINERY:
        return town.layout.refinery_worktree(str(address.rig))
    if address.role is Role.WITNESS:
        return town.layout.witness_dir(str(address.rig))
    return town.layout.role_dir(address.role.value)


def console_script(name: str) -> list[str]:
    """Our own entry points, by absolute path next to this interpreter when installed."""
    candidate = Path(sys.executable).with_name(name)
    if candidate.is_file():
        return [str(candidate)]
    module = {"vermas-mcp": "vermas_mcp", "vermas-runner": "vermas_runner.cli"}[name]
    return [sys.executable, "-m", module]


def role_prompt(role: Role) -> str:
    """The role's system prompt from the packaged templates ("" for roles without one)."""
    path = TEMPLATES / f"{role.value}.md"
    return path.read_text(encoding="utf-8") if path.is_file() else ""


# The agent-event hooks (vermas/hookevent.py): (hook event, matcher or None, in the background).
# An event's time is read in the hook's own process, so two background hooks fired a few ms
# apart can land in either order (seen with the real CLI: a ToolSearch's PostToolUse before its
# PreToolUse), and the last event would say a finished tool still runs or a turn that ended
# still works. So every event that another can follow within milliseconds is waited for: that
# costs the agent one hook run (p50 ~10 ms, bench/bench_hooks.py) per event, under 1% of a tool
# call with its model turn, and SessionStart's runs beside prime, which is waited for anyway.
# Notifications follow a wait (a prompt, a dialog, 60 s idle) and run in the background.
EVENT_HOOKS: list[tuple[str, str | None, bool]] = [
    ("SessionStart", None, False), ("UserPromptSubmit", None, False), ("PreToolUse", None, False),
    ("PostToolUse", None, False), ("PostToolUseFailure", None, False), ("Stop", None, False),
    ("StopFailure", None, False), ("Notification", "permission_prompt", True),
    ("Notification", "idle_prompt", True), ("Notification", "elicitation_dialog", True),
    ("SessionEnd", None, False),
]
EVENT_HOOK_TIMEOUT_S = 5
# `python -I -S -c BOOT`: no site, no PYTHON* variables, and the module's cached bytecode
# (a script given by path is compiled on every run). The path reaches Python as a literal.
_HOOK_BOOT = "import sys; sys.path.insert(0, {root!r}); from vermas.hookevent import main; main()"


def event_hook_argv(town: Town, address: Address, kind: str, detail: str = "") -> list[str]:
    """The argv Claude Code runs (exec form, no shell) to record one agent event."""
    root = str(Path(hookevent.__file__).resolve().parent.parent)
    argv = [sys.executable, "-I", "-S", "-c", _HOOK_BOOT.format(root=root), kind,
            str(town.layout.store_path), str(town.layout.hook_failures), str(address)]
    return [*argv, detail] if detail else argv


def event_hooks(town: Town, address: Address) -> dict[str, list[dict[str, object]]]:
    """Every agent-event hook, by Claude Code hook event, in settings.json's shape."""
    hooks: dict[str, list[dict[str, object]]] = {}
    for kind, matcher, background in EVENT_HOOKS:
        argv = event_hook_argv(town, address, kind, matcher or "")
        handler: dict[str, object] = {"type": "command", "command": argv[0], "args": argv[1:],
                                      "timeout": EVENT_HOOK_TIMEOUT_S}
        if background:
            handler["async"] = True
        group: dict[str, object] = {"hooks": [handler]}
        if matcher:
            group["matcher"] = matcher
        hooks.setdefault(kind, []).append(group)
    return hooks


def settings_for(town: Town, address: Address) -> dict[str, object]:
    prime = shlex.join([*console_script("vermas-runner"), "prime", "--town", str(town.root),
                        "--actor", str(address)])
    hooks = event_hooks(town, address)
    # prime's stdout is the session's opening context, so it runs synchronously, first.
    hooks["SessionStart"].insert(0, {"hooks": [{"type": "command", "command": prime}]})
    return {
        "hooks": hooks,
        "permissions": {"allow": ALLOWED_TOOLS, "defaultMode": "acceptEdits"},
        "skipDangerousModePermissionPrompt": True,
        "autoUpdates": False,
    }


def mcp_config_for(town: Town, address: Address) -> dict[str, object]:
    argv = [*console_script("vermas-mcp"), "--town", str(town.root), "--actor", str(address),
            "--profile", address.role.value]
    return {"mcpServers": {"vermas": {
        "type": "stdio", "command": argv[0], "args": argv[1:],
        "env": {"VERMAS_TOWN": str(town.root), "BD_ACTOR": str(address)},
    }}}


def identity_env(town: Town, address: Address) -> dict[str, str]:
    email = str(address).replace("/", ".") + "@vermas.local"
    env = {
        "BD_ACTOR": str(address), "VERMAS_TOWN": str(town.root), "VERMAS_RIG": address.rig or "",
        "GIT_AUTHOR_NAME": str(address), "GIT_COMMITTER_NAME": str(address),
        "GIT_AUTHOR_EMAIL": email, "GIT_COMMITTER_EMAIL": email,
    }
    env.update(town.config.agent.env)
    return env


def runtime_dir(town: Town, address: Address) -> Path:
    return town.layout.agent_runtime_dir(address.session_name)


def ready_marker(town: Town, address: Address) -> Path:
    """Written by the agent's vermas-mcp when it starts (see vermas_mcp.run.mark_ready)."""
    return town.layout.ready_marker(address.session_name)


def launch_spec(town: Town, address: Address) -> LaunchSpec:
    runtime = runtime_dir(town, address)
    runtime.mkdir(parents=True, exist_ok=True)
    ready_marker(town, address).unlink(missing_ok=True)
    mcp_file, settings_file = runtime / "mcp.json", runtime / "settings.json"
    write_atomic(mcp_file, json.dumps(mcp_config_for(town, address), indent=2))
    write_atomic(settings_file, json.dumps(settings_for(town, address), indent=2))
    agent = town.config.agent
    argv = [agent.command, *agent.args, "--mcp-config", str(mcp_file), "--strict-mcp-config",
            "--settings", str(settings_file)]
    prompt = role_prompt(address.role)
    if prompt:
        argv += ["--append-system-prompt", prompt]
    cwd = workdir(town, address)
    if address.role is Role.POLECAT:
        # Never a plain folder in place of a polecat's worktree: its commits would go nowhere.
        if not (cwd / ".git").exists():
            raise Conflict(f"{address}'s worktree {cwd} is missing or not a git worktree; "
                           "`vermas-runner up` repairs a half-made spawn (or `polecat nuke` it)")
    else:
        cwd.mkdir(parents=True, exist_ok=True)
    return LaunchSpec(address=str(address), cwd=str(cwd), argv=argv, env=identity_env(town, address),
                      runtime_dir=str(runtime))


def _already_trusted(data: dict[str, Any], dirs: list[Path], api_key: str | None) -> bool:
    projects = data.get("projects")
    if data.get("hasCompletedOnboarding") is not True or not isinstance(projects, dict):
        return False
    for d in dirs:
        entry = projects.get(os.path.realpath(d))
        if not isinstance(entry, dict) or entry.get("hasTrustDialogAccepted") is not True:
            return False
    if api_key:
        responses = data.get("customApiKeyResponses")
        if not isinstance(responses, dict) or api_key[-20:] not in responses.get("approved", []):
            return False
    return True


def trust_directories(config_home: Path, dirs: list[Path], api_key: str | None = None) -> None:
    """Pre-answer Claude Code's first-run screens in `<config_home>/.claude.json`: onboarding,
    folder trust for each dir, and (for a custom key) the API-key question. Merges into an
    existing file so the user's own settings and login stay as they are."""
    path = config_home / ".claude.json"
    data: dict[str, Any] = {}
    for _ in range(5):  # a session may be rewriting it right now: read again
        try:
            data = json.loads(path.read_text()) if path.is_file() else {}
            break
        except (ValueError, OSError):
            time.sleep(0.2)
    else:
        return  # never overwrite a config we could not read (it holds the user's own settings)
    if not isinstance(data, dict):
        return
    if _already_trusted(data, dirs, api_key):
        return  # never rewrite a file live sessions also rewrite unless we must
    data["hasCompletedOnboarding"] = True
    projects = data.setdefault("projects", {})
    for d in dirs:
        entry = projects.setdefault(os.path.realpath(d), {})
        entry["hasTrustDialogAccepted"] = True
        entry["hasCompletedProjectOnboarding"] = True
    if api_key:
        responses = data.setdefault("customApiKeyResponses", {"approved": [], "rejected": []})
        if api_key[-20:] not in responses.setdefault("approved", []):
            responses["approved"].append(api_key[-20:])
    config_home.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(data, indent=2))
