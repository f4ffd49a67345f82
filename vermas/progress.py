"""Progress of long work (`up`, `demo`, `verify`, merge processing), shown as it happens.

The work reports ProgressEvents to a callback and knows nothing of terminals. `Reporter` shows
them: on a terminal, a rich progress display (one line per task: spinner, bar when the total is
known, its latest status, elapsed time); anywhere else (a pipe, a test, the runner log), one
plain line per change, `task: status (done/total)`, so logs stay greppable and free of escape
codes. The merge queue's steps are read from the store's own ledger (`mr_events`), so every
transition any worker makes gets one line in the runner log.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

from pydantic import BaseModel

from vermas.refinery.types import MRState


@dataclass(frozen=True)
class ProgressEvent:
    """One change of one task: its status line, how far it is (when countable), whether it ended."""

    task: str
    status: str
    done: float | None = None
    total: float | None = None
    finished: bool = False
    ok: bool = True


ProgressFn = Callable[[ProgressEvent], None]


def ignore(event: ProgressEvent) -> None:
    """The default sink: no one is watching."""


def plain_line(event: ProgressEvent) -> str:
    """The non-terminal form of an event: `task: status (done/total)`."""
    count = ""
    if event.done is not None:
        count = f" ({event.done:g}/{event.total:g})" if event.total else f" ({event.done:g})"
    return f"{event.task}: {event.status}{count}"


class Reporter:
    """Shows ProgressEvents on `stream`: rich progress on a terminal, plain lines elsewhere.
    Safe to call from several threads (`up` waits for sessions in parallel). Use as a context
    manager so a terminal display is closed (and its final state left on screen)."""

    def __init__(self, stream: IO[str] | None = None, *, tty: bool | None = None) -> None:
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self._lock = threading.Lock()
        self._last: dict[str, str] = {}
        self._tasks: dict[str, Any] = {}
        self._progress: Any = None

    def __enter__(self) -> Reporter:
        if self.tty:
            from rich.console import Console  # deferred: only a terminal needs rich's display
            from rich.progress import (  # deferred: as above
                BarColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
            )

            self._progress = Progress(SpinnerColumn(), TextColumn("[bold]{task.fields[name]}"), BarColumn(),
                                      TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
                                      console=Console(file=self.stream), transient=False)
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def __call__(self, event: ProgressEvent) -> None:
        with self._lock:
            if self._progress is None:
                self._plain(event)
            else:
                self._rich(event)

    def _plain(self, event: ProgressEvent) -> None:
        line = plain_line(event)
        if self._last.get(event.task) == line:
            return  # the same news twice is one line
        self._last[event.task] = line
        print(line, file=self.stream, flush=True)

    def _rich(self, event: ProgressEvent) -> None:
        status = event.status if event.ok else f"[red]{event.status}[/]"
        task = self._tasks.get(event.task)
        if task is None:
            task = self._tasks[event.task] = self._progress.add_task(
                event.task, name=event.task, status=status, total=event.total)
        self._progress.update(task, status=status, total=event.total,
                              completed=event.done if event.done is not None else None)
        if event.finished:
            total = event.total or event.done or 1
            self._progress.update(task, total=total, completed=total)
            self._progress.stop_task(task)


# -- merge processing, from the ledger --------------------------------------------------------------


class MergeStep(BaseModel):
    """One transition of a merge request, as the ledger recorded it."""

    seq: int
    mr_id: str
    bead_id: str
    rig: str
    actor: str
    from_state: str | None
    to_state: str
    reason: str = ""


def merge_steps_after(conn: sqlite3.Connection, seq: int, limit: int = 500) -> list[MergeStep]:
    """Transitions with a larger seq than `seq`, oldest first."""
    rows = conn.execute(
        "SELECT e.seq, e.mr_id, m.bead_id, m.rig, e.actor, e.from_state, e.to_state, e.evidence "
        "FROM mr_events e JOIN merge_requests m ON m.id = e.mr_id WHERE e.seq > ? ORDER BY e.seq LIMIT ?",
        (seq, limit)).fetchall()
    steps = []
    for r in rows:
        try:
            evidence = json.loads(r[7] or "{}")
        except ValueError:
            evidence = {}
        reason = evidence.get("reason") if isinstance(evidence, dict) else None
        steps.append(MergeStep(seq=r[0], mr_id=r[1], bead_id=r[2], rig=r[3], actor=r[4], from_state=r[5],
                               to_state=r[6], reason=str(reason)[:200] if reason else ""))
    return steps


def last_merge_seq(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT max(seq) FROM mr_events").fetchone()
    return int(row[0] or 0)


def merge_event(step: MergeStep) -> ProgressEvent:
    """A merge step as progress: one task per merge request, finished when it leaves the queue."""
    status = f"{step.from_state or 'new'} -> {step.to_state}" + (f": {step.reason}" if step.reason else "")
    return ProgressEvent(task=f"merge {step.rig} {step.bead_id} ({step.mr_id})", status=status,
                         finished=step.to_state in LEFT_QUEUE, ok=step.to_state not in NOT_OK)


LEFT_QUEUE = frozenset({MRState.MERGED, MRState.REWORK, MRState.CONFLICT, MRState.REJECTED})
NOT_OK = frozenset({MRState.REWORK, MRState.CONFLICT, MRState.REJECTED, MRState.FAILED})
