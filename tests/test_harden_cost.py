"""Issue 20, items 5 and 9: transcript paths come from hook input, so reading them must never
block and never stop counting. Real files: a real FIFO (os.mkfifo) noted by the real hook,
`cost` and `status --json` run as the shell runs them, and a real transcript with a line over
the read limit (64 MiB; lowered through the module constant for the fast tests, and once at
the real limit).

- A FIFO (or a folder, or a path outside the agent's Claude config folder) as a transcript
  path: `cost` returns promptly, reports it once, and counts the other transcripts.
- A line longer than MAX_READ is skipped, reported once, and usage after it is counted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_cost import POLECAT, USAGE, assistant, lines, note_transcript
from vermas import cost
from vermas.town import Town

PROMPT_S = 60.0  # generous (a loaded machine); before the fix the FIFO blocked `cost` forever


@pytest.fixture
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The agents' Claude config folder, where Claude Code writes transcripts."""
    folder = tmp_path / "claude-config"
    (folder / "projects" / "town").mkdir(parents=True)
    monkeypatch.setenv("CLAUDE_CONFIG_DIR", str(folder))
    return folder


def runner(town: Town, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"VERMAS_TOWN": str(town.root), "BD_ACTOR": "mayor", "PATH": str(Path(sys.executable).parent),
           "CLAUDE_CONFIG_DIR": str(config), "HOME": str(config.parent)}
    return subprocess.run([str(Path(sys.executable).parent / "vermas-runner"), *args], env=env,
                          capture_output=True, text=True, timeout=PROMPT_S)


