"""The runner's patrol loop: observe the town, decide actions (pure), act.

This patrol keeps exports current, rolls back or finishes polecat spawns whose process died
part way, owns every started polecat's GUPP nudge (a caller, an MCP `sling` in a one-shot
`claude -p`, may try first, but the runner, which outlives every caller, delivers whatever
nobody is delivering), and works every rig's merge queue: each round, a rig with work gets one
`refinery.worker.process_rig` step on its own thread (MergeWorkers), so a long test run blocks
neither this loop (exports, kicks, config refresh) nor the other rigs. A step that raises is
logged with its traceback and the next round goes on. The witness and deacon patrols build on
the same shape.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from vermas import export, patrol_log, polecat, proc
from vermas.addresses import Address, Role, parse_address
from vermas.deacon import patrol as deacon_patrol
from vermas.errors import InvalidInput
from vermas.patrol_log import PatrolEvent
from vermas.protocol import PolecatState
from vermas.refinery import ledger, queue, worker
from vermas.refinery.ledger import MergeRequestRow
from vermas.sessions import TownSessions
from vermas.town import Town
from vermas import beadsync, git
from vermas import rig as rig_mod

STOP_GRACE_S = 10.0  # on SIGTERM, how long running merge steps may finish before the runner exits
log = logging.getLogger("vermas.patrol")


@dataclass(frozen=True)
class StartedPolecat:
    rig: str
    name: str
    alive: bool  # its session runs
    nudging: bool  # someone holds its GUPP lock (delivering the nudge right now)


@dataclass(frozen=True)
class MergeQueue:
    rig: str
    has_work: bool  # ledger.rigs_with_work: queued, in flight, failed, uncleaned merge, paused
    stepping: bool  # this runner's step for the rig is still running (a long test run)


@dataclass(frozen=True)
class Observed:
    stale_exports: tuple[str, ...]
    started_polecats: tuple[StartedPolecat, ...] = ()
    abandoned_spawns: tuple[tuple[str, str], ...] = ()  # (rig, name): `spawning`, spawn lock free
    merge_queues: tuple[MergeQueue, ...] = ()
    beads_behind: tuple[str, ...] = ()  # rigs whose branch moved since its tracked bd file was imported


@dataclass(frozen=True)
class Action:
    kind: str  # "export" | "kick" | "repair" | "merge" | "beads"
    target: str = ""


def decide(seen: Observed) -> list[Action]:
    actions = [Action("export")] if seen.stale_exports else []
    actions += [Action("repair", f"{rig}/polecats/{name}") for rig, name in seen.abandoned_spawns]
    actions += [Action("kick", f"{p.rig}/polecats/{p.name}") for p in seen.started_polecats
                if p.alive and not p.nudging]
    # One step per rig at a time: a rig whose step still runs is left alone this round.
    actions += [Action("merge", q.rig) for q in seen.merge_queues if q.has_work and not q.stepping]
    actions += [Action("beads", rig) for rig in seen.beads_behind]
    return actions


# ---- the merge queues: one worker thread per rig ---------------------------------------------------


def runner_owner() -> str:
    """The lease owner of this runner process: `runner:<host>:<pid>:<start time>`, unique per
    process, so two runners (or a restarted one) never pass for each other; a dead one's lease
    is taken over at once by a runner of the same host (ledger.acquire), else it expires."""
    pid = os.getpid()
    return queue.runner_owner_name(socket.gethostname(), pid, proc.start_time(pid))


def step_line(report: worker.StepReport) -> str | None:
    """The runner log's line for a step that changed something (None: nothing to say)."""
    if not report.progressed:
        return None
    parts = []
    if report.merged:
        parts.append(f"merged {', '.join(report.merged)} at {report.merged_sha}"
                     + (" (untested: no test_command)" if report.untested else ""))
    for label, ids in (("recovered", report.recovered), ("conflict", report.conflicts),
                       ("rework", report.reworked), ("rejected", report.rejected), ("failed", report.failed),
                       ("escalated", report.escalated), ("requeued", report.requeued),
                       ("cleaned up", report.cleaned), ("kept", report.kept)):
        if ids:
            parts.append(f"{label} {', '.join(ids)}")
    if report.restarted:
        parts.append(f"restarted: {report.restarted}")
    return f"mq {report.rig}: " + "; ".join(parts) + f" ({report.test_runs} test run(s))"


