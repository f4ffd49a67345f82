"""`status` shows each rig's merge queue (issue 9): counts by state, a pause with its sha and
reason, the lease owner, and the rig's test command or the loud untested marker; `rig add`
without --test-command warns on stderr that merges will be marked untested, and `rig list`
shows it. Real subprocesses of vermas-runner on real git."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import make_repo
from tests.refinery_rig import MergeRig
from vermas import rig
from vermas.refinery import ledger, worker
from vermas.refinery.types import MRState
from vermas.town import Town

RUNNER = str(Path(sys.executable).with_name("vermas-runner"))


def runner(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VERMAS_TOWN", "BD_ACTOR")}
    env["COLUMNS"] = "250"  # rich wraps narrower tables; the marker must stay on one line
    return subprocess.run([RUNNER, *args], capture_output=True, text=True, env=env, timeout=60)


def test_rig_add_without_a_test_command_warns_loudly_and_rig_list_shows_it(town: Town, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    bare = runner("rig", "add", "bare", str(repo), "--town", str(town.root))
    assert bare.returncode == 0, bare.stderr
    [warning] = [line for line in bare.stderr.splitlines() if "WARNING" in line]
    assert warning == rig.untested_warning("bare")
    assert "UNTESTED" in warning and "marked untested" in warning and "[rigs.bare]" in warning
    assert "WARNING" not in bare.stdout  # stdout stays the one result line
    tested = runner("rig", "add", "tested", str(repo), "--town", str(town.root), "--test-command", "make test")
    assert tested.returncode == 0 and tested.stderr == "", tested.stderr
    table = runner("rig", "list", "--town", str(town.root))
    assert table.returncode == 0, table.stderr
    [bare_row] = [line for line in table.stdout.splitlines() if " bare " in line]
    [tested_row] = [line for line in table.stdout.splitlines() if " tested " in line]
    assert rig.UNTESTED in bare_row and "make test" in tested_row and "UNTESTED" not in tested_row
    listed = {r["name"]: r for r in json.loads(runner("rig", "list", "--town", str(town.root), "--json").stdout)}
    assert (listed["bare"]["untested"], listed["tested"]["untested"]) == (True, False)


def status_json(town: Town) -> dict[str, dict[str, object]]:
    out = runner("status", "--town", str(town.root), "--json")
    assert out.returncode == 0, out.stderr
    return {q["rig"]: q for q in json.loads(out.stdout)["merge_queues"]}


def test_status_shows_each_queue_counts_pause_lease_and_tests(town: Town, tmp_path: Path) -> None:
    (tmp_path / "gt").mkdir()
    (tmp_path / "un").mkdir()
    gt = MergeRig(town, tmp_path / "gt")
    un = MergeRig(town, tmp_path / "un", test_command="", name="un", prefix="un")
    empty = status_json(town)
    assert empty["gt"]["counts"] == {s.value: 0 for s in MRState} and empty["gt"]["lease_owner"] is None
    assert (empty["gt"]["test_command"], empty["gt"]["untested"]) == (town.config.rigs["gt"].test_command, False)
    assert empty["un"]["untested"] is True

    merged = gt.work("good", {"a.txt": "a\n"})
    worker.drain(town, "gt", "runner:test:1")
    assert ledger.get(town, merged.mr).state is MRState.MERGED
    red = gt.push_upstream("up.txt", "BROKEN upstream\n")  # the target itself goes red
    waiting = gt.work("waits", {"b.txt": "b\n"})
    reports = worker.drain(town, "gt", "runner:test:1")
    assert reports[-1].paused and ledger.get(town, waiting.mr).state is MRState.QUEUED
    un.work("no tests here", {"u.txt": "u\n"})

    seen = status_json(town)
    q = seen["gt"]
    assert {k: v for k, v in q["counts"].items() if v} == {"merged": 1, "queued": 1}  # type: ignore[union-attr]
    assert q["paused_sha"] == red and q["paused_reason"] == f"main fails its tests at {red}"
    assert q["lease_owner"] == "runner:test:1" and q["lease_expired"] is False
    assert {k: v for k, v in seen["un"]["counts"].items() if v} == {"queued": 1}  # type: ignore[union-attr]
    assert seen["un"]["paused_sha"] is None and seen["un"]["lease_owner"] is None

    out = runner("status", "--town", str(town.root))
    assert out.returncode == 0, out.stderr
    [gt_row] = [line for line in out.stdout.splitlines() if line.startswith("│ gt ")]
    assert "queued 1, merged 1" in gt_row and f"paused at {red[:12]}" in gt_row and "runner:test:1" in gt_row
    assert town.config.rigs["gt"].test_command in gt_row
    [un_row] = [line for line in out.stdout.splitlines() if line.startswith("│ un ")]
    assert "queued 1" in un_row and rig.UNTESTED in un_row