def test_a_fifo_as_transcript_never_blocks_cost_or_status_and_is_reported_once(town: Town, config_dir: Path) -> None:
    good = config_dir / "projects" / "town" / "good.jsonl"
    good.write_bytes(lines(assistant("msg_a", time.time() - 60, USAGE)))
    fifo = config_dir / "projects" / "town" / "fifo.jsonl"
    os.mkfifo(fifo)
    note_transcript(town, good)
    note_transcript(town, fifo)

    started = time.monotonic()
    first = runner(town, config_dir, "cost", "--json")
    assert first.returncode == 0, first.stderr
    assert time.monotonic() - started < PROMPT_S
    report = json.loads(first.stdout)
    assert report["total"]["messages"] == 1  # the good transcript still counts
    assert report["problems"] == [f"transcript {fifo} of {POLECAT} refused: not a regular file"]
    assert report["refused_transcripts"] == [f"{fifo}: not a regular file"]

    again = json.loads(runner(town, config_dir, "cost", "--json").stdout)
    assert again["problems"] == []  # reported once, not every round
    assert again["refused_transcripts"] == [f"{fifo}: not a regular file"] and again["total"]["messages"] == 1

    status = runner(town, config_dir, "status", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["cost"]["total"]["messages"] == 1


def test_paths_outside_the_config_folder_folders_and_links_are_refused(town: Town, config_dir: Path,
                                                                       tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.jsonl"
    outside.write_bytes(lines(assistant("msg_out", 1.0, USAGE)))
    outside_fifo = tmp_path / "outside-fifo"
    os.mkfifo(outside_fifo)
    link = config_dir / "projects" / "town" / "link.jsonl"
    link.symlink_to(outside_fifo)  # under the folder by name, a FIFO outside it in fact
    folder = config_dir / "projects" / "town" / "folder.jsonl"
    folder.mkdir()
    for path in (outside, link, folder):
        note_transcript(town, path)
    found: list[str] = []
    assert cost.refresh(town, found) == 0
    assert found == [f"transcript {folder} of {POLECAT} refused: not a regular file"]  # marked, reported once
    for _ in range(2):  # outside the folder: never opened, listed in every report (config can change)
        report = cost.cost_report(town)
        assert report.problems == [] and report.total.messages == 0 and report.missing_transcripts == 0
        refused = dict(r.split(": ", 1) for r in report.refused_transcripts)
        assert set(refused) == {str(outside), str(link), str(folder)}
        assert refused[str(outside)].startswith("not under the agent's Claude config folder")
        assert refused[str(link)].startswith("not under") and refused[str(folder)] == "not a regular file"
    (config_dir / "projects" / "town" / "moved.jsonl").write_bytes(outside.read_bytes())
    link.unlink()
    link.symlink_to(config_dir / "projects" / "town" / "moved.jsonl")  # the link now leads inside
    assert cost.cost_report(town).total.messages == 1


def oversized(size: int) -> bytes:
    """One transcript line of `size` bytes that mentions usage (so the parser would try it)."""
    head = b'{"type":"user","note":"usage","content":"'
    return head + b"x" * (size - len(head) - 3) + b'"}\n'


@pytest.mark.parametrize("factor", [2, 7])  # the line spans two reads, and several
def test_a_line_over_the_read_limit_is_skipped_once_and_the_rest_is_counted(
        town: Town, config_dir: Path, monkeypatch: pytest.MonkeyPatch, factor: int) -> None:
    monkeypatch.setattr(cost, "MAX_READ", 4096)
    path = config_dir / "projects" / "town" / "big.jsonl"
    path.write_bytes(lines(assistant("msg_a", 1.0, USAGE)) + oversized(factor * 4096 + 100)
                     + lines(assistant("msg_b", 2.0, USAGE)))
    note_transcript(town, path)
    first = cost.cost_report(town)
    second = cost.cost_report(town)  # the rest of a long line is read on by the next refresh at most
    third = cost.cost_report(town)
    assert third.total.messages == 2, (first, second, third)
    skips = [p for r in (first, second, third) for p in r.problems]
    assert len(skips) == 1 and "a line over 4096 bytes at byte" in skips[0] and str(path) in skips[0]
    with town.db.read() as conn:
        assert conn.execute("SELECT read_offset FROM agent_transcripts").fetchone()[0] == path.stat().st_size
    with path.open("ab") as fh:  # counting goes on as the transcript grows
        fh.write(lines(assistant("msg_c", 3.0, USAGE)))
    assert cost.cost_report(town).total.messages == 3


def test_a_line_being_written_under_the_limit_is_waited_for_not_skipped(
        town: Town, config_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cost, "MAX_READ", 4096)
    path = config_dir / "projects" / "town" / "partial.jsonl"
    whole = lines(assistant("msg_a", 1.0, USAGE))
    path.write_bytes(whole[:-20])
    note_transcript(town, path)
    assert cost.cost_report(town).problems == []
    path.write_bytes(whole)
    assert cost.cost_report(town).total.messages == 1


def test_a_line_over_64_mib_at_the_real_limit(town: Town, config_dir: Path) -> None:
    assert cost.MAX_READ == 64 * 1024 * 1024
    path = config_dir / "projects" / "town" / "huge.jsonl"
    with path.open("wb") as fh:
        fh.write(lines(assistant("msg_a", 1.0, USAGE)))
        fh.write(oversized(cost.MAX_READ + 1024 * 1024))
        fh.write(lines(assistant("msg_b", 2.0, USAGE)))
    note_transcript(town, path)
    started = time.monotonic()
    report = cost.cost_report(town)  # one refresh: the skip and the rest (READS_PER_REFRESH)
    assert report.total.messages == 2
    assert len(report.problems) == 1 and "a line over 67108864 bytes" in report.problems[0]
    assert cost.cost_report(town).problems == []
    assert time.monotonic() - started < 60


def test_the_dashboards_cost_panel_never_blocks_on_a_fifo(town: Town, config_dir: Path) -> None:
    import threading

    from vermas.dashboard import view

    good = config_dir / "projects" / "town" / "good.jsonl"
    good.write_bytes(lines(assistant("msg_a", time.time() - 60, USAGE)))
    fifo = config_dir / "projects" / "town" / "fifo.jsonl"
    os.mkfifo(fifo)
    note_transcript(town, fifo)
    note_transcript(town, good)
    got: list[cost.CostReport | None] = []
    worker = threading.Thread(target=lambda: got.append(view.cost_section(town)), daemon=True)
    worker.start()
    worker.join(PROMPT_S)
    if worker.is_alive():  # blocked on the FIFO: give it a writer so the thread ends, then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(10)
        pytest.fail("the dashboard's cost panel blocked on a FIFO transcript")
    report = got[0]
    assert report is not None and report.total.messages == 1
    assert report.problems == [f"transcript {fifo} of {POLECAT} refused: not a regular file"]