class MergeWorkers:
    """Runs each rig's merge-queue steps on a thread of their own, at most one per rig.

    `alive` (for the worker's "back to the same polecat if its session is alive") asks tmux as
    well as the slot table; `kill_session` stops a merged polecat's session before its slot is
    freed. Problems (an error, a pause, a raise) are logged when they change, not every round."""

    def __init__(self, town: Town, sessions: TownSessions, owner: str | None = None,
                 out: Callable[[str], None] | None = None) -> None:
        self.town, self.sessions = town, sessions
        self.owner = owner or runner_owner()
        self.out = out or (lambda line: print(line, flush=True))
        self._threads: dict[str, threading.Thread] = {}
        self._problem: dict[str, str | None] = {}
        self._lock = threading.Lock()

    def stepping(self) -> frozenset[str]:
        with self._lock:
            return frozenset(rig for rig, t in self._threads.items() if t.is_alive())

    def start(self, rig: str) -> bool:
        """Start one step for `rig` unless one runs already. True if started."""
        with self._lock:
            running = self._threads.get(rig)
            if running is not None and running.is_alive():
                return False
            thread = threading.Thread(target=self._step, args=(rig,), name=f"mq-{rig}", daemon=True)
            self._threads[rig] = thread
            thread.start()
            return True

    def alive(self, req: MergeRequestRow) -> bool:
        if not worker.slot_alive(self.town, req):
            return False
        try:
            return self.sessions.alive(parse_address(req.polecat))
        except InvalidInput:
            return False

    def kill_session(self, address: str) -> None:
        try:
            self.sessions.kill(parse_address(address))
        except Exception as exc:  # noqa: BLE001 - a session already gone must not stop the cleanup
            self.out(f"mq: could not stop the session of {address}: {type(exc).__name__}: {exc}")

    def _step(self, rig: str) -> None:
        try:
            report = worker.process_rig(self.town, rig, self.owner, time.time(), alive=self.alive,
                                        kill_session=self.kill_session)
        except Exception:  # noqa: BLE001 - one rig's bug must not end the runner's patrol
            self._notice(rig, f"mq {rig}: step raised (the next round tries again):\n{traceback.format_exc()}")
            return
        line = step_line(report)
        if line:
            self.out(line)
        problem = (f"mq {rig}: error: {report.error}" if report.error else
                   f"mq {rig}: paused: {report.paused}" if report.paused else None)
        self._notice(rig, problem)

    def _notice(self, rig: str, problem: str | None) -> None:
        with self._lock:
            before = self._problem.get(rig)
            self._problem[rig] = problem
        if problem is not None and problem != before:
            self.out(problem.rstrip())
        elif problem is None and before is not None and " paused: " in before:
            self.out(f"mq {rig}: queue running again")

    def stop(self, grace: float = STOP_GRACE_S) -> None:
        """Let running steps finish (up to `grace`), then give back the leases of the rigs not
        stepping, so the next runner starts at once; a step still running keeps its lease
        until it expires, and the next runner adopts its requests."""
        deadline = time.monotonic() + grace
        with self._lock:
            threads = dict(self._threads)
        for thread in threads.values():
            thread.join(max(0.0, deadline - time.monotonic()))
        for rig in sorted(self.town.config.rigs):
            if rig not in self.stepping():
                ledger.release(self.town, rig, self.owner)


