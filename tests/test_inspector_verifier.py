"""The Verifier with real subprocesses: evidence, containment, scrubbed environment, parallelism."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.conftest import process_gone
from vermas.inspector.models import TestSpec
from vermas.contain import OutputCap
from vermas.inspector.verifier import run_command, run_tests


@pytest.fixture(autouse=True)
def _process_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests read the test's PIDs from outside, so they run in process mode (no PID
    namespace); tests/test_containment.py covers both modes."""
    monkeypatch.setenv("VERMAS_CONTAIN", "process")


def test_pass_and_fail_with_evidence(tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_text("hello\n")
    ok = run_command("cat f.txt", tmp_path, 10)
    assert (ok.exit_code, ok.output, ok.failure, ok.truncated) == (0, "hello\n", None, False)
    bad = run_command("echo to-stdout; echo to-stderr >&2; exit 4", tmp_path, 10)
    assert bad.exit_code == 4 and bad.failure == "exit code 4"
    assert bad.output == "to-stdout\nto-stderr\n"  # both streams, in order
    assert bad.duration_s < 5


def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    start = time.monotonic()
    ev = run_command(f"for i in 1 2 3; do sleep 300 & echo $! >> {pids}; done; sleep 300", tmp_path, 1)
    assert time.monotonic() - start < 4
    assert ev.timed_out and ev.signal == "SIGKILL" and ev.exit_code is None
    children = [int(p) for p in pids.read_text().split()]
    assert len(children) == 3 and all(process_gone(p) for p in children)


def test_background_leftovers_die_when_the_test_ends(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    start = time.monotonic()
    ev = run_command(f"sleep 300 & echo $! > {pids}; echo started", tmp_path, 30)
    assert time.monotonic() - start < 4  # the child holding the pipe does not keep the run waiting
    assert ev.exit_code == 0 and ev.output == "started\n" and not ev.timed_out
    assert process_gone(int(pids.read_text()))


def test_a_test_that_closes_its_output_but_runs_on_keeps_its_deadline(tmp_path: Path) -> None:
    ev = run_command("exec >/dev/null 2>&1; sleep 300", tmp_path, 1)
    assert ev.timed_out and ev.failure and ev.failure.startswith("timed out")
    quick = run_command("exec >/dev/null; sleep 0.3; exit 5", tmp_path, 10)
    assert quick.exit_code == 5 and not quick.timed_out  # not killed merely for closing stdout


def test_escaped_process_cannot_stall_the_run(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    start = time.monotonic()
    ev = run_command(f"setsid sh -c 'echo $$ > {pids}; sleep 300' & sleep 0.3; echo done", tmp_path, 30)
    try:
        assert time.monotonic() - start < 5 and ev.exit_code == 0 and "done" in ev.output
    finally:
        if pids.exists():
            try:  # it left our group on purpose (its own session and group): clean that group up here
                os.killpg(int(pids.read_text()), 9)
            except ProcessLookupError:
                pass


def test_output_is_capped_while_streaming(tmp_path: Path) -> None:
    ev = run_command("head -c 5000000 /dev/zero | tr '\\0' 'x'; echo; echo THE-END", tmp_path, 30)
    assert ev.exit_code == 0 and ev.truncated and ev.output_bytes == 5_000_000 + 1 + 8
    assert len(ev.output.encode()) < 70_000 and ev.output.rstrip().endswith("THE-END")
    assert "bytes omitted by the Verifier" in ev.output


def test_flood_is_killed(tmp_path: Path) -> None:
    start = time.monotonic()
    ev = run_command("yes", tmp_path, 60, flood=2_000_000)
    assert time.monotonic() - start < 10
    assert ev.flooded and ev.signal == "SIGKILL" and ev.output_bytes > 2_000_000 and len(ev.output) < 70_000


def test_output_cap_unit() -> None:
    cap = OutputCap(head=4, tail=4)
    for chunk in (b"ab", b"cdef", b"ghijkl"):
        cap.feed(chunk)
    assert cap.total == 12 and cap.truncated
    assert cap.text() == "abcd\n[... 4 bytes omitted by the Verifier ...]\nijkl"
    small = OutputCap(head=4, tail=4)
    small.feed(b"abcdefg")
    assert not small.truncated and small.text() == "abcdefg"


def test_environment_is_scrubbed(tmp_path: Path) -> None:
    base = {"PATH": os.environ["PATH"], "HOME": "/root", "ANTHROPIC_API_KEY": "sk-secret", "GITHUB_TOKEN": "t",
            "BD_ACTOR": "gastown/refinery", "VERMAS_TOWN": "/town", "LANG": "C.UTF-8", "EXTRA_OK": "1"}
    ev = run_command("env; echo HOME-IS=$HOME; test -d \"$HOME\" && test -w \"$TMPDIR\"", tmp_path, 10,
                     base_env=base, keep_env=("EXTRA_OK",))
    assert ev.exit_code == 0
    names = {line.split("=", 1)[0] for line in ev.output.splitlines() if "=" in line}
    assert {"ANTHROPIC_API_KEY", "GITHUB_TOKEN", "BD_ACTOR", "VERMAS_TOWN"}.isdisjoint(names)
    assert {"PATH", "HOME", "LANG", "TMPDIR", "EXTRA_OK"} <= names
    home = next(line for line in ev.output.splitlines() if line.startswith("HOME-IS="))[8:]
    assert home != "/root" and not Path(home).exists()  # a throwaway HOME, removed afterwards


def test_missing_work_tree_is_evidence_not_a_crash(tmp_path: Path) -> None:
    ev = run_command("true", tmp_path / "gone", 10)
    assert ev.exit_code is None and ev.error and ev.failure and ev.failure.startswith("could not start")


async def test_parallelism_is_bounded_and_faster_than_serial(tmp_path: Path) -> None:
    log = tmp_path / "log"
    tests = [TestSpec(criterion_id=f"AC-{i}", command=f"echo start >> {log}; sleep 0.4; echo end >> {log}",
                      timeout=10) for i in range(8)]
    start = time.monotonic()
    serial = await run_tests(tests, tmp_path, parallelism=1)
    serial_s = time.monotonic() - start
    assert log.read_text().split() == ["start", "end"] * 8  # strictly one at a time
    log.write_text("")
    seen: list[str] = []

    async def on_result(r: object) -> None:
        seen.append(r.criterion_id)  # type: ignore[attr-defined]

    start = time.monotonic()
    parallel = await run_tests(tests, tmp_path, parallelism=4, on_result=on_result)
    parallel_s = time.monotonic() - start
    assert parallel_s < serial_s / 2
    running = peak = 0
    for event in log.read_text().split():
        running += 1 if event == "start" else -1
        peak = max(peak, running)
    assert peak == 4  # bounded, and the bound was used
    assert [r.criterion_id for r in parallel] == [t.criterion_id for t in tests]  # results keep plan order
    assert sorted(seen) == sorted(t.criterion_id for t in tests) and all(r.passed for r in serial + parallel)


async def test_parallelism_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        await run_tests([TestSpec(criterion_id="AC-1", command="true")], tmp_path, parallelism=0)
