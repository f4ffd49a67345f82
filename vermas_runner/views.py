"""Terminal views: the `cost` table and the watching `status --watch` (rich Live).

The watch redraws from the store every `--interval` seconds: one `runner_status` (sessions,
hooks, events, cost read incrementally), the open escalations, and vermas.problems' rules for
`--problems`. Ctrl-C ends it cleanly (exit 0, the terminal restored, no traceback).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from vermas import cost, problems
from vermas.cost import CostBy, CostLine, CostReport
from vermas.molecules import molecule
from vermas.status import MergeQueueStatus, RunnerStatus, runner_status
from vermas.timeutil import now as now_stamp
from vermas.town import Town

if TYPE_CHECKING:
    from vermas.sessions import TownSessions

DEFAULT_INTERVAL_S = 2.0
PROBLEM_STYLE = {problems.Problem.DEAD: "red", problems.Problem.WAITING: "yellow",
                 problems.Problem.STUCK: "magenta", problems.Problem.ESCALATED: "bold red",
                 problems.Problem.FAILED: "red", problems.Problem.PAUSED: "yellow", problems.Problem.HELD: "yellow"}


# -- cost ---------------------------------------------------------------------------------------


def usd(value: float | None) -> str:
    return "-" if value is None else f"${value:,.4f}"


def cost_table(report: CostReport, by: CostBy) -> Table:
    """One row per agent (or bead), the most expensive first, and the town's total."""
    lines = report.by_agent if by is CostBy.AGENT else report.by_bead
    table = Table(title=f"cost by {by.value}", caption=escape(report.note))
    table.add_column(by.value, no_wrap=True, min_width=max((len(line.key) for line in lines), default=5))
    for header in ("in", "out", "cache rd", "cache wr", "usd", "est.", "msgs", "calls", "claude"):
        table.add_column(header, justify="right")
    for line in [*lines, report.total]:
        t = line.tokens
        style = "bold" if line is report.total else None
        table.add_row(escape(line.key), f"{t.input_tokens:,}", f"{t.output_tokens:,}", f"{t.cache_read_tokens:,}",
                      f"{t.cache_creation_tokens:,}", usd(line.cost_usd), usd(line.estimated_usd), str(line.messages),
                      str(line.model_calls), usd(line.claude_cost_usd), style=style)
    return table


def cmd_cost(town: Town, args: argparse.Namespace) -> None:
    report = cost.cost_report(town)
    if args.json:
        print(report.model_dump_json(indent=2))
        return
    Console().print(cost_table(report, CostBy(args.by)))


# -- the watching view --------------------------------------------------------------------------


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 90:
        return f"{seconds:.0f}s"
    return f"{seconds / 60:.0f}m" if seconds < 5400 else f"{seconds / 3600:.1f}h"


def _problem_cell(row: problems.WatchRow) -> Text:
    if not row.problems:
        return Text("ok", style="green")
    return Text(" ".join(p.value for p in row.problems), style=PROBLEM_STYLE[row.problems[0]])


def agents_table(rows: list[problems.WatchRow], report: CostReport | None) -> Table:
    table = Table("agent", "state", "hooked", "last event", "quiet", "cost", expand=False)
    for row in rows:
        a = row.agent
        event = escape(a.last_event.label) if a.last_event else "-"
        spent = cost.agent_cost(report, a.address) if report is not None else None
        hooked = f"{a.hooked} ({a.molecule})" if a.hooked and a.molecule else a.hooked or "-"
        table.add_row(escape(a.address), _problem_cell(row), escape(hooked), event, _ago(row.quiet_s),
                      usd(spent.cost_usd) if spent else "-")
    return table


def problems_table(found: list[problems.ProblemRow]) -> Table:
    """The problems that are not agents: failed or escalated requests, paused or held queues,
    open escalations that ride on no other row."""
    table = Table("problem", "about", "what", "since", "escalated to", expand=False)
    for p in found:
        to = ", ".join(f"{e.to}" + (" (acked)" if e.acked else "") for e in p.escalations) or "-"
        table.add_row(Text(" ".join(x.value for x in p.problems), style=PROBLEM_STYLE[p.problems[0]]),
                      escape(f"{p.kind.value} {p.subject}"), escape(p.reason), _since(p.since), escape(to))
    return table


def _since(at: float | None) -> str:
    return "-" if at is None else _ago(max(0.0, time.time() - at)) + " ago"