def observe(town: Town, sessions: TownSessions, workers: MergeWorkers | None = None) -> Observed:
    started, abandoned = [], []
    for p in polecat.list_polecats(town):
        if p.state is PolecatState.STARTED:
            started.append(StartedPolecat(
                p.rig, p.name, sessions.alive(Address(role=Role.POLECAT, rig=p.rig, name=p.name)),
                polecat.lock_held(polecat.gupp_lock(town, p.rig, p.name))))
        elif p.state is PolecatState.SPAWNING and not polecat.lock_held(polecat.spawn_lock(town, p.rig, p.name)):
            abandoned.append((p.rig, p.name))
    queues: tuple[MergeQueue, ...] = ()
    if workers is not None:
        work, busy = ledger.rigs_with_work(town), workers.stepping()
        queues = tuple(MergeQueue(rig, rig in work, rig in busy) for rig in sorted(town.config.rigs))
    tips = {name: git.resolve(town.layout.canonical_clone(name), f"refs/heads/{config.default_branch}")
            for name, config in sorted(town.config.rigs.items()) if town.layout.canonical_clone(name).is_dir()}
    return Observed(stale_exports=tuple(export.stale_kinds(town)), started_polecats=tuple(started),
                    abandoned_spawns=tuple(abandoned), merge_queues=queues,
                    beads_behind=tuple(beadsync.behind(town, tips)))


def act(town: Town, sessions: TownSessions, actions: list[Action], workers: MergeWorkers | None = None) -> None:
    for action in actions:
        if action.kind == "export":
            export.export_town(town)
        elif action.kind == "repair":
            rig, _, name = action.target.split("/")
            report = polecat.repair(town, sessions, rig, name, only_spawning=True)
            if report is not None:
                log.warning("repaired %s (%s): %s%s", report.address, report.why,
                            ", ".join(report.steps), f"; error: {report.error}" if report.error else "")
        elif action.kind == "kick":
            rig, _, name = action.target.split("/")
            # gupp takes the GUPP lock without waiting, so a later round never nudges twice.
            threading.Thread(target=polecat.gupp, args=(town, sessions, rig, name), daemon=True).start()
        elif action.kind == "merge" and workers is not None:
            workers.start(action.target)
        elif action.kind == "beads":  # the refinery moved the branch: a tracked bd file's news
            rig_mod.import_tracked_beads(town, action.target)


def patrol_once(town: Town, sessions: TownSessions, workers: MergeWorkers | None = None) -> list[Action]:
    actions = decide(observe(town, sessions, workers))
    act(town, sessions, actions, workers)
    return actions


def config_notice(before: str | None, now: str | None) -> str | None:
    """What to log about town.toml this round: once per change of state, never every 2 s.

    `before`/`now` are the load problem of the previous and this round (None: the file is good)."""
    if now == before:
        return None
    if now is None:
        return "town.toml is valid again; config reloaded"
    return f"{now}; keeping the last good config until the file is fixed"


def run_forever(town: Town, sessions: TownSessions, interval: float | None = None) -> None:
    """Patrol rounds until SIGTERM/SIGINT, every `interval` seconds (None: `[patrol] interval`
    of town.toml, read again each round, so an edit takes effect without a restart)."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    run_until(town, sessions, stop, interval)


def run_until(town: Town, sessions: TownSessions, stop: threading.Event, interval: float | None = None,
              out: Callable[[str], None] | None = None) -> None:
    """The runner's loop until `stop` is set (the runner sets it on a signal; the demo runs the
    same loop on a thread and sets it when its work is merged). `out` gets the loop's own lines."""
    say = out or (lambda line: print(line, flush=True))
    problem: str | None = None
    workers = MergeWorkers(town, sessions, out=say)
    rounds = Rounds(say)
    say(f"patrol: merge queues worked as {workers.owner}")
    try:
        while not stop.is_set():
            error = town.refresh_config()
            notice = config_notice(problem, str(error) if error else None)
            if notice:
                say(f"patrol: {notice}")
            problem = str(error) if error else None
            beat_runner(town)
            rounds.step(lambda: one_round(town, sessions, workers, say), town.config.patrol.heartbeat_stale_after)
            stop.wait(interval if interval is not None else town.config.patrol.interval)
    finally:
        workers.stop()
        rounds.join()


