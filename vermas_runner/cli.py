"""`vermas-runner`: create a town, move beads in and out of bd JSONL, prime sessions."""

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from vermas.addresses import parse_address
from vermas.agents import console_script
from vermas.errors import VermasError
from vermas.town import Town, find_town

if TYPE_CHECKING:
    from vermas.sessions import TownSessions


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
    for kind, lines in written.items():  # kind is "issues", "messages", "routes" or "issues:<rig>"
        print(f"{kind}.jsonl: {lines} lines")


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


def _sessions(town: Town) -> "TownSessions":
    from vermas.sessions import TownSessions

    return TownSessions(town.root)


def cmd_rig_add(args: argparse.Namespace) -> None:
    from vermas import rig

    town = _open_town(args.town)
    info = rig.add(town, args.name, args.git_url, prefix=args.prefix, max_polecats=args.max_polecats,
                   test_command=args.test_command or "")
    print(f"added rig {info.name} (prefix {info.prefix}, branch {info.default_branch}) at {info.path}")


def cmd_rig_list(args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    from vermas import rig

    rigs = rig.list_rigs(_open_town(args.town))
    if args.json:
        print(json.dumps([r.model_dump() for r in rigs], indent=2))
        return
    table = Table("rig", "prefix", "branch", "polecats", "test command", "git url")
    for r in rigs:
        table.add_row(r.name, r.prefix, r.default_branch, f"{r.polecats}/{r.max_polecats}",
                      r.test_command or "-", r.git_url)
    Console().print(table)


def cmd_up(args: argparse.Namespace) -> None:
    from vermas import boot, patrol

    town = _open_town(args.town)
    if args.detach:
        log = town.root / ".runtime" / "runner.log"
        log.parent.mkdir(exist_ok=True)
        with log.open("a") as fh:
            proc = subprocess.Popen(
                [*console_script("vermas-runner"), "up", "--town", str(town.root)],
                stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        print(f"runner started in the background (pid {proc.pid}); log: {log}")
        return
    lock = boot.RunnerLock(town)
    lock.acquire()
    try:
        sessions = _sessions(town)
        report = boot.up(town, sessions, wait=not args.no_wait)
        for address in report.started:
            print(f"started {address}")
        for address in report.already_running:
            print(f"already running {address}")
        if args.once:
            return
        print("patrolling (Ctrl-C to stop; sessions keep running: `vermas-runner down` stops them)",
              flush=True)
        patrol.run_forever(town, sessions)
    finally:
        lock.release()


def cmd_down(args: argparse.Namespace) -> None:
    """Stop the runner first (so it cannot start anything again), then every session."""
    import time

    from vermas import boot
    from vermas.proc import flock_held, pid_alive

    town = _open_town(args.town)
    lock = town.root / ".runtime" / "runner.lock"
    text = lock.read_text().strip() if lock.is_file() else ""
    if text.isdigit() and pid_alive(int(text)) and flock_held(lock):
        os.kill(int(text), signal.SIGTERM)
        deadline = time.monotonic() + 15
        while flock_held(lock) and time.monotonic() < deadline:
            time.sleep(0.1)
        print(f"stopped runner (pid {text})")
    stopped = boot.down(town, _sessions(town))
    print(f"stopped {len(stopped)} session(s); hooked work stays hooked for the next `up`")


def cmd_status(args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    from vermas.status import runner_status

    town = _open_town(args.town)
    status = runner_status(town, _sessions(town))
    if args.json:
        print(status.model_dump_json(indent=2))
        return
    console = Console()
    console.print(f"[bold]town {status.town}[/] at {status.root}; runner: "
                  + (f"pid {status.runner_pid}" if status.runner_pid else "not running"))
    table = Table("agent", "session", "hooked", "last activity", "unread")
    for row in status.agents:
        table.add_row(row.address, "[green]alive[/]" if row.alive else "[red]dead[/]", row.hooked or "-",
                      row.last_activity or "-", str(status.unread_mail.get(row.address, 0)))
    console.print(table)
    for r in status.rigs:
        console.print(f"rig [bold]{r['name']}[/] (prefix {r['prefix']}, branch {r['default_branch']}): "
                      f"{r['polecats']}/{r['max_polecats']} polecats")
    if status.polecats:
        polecats = Table("polecat", "state", "bead", "branch")
        for p in status.polecats:
            polecats.add_row(str(p["address"]), str(p["state"]), str(p["bead_id"]), str(p["branch"]))
        console.print(polecats)
    if status.convoys:
        convoys = Table("convoy", "title", "closed/total")
        for c in status.convoys:
            convoys.add_row(c.id, c.title, f"{c.closed}/{c.total}")
        console.print(convoys)


def cmd_attach(args: argparse.Namespace) -> None:
    town = _open_town(args.town)
    address = parse_address(args.address)
    sessions = _sessions(town)
    if not sessions.alive(address):
        _fail(f"{address} has no running session (vermas-runner status lists sessions)", code=1)
    os.execvp("tmux", ["tmux", "-L", sessions.socket, "attach-session", "-t", address.session_name])


def cmd_sling(args: argparse.Namespace) -> None:
    from vermas import sling

    town = _open_town(args.town)
    actor = parse_address(args.actor or os.environ.get("BD_ACTOR") or "overseer")
    bead = sling.sling(town, actor, args.bead, args.target, force=args.force, sessions=_sessions(town),
                       kick="none" if args.no_wait else "wait")
    if "/polecats/" in str(bead.assignee) and "/" not in args.target:
        name = str(bead.assignee).rsplit("/", 1)[1]
        print(f"spawned {bead.assignee} on polecat/{name}/{bead.id} for {bead.id}")
    else:
        print(f"hooked {bead.id} to {bead.assignee}")


def cmd_polecat_list(args: argparse.Namespace) -> None:
    from vermas import polecat

    for p in polecat.list_polecats(_open_town(args.town), args.rig):
        print(f"{p.address}\t{p.state}\t{p.bead_id}\t{p.branch}")


def cmd_polecat_nuke(args: argparse.Namespace) -> None:
    from vermas import polecat

    town = _open_town(args.town)
    address = parse_address(args.address)
    if address.name is None or address.role.value != "polecat":
        _fail("polecat nuke takes a polecat address like rig/polecats/nux")
    polecat.nuke(town, str(address.rig), address.name, force=args.force, sessions=_sessions(town))
    print(f"nuked {address}; its bead is back to open")


def cmd_nudge(args: argparse.Namespace) -> None:
    from vermas import nudge

    town = _open_town(args.town)
    result = nudge.nudge(town, _sessions(town), parse_address(args.address), args.message,
                         sender=args.sender)
    print(result.model_dump_json())


def cmd_demo(args: argparse.Namespace) -> None:
    from vermas_runner.demo import run_demo

    raise SystemExit(run_demo(model=args.model, keep=args.keep, beads_count=args.beads))


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

    rig_parser = sub.add_parser("rig", help="manage rigs (projects)")
    rig_sub = rig_parser.add_subparsers(dest="rig_command", required=True)
    p = rig_sub.add_parser("add", help="clone a git repository into the town as a rig")
    p.add_argument("name")
    p.add_argument("git_url")
    p.add_argument("--prefix")
    p.add_argument("--max-polecats", type=int, default=4)
    p.add_argument("--test-command")
    p.add_argument("--town")
    p.set_defaults(fn=cmd_rig_add)
    p = rig_sub.add_parser("list", help="list rigs")
    p.add_argument("--json", action="store_true")
    p.add_argument("--town")
    p.set_defaults(fn=cmd_rig_list)

    p = sub.add_parser("up", help="start the town's sessions and patrol in the foreground")
    p.add_argument("--town")
    p.add_argument("--detach", action="store_true", help="run the runner in the background")
    p.add_argument("--once", action="store_true", help="start sessions, then exit (no patrol)")
    p.add_argument("--no-wait", action="store_true", help="do not wait to nudge new sessions")
    p.set_defaults(fn=cmd_up)

    p = sub.add_parser("down", help="stop the town's sessions and runner (hooked work stays)")
    p.add_argument("--town")
    p.set_defaults(fn=cmd_down)

    p = sub.add_parser("status", help="agents, hooks, mail, convoys")
    p.add_argument("--json", action="store_true")
    p.add_argument("--town")
    p.set_defaults(fn=cmd_status)

    p = sub.add_parser("attach", help="attach your terminal to an agent's session")
    p.add_argument("address")
    p.add_argument("--town")
    p.set_defaults(fn=cmd_attach)

    p = sub.add_parser("sling", help="hook a bead to an agent, or spawn a polecat in a rig")
    p.add_argument("bead")
    p.add_argument("target", help="a rig name (spawns a polecat) or an agent address")
    p.add_argument("--actor", help="who slings (default $BD_ACTOR or overseer)")
    p.add_argument("--no-wait", action="store_true", help="do not wait to nudge the new polecat")
    p.add_argument("--force", action="store_true",
                   help="overseer only: sling even if in_progress, closed or in the merge queue")
    p.add_argument("--town")
    p.set_defaults(fn=cmd_sling)

    pc = sub.add_parser("polecat", help="list or nuke polecats")
    pc_sub = pc.add_subparsers(dest="polecat_command", required=True)
    p = pc_sub.add_parser("list")
    p.add_argument("--rig")
    p.add_argument("--town")
    p.set_defaults(fn=cmd_polecat_list)
    p = pc_sub.add_parser("nuke", help="remove a polecat's session, worktree and branch")
    p.add_argument("address")
    p.add_argument("--force", action="store_true", help="even with unmerged commits (they are lost)")
    p.add_argument("--town")
    p.set_defaults(fn=cmd_polecat_nuke)

    p = sub.add_parser("nudge", help="type a message into an agent's session, submitted once")
    p.add_argument("address")
    p.add_argument("message")
    p.add_argument("--sender", default="overseer")
    p.add_argument("--town")
    p.set_defaults(fn=cmd_nudge)

    p = sub.add_parser("demo", help="a throwaway town where polecats work beads, shown live")
    p.add_argument("--model", choices=("standin", "claude"), default="standin",
                   help="standin: a scripted local model (no account); claude: your Claude Code login")
    p.add_argument("--beads", type=int, default=3)
    p.add_argument("--keep", action="store_true", help="keep the town and sessions afterwards")
    p.set_defaults(fn=cmd_demo)

    from vermas.inspector.cli import add_verify_parser

    add_verify_parser(sub, _open_town)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except VermasError as exc:
        _fail(str(exc), code=1)


if __name__ == "__main__":
    main()
