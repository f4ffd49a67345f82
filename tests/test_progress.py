"""Progress of long work, as a log or a pipe sees it (plain lines, no escape codes): the
Reporter itself, `up` per session, and the runner's line per merge step, from a real runner
whose refinery worker processes a real merge request. (`verify`'s lines are checked in
test_inspector_cli.py, the demo's in test_readme_commands.py, `up` with its GUPP waits in
test_town_e2e.py.)"""

from __future__ import annotations

import io
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path


from vermas import beads, progress, rig
from vermas.addresses import parse_address
from vermas.progress import ProgressEvent, Reporter
from vermas.refinery import ledger
from vermas.refinery.types import MRState
from vermas.town import Town

from tests.conftest import make_repo
from tests.test_runner_lock import runner, town  # noqa: F401 - its `town` fixture: sessions run bash sleeping

RUNNER = str(Path(sys.executable).with_name("vermas-runner"))


def test_plain_lines_one_per_change() -> None:
    out = io.StringIO()
    with Reporter(out) as show:
        show(ProgressEvent("mayor", "starting its session"))
        show(ProgressEvent("mayor", "starting its session"))  # no news: no line
        show(ProgressEvent("demo", "polecats finished", 1, 3))
        show(ProgressEvent("demo", "polecats finished", 3, 3, finished=True))
        show(ProgressEvent("verify sp-1", "designer: 2 criteria", 1, None))
    assert out.getvalue().splitlines() == [
        "mayor: starting its session", "demo: polecats finished (1/3)", "demo: polecats finished (3/3)",
        "verify sp-1: designer: 2 criteria (1)"]


def test_terminal_form_draws_with_rich() -> None:
    out = io.StringIO()
    with Reporter(out, tty=True) as show:
        show(ProgressEvent("sample/witness", "waiting for its prompt"))
        show(ProgressEvent("sample/witness", "ready and nudged (GUPP)", finished=True))
    text = out.getvalue()
    assert "sample/witness" in text and "ready and nudged" in text


def test_up_reports_each_session_as_plain_lines(town: Town) -> None:  # noqa: F811
    first = runner(town, "up", "--once", "--no-wait")
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert "mayor: starting its session" in lines and "mayor: session up" in lines
    assert lines.index("mayor: starting its session") < lines.index("mayor: session up") < lines.index("started mayor")
    assert "\x1b" not in first.stdout
    again = runner(town, "up", "--once", "--no-wait")
    assert "mayor:" not in again.stdout and "already running mayor" in again.stdout


def test_merge_steps_from_the_ledger(town: Town, tmp_path: Path) -> None:  # noqa: F811
    rig.add(town, "sample", str(make_repo(tmp_path / "src")), prefix="sp")
    bead = beads.create(town, parse_address("overseer"), "Merge me", rig="sample")
    with town.db.read() as conn:
        start = progress.last_merge_seq(conn)
    mr = ledger.enqueue(town, rig="sample", bead=bead.id, polecat="sample/polecats/nux",
                        branch=f"polecat/nux/{bead.id}", commit="0" * 40)
    ledger.reject(town, mr.id, "sample/refinery", "superseded")
    with town.db.read() as conn:
        steps = progress.merge_steps_after(conn, start)
    lines = [progress.plain_line(progress.merge_event(s)) for s in steps]
    assert lines == [f"merge sample {bead.id} ({mr.id}): new -> queued: polecat_done",
                     f"merge sample {bead.id} ({mr.id}): queued -> rejected: superseded"]
    assert progress.merge_event(steps[-1]).finished and not progress.merge_event(steps[-1]).ok


class Output:
    """A process's output lines, read by one thread, so a silent process cannot hang the test."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        out = proc.stdout

        def pump() -> None:
            for line in out:
                self.lines.put(line.rstrip("\n"))
            self.lines.put(None)

        threading.Thread(target=pump, daemon=True).start()

    def until(self, wanted: str, timeout: float = 120) -> list[str]:
        """Every line so far, once one containing `wanted` has come."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                continue
            if line is None:
                break
            self.seen.append(line)
            if wanted in line:
                return self.seen
        raise AssertionError(f"no line with {wanted!r} within {timeout}s; the runner said:\n" + "\n".join(self.seen))


def test_runner_prints_a_line_per_merge_step(town: Town, tmp_path: Path) -> None:  # noqa: F811
    """A request whose branch does not exist: the rig's worker claims it and rejects it, and the
    runner's output (its log when detached) says so, step by step."""
    rig.add(town, "sample", str(make_repo(tmp_path / "src")), prefix="sp")
    town.config.rigs["sample"].verify_level = "off"  # no model here: `up` refuses a rig it cannot verify
    town.save_config()
    proc = subprocess.Popen([RUNNER, "up", "--no-wait", "--town", str(town.root)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    out = Output(proc)
    try:
        out.until("patrolling")
        bead = beads.create(town, parse_address("overseer"), "Merge me", rig="sample")
        mr = ledger.enqueue(town, rig="sample", bead=bead.id, polecat="sample/polecats/nux",
                            branch=f"polecat/nux/{bead.id}", commit="0" * 40)
        seen = out.until("-> rejected")
        steps = [line for line in seen if line.startswith(f"merge sample {bead.id} ({mr.id}): ")]
        assert steps[0].endswith("new -> queued: polecat_done") and "queued -> claimed" in steps[1], seen
        assert steps[-1].split(": ", 1)[1].startswith("claimed -> rejected"), seen
        assert ledger.get(town, mr.id).state is MRState.REJECTED
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
