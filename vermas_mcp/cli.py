"""`vermas-mcp`: the stdio MCP server Claude Code launches, one per session."""

import argparse
import os
import sys
from typing import NoReturn

from vermas.addresses import Address, parse_address
from vermas.errors import VermasError
from vermas.town import Town, find_town
from vermas_mcp.profiles import PROFILES, default_profile


def _fail(message: str) -> NoReturn:
    print(f"vermas-mcp: {message}", file=sys.stderr)
    raise SystemExit(2)


def mark_ready(town: Town, actor: Address) -> None:
    """Tell the runner this agent's MCP server is up, so its GUPP nudge can go in: a first
    turn that reaches the model before the server connects would see no vermas tools."""
    from vermas.agents import ready_marker

    marker = ready_marker(town, actor)
    if marker.parent.is_dir():
        marker.write_text(str(os.getpid()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="vermas-mcp", description=__doc__)
    parser.add_argument("--town", help="town directory (default: $VERMAS_TOWN, else search up from cwd)")
    parser.add_argument("--actor", help="agent address (default: $BD_ACTOR)")
    parser.add_argument("--profile", help="role profile or 'all' (default: the actor's role)")
    args = parser.parse_args(argv)

    actor_text = args.actor or os.environ.get("BD_ACTOR")
    if not actor_text:
        _fail("no actor: pass --actor ADDRESS or set BD_ACTOR (e.g. overseer, mayor, rig/witness)")
    try:
        actor = parse_address(actor_text)
    except VermasError as exc:
        _fail(str(exc))
    town_dir = args.town or os.environ.get("VERMAS_TOWN") or find_town()
    if not town_dir:
        _fail("no town: pass --town DIR or set VERMAS_TOWN (create one with: vermas-runner init DIR)")
    profile = args.profile or default_profile(actor.role)
    if profile not in PROFILES:
        _fail(f"unknown profile {profile!r}; allowed: {', '.join(PROFILES)}")
    try:
        town = Town.open(town_dir)
    except VermasError as exc:
        _fail(str(exc))

    from vermas.export import ExportScheduler
    from vermas_mcp.server import build_server

    exporter = ExportScheduler(town)
    exporter.notify({"issues", "messages", "routes"})  # catch up after a writer that was killed
    server = build_server(town, actor, profile)
    mark_ready(town, actor)
    try:
        server.run("stdio")
    finally:
        exporter.close()


if __name__ == "__main__":
    main()
