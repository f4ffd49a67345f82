"""`vermas-runner`: create a town, move beads in and out of bd JSONL, prime sessions."""

import argparse
import os
import sys
from pathlib import Path
from typing import NoReturn

from vermas.addresses import parse_address
from vermas.errors import VermasError
from vermas.town import Town, find_town


def _fail(message: str, code: int = 2) -> NoReturn:
    print(f"vermas-runner: {message}", file=sys.stderr)
    raise SystemExit(code)


def _open_town(arg: str | None) -> Town:
    town_dir = arg or os.environ.get("VERMAS_TOWN") or find_town()
    if not town_dir:
        _fail("no town: pass --town DIR or set VERMAS_TOWN (create one with: vermas-runner init DIR)")
    return Town.open(town_dir)


def cmd_init(args: argparse.Namespace) -> None:
    town, created = Town.init(args.dir, prefix=args.prefix)
    if created:
        print(f"created town {town.config.name!r} at {town.root} (prefix {town.config.prefix})")
    else:
        print(f"town already exists at {town.root}; nothing changed")


def cmd_export(args: argparse.Namespace) -> None:
    from vermas.export import export_town

    town = _open_town(args.town)
    written = export_town(town, force=True)
    for kind, lines in written.items():
        print(f"{town.beads_dir / (kind + '.jsonl')}: {lines} lines")


def cmd_import(args: argparse.Namespace) -> None:
    from vermas.bdimport import import_file
    from vermas.export import export_town

    town = _open_town(args.town)
    report = import_file(town, Path(args.file))
    export_town(town)
    print(
        f"imported {report.lines} lines: {report.created} created, {report.updated} updated, "
        f"{report.unchanged} unchanged, {report.skipped_older} older than the store, "
        f"{report.tombstones} tombstones skipped, {report.other} non-issue lines skipped"
    )


def cmd_prime(args: argparse.Namespace) -> None:
    from vermas.prime import prime

    actor_text = args.actor or os.environ.get("BD_ACTOR")
    if not actor_text:
        _fail("no actor: pass --actor ADDRESS or set BD_ACTOR")
    actor = parse_address(actor_text)
    sys.stdout.write(prime(_open_town(args.town), actor))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vermas-runner", description="Create, boot and run vermas towns.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("init", help="create a town (idempotent)")
    p.add_argument("dir")
    p.add_argument("--prefix", default="hq", help="bead id prefix for town-level beads (default hq)")
    p.set_defaults(fn=cmd_init)

    p = sub.add_parser("export", help="write .beads/*.jsonl from the store now")
    p.add_argument("--town")
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("import", help="upsert beads from a bd issues.jsonl file")
    p.add_argument("file")
    p.add_argument("--town")
    p.set_defaults(fn=cmd_import)

    p = sub.add_parser("prime", help="print SessionStart context for an agent")
    p.add_argument("--actor")
    p.add_argument("--town")
    p.set_defaults(fn=cmd_prime)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except VermasError as exc:
        _fail(str(exc), code=1)


if __name__ == "__main__":
    main()