def queue_line(q: MergeQueueStatus) -> Text:
    """One rig's queue: its requests by state, and why it does not merge when it does not."""
    requests = ", ".join(f"{state} {n}" for state, n in q.counts.items() if n) or "empty"
    why = problems.queue_reason(problems.queue_facts([q])[0])
    return Text(f"merge queue {q.rig}: {requests}" + (f" ({why})" if why else ""), style="red" if why else "")


def watch_frame(status: RunnerStatus, rows: list[problems.WatchRow], found: list[problems.ProblemRow],
                problems_only: bool, stamp: str, watching: bool = True) -> Group:
    """One screen of the watch: header (its count is every problem of the town, agents or not),
    the agents (or only those with problems), the other problems, the queues."""
    shown = problems.only_problems(rows) if problems_only else rows
    others = [p for p in found if p.kind is not problems.ProblemKind.AGENT]
    total = status.cost.total if status.cost is not None else CostLine(key="total")
    header = Text.assemble((f"town {status.town}", "bold"), f"  {stamp[11:19]} UTC  runner: ",
                           f"pid {status.runner_pid}" if status.runner_pid else "not running",
                           f"  agents {len(rows)}, problems {len(found)}",
                           f"  cost {usd(total.cost_usd)}")
    parts: list[RenderableType] = [header]
    if problems_only and not found:
        parts.append(Text("no problems: every agent is alive, none waiting, stuck or escalated; no failed or "
                          "escalated merge request, no paused or held queue, no open escalation", style="green"))
    else:
        if shown or not problems_only:
            parts.append(agents_table(shown, status.cost))
        if others:
            parts.append(problems_table(others))
    if not problems_only:
        for q in status.merge_queues:
            parts.append(queue_line(q))
        if status.polecats:
            parts.append(Text("polecats: " + ", ".join(f"{p.address} {p.state} {p.bead_id or '-'}"
                                                       for p in status.polecats)))
    if watching:
        parts.append(Text("Ctrl-C to stop watching", style="dim"))
    return Group(*parts)


class Observed(NamedTuple):
    status: RunnerStatus
    rows: list[problems.WatchRow]
    found: list[problems.ProblemRow]
    stamp: str


def observe(town: Town, sessions: TownSessions) -> Observed:
    """Read the town once: its status, each agent with its problems, every problem, and when."""
    town.reload_config()
    status = runner_status(town, sessions)
    with town.db.read() as conn:
        escalations = problems.open_escalations(conn)
    stamp, at = now_stamp()
    rows = problems.watch_rows(status, escalations, at, town.config.patrol.stuck_after)
    found = problems.town_problems(town, problems.only_problems(rows), status.merge_queues)
    return Observed(status, rows, found, stamp)


def render_watch(town: Town, sessions: TownSessions, problems_only: bool, watching: bool = True) -> Group:
    """Read the town once and draw it."""
    seen = observe(town, sessions)
    return watch_frame(seen.status, seen.rows, seen.found, problems_only, seen.stamp, watching)


def print_problems_json(town: Town, sessions: TownSessions) -> None:
    """`status --problems --json`: every problem, as ProblemRow objects (kind agent rows carry
    their WatchRow under `watch`)."""
    found = observe(town, sessions).found
    print(json.dumps([r.model_dump(mode="json") for r in found], indent=2))


def watch(render: Callable[[], RenderableType], interval: float, console: Console | None = None) -> None:
    """Redraw `render()` every `interval` seconds until Ctrl-C (which ends it quietly)."""
    console = console or Console()
    try:
        with Live(render(), console=console, auto_refresh=False, screen=console.is_terminal,
                  redirect_stdout=False) as live:
            while True:
                time.sleep(interval)
                live.update(render(), refresh=True)
    except KeyboardInterrupt:
        pass
    console.print("stopped watching")


def checklist(result: molecule.MoleculeStatus | molecule.StepDone) -> str:
    """A molecule for people: its root, formula and holder, then the checklist with markers and
    the current step in full (the same lines prime gives an agent)."""
    state = result.molecule if isinstance(result, molecule.StepDone) else result
    kind = "wisp" if state.wisp else "molecule"
    head = f"{kind} {state.root} (formula {state.formula}), held by {state.holder or 'nobody'}"
    return "\n".join([head, "", *molecule.checklist(state)])