RUNNER_LOOP = "runner"  # the runner's own heartbeat: written by its main loop, even while a round hangs


def beat_runner(town: Town) -> None:
    """The runner process is alive (`status` reports its age; a dead runner stops beating)."""
    try:
        patrol_log.beat(town, RUNNER_LOOP)
    except Exception:  # noqa: BLE001 - a busy or full store must not end the loop
        log.warning("patrol: could not write the runner heartbeat:\n%s", traceback.format_exc())


def one_round(town: Town, sessions: TownSessions, workers: MergeWorkers | None,
              out: Callable[[str], None] | None = None) -> None:
    """The runner's patrol (exports, kicks, repairs, merges) then the witness and deacon rounds.
    A raise is logged with its traceback; the next round goes on."""
    say = out or (lambda line: print(line, flush=True))
    try:
        patrol_once(town, sessions, workers)
    except Exception:  # noqa: BLE001 - one round's bug must not end the runner
        say(f"patrol: round raised (the next round tries again):\n{traceback.format_exc()}")
    for event in deacon_patrol.patrols(town, sessions):  # the witness of every rig, then the deacon
        say(event_line(event))


class Rounds:
    """Runs patrol rounds on a thread of their own, one at a time, so a round that hangs (a
    stuck git or tmux call) never stops the loop: the runner's heartbeat goes on, no second
    round piles up behind it, and once it has run longer than `hang_after` its stack is logged
    (once) as the traceback of a hung patrol. When it returns, the next round starts."""

    def __init__(self, out: Callable[[str], None] | None = None) -> None:
        self.out = out or (lambda line: print(line, flush=True))
        self._thread: threading.Thread | None = None
        self._started = 0.0
        self._reported = False

    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def join(self, timeout: float = 30.0) -> None:
        """Wait for the round in progress (a clean stop must not leave a round writing)."""
        if self._thread is not None:
            self._thread.join(timeout)

    def step(self, work: Callable[[], None], hang_after: float) -> bool:
        """Start a round unless one still runs (then report it if hung). True if started."""
        if self.busy():
            self._check(hang_after)
            return False
        if self._reported:
            self.out(f"patrol: the hung round returned after {time.monotonic() - self._started:.0f}s")
        self._thread = threading.Thread(target=self._run, args=(work,), name="patrol-round", daemon=True)
        self._started, self._reported = time.monotonic(), False
        self._thread.start()
        return True

    def _run(self, work: Callable[[], None]) -> None:
        try:
            work()
        except Exception:  # noqa: BLE001 - a round never ends the loop
            self.out(f"patrol: round raised (the next round tries again):\n{traceback.format_exc()}")

    def _check(self, hang_after: float) -> None:
        age = time.monotonic() - self._started
        if self._reported or age <= hang_after or self._thread is None:
            return
        self._reported = True
        frame = sys._current_frames().get(self._thread.ident or -1)
        stack = "".join(traceback.format_stack(frame)) if frame is not None else "(no stack)"
        self.out(f"patrol: round hung for {age:.0f}s (> {hang_after:g}s); the loop goes on, "
                 f"no new round until it returns:\n{stack}")


def event_line(event: PatrolEvent) -> str:
    """One runner-log line per recorded patrol action (the store keeps it with its evidence)."""
    who = f" {event.agent}" if event.agent else ""
    outcome = "" if event.ok else " (failed)"
    return f"patrol: {event.patrol}: {event.action}{who}{outcome}: {event.reason}"


def log_event(event: PatrolEvent) -> None:
    print(event_line(event), flush=True)
