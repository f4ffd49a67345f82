"""Can a rig's merge queue verify at all? The town's side of verification, checked without a
model call: the inspector's settings for the rig are valid and its command resolves.

Why separate from a verification's own outcome: a verification that cannot run because of the
TOWN (the CLI is not installed, town.toml is invalid) is nobody's request's fault. `up` refuses
to start such a town (one line naming the setting), and the refinery holds the rig's queue
with the reason instead of failing each request; `fingerprint` tells the queue when the cause
changed (the command now resolves, the config was edited), so it resumes by itself.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

from vermas import agents
from vermas.errors import InvalidInput, VermasError
from vermas.town import RigConfig, Town

class TownCannotVerify(VermasError):
    """A verification could not run for a reason of the town, not of the request: the merge queue
    holds the rig (one escalation) instead of failing the request. `key` fingerprints the cause."""

    def __init__(self, reason: str, key: str) -> None:
        super().__init__(reason)
        self.reason, self.key = reason, key


def calls_model(rig: RigConfig) -> bool:
    """Every verify level but `off` asks the inspector's model (at least Designer and Strategist)."""
    return rig.verify_level.strip() != "off"


def command_key(town: Town, rig: RigConfig) -> str:
    """Where the rig's inspector command is set in town.toml."""
    return f"[rigs.{rig.name}] inspector.command" if "command" in rig.inspector else "[inspector] command"


def search_path(env: Mapping[str, str]) -> str:
    """The PATH `claude -p` is looked up on: the runner's, or the inspector's own env's."""
    return env.get("PATH") or os.environ.get("PATH", os.defpath)


def missing_command_message(config_file: Path, rig: RigConfig, key: str, command: str, cli: Path | None) -> str:
    """One line: what is missing, the town.toml key, and the ways out (pure)."""
    what = "is not on PATH" if "/" not in command else "is not an absolute path to an executable"
    value = f'"{cli}" (the Claude Code CLI scripts/setup.sh installed)' if cli is not None else \
        f"the Claude Code CLI's absolute path (scripts/setup.sh installs it as {agents.SETUP_CLI})"
    return (f"rig {rig.name} verifies its merges at verify_level {rig.verify_level}, which calls the inspector's "
            f"model, but its inspector command {command!r} {what}; set {key} = {value} in {config_file}, "
            f'or boot on the scripted stand-in model: vermas-runner up --model standin '
            f'(verify_level = "off" under [rigs.{rig.name}] merges without verification)')


def problem(town: Town, rig: RigConfig) -> str | None:
    """Why the rig's queue cannot verify for a reason of the town, in one line; None if it can
    (or its level calls no model)."""
    from vermas.inspector.pipeline import settings_for_rig  # deferred: the pipeline loads only to verify

    if not calls_model(rig):
        return None
    try:
        settings = settings_for_rig(town, rig)
    except InvalidInput as exc:
        return f"rig {rig.name} cannot verify its merges: {exc}"
    command = settings.claude.command
    if agents.resolve_command(command, search_path(dict(settings.claude.env))) is None:
        key = command_key(town, rig)
        return missing_command_message(town.layout.config_file, rig, key, command, agents.setup_cli())
    return None


def fingerprint(town: Town, rig: RigConfig) -> str:
    """A digest of what decides whether the rig can verify now: its level, its inspector settings
    (or why they are invalid) and what its command resolves to. It changes when the cause of a
    hold may have been fixed."""
    from vermas.inspector.pipeline import settings_for_rig  # deferred: the pipeline loads only to verify

    parts = [rig.verify_level]
    if calls_model(rig):
        try:
            settings = settings_for_rig(town, rig)
        except InvalidInput as exc:
            parts.append(f"invalid: {exc}")
        else:
            env = dict(settings.claude.env)
            parts += [repr(settings), str(agents.resolve_command(settings.claude.command, search_path(env)))]
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:16]


def require(town: Town, rig: RigConfig) -> None:
    """TownCannotVerify when the town is why the rig cannot verify now (see `problem`)."""
    found = problem(town, rig)
    if found is not None:
        raise TownCannotVerify(found, fingerprint(town, rig))


def check_town(town: Town) -> None:
    """InvalidInput (the first problem, one line) unless every rig whose verify level calls a
    model can verify: what `up` checks before anything starts."""
    for name in sorted(town.config.rigs):
        found = problem(town, town.config.rigs[name])
        if found is not None:
            raise InvalidInput(found)
