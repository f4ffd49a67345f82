"""`vermas-runner`: create a town, move beads in and out of bd JSONL, prime sessions."""

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from vermas import events, patrol, polecat, progress, rig, sling, up
from vermas.addresses import parse_address
from vermas.agents import console_script
from vermas.bdimport import import_file
from vermas.cost import CostBy
from vermas.errors import VermasError
from vermas.export import ExportScheduler, export_town
from vermas.inspector import readiness
from vermas.inspector.cli import render
from vermas.molecules import molecule
from vermas.prime import prime
from vermas.progress import Reporter
from vermas.proc import flock_held
from vermas.status import AgentRow, runner_status
from vermas.tools import TOOLS
from vermas.town import Town, find_town
from vermas_runner import demo, twins, views

if TYPE_CHECKING:
    from vermas.inspector.models import VerificationReport
    from vermas.sessions import TownSessions
    from vermas.tools import ToolSpec


def _fail(message: str, code: int = 2) -> NoReturn:
    print(f"vermas-runner: {message}", file=sys.stderr)
    raise SystemExit(code)


# Towns this command opened, each with the export kinds its own commits made stale.
_WRITES: list[tuple[Town, set[str]]] = []


def _open_town(arg: str | None) -> Town:
    town_dir = arg or os.environ.get("VERMAS_TOWN") or find_town()
    if not town_dir:
        _fail("no town: pass --town DIR or set VERMAS_TOWN (create one with: vermas-runner init DIR)")
    town = Town.open(town_dir)
    changed: set[str] = set()
    town.db.add_listener(changed.update)  # told after each commit that touched an exported table
    _WRITES.append((town, changed))
    return town


def export_writes() -> None:
    """Bring the exports this command made stale up to date before it exits, as an MCP server
    and the runner's patrol do: a shell write shows in `.beads/*.jsonl` at once. A command that
    wrote nothing exported pays nothing. A failed export warns; the write itself stands (the
    next export, `vermas-runner export` or a patrol, catches it up)."""
    while _WRITES:
        town, changed = _WRITES.pop()
        if not changed:
            continue
        try:
            export_town(town, sorted(changed))
        except (VermasError, OSError) as exc:
            print(f"vermas-runner: warning: the write is stored but {town.beads_dir}/*.jsonl were not "
                  f"updated ({type(exc).__name__}: {exc}); run: vermas-runner export", file=sys.stderr)


def cmd_init(args: argparse.Namespace) -> None:
    town, created = Town.init(args.dir, prefix=args.prefix)
    if created:
        print(f"created town {town.config.name!r} at {town.root} (prefix {town.config.prefix})")
    else:
        print(f"town already exists at {town.root}; nothing changed")


def cmd_export(args: argparse.Namespace) -> None:
    town = _open_town(args.town)
    written = export_town(town, force=True)  # kind is "issues", "messages", "routes" or "issues:<rig>"
    if args.json:
        print(json.dumps({f"{kind}.jsonl": lines for kind, lines in written.items()}, indent=2))
        return
    table = Table("file", "lines")
    for kind, lines in written.items():
        table.add_row(f"{kind}.jsonl", str(lines))
    Console().print(table)


def cmd_import(args: argparse.Namespace) -> None:
    town = _open_town(args.town)
    report = import_file(town, Path(args.file), skip_bad=not args.strict)  # --strict: a bad line refuses all
    export_town(town)
    twins.emit(report, args.json)  # lines read, created, updated, unchanged, older, tombstones, other, bad
    if report.problems:
        print(f"vermas-runner: skipped {report.skipped_bad} bad line(s); nothing from them was written "
              "(--strict refuses the whole file instead):", file=sys.stderr)
        for problem in report.problems:
            print(f"  {problem}", file=sys.stderr)


def cmd_prime(args: argparse.Namespace) -> None:
    actor_text = args.actor or os.environ.get("BD_ACTOR")
    if not actor_text:
        _fail("no actor: pass --actor ADDRESS or set BD_ACTOR")
    actor = parse_address(actor_text)
    sys.stdout.write(prime(_open_town(args.town), actor))


def _sessions(town: Town) -> "TownSessions":
    from vermas.sessions import TownSessions  # deferred: libtmux (~70 ms), only commands that touch sessions

    return TownSessions(town.root)


