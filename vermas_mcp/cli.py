"""`vermas-mcp`: the stdio MCP server Claude Code launches, one per session.

This entry point is kept light on purpose: when the town's zygote runs (`vermas-runner
up` starts it), the launcher hands its stdin, stdout and stderr to the zygote, which forks
a child with the MCP SDK and vermas already imported, so a session's server answers in
tens of milliseconds instead of the second that importing the SDK takes. With no zygote,
the launcher imports everything and serves in-process; both paths behave the same.
"""

import argparse
import os
import sys

from vermas_mcp import launcher


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="vermas-mcp", description="The vermas MCP server (stdio).")
    parser.add_argument("--town", help="town directory (default: $VERMAS_TOWN, else search up from cwd)")
    parser.add_argument("--actor", help="agent address (default: $BD_ACTOR)")
    parser.add_argument("--profile", help="role profile or 'all' (default: the actor's role)")
    return parser.parse_args(argv)


def run_inprocess(args: argparse.Namespace) -> None:
    from vermas_mcp.run import run  # deferred: the zygote path must not import vermas or mcp (~0.6 s)

    raise SystemExit(run(args.town, args.actor, args.profile))


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if os.environ.get("VERMAS_ZYGOTE", "on") != "off":
        code = launcher.try_zygote(sys.argv[1:] if argv is None else argv, args.town)
        if code is not None:
            raise SystemExit(code)
    run_inprocess(args)


if __name__ == "__main__":
    main()
