"""The witness's hands: carry out decide_rig's typed actions, each recorded as a patrol event
with its reason and evidence (what was done, or why it failed or was skipped).

Work is never lost on the way: an agent whose rescue save failed gets nothing that ends its
session this round (restart, stop, reopen, nuke are skipped and recorded as such), and the
rescue itself never touches the working tree, the index or the branch: the worktree's files
are snapshotted through a temporary index into a commit whose parent is HEAD, and that commit
is stored under refs/vermas/rescue/<bead>/<time>. Unlike `git stash create`, the snapshot also
holds untracked files (not ignored ones), which is where a killed agent's new files are.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vermas import git, mail, patrol_log, polecat, protocol, timeutil
from vermas.addresses import Address, parse_address
from vermas.patrol_log import PatrolEvent
from vermas.patrol_types import Escalate, ResolveEscalation, SendMail
from vermas.protocol import PolecatState
from vermas.sessions import launch, nudge
from vermas.town import Town
from vermas.witness.decide import witness_of
from vermas.witness.types import (
    AckMail, GuppNudge, HookJudgment, NukePolecat, ReopenBead, Resling, RestartSession, ReworkRespawn, RigSeen,
    SaveRescue, StopSession, WitnessAction,
)

if TYPE_CHECKING:  # tmux is imported only where a session is touched
    from vermas.sessions import TownSessions

log = logging.getLogger("vermas.patrol")
RESCUE_AUTHOR = {"GIT_AUTHOR_NAME": "vermas witness", "GIT_AUTHOR_EMAIL": "witness@vermas.local",
                 "GIT_COMMITTER_NAME": "vermas witness", "GIT_COMMITTER_EMAIL": "witness@vermas.local"}
ENDS_SESSION = (RestartSession, StopSession, ReopenBead, NukePolecat)


def action_name(action: object) -> str:
    """RestartSession -> restart_session: the patrol event's `action`."""
    name = type(action).__name__
    return "".join(f"_{c.lower()}" if c.isupper() and i else c.lower() for i, c in enumerate(name))


def _git(cwd: Path, *args: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, env={**os.environ, "GIT_TERMINAL_PROMPT": "0", **(env or {})})
    if proc.returncode != 0:
        raise git.GitError(f"git {' '.join(args)} failed in {cwd}: {' '.join(proc.stderr.split())[:500]}")
    return proc.stdout.strip()


def save_rescue(worktree: Path, ref: str, message: str) -> tuple[str, int] | None:
    """Snapshot the worktree's changed and untracked files into a commit (parent HEAD) under
    `ref`, leaving the working tree, the real index and every branch as they are. Returns
    (commit, files saved), or None when there is nothing beyond HEAD to save."""
    index = Path(_git(worktree, "rev-parse", "--git-path", "index"))
    index = index if index.is_absolute() else worktree / index
    head = git.resolve(worktree, "HEAD")
    with tempfile.TemporaryDirectory(prefix="vermas-rescue-") as tmp:
        scratch = Path(tmp) / "index"
        if index.is_file():
            shutil.copyfile(index, scratch)
        env = {"GIT_INDEX_FILE": str(scratch), **RESCUE_AUTHOR}
        _git(worktree, "add", "--all", "--", ".", env=env)
        tree = _git(worktree, "write-tree", env=env)
        if head is not None and tree == _git(worktree, "rev-parse", f"{head}^{{tree}}"):
            return None
        changed = _git(worktree, "diff", "--name-only", head, tree) if head else _git(worktree, "ls-tree", "-r",
                                                                                       "--name-only", tree)
        files = len(changed.splitlines())
        commit = _git(worktree, "commit-tree", tree, *(["-p", head] if head else []), "-m", message, env=env)
    _git(worktree, "update-ref", "-m", "vermas rescue", ref, commit, "")  # "" old value: create, never overwrite
    return commit, files


def append_note(town: Town, bead: str, note: str) -> None:
    """One line added to the bead's notes (kept, never replaced), with the time."""
    stamp, ts = timeutil.now()
    with town.db.write() as conn:
        conn.execute("UPDATE issues SET notes = CASE WHEN notes = '' THEN ? ELSE notes || char(10) || ? END, "
                     "updated_at = ?, updated_ts = ? WHERE id = ?",
                     (f"[{stamp}] {note}", f"[{stamp}] {note}", stamp, ts, bead))
        town.db.touch("issues")