def cmd_rig_add(args: argparse.Namespace) -> None:
    town = _open_town(args.town)
    info = rig.add(town, args.name, args.git_url, prefix=args.prefix, max_polecats=args.max_polecats,
                   test_command=args.test_command or "")
    print(f"added rig {info.name} (prefix {info.prefix}, branch {info.default_branch}) at {info.path}")
    if info.beads is not None:
        print(f"imported {info.beads.created} bead(s) from its .beads/issues.jsonl"
              + (f"; {len(info.beads.refused)} refused (each reason on stderr)" if info.beads.refused else ""))
    if info.untested:
        print(rig.untested_warning(info.name), file=sys.stderr, flush=True)


def cmd_rig_list(args: argparse.Namespace) -> None:

    rigs = rig.list_rigs(_open_town(args.town))
    if args.json:
        print(json.dumps([r.model_dump() for r in rigs], indent=2))
        return
    table = Table("rig", "prefix", "branch", "polecats", "test command", "git url")
    for r in rigs:
        table.add_row(r.name, r.prefix, r.default_branch, f"{r.polecats}/{r.max_polecats}",
                      escape(r.test_label) if not r.untested else f"[bold red]{r.test_label}[/]", r.git_url)
    Console().print(table)


def cmd_up(args: argparse.Namespace) -> None:
    """Check the agent command (and start the stand-in if asked) before anything starts, so
    a town that cannot run refuses here, in the user's terminal, not in a background log."""
    town = _open_town(args.town)
    model_line = demo.choose_model(town, args.model)
    up.resolve_agent_command(town)
    readiness.check_town(town)
    if args.detach:
        log = town.layout.runner_log
        log.parent.mkdir(exist_ok=True)
        with log.open("a") as fh:
            proc = subprocess.Popen(
                [*console_script("vermas-runner"), "up", "--town", str(town.root), "--model", args.model],
                stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        print(model_line)
        print(f"runner started in the background (pid {proc.pid}); log: {log}")
        return
    lock = up.RunnerLock(town)
    lock.acquire()
    try:
        print(model_line, flush=True)
        sessions = _sessions(town)
        watch = up.DeathWatch(town, sessions)
        with Reporter() as show:  # each session until ready: rich on a terminal, lines in a log
            report = up.up(town, sessions, wait=not args.no_wait, progress=show)
        for address, death in report.restarted_dead.items():
            print(f"restarted {address}, which had died ({death.reason})")
        for address in report.started:
            print(f"started {address}")
        for address in report.already_running:
            print(f"already running {address}")
        for line in report.repaired:
            print(f"repaired {line}")
        _print_deaths(watch)
        if args.once:
            return
        threading.Thread(target=_watch_deaths, args=(watch,), daemon=True).start()
        with town.db.read() as conn:  # from here on: the steps this runner's patrol will see
            merges_seen = progress.last_merge_seq(conn)
        threading.Thread(target=_watch_merges, args=(town.root, merges_seen), daemon=True).start()
        print("patrolling (Ctrl-C to stop; sessions keep running: `vermas-runner down` stops them)",
              flush=True)
        patrol.run_forever(town, sessions)
    finally:
        lock.release()


def _print_deaths(watch: up.DeathWatch) -> None:
    for entry in watch.check():
        print(entry, flush=True)


def _watch_deaths(watch: up.DeathWatch, interval: float = 2.0) -> None:
    """Log each session death as it happens (the runner log is stdout when detached)."""
    while True:
        time.sleep(interval)
        try:
            _print_deaths(watch)
        except Exception as exc:  # noqa: BLE001 - a failed look must not end the watch
            print(f"death watch: {type(exc).__name__}: {exc}", flush=True)


def _watch_merges(root: Path, seen: int, interval: float = 1.0) -> None:
    """One line per merge request step after `seen` as the ledger records it (any worker's), in
    the runner log (or the terminal) while the runner patrols: `merge RIG BEAD (MR): from -> to[: reason]`."""
    town = Town.open(root)  # its own connection: this thread reads while the patrol writes
    while True:
        time.sleep(interval)
        try:
            with town.db.read() as conn:
                steps = progress.merge_steps_after(conn, seen)
            for step in steps:
                print(progress.plain_line(progress.merge_event(step)), flush=True)
                seen = step.seq
        except Exception as exc:  # noqa: BLE001 - a failed look must not end the watch
            print(f"merge watch: {type(exc).__name__}: {exc}", flush=True)


def cmd_down(args: argparse.Namespace) -> None:
    """Stop the runner first (so it cannot start anything again), then every session."""
    town = _open_town(args.town)
    pid = up.runner_pid(town)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while flock_held(town.layout.runner_lock) and time.monotonic() < deadline:
            time.sleep(0.1)
        print(f"stopped runner (pid {pid})")
    stopped = up.down(town, _sessions(town))
    print(f"stopped {len(stopped)} session(s); hooked work stays hooked for the next `up`")
    standin = demo.stop_standin(town)
    if standin is not None:
        print(f"stopped the stand-in model (pid {standin})")
    if demo.restore_agent(town):
        print(f"[agent] in {town.layout.config_file} is the town's own again")
    if demo.restore_inspector(town):
        print(f"[inspector] in {town.layout.config_file} is the town's own again")


def _session_cell(row: AgentRow) -> str:
    if row.alive:
        return "[green]alive[/]"
    if row.death is not None and row.death.signal:
        return f"[red]dead[/] (signal {row.death.signal})"
    if row.death is not None and row.death.exit_status is not None:
        return f"[red]dead[/] (exit {row.death.exit_status})"
    return "[red]dead[/]"


def cmd_status(args: argparse.Namespace) -> None:

    town = _open_town(args.town)
    if args.watch or args.problems:
        _status_view(town, args)
        return
    status = runner_status(town, _sessions(town))
    if args.json:
        print(status.model_dump_json(indent=2))
        return
    console = Console()
    beats = ", ".join(f"{b.loop} heartbeat {b.age:.0f}s ago" + (" [red](stale)[/]" if b.stale else "")
                      for b in status.heartbeats) or "no heartbeat"
    console.print(f"[bold]town {status.town}[/] at {status.root}; runner: "
                  + (f"pid {status.runner_pid}" if status.runner_pid else "not running")
                  + ("" if status.runner_alive else " [red](not alive)[/]") + f"; {beats}")
    table = Table("agent", "session", "hooked", "last activity", "last event", "unread")
    for row in status.agents:
        event = escape(f"{row.last_event.label} @{row.last_event.time[11:19]}") if row.last_event else "-"
        table.add_row(row.address, _session_cell(row), row.hooked or "-",
                      row.last_activity or "-", event, str(status.unread_mail.get(row.address, 0)))
    console.print(table)
    states = Table("agent", "state", "since (UTC)", "evidence")
    for row in status.agents:
        if row.state is not None:
            states.add_row(row.address, row.state.state, (row.state.since or "?")[11:19], escape(row.state.reason))
    console.print(states)
    for row in status.agents:
        if row.death is not None and row.death.last_lines:
            console.print(f"[red]{row.address}[/] died ({escape(row.death.reason.split(': ', 1)[0])}); "
                          "last lines of its pane:")
            for line in row.death.last_lines[-5:]:
                console.print(f"    | {escape(line)}", highlight=False)
    for r in status.rigs:
        console.print(f"rig [bold]{r.name}[/] (prefix {r.prefix}, branch {r.default_branch}): "
                      f"{r.polecats}/{r.max_polecats} polecats")
    if status.merge_queues:
        queues = Table("merge queue", "requests", "paused / held", "lease", "tests")
        for q in status.merge_queues:
            requests = ", ".join(f"{state} {n}" for state, n in q.counts.items() if n) or "empty"
            paused = (f"[red]paused at {q.paused_sha[:12]}[/]: {escape(q.paused_reason or '')}"
                      + (" (resume requested)" if q.resume_requested else "")) if q.paused_sha else ""
            if q.hold is not None:
                paused += ("; " if paused else "") + f"[red]held ({q.hold.kind.value})[/]: {escape(q.hold.reason)}"
            lease = (f"{q.lease_owner}" + (" (expired)" if q.lease_expired else "")) if q.lease_owner else "-"
            tests = f"[bold red]{q.tests}[/]" if q.untested else escape(q.tests)
            queues.add_row(q.rig, requests, paused or "-", lease, tests)
        console.print(queues)
    if status.polecats:
        polecats = Table("polecat", "state", "bead", "branch")
        for p in status.polecats:
            polecats.add_row(p.address, str(p.state), p.bead_id or "-", p.branch or "-")
        console.print(polecats)
    if status.patrol_events:
        patrol_table = Table("patrol event", "agent", "reason", "evidence")
        for e in status.patrol_events:
            patrol_table.add_row(escape(f"{e.time[11:19]} {e.patrol}: {e.action}" + ("" if e.ok else " (failed)")),
                                 escape(e.agent or "-"), escape(e.reason),
                                 escape(json.dumps(e.evidence, default=str)[:200]))
        console.print(patrol_table)
    if status.escalations:
        esc = Table("escalation", "to", "raised", "acked", "re-escalated", "subject")
        for x in status.escalations:
            esc.add_row(escape(x.key), x.to, x.raised[11:19], "yes" if x.acked else "[red]no[/]",
                        "yes" if x.reescalated else "no", escape(x.subject))
        console.print(esc)
    if status.convoys:
        convoys = Table("convoy", "title", "closed/total")
        for c in status.convoys:
            convoys.add_row(c.id, c.title, f"{c.closed}/{c.total}")
        console.print(convoys)
    if status.cost is not None and status.cost.total.messages + status.cost.total.model_calls:
        total = status.cost.total
        console.print(f"cost: {views.usd(total.cost_usd)} for {total.tokens.total:,} tokens "
                      f"({total.messages} messages, {total.model_calls} inspector calls); `vermas-runner cost`")


def _status_view(town: Town, args: argparse.Namespace) -> None:
    """`status --watch` (redrawn until Ctrl-C) and `status --problems` (once, or watched)."""
    sessions = _sessions(town)
    if args.json:
        if args.watch:
            _fail("--watch draws for people; for scripts use `status --json` (add --problems to filter)")
        views.print_problems_json(town, sessions)
        return
    if args.interval <= 0:
        _fail(f"--interval must be a positive number of seconds, got {args.interval:g}")
    if args.watch:
        views.watch(lambda: views.render_watch(town, sessions, args.problems), args.interval)
    else:
        Console().print(views.render_watch(town, sessions, args.problems, watching=False))


FOLLOW_POLL_S = 0.5


def _event_line(e: events.AgentEvent) -> str:
    return f"{e.time}  {e.agent:<28} {e.label:<40} {e.detail if e.tool else ''}".rstrip()


def cmd_events(args: argparse.Namespace) -> None:
    """Agent events, oldest first: the newest --limit, then (--follow) each new one as it
    lands, one line each (JSON lines with --json), until Ctrl-C."""
    town = _open_town(args.town)
    shown = events.list_events(town, agent=args.agent, kind=args.kind, limit=args.limit)
    if not args.follow:
        if args.json:
            print(json.dumps([e.model_dump() for e in shown], indent=2))
            return
        table = Table()
        for column in ("time (UTC)", "agent", "event", "detail"):
            table.add_column(column, overflow="fold")  # wrapped, never cut: these are evidence
        for e in shown:
            table.add_row(e.time[11:23], escape(e.agent), escape(e.label), escape(e.detail if e.tool else ""))
        console = Console()
        console.print(table)
        failures = events.hook_failures(town)
        console.print(f"{len(shown)} event(s)" + (f"; {failures} hook run(s) could not record theirs "
                                                 f"(see {town.layout.hook_failures})" if failures else ""))
        return
    last = shown[-1].id if shown else max((e.id for e in events.list_events(town, limit=1)), default=0)
    try:
        while True:
            for e in shown:
                print(e.model_dump_json() if args.json else _event_line(e), flush=True)
                last = e.id
            time.sleep(FOLLOW_POLL_S)
            shown = events.list_events(town, agent=args.agent, kind=args.kind, after_id=last, limit=1000)
    except KeyboardInterrupt:
        return


def cmd_attach(args: argparse.Namespace) -> None:
    town = _open_town(args.town)
    address = parse_address(args.address)
    sessions = _sessions(town)
    if not sessions.alive(address):
        _fail(f"{address} has no running session (vermas-runner status lists sessions)")
    os.execvp("tmux", ["tmux", "-L", sessions.socket, "attach-session", "-t", address.session_name])


def _sling_in_shell(args: argparse.Namespace) -> object:
    """The runner's sling: the one core sling (a rig name spawns a polecat, an address hooks),
    waiting to nudge a new polecat unless --no-wait."""
    town = _open_town(args.town)
    kwargs = twins.arguments(TOOLS["sling"], args)
    bead = sling.sling(town, twins.resolve_actor(args.actor), **kwargs, sessions=_sessions(town),
                       kick="none" if args.no_wait else "wait")
    if args.json:
        return bead
    if "/" not in args.target and "/polecats/" in str(bead.assignee):
        name = str(bead.assignee).rsplit("/", 1)[1]
        print(f"spawned {bead.assignee} on polecat/{name}/{bead.id} for {bead.id}")
    else:
        print(f"hooked {bead.id} to {bead.assignee}")
    return None


def _sling_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-wait", action="store_true", help="do not wait to nudge a newly spawned polecat")


def cmd_tool(spec: "ToolSpec", args: argparse.Namespace) -> None:
    """Run a registry tool from the shell (see vermas_runner/twins.py) and print its result."""
    if spec.name == "sling":
        result = _sling_in_shell(args)
        if result is not None:
            twins.emit(result, args.json)
        return
    result = twins.run_tool(spec, _open_town(args.town), args)
    if spec.name == "verify_bead":
        _verdict(result, args.json)
    elif isinstance(result, (molecule.MoleculeStatus, molecule.StepDone)) and not args.json \
            and not getattr(args, "id_only", False):
        print(views.checklist(result))
    else:
        twins.emit(result, args.json, getattr(args, "id_only", False))


def _verdict(report: "VerificationReport", as_json: bool) -> NoReturn:
    """verify_bead's report, then grep/diff style exit codes, as before: 0 PASS, 1 FAIL (2: error)."""
    if as_json:
        twins.emit(report, True)
    else:
        print(render(report))
    raise SystemExit(0 if report.overall == "PASS" else 1)


def cmd_polecat_list(args: argparse.Namespace) -> None:
    polecats = polecat.list_polecats(_open_town(args.town), args.rig)
    if args.json:
        print(json.dumps([p.model_dump(mode="json") for p in polecats], indent=2))
        return
    # state: spawning, started (GUPP nudge not yet delivered), working, done (waiting for the refinery)
    table = Table("polecat", "state", "bead", "branch")
    for p in polecats:
        table.add_row(str(p.address), str(p.state), p.bead_id or "-", p.branch or "-")
    Console().print(table)


def cmd_polecat_nuke(args: argparse.Namespace) -> None:
    town = _open_town(args.town)
    address = parse_address(args.address)
    if address.name is None or address.role.value != "polecat":
        _fail("polecat nuke takes a polecat address like rig/polecats/nux")
    info = polecat.nuke(town, str(address.rig), address.name, force=args.force, sessions=_sessions(town))
    print(f"nuked {address}; its bead is back to open")
    for note in info.notes:
        print(note)


def cmd_demo(args: argparse.Namespace) -> None:
    from vermas_runner.demo import run_demo  # deferred: the demo loads the stand-in model server

    raise SystemExit(run_demo(model=args.model, keep=args.keep, beads_count=args.beads,
                              timeout=args.timeout))


def _common() -> argparse.ArgumentParser:
    """The options every town command shares, declared once."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--town", help="the town's directory (default: $VERMAS_TOWN, else the town above this folder)")
    common.add_argument("--json", action="store_true", help="print the result as JSON (for scripts)")
    return common


def cmd_dashboard(args: argparse.Namespace) -> None:
    """A thin shell: the app is vermas.dashboard.web; the URL printed carries the town's key."""
    from vermas.dashboard import actions, web  # deferred: Starlette and uvicorn only for this command

    town = _open_town(args.town)
    key = actions.secret(town)

    def ready(port: int) -> None:
        print(f"dashboard: http://127.0.0.1:{port}/?key={key}", flush=True)

    exporter = ExportScheduler(town)  # its buttons write (sling, retry, ack): exported as they happen
    try:
        web.serve(town, args.port, ready)
    except OSError as exc:
        _fail(f"cannot listen on 127.0.0.1:{args.port}: {exc.strerror or exc}")
    finally:
        exporter.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vermas-runner", description="Create, boot and run vermas towns; every MCP tool has a twin here.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", help="a command")
    common = _common()
    town_only = argparse.ArgumentParser(add_help=False)
    town_only.add_argument("--town",
                           help="the town's directory (default: $VERMAS_TOWN, else the town above this folder)")

    p = sub.add_parser("init", help="create a town (idempotent)")
    p.add_argument("dir", help="the town's directory (created if missing)")
    p.add_argument("--prefix", default="hq", help="bead id prefix for town-level beads (default hq)")
    p.set_defaults(fn=cmd_init)

    p = sub.add_parser("export", parents=[common], help="write .beads/*.jsonl from the store now")
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("import", parents=[common], help="upsert beads from a bd issues.jsonl file")
    p.add_argument("file", help="a bd issues.jsonl file")
    p.add_argument("--strict", action="store_true",
                   help="refuse the whole file if any line is bad (default: skip bad lines and list them)")
    p.set_defaults(fn=cmd_import)

    p = sub.add_parser("prime", parents=[town_only], help="print SessionStart context for an agent")
    p.add_argument("--actor", help="the agent's address (default: $BD_ACTOR)")
    p.set_defaults(fn=cmd_prime)

    rig_parser = sub.add_parser("rig", help="manage rigs (projects)")
    rig_sub = rig_parser.add_subparsers(dest="rig_command", required=True, metavar="COMMAND", help="rig command")
    p = rig_sub.add_parser("add", parents=[town_only], help="clone a git repository into the town as a rig")
    p.add_argument("name", help="the rig's name (lowercase letters, digits, - and _)")
    p.add_argument("git_url", help="the repository to clone (URL or path)")
    p.add_argument("--prefix", help="bead id prefix for the rig's beads (default: from the name)")
    p.add_argument("--max-polecats", type=int, default=4, help="most polecats working at once (default 4)")
    p.add_argument("--test-command", help="shell command the refinery runs to test a merge")
    p.set_defaults(fn=cmd_rig_add)
    p = rig_sub.add_parser("list", parents=[common], help="list rigs")
    p.set_defaults(fn=cmd_rig_list)

    p = sub.add_parser("up", parents=[town_only], help="start the town's sessions and patrol in the foreground")
    p.add_argument("--detach", action="store_true", help="run the runner in the background")
    p.add_argument("--once", action="store_true", help="start sessions, then exit (no patrol)")
    p.add_argument("--no-wait", action="store_true", help="do not wait to nudge new sessions")
    p.add_argument("--model", choices=("claude", "standin"), default="claude",
                   help="claude (default): the agent CLI of [agent] command in town.toml, with your login; "
                        "standin: the real Claude Code CLI on a scripted local model (no account), "
                        "until `vermas-runner down`")
    p.set_defaults(fn=cmd_up)

    p = sub.add_parser("down", parents=[town_only], help="stop the town's sessions and runner (hooked work stays)")
    p.set_defaults(fn=cmd_down)

    p = sub.add_parser("status", parents=[common],
                       help="the town's sessions: agents, hooks, mail, polecats, convoys (town-status: the ledger)")
    p.add_argument("--watch", action="store_true", help="keep redrawing from the store until Ctrl-C")
    p.add_argument("--problems", action="store_true",
                   help="only what needs a person: agents dead, waiting, stuck or escalated; failed or escalated "
                        "merge requests; paused or held queues; every open escalation")
    p.add_argument("--interval", type=float, default=views.DEFAULT_INTERVAL_S,
                   help=f"seconds between redraws with --watch (default {views.DEFAULT_INTERVAL_S:g})")
    p.set_defaults(fn=cmd_status)

    p = sub.add_parser("cost", parents=[common],
                       help="tokens and USD per agent or per bead (Claude Code transcripts, inspector calls)")
    p.add_argument("--by", choices=[b.value for b in CostBy], default="agent",
                   help="one row per agent (default) or per bead")
    p.set_defaults(fn=lambda args: views.cmd_cost(_open_town(args.town), args))

    p = sub.add_parser("events", parents=[common],
                       help="agent events from Claude Code hooks and MCP calls (--follow to tail them)")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new events until Ctrl-C")
    p.add_argument("--agent", help="only this agent's events, e.g. sample/polecats/nux")
    p.add_argument("--kind", help=f"only this kind: {', '.join(events.KINDS)}")
    p.add_argument("--limit", type=int, default=50, help="how many of the newest to show first (default 50)")
    p.set_defaults(fn=cmd_events)

    p = sub.add_parser("dashboard", parents=[town_only], help="serve a live web dashboard of the town on 127.0.0.1")
    p.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (default 8765; 0: any free port)")
    p.set_defaults(fn=cmd_dashboard)

    p = sub.add_parser("attach", parents=[town_only], help="attach your terminal to an agent's session")
    p.add_argument("address", help="the agent's address, e.g. mayor")
    p.set_defaults(fn=cmd_attach)

    pc = sub.add_parser("polecat", help="polecat commands: list, nuke, done")
    pc_sub = pc.add_subparsers(dest="polecat_command", required=True, metavar="COMMAND", help="polecat command")
    p = pc_sub.add_parser("list", parents=[common], help="list polecats and their state")
    p.add_argument("--rig", help="only this rig's polecats")
    p.set_defaults(fn=cmd_polecat_list)
    p = pc_sub.add_parser("nuke", parents=[town_only],
                          help="remove a polecat's session, worktree, merged branch and slot, from any state")
    p.add_argument("address", help="the polecat's address, e.g. rig/polecats/nux")
    p.add_argument("--force", action="store_true",
                   help="even with unmerged commits (its branch is kept; the rest is removed)")
    p.set_defaults(fn=cmd_polecat_nuke)

    p = sub.add_parser("demo", help="a throwaway town whose polecats' beads end merged on a sample repository's main")
    p.add_argument("--model", choices=("standin", "claude"), default="standin",
                   help="standin: a scripted local model (no account); claude: your Claude Code login")
    p.add_argument("--beads", type=int, default=3, choices=range(1, 9), metavar="1..8",
                   help="how many beads the demo works (default 3)")
    p.add_argument("--timeout", type=float, default=600.0,
                   help="seconds to wait for every bead to be merged (default 600)")
    p.add_argument("--keep", action="store_true", help="keep the town and sessions afterwards")
    p.set_defaults(fn=cmd_demo)

    twins.add_tool_commands(sub, {"polecat": pc_sub, "rig": rig_sub}, common, cmd_tool, {"sling": _sling_options})
    return parser


VERIFY_SUBCOMMANDS = ("spec", "plan", "run", "bead", "report", "-h", "--help")


def _compat(argv: list[str]) -> list[str]:
    """`verify BEAD ...` (the older form) means `verify bead BEAD ...`."""
    if len(argv) >= 2 and argv[0] == "verify" and argv[1] not in VERIFY_SUBCOMMANDS:
        return ["verify", "bead", *argv[1:]]
    return argv


def undecodable_argument(argv: list[str]) -> str | None:
    """A one-line complaint about the first argument that is not UTF-8, else None.

    Python hands undecodable argv bytes over as lone surrogates (surrogateescape); passed on,
    they broke whatever encoded them (town.toml, the store, tmux) with a traceback."""
    for index, arg in enumerate(argv, start=1):
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError as exc:
            code = ord(arg[exc.start])
            what = f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else "a lone surrogate"
            return (f"argument {index} ({os.fsencode(arg)!r}) is not valid UTF-8 text: {what} at "
                    f"character {exc.start}")
    return None


def main(argv: list[str] | None = None) -> None:
    given = list(sys.argv[1:] if argv is None else argv)
    problem = undecodable_argument(given)
    if problem:
        _fail(problem)
    args = build_parser().parse_args(_compat(given))
    try:
        args.fn(args)
    except VermasError as exc:
        _fail(str(exc), code=2)
    finally:
        export_writes()


if __name__ == "__main__":
    main()
