"""`vermas-runner verify BEAD [--worktree PATH] [--level L] [--json]`: the pipeline from a shell.

Exit status follows grep/diff: 0 PASS, 1 FAIL, 2 could not verify (bad input, no work tree,
a model role that failed twice). Progress goes to stderr, the report to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from typing import Any

from vermas.errors import VermasError
from vermas.inspector.models import LEVELS, VerificationReport
from vermas.inspector.pipeline import Inspector, rig_for_bead
from vermas.town import Town

EXIT_PASS, EXIT_FAIL, EXIT_ERROR = 0, 1, 2


def add_verify_parser(sub: Any, open_town: Callable[[str | None], Town]) -> None:
    """Register `verify` on the runner's subparsers; `open_town` resolves --town as the runner does."""
    p = sub.add_parser("verify", help="verify a bead's work with the VerMAS inspector (exit 0 PASS, 1 FAIL, 2 error)")
    p.add_argument("bead")
    p.add_argument("--worktree", help="the candidate's git checkout (default: its latest merge request's worktree)")
    p.add_argument("--level", choices=LEVELS, help="shell, audit or full (default: the rig's verify_level)")
    p.add_argument("--actor", help="who verifies (default: the bead's rig refinery, else overseer)")
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.add_argument("--town")
    p.set_defaults(fn=lambda args: cmd_verify(args, open_town))


def cmd_verify(args: argparse.Namespace, open_town: Callable[[str | None], Town]) -> None:
    try:
        town = open_town(args.town)
        rig = rig_for_bead(town, args.bead)
        actor = args.actor or (f"{rig.name}/refinery" if rig else "overseer")

        async def progress(done: float, total: float | None, message: str) -> None:
            if not args.quiet:
                print(f"[{int(done)}/{int(total) if total else '?'}] {message}", file=sys.stderr, flush=True)

        report = asyncio.run(Inspector(town, actor, progress=progress).verify(args.bead, args.worktree, args.level))
    except VermasError as exc:
        print(f"vermas-runner verify: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_ERROR) from None
    print(report.model_dump_json(indent=2) if args.json else render(report))
    raise SystemExit(EXIT_PASS if report.overall == "PASS" else EXIT_FAIL)


def render(report: VerificationReport) -> str:
    """A terminal summary: one line per criterion, and for failures the evidence that shows why."""
    lines = [
        f"{report.bead_id} @ {report.commit[:12]}{' (dirty)' if report.dirty else ''}: {report.overall} "
        f"- {report.summary}",
        f"level {report.level}; {report.tests_run} tests run, {report.cached_criteria} criteria cached; "
        f"{report.model_calls} model calls, ${report.model_cost_usd:.4f}, {report.duration_s:.1f}s",
        "",
    ]
    for c in report.criteria:
        cached = " (cached)" if c.cached else ""
        lines.append(f"  {c.outcome:7} {c.criterion_id} [{c.kind}, {c.stage}]{cached} {c.description}")
        lines.append(f"          {c.reason}")
        if c.outcome == "FAIL":
            for t in c.tests:
                if not t.passed:
                    lines.append(f"          $ {t.evidence.command}  -> {t.evidence.failure}")
                    for out in t.evidence.output.strip().splitlines()[-8:]:
                        lines.append(f"          | {out}")
        if c.error:
            lines.append(f"          error: {c.error.splitlines()[0]}")
    return "\n".join(lines)
