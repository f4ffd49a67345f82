"""The witness and deacon patrols end to end: a real town booted by `vermas-runner up --model
standin --detach` (the runner's loop runs every patrol), the real Claude Code CLI in tmux on the
town's private socket, a rig on a bare upstream with a real refinery; only the model is the
stand-in, each polecat scripted by its bead's `standin:` lines. Small `[patrol]` thresholds, so a
wrong nudge or restart would fire within the test. Evidence: the patrol_events table, the store
and git."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import git, make_repo
from vermas import beads, polecat, rig
from vermas.addresses import parse_address
from vermas.sessions import TownSessions
from vermas.testing.standin import find_claude_binary
from vermas.testing.standin.polecat import SLEPT_MARKER
from vermas.witness.decide import RESCUE_PREFIX
from vermas.town import Town

pytestmark = pytest.mark.skipif(find_claude_binary() is None,
                                reason="Claude Code CLI not installed (scripts/setup.sh installs it)")
RUNNER = str(Path(sys.executable).with_name("vermas-runner"))
RIG = "sample"
MAYOR = parse_address("mayor")
PATROL = {"gupp_first": 10, "gupp_factor": 1, "gupp_max_nudges": 1, "max_restarts": 1, "grace": 60,
          "stuck_after": 60, "deacon_backoff": 1, "crash_loop_restarts": 2, "crash_loop_window": 60}


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("VERMAS_TOWN", "BD_ACTOR", "CLAUDECODE")}


class PatrolTown:
    def __init__(self, root: Path, bare: Path) -> None:
        self.root, self.bare = root, bare
        self.town = Town.open(root)
        self.sessions = TownSessions(root)

    def run(self, *args: str, timeout: float = 300) -> str:
        proc = subprocess.run([RUNNER, *args, "--town", str(self.root)], capture_output=True, text=True,
                              timeout=timeout, env=_env())
        assert proc.returncode == 0, f"vermas-runner {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout

    def sling(self, title: str, lines: str) -> tuple[str, str]:
        """A bead with these `standin:` lines slung to the rig: (bead id, polecat address)."""
        bead = beads.create(self.town, MAYOR, title, description=lines, rig=RIG).id
        out = json.loads(self.run("sling", bead, RIG, "--json"))
        return bead, str(out["assignee"])

    def events(self, agent: str | None = None, bead: str | None = None) -> list[dict[str, Any]]:
        where, args = [], []
        for column, value in (("agent", agent), ("bead", bead)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        sql = "SELECT action, agent, bead, reason, evidence, at FROM patrol_events"
        with self.town.db.read() as conn:
            rows = conn.execute(sql + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY seq",
                                args).fetchall()
        return [dict(zip(("action", "agent", "bead", "reason", "evidence", "at"), r, strict=True)) for r in rows]

    def actions(self, **kw: str) -> list[str]:
        return [e["action"] for e in self.events(**kw)]

    def bead_status(self, bead: str) -> str:
        with self.town.db.read() as conn:
            return str(conn.execute("SELECT status FROM issues WHERE id = ?", (bead,)).fetchone()[0])

    def diagnostics(self) -> str:
        out = [f"patrol events: {[(e['action'], e['agent'], e['bead'], e['reason'][:120]) for e in self.events()]}"]
        for name in self.sessions.names():
            address = parse_address(name.removeprefix("vermas-").replace("-", "/"))
            tail = "\n".join(self.sessions.capture(address).rstrip().splitlines()[-15:])
            out.append(f"--- pane {name} ---\n{tail}")
        log = self.town.layout.runner_log
        if log.exists():
            out.append("--- runner log (tail) ---\n" + "\n".join(log.read_text().splitlines()[-30:]))
        return "\n".join(out)

    def wait(self, what: str, cond: Callable[[], bool], timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return
            time.sleep(1)
        raise AssertionError(f"{what}: not within {timeout}s\n{self.diagnostics()}")


@pytest.fixture(scope="module")
def pt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PatrolTown]:
    base = tmp_path_factory.mktemp("patrol")
    town, _ = Town.init(base / "town")
    bare = base / "upstream.git"
    git(make_repo(base / "seed"), "clone", "-q", "--bare", ".", str(bare))
    rig.add(town, RIG, str(bare), prefix="sp", max_polecats=4, test_command="true")
    config = town.config.rigs[RIG]
    town.config.rigs[RIG] = config.model_copy(update={"verify_level": "off"})
    town.config.patrol = town.config.patrol.model_copy(update=PATROL)
    town.save_config()
    town.close()
    handle = PatrolTown(town.root, bare)
    try:
        handle.run("up", "--model", "standin", "--detach")
        yield handle
    finally:
        subprocess.run([RUNNER, "down", "--town", str(town.root)], capture_output=True, timeout=120, env=_env())
        handle.sessions.kill_server()
        handle.town.close()


def slept(worktree: Path) -> bool:
    """The stand-in's sleep-once marker is in this worktree's git folder: its first Bash call runs."""
    if not worktree.exists():
        return False
    try:
        return Path(git(worktree, "rev-parse", "--git-path", SLEPT_MARKER)).exists() or \
            (worktree / git(worktree, "rev-parse", "--git-path", SLEPT_MARKER)).exists()
    except subprocess.CalledProcessError:
        return False


def test_a_polecat_killed_mid_tool_is_restarted_in_its_worktree_and_its_bead_merged(pt: PatrolTown) -> None:
    bead, address = pt.sling("killed mid-work", "standin: write killed.txt = survived\nstandin: sleep-once 90\n")
    agent = parse_address(address)
    worktree = polecat.worktree_path(pt.town, agent)
    pt.wait(f"{address} sleeping in its Bash call", lambda: slept(worktree))
    assert pt.sessions.kill(agent)
    pt.wait(f"{address} restarted", lambda: "restart_session" in pt.actions(agent=address))
    [restart] = [e for e in pt.events(agent=address) if e["action"] == "restart_session"]
    assert restart["bead"] == bead
    pt.wait(f"{bead} merged", lambda: pt.bead_status(bead) == "closed", timeout=300)
    assert git(pt.bare, "show", "main:killed.txt") == "survived"
    # the new session went on in the same worktree and branch: one merge request, from that branch
    assert "same worktree" in restart["reason"]
    with pt.town.db.read() as conn:
        branches = [r[0] for r in conn.execute("SELECT branch FROM merge_requests WHERE bead_id = ?", (bead,))]
    assert branches == [polecat.branch_name(str(agent.name), bead)]
    assert pt.actions(agent=address, bead=bead).count("restart_session") == 1, pt.diagnostics()


def test_a_polecat_that_ends_its_turn_without_polecat_done_is_nudged_and_finishes(pt: PatrolTown) -> None:
    bead, address = pt.sling("forgot polecat_done", "standin: write nudged.txt = finished\nstandin: skip-done 1\n")
    pt.wait(f"{address} nudged", lambda: "gupp_nudge" in pt.actions(agent=address, bead=bead))
    pt.wait(f"{bead} merged", lambda: pt.bead_status(bead) == "closed", timeout=300)
    assert git(pt.bare, "show", "main:nudged.txt") == "finished"
    done = pt.actions(agent=address, bead=bead)
    assert "restart_session" not in done and "escalate" not in done, pt.diagnostics()


def test_a_polecat_that_never_finishes_is_escalated_with_its_bead_reopened_and_work_kept(pt: PatrolTown) -> None:
    bead, address = pt.sling("never done", "standin: leave left.txt = unsaved work\nstandin: never-done\n")
    agent = parse_address(address)
    branch = polecat.branch_name(str(agent.name), bead)
    pt.wait(f"{address} escalated", lambda: "escalate" in pt.actions(agent=address, bead=bead), timeout=300)
    actions = pt.actions(agent=address, bead=bead)
    # the limits first: a nudge, then its one restart, then the bead goes back
    assert "gupp_nudge" in actions and actions.count("restart_session") == 1, actions
    assert actions.index("gupp_nudge") < actions.index("restart_session") < actions.index("reopen_bead"), actions
    assert actions.count("escalate") == 1
    assert pt.bead_status(bead) == "open"
    clone = rig.canonical_clone(pt.town, RIG)
    assert git(clone, "rev-parse", "--verify", "-q", f"refs/heads/{branch}")  # the branch stays
    refs = git(clone, "for-each-ref", "--format=%(refname)", RESCUE_PREFIX).split()
    assert refs and any(git(clone, "show", f"{ref}:left.txt") == "unsaved work" for ref in refs), refs
    with pt.town.db.read() as conn:
        mail = conn.execute("SELECT body FROM messages WHERE kind = 'ESCALATION' AND recipient = 'mayor' "
                            "AND body LIKE ?", (f"%{bead}%",)).fetchall()
    assert len(mail) == 1, mail


def test_a_polecat_running_a_long_tool_is_never_nudged_or_restarted(pt: PatrolTown) -> None:
    # 40 s of Bash: four times gupp_first, beyond grace's share; a wrong nudge or restart would fire
    bead, address = pt.sling("long tool", "standin: write long.txt = patient\nstandin: sleep 40\n")
    pt.wait(f"{bead} merged", lambda: pt.bead_status(bead) == "closed", timeout=300)
    assert git(pt.bare, "show", "main:long.txt") == "patient"
    wrong = [a for a in pt.actions(agent=address, bead=bead) if a in ("gupp_nudge", "restart_session", "escalate")]
    assert wrong == [], pt.diagnostics()


def mayor_alive(pt: PatrolTown) -> bool:
    info = pt.sessions.info(MAYOR)
    return info.alive and not info.dead and info.pid is not None


def test_a_killed_mayor_is_restarted_by_the_deacon(pt: PatrolTown) -> None:
    before = pt.sessions.info(MAYOR).pid
    assert before is not None and pt.sessions.kill(MAYOR)
    pt.wait("mayor restarted", lambda: "restart_agent" in pt.actions(agent="mayor"))
    pt.wait("mayor's new session up", lambda: mayor_alive(pt))
    assert pt.sessions.info(MAYOR).pid != before
    assert pt.actions(agent="mayor").count("restart_agent") == 1


def test_a_crash_looping_mayor_is_escalated_once_and_left_stopped(pt: PatrolTown) -> None:
    # crash_loop_restarts = 2 within 60 s: the restart above plus one more, then a death is a loop
    pt.wait("mayor up", lambda: mayor_alive(pt))
    assert pt.sessions.kill(MAYOR)
    pt.wait("mayor restarted again", lambda: pt.actions(agent="mayor").count("restart_agent") == 2)
    pt.wait("mayor's new session up", lambda: mayor_alive(pt))
    assert pt.sessions.kill(MAYOR)
    pt.wait("crash loop escalated", lambda: "escalate" in pt.actions(agent="mayor"))
    time.sleep(10)  # five more patrol rounds (interval 2 s): no restart, no second escalation, whatever they see
    actions = pt.actions(agent="mayor")
    assert actions.count("restart_agent") == 2 and actions.count("escalate") == 1, actions
    [esc] = [e for e in pt.events(agent="mayor") if e["action"] == "escalate"]
    assert "crash loop" in esc["reason"] and not mayor_alive(pt)
