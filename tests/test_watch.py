"""`status --watch` and `--problems`: the problem rules as pure functions, and the real view in
a tmux pane (its own tmux server) over a real town whose "agents" are plain processes in
sessions on the town's own socket: the screen shows the agents, follows a sling and a state
change, filters to the agents with problems, and Ctrl-C ends it with status 0."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from vermas import beads, events, rig, sling
from vermas.addresses import parse_address
from vermas.events import AgentEvent, EventKind
from vermas.problems import Problem, WatchRow, only_problems, problems_of
from vermas.protocol import PolecatState
from vermas.sessions import TownSessions
from vermas.status import AgentRow
from vermas.town import Town

from tests.conftest import make_repo

RUNNER = str(Path(sys.executable).with_name("vermas-runner"))
NOW = 10_000.0
STUCK = 1800.0


def row(alive: bool = True, hooked: str | None = None, kind: str | None = "Stop", detail: str = "",
        at: float = NOW - 5) -> AgentRow:
    event = None if kind is None else AgentEvent(id=1, agent="r/polecats/nux", kind=kind, at=at, detail=detail)
    return AgentRow(address="r/polecats/nux", session="vermas-r-polecats-nux", alive=alive, hooked=hooked,
                    last_event=event)


# --------------------------------------------------------------------------- pure rules


@pytest.mark.parametrize(("agent", "state", "escalations", "expected"), [
    (row(), None, 0, []),
    (row(alive=False), None, 0, [Problem.DEAD]),
    (row(alive=False), PolecatState.DONE, 0, []),  # finished its work: gone is fine
    (row(kind="Notification", detail="permission_prompt"), None, 0, [Problem.WAITING]),
    (row(kind="Notification", detail="elicitation_dialog"), None, 0, [Problem.WAITING]),
    (row(kind="Notification", detail="idle_prompt"), None, 0, []),
    (row(alive=False, kind="Notification", detail="permission_prompt"), None, 0, [Problem.DEAD]),
    (row(hooked="sp-1", at=NOW - STUCK), None, 0, [Problem.STUCK]),
    (row(hooked="sp-1", at=NOW - STUCK + 1), None, 0, []),
    (row(hooked=None, at=NOW - 10 * STUCK), None, 0, []),  # quiet with nothing to do is idle, not stuck
    (row(hooked="sp-1", kind="Notification", detail="permission_prompt", at=NOW - 2 * STUCK), None, 0,
     [Problem.WAITING]),  # a prompt on screen says why it is quiet
    (row(hooked="sp-1", kind=None), None, 0, []),  # no event yet: starting
    (row(), PolecatState.ESCALATED, 0, [Problem.ESCALATED]),
    (row(alive=False), None, 2, [Problem.DEAD, Problem.ESCALATED]),
])
def test_problems_of(agent: AgentRow, state: str | None, escalations: int, expected: list[Problem]) -> None:
    assert problems_of(agent, state, escalations, NOW, STUCK) == expected


def test_only_problems_keeps_order() -> None:
    rows = [WatchRow(agent=row(), problems=[]), WatchRow(agent=row(alive=False), problems=[Problem.DEAD]),
            WatchRow(agent=row(), problems=[Problem.STUCK])]
    assert [r.problems for r in only_problems(rows)] == [[Problem.DEAD], [Problem.STUCK]]


# --------------------------------------------------------------------------- the view, for real


class Viewer:
    """A tmux server of this test's own with one pane running a command."""

    def __init__(self, argv: list[str], cwd: Path) -> None:
        # a socket in a folder of this test's own (short: a unix socket path is limited), so
        # nothing is left in the user's tmux folder after kill()
        self.folder = Path(tempfile.mkdtemp(prefix="vtw-"))
        self.socket = str(self.folder / "s")
        # tmux does not always record a dead pane's status, so a shell notes it (its trap lets
        # Ctrl-C reach the command alone, which then exits on its own)
        self.status_file = cwd / f".watch-exit-{uuid.uuid4().hex[:6]}"
        wrapped = ["sh", "-c", 'trap : INT; "$@"; echo "exit $?" > "$0"', str(self.status_file), *argv]
        env = {k: v for k, v in os.environ.items() if k not in ("VERMAS_TOWN", "BD_ACTOR", "TMUX")}
        self.tmux(["new-session", "-d", "-s", "view", "-x", "150", "-y", "45", "-c", str(cwd),
                   *[a for k, v in env.items() if k in ("PATH", "HOME", "LANG") for a in ("-e", f"{k}={v}")],
                   "env", "-u", "COLUMNS", "-u", "LINES", "TERM=xterm-256color", *wrapped,
                   ";", "set-option", "-w", "-t", "view:", "remain-on-exit", "on"])  # keep its last screen

    def tmux(self, args: list[str]) -> str:
        return subprocess.run(["tmux", "-S", self.socket, *args], capture_output=True, text=True, timeout=30).stdout

    def screen(self) -> str:
        return self.tmux(["capture-pane", "-p", "-S", "-50", "-t", "view"])

    def wait_for(self, check: object, what: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.screen()
            if check(screen):  # type: ignore[operator]
                return screen
            time.sleep(0.2)
        raise AssertionError(f"the watch never showed {what} within {timeout}s; screen:\n{screen}")

    def exit_status(self) -> str:
        return self.status_file.read_text().strip() if self.status_file.exists() else ""

    def kill(self) -> None:
        subprocess.run(["tmux", "-S", self.socket, "kill-server"], capture_output=True, timeout=30)
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture
def watched(town: Town, tmp_path: Path) -> Iterator[tuple[Town, TownSessions]]:
    rig.add(town, "sample", str(make_repo(tmp_path / "src")), prefix="sp")
    sessions = TownSessions(town.root)  # the town's own socket, private to this town's folder
    try:
        yield town, sessions
    finally:
        sessions.kill_server()


def line_of(screen: str, agent: str) -> str:
    return next((line for line in screen.splitlines() if f" {agent} " in line), "")


def start_agent(town: Town, sessions: TownSessions, address: str) -> None:
    """A stand-in for the agent's process: the view only asks tmux whether it runs."""
    assert sessions.start(parse_address(address), town.root, ["sleep", "600"], env={})


def test_watch_follows_the_store_and_ctrl_c_exits_cleanly(watched: tuple[Town, TownSessions]) -> None:
    town, sessions = watched
    start_agent(town, sessions, "mayor")
    viewer = Viewer([RUNNER, "status", "--watch", "--interval", "0.3", "--town", str(town.root)], town.root)
    try:
        viewer.wait_for(lambda s: " ok " in line_of(s, "mayor") and "dead" in line_of(s, "sample/witness"),
                        "mayor alive and the witness dead")
        bead = beads.create(town, parse_address("mayor"), "Watch me")
        sling.sling(town, parse_address("mayor"), bead.id, "mayor")
        viewer.wait_for(lambda s: bead.id in line_of(s, "mayor"), f"{bead.id} hooked on the mayor")
        events.record(town, "mayor", EventKind.NOTIFICATION, detail="permission_prompt")
        screen = viewer.wait_for(lambda s: "waiting" in line_of(s, "mayor"), "the mayor waiting on a prompt")
        assert "Notification:permission_prompt" in line_of(screen, "mayor")
        assert "merge queue sample: empty" in screen and "Ctrl-C to stop watching" in screen
        viewer.tmux(["send-keys", "-t", "view", "C-c"])
        deadline = time.monotonic() + 30
        while not viewer.exit_status():
            assert time.monotonic() < deadline, (viewer.exit_status(), viewer.screen())
            time.sleep(0.2)
        after = viewer.screen()
        assert viewer.exit_status() == "exit 0", after
        assert "stopped watching" in after and "Traceback" not in after
    finally:
        viewer.kill()


def test_problems_filter_shows_only_agents_with_problems(watched: tuple[Town, TownSessions]) -> None:
    town, sessions = watched
    for address in ("mayor", "sample/witness", "sample/refinery"):
        start_agent(town, sessions, address)
    viewer = Viewer([RUNNER, "status", "--watch", "--problems", "--interval", "0.3", "--town", str(town.root)],
                    town.root)
    try:
        viewer.wait_for(lambda s: "no problems" in s, "no problems")
        sessions.kill(parse_address("sample/refinery"))
        screen = viewer.wait_for(lambda s: "dead" in line_of(s, "sample/refinery"), "the refinery dead")
        assert line_of(screen, "mayor") == "" and line_of(screen, "sample/witness") == ""
        events.record(town, "mayor", EventKind.NOTIFICATION, detail="elicitation_dialog")
        screen = viewer.wait_for(lambda s: "waiting" in line_of(s, "mayor"), "the mayor waiting")
        assert line_of(screen, "sample/witness") == "" and "problems 2" in screen
    finally:
        viewer.kill()


@pytest.mark.slow
def test_the_header_counts_a_paused_queue_and_its_escalation_until_the_queue_resumes(
        town: Town, tmp_path: Path) -> None:
    """A real refinery step pauses the queue on a red target (one ESCALATION, recorded): the
    watch's header counts it with the agents' problems and its queue line says why; once the
    target is green again and the queue resumes, the count drops by one and the line is plain."""
    import json

    from tests.refinery_rig import MergeRig
    from vermas.refinery import ledger, worker

    mr = MergeRig(town, tmp_path)
    red = mr.push_upstream("upstream.txt", "BROKEN upstream\n")
    mr.work("add a", {"a.txt": "a\n"})
    assert worker.drain(town, "gt", "runner-1")[-1].paused

    def count() -> int:
        done = subprocess.run([RUNNER, "status", "--problems", "--json", "--town", str(town.root)],
                              capture_output=True, text=True, timeout=120, check=True)
        return len(json.loads(done.stdout))

    paused = count()
    viewer = Viewer([RUNNER, "status", "--watch", "--interval", "0.3", "--town", str(town.root)], town.root)
    try:
        screen = viewer.wait_for(lambda s: f"problems {paused}" in s, f"problems {paused}")
        assert f"merge queue gt: queued 1 (paused at {red[:12]}" in screen
        mr.push_upstream("upstream.txt", "fine now\n")
        worker.drain(town, "gt", "runner-1")
        assert ledger.queue_state(town, "gt").paused_sha is None
        screen = viewer.wait_for(lambda s: "merge queue gt: merged 1" in s, "the request merged")  # a redraw after
        # the queue's problem is gone from the rows and the header counts what --json counts now (an
        # agent of this shell-loop town may meanwhile turn stuck under load, so not a fixed number)
        done = subprocess.run([RUNNER, "status", "--problems", "--json", "--town", str(town.root)],
                              capture_output=True, text=True, timeout=120, check=True)
        assert not [r for r in json.loads(done.stdout) if r["kind"] == "queue"], done.stdout
        now = len(json.loads(done.stdout))
        assert now < paused or any(r["kind"] == "agent" for r in json.loads(done.stdout))
        screen = viewer.wait_for(lambda s: f"problems {now}" in s and "merge queue gt: merged 1" in s,
                                 f"problems {now}")
        [line] = [x for x in screen.splitlines() if x.startswith("merge queue gt:")]
        assert line.strip() == "merge queue gt: merged 1", screen  # no longer paused
    finally:
        viewer.kill()
        TownSessions(town.root).kill_server()
