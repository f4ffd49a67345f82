"""Resolve who and where a vermas-mcp process serves, then serve it over stdio.

Shared by the in-process path (`vermas-mcp` when no zygote runs) and the zygote's forked
children, so both fail the same way: exit code 2 and one clear line on stderr.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import anyio

from vermas.addresses import Address, parse_address
from vermas.agents import ready_marker
from vermas.errors import VermasError
from vermas.export import ExportScheduler
from vermas.town import Town, find_town
from vermas_mcp.profiles import PROFILES, default_profile
from vermas_mcp.server import build_server
from vermas_mcp.stdio import serve as serve_stdio


class LaunchError(Exception):
    """Bad arguments or environment; the message is printed and the process exits 2."""


@dataclass
class Launch:
    town: Town
    actor: Address
    profile: str


def resolve(town_arg: str | None, actor_arg: str | None, profile_arg: str | None,
            env: Mapping[str, str]) -> Launch:
    actor_text = actor_arg or env.get("BD_ACTOR")
    if not actor_text:
        raise LaunchError("no actor: pass --actor ADDRESS or set BD_ACTOR (e.g. overseer, mayor, rig/witness)")
    try:
        actor = parse_address(actor_text)
    except VermasError as exc:
        raise LaunchError(str(exc)) from exc
    town_dir = town_arg or env.get("VERMAS_TOWN") or find_town()
    if not town_dir:
        raise LaunchError("no town: pass --town DIR or set VERMAS_TOWN (create one with: vermas-runner init DIR)")
    profile = profile_arg or default_profile(actor.role)
    if profile not in PROFILES:
        raise LaunchError(f"unknown profile {profile!r}; allowed: {', '.join(PROFILES)}")
    try:
        town = Town.open(town_dir)
    except VermasError as exc:
        raise LaunchError(str(exc)) from exc
    return Launch(town, actor, profile)


def mark_ready(town: Town, actor: Address) -> None:
    """Tell the runner this agent's MCP server is up, so its GUPP nudge can go in: a first
    turn that reaches the model before the server connects would see no vermas tools."""
    marker = ready_marker(town, actor)
    if marker.parent.is_dir():
        marker.write_text(str(os.getpid()))


_ACTIVE: list[object] = []  # this process's export scheduler, for flush_exports


def flush_exports() -> None:
    """Export what this process committed, now (before an abrupt exit)."""
    for exporter in _ACTIVE:
        exporter.flush()  # type: ignore[attr-defined]


def serve(launch: Launch, server: object) -> None:
    """Serve until the client closes stdin; exports are current when this returns."""
    exporter = ExportScheduler(launch.town)
    _ACTIVE.append(exporter)
    exporter.notify({"issues", "messages", "routes"})  # catch up after a writer that was killed
    mark_ready(launch.town, launch.actor)
    try:
        anyio.run(serve_stdio, server)
    finally:
        exporter.close()


def run(town_arg: str | None, actor_arg: str | None, profile_arg: str | None,
        templates: Mapping[str, tuple[Any, Any]] | None = None) -> int:
    """Resolve, build (or bind a prepared template), serve; the exit code. Shared by the
    in-process launcher and the zygote's children so both fail and serve the same way."""
    try:
        launch = resolve(town_arg, actor_arg, profile_arg, os.environ)
    except LaunchError as exc:
        print(f"vermas-mcp: {exc}", file=sys.stderr)
        return 2
    template = (templates or {}).get(launch.profile)
    if template is None:
        server = build_server(launch.town, launch.actor, launch.profile)
    else:
        server, binding = template
        binding.bind(launch.town, launch.actor)
    serve(launch, server)
    return 0