class _Done(Exception):
    """An action that was skipped on purpose (recorded with ok=False and its reason)."""


class WitnessActor:
    """One round's effects for one rig; `events` collects what was recorded."""

    def __init__(self, town: Town, sessions: TownSessions, seen: RigSeen, now: float) -> None:
        self.town, self.sessions, self.seen, self.now = town, sessions, seen, now
        self.rig = seen.rig
        self.patrol = f"witness:{self.rig}"
        self.sender = witness_of(self.rig)
        self.unsafe: set[str] = set()  # agents whose rescue save failed: nothing may end their session
        self.events: list[PatrolEvent] = []
        self.by_agent = {ev.agent: ev for ev in seen.polecats}

    def run(self, actions: list[WitnessAction]) -> list[PatrolEvent]:
        for action in actions:
            self.one(action)
        return self.events

    def _record(self, action: WitnessAction, ok: bool, evidence: dict[str, Any], note: str = "") -> None:
        agent = getattr(action, "agent", None)
        bead = getattr(action, "bead", None)
        key = getattr(action, "key", None) or getattr(action, "idempotency_key", None)
        reason = getattr(action, "reason", "") + (f" [{note}]" if note else "")
        ev = self.by_agent.get(agent or "")
        if ev is not None:
            evidence = {"git": ev.git.model_dump() if ev.git else None,
                        "tmux": ev.tmux.model_dump(exclude={"excerpt"}), "polecat_state": ev.polecat_state,
                        **evidence}
        try:
            self.events.append(patrol_log.record(self.town, self.patrol, action_name(action), reason, self.now,
                                                 agent, bead, key, evidence, ok))
        except Exception:  # noqa: BLE001 - the log must not stop the round; it says so on stderr
            log.exception("%s: could not record %s", self.patrol, action_name(action))

    def one(self, action: WitnessAction) -> None:
        agent = getattr(action, "agent", None)
        if isinstance(action, ENDS_SESSION) and agent in self.unsafe:
            self._record(action, False, {}, "skipped: its uncommitted work could not be saved first")
            return
        handler = getattr(self, f"_{action_name(action)}")
        try:
            evidence = handler(action)
        except _Done as skip:
            self._record(action, False, {}, f"skipped: {skip}")
            return
        except Exception as exc:  # noqa: BLE001 - one failed effect is recorded; the round goes on
            log.warning("%s: %s failed: %s", self.patrol, action_name(action), exc)
            if isinstance(action, SaveRescue):
                self.unsafe.add(action.agent)
            self._record(action, False, {"error": str(exc)[:1000]}, f"failed: {str(exc)[:200]}")
            return
        if evidence is not None:
            self._record(action, True, evidence)

    # ---- the effects, one per action type; each returns the evidence to record ---------------

    def _address(self, agent: str) -> Address:
        return parse_address(agent)

    def _worktree(self, agent: str) -> Path:
        a = self._address(agent)
        return polecat.worktree_path(self.town, a)

    def _save_rescue(self, a: SaveRescue) -> dict[str, Any]:
        worktree = self._worktree(a.agent)
        ref, n = a.ref, 1
        while git.has_ref(worktree, ref):  # two saves within one second: never overwrite the first
            n += 1
            ref = f"{a.ref}-{n}"
        note = a.note.replace(a.ref, ref)
        saved = save_rescue(worktree, ref, note)
        if saved is None:
            return {"ref": None, "saved": "nothing beyond HEAD"}
        commit, files = saved
        if a.bead:
            append_note(self.town, a.bead, f"{note} (commit {commit[:12]}, {files} files)")
        return {"ref": ref, "commit": commit, "files": files}

    def _restart_session(self, a: RestartSession) -> dict[str, Any]:
        address = self._address(a.agent)
        if address.rig is None or address.name is None:
            raise _Done(f"{a.agent} is not a polecat")
        lock = polecat.spawn_lock(self.town, address.rig, address.name)
        if not lock.acquire(wait=False):
            raise _Done("a spawn, repair or nuke of it is in progress")
        try:
            killed = self.sessions.kill(address)
            started = launch.start_agent(self.town, self.sessions, address)
            # `started`: its GUPP nudge is the runner's to deliver again (the hook resumes the work).
            polecat.set_state(self.town, address.rig, address.name, PolecatState.STARTED)
        finally:
            lock.release()
        return {"killed_old": killed, "started": started, "cwd": str(self._worktree(a.agent)), "attempt": a.attempt}

    def _gupp_nudge(self, a: GuppNudge) -> dict[str, Any]:
        address = self._address(a.agent)
        assert address.rig is not None and address.name is not None
        lock = polecat.gupp_lock(self.town, address.rig, address.name)
        if not lock.acquire(wait=False):  # the runner's kick (or a caller) is nudging right now
            if a.start:
                return {"attempt": a.attempt, "delivered_by": "whoever holds its GUPP lock (a runner's kick)"}
            raise _Done("its GUPP lock is held: someone is delivering a nudge")

        def deliver() -> None:
            try:
                result = nudge.nudge(self.town, self.sessions, address, launch.GUPP_NUDGE, sender=self.sender)
                if result.submitted:  # the confirmation a `started` slot waits for (as polecat.gupp records it)
                    polecat.set_state(self.town, str(address.rig), str(address.name), PolecatState.WORKING,
                                      only_from=PolecatState.STARTED)
            except Exception as exc:  # noqa: BLE001 - a thread's failure is logged, never raised
                log.warning("%s: GUPP nudge of %s failed: %s", self.patrol, address, exc)
            finally:
                lock.release()

        # Typing waits for an idle prompt (up to tens of seconds): never inside the round.
        threading.Thread(target=deliver, daemon=True, name=f"gupp-{address.session_name}").start()
        return {"attempt": a.attempt}

    def _stop_session(self, a: StopSession) -> dict[str, Any]:
        killed = self.sessions.kill(self._address(a.agent))
        return {"killed": killed, "worktree_kept": str(self._worktree(a.agent))}

    def _reopen_bead(self, a: ReopenBead) -> dict[str, Any]:
        address = self._address(a.agent)
        assert address.rig is not None and address.name is not None
        stamp, ts = timeutil.now()
        note = f"[{stamp}] {a.note}"
        with self.town.db.write() as conn:
            changed = conn.execute(
                "UPDATE issues SET status = 'open', assignee = NULL, notes = CASE WHEN notes = '' THEN ? "
                "ELSE notes || char(10) || ? END, updated_at = ?, updated_ts = ? "
                "WHERE id = ? AND status = 'hooked' AND assignee = ?",
                (note, note, stamp, ts, a.bead, a.agent)).rowcount
            if not changed:
                raise _Done(f"{a.bead} is no longer hooked by {a.agent}")
            # The slot is free for the next polecat; the worktree, branch and rescue refs stay.
            conn.execute("DELETE FROM polecats WHERE rig = ? AND name = ?", (address.rig, address.name))
            self.town.db.touch("issues")
        return {"branch": a.branch, "head": a.head, "commits": a.commits, "worktree_kept": str(self._worktree(a.agent))}

    def _ack_mail(self, a: AckMail) -> dict[str, Any]:
        state = mail.ack(self.town, parse_address(self.sender), a.id)
        return {"message": a.id, "acked_at": state.acked_at}

    def _send_mail(self, a: SendMail) -> dict[str, Any]:
        subject, body = protocol.format(a.message)
        sent = mail.send(self.town, parse_address(self.sender), a.to, subject, body,
                         idempotency_key=a.idempotency_key)
        return {"to": a.to, "message": sent.id, "subject": subject}

    def _escalate(self, a: Escalate) -> dict[str, Any] | None:
        event = patrol_log.raise_escalation(self.town, self.patrol, self.sender, a.key, a.to, a.message, a.reason,
                                            self.now, a.agent)
        if event is not None:
            self.events.append(event)
        return None  # recorded (or standing already) inside the escalation's own transaction

    def _resolve_escalation(self, a: ResolveEscalation) -> dict[str, Any] | None:
        event = patrol_log.resolve(self.town, self.patrol, a.key, a.reason, self.now)
        if event is not None:
            self.events.append(event)
        return None

    def _hook_judgment(self, a: HookJudgment) -> dict[str, Any]:
        from vermas import beads  # deferred: beads imports mail/permissions; only HELP needs it here

        witness = parse_address(a.to)
        bead = beads.create(self.town, witness, a.title, description=a.description, rig=self.rig)
        stamp, ts = timeutil.now()
        with self.town.db.write() as conn:
            conn.execute("UPDATE issues SET status = 'hooked', assignee = ?, updated_at = ?, updated_ts = ? "
                         "WHERE id = ?", (a.to, stamp, ts, bead.id))
            self.town.db.touch("issues")
        return {"bead": bead.id, "hooked_to": a.to}

    def _nuke_polecat(self, a: NukePolecat) -> dict[str, Any]:
        address = self._address(a.agent)
        assert address.rig is not None and address.name is not None
        info = polecat.nuke(self.town, address.rig, address.name, sessions=self.sessions)
        return {"notes": info.notes}

    def _rework_respawn(self, a: ReworkRespawn) -> dict[str, Any]:
        """Free the branch (uncommitted work saved first, never lost), a new polecat on it with
        the REWORK_REQUEST in its inbox (same transaction as its hooking), then the ack."""
        saved, freed = [], []
        for n, worktree in enumerate(polecat.checkouts_of(self.town, self.rig, a.branch), 1):
            ref = a.rescue_ref if n == 1 else f"{a.rescue_ref}-{n}"
            kept = save_rescue(worktree, ref, f"uncommitted work in {worktree} saved before its rework respawn")
            if kept is not None:
                append_note(self.town, a.bead, f"uncommitted changes ({kept[1]} files) in {worktree} saved to {ref} "
                                               f"(commit {kept[0][:12]}) before the rework went to a new polecat")
                saved.append(ref)
            freed.append(polecat.free_checkout(self.town, self.sessions, self.rig, worktree) or str(worktree))
        subject, body = protocol.format(a.message)

        def hand_over(conn: sqlite3.Connection, to: Address) -> None:
            mail.send_in_txn(conn, self.town.db, self.sender, str(to), subject, body,
                             idempotency_key=f"rework:{a.mail_id}")
            stamp = timeutil.now()[0]
            note = f"[{stamp}] rework: continue on branch {a.branch} (its commits kept); read the REWORK_REQUEST"
            conn.execute("UPDATE issues SET notes = CASE WHEN notes = '' THEN ? ELSE notes || char(10) || ? END "
                         "WHERE id = ?", (note, note, a.bead))

        info = polecat.respawn_on_branch(self.town, self.sessions, parse_address(self.sender), a.bead, self.rig,
                                         a.branch, in_txn=hand_over)
        mail.ack(self.town, parse_address(self.sender), a.mail_id)
        return {"new_polecat": info.address, "branch": a.branch, "worktree": info.worktree, "freed": freed,
                "rescued": saved}

    def _resling(self, a: Resling) -> dict[str, Any]:
        """A new polecat on the orphan's own branch (its commits are the start), under the name
        the branch carries when that is free (its kept worktree is then reused as it is); the
        runner's patrol delivers its GUPP nudge. A failed spawn rolls back and keeps the branch."""
        parts = a.branch.split("/")
        prefer = parts[1] if len(parts) == 3 and parts[0] == "polecat" else None
        info = polecat.spawn(self.town, parse_address(self.sender), a.bead, self.rig, self.sessions, kick="none",
                             branch=a.branch, prefer=prefer)
        return {"polecat": info.address, "branch": info.branch, "worktree": info.worktree}


def act_rig(town: Town, sessions: TownSessions, seen: RigSeen, actions: list[WitnessAction],
            now: float) -> list[PatrolEvent]:
    return WitnessActor(town, sessions, seen, now).run(actions)


def describe(event: PatrolEvent) -> str:
    """One log line for an event."""
    who = event.agent or event.key or "-"
    return f"{event.patrol} {event.action} {who}: {event.reason}" + ("" if event.ok else " (not done)")

