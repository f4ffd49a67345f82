"""The rig's `pass_env` reaches the refinery's merge test runs (issue 19, item 9), with real git
and the real contained test run: a rig whose tests need a variable merges when the variable is
in its `pass_env` (the town's `[inspector]` list, or the rig's own `inspector` table), and its
queue is paused as "target is red" without it; a secret-looking name is refused with one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.refinery_rig import MergeRig
from vermas.refinery import ledger, worker
from vermas.refinery.types import MRState
from vermas.town import Town

NEEDS_FLAG = 'test "$MYPROJ_FLAG" = on-for-tests'


@pytest.fixture
def flagged(town: Town, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> MergeRig:
    monkeypatch.setenv("MYPROJ_FLAG", "on-for-tests")
    monkeypatch.setenv("MYPROJ_OTHER", "x")
    return MergeRig(town, tmp_path, test_command=NEEDS_FLAG)


def set_pass_env(town: Town, town_wide: list[str], rig: list[str] | None = None) -> None:
    town.config.inspector.pass_env = town_wide
    if rig is not None:
        town.config.rigs["gt"].inspector = {"pass_env": rig}
    town.save_config()
    town.reload_config()


def test_the_towns_pass_env_reaches_the_merge_test_run(town: Town, flagged: MergeRig) -> None:
    set_pass_env(town, ["MYPROJ_FLAG"])
    w = flagged.work("add a", {"a.txt": "a\n"})
    reports = worker.drain(town, "gt", "r1")
    assert [r.error for r in reports] == [None] * len(reports) and not any(r.paused for r in reports)
    assert ledger.get(town, w.mr).state is MRState.MERGED and "a.txt" in flagged.upstream_files()


def test_the_rigs_own_pass_env_wins(town: Town, flagged: MergeRig) -> None:
    set_pass_env(town, ["MYPROJ_OTHER"], rig=["MYPROJ_OTHER", "MYPROJ_FLAG"])
    w = flagged.work("add a", {"a.txt": "a\n"})
    worker.drain(town, "gt", "r1")
    assert ledger.get(town, w.mr).state is MRState.MERGED


def test_without_pass_env_the_variable_does_not_reach_the_run(town: Town, flagged: MergeRig) -> None:
    set_pass_env(town, ["MYPROJ_OTHER"])
    w = flagged.work("add a", {"a.txt": "a\n"})
    [report, *_] = worker.drain(town, "gt", "r1")
    assert report.paused and "fails its tests" in report.paused  # the allow-list still holds
    assert ledger.get(town, w.mr).state is MRState.QUEUED


def test_a_secret_looking_name_is_refused_and_nothing_runs(town: Town, flagged: MergeRig) -> None:
    set_pass_env(town, ["MYPROJ_FLAG"], rig=["GITHUB_TOKEN"])
    w = flagged.work("add a", {"a.txt": "a\n"})
    [report] = worker.drain(town, "gt", "r1")
    assert report.error is not None and "GITHUB_TOKEN" in report.error and "pass_env" in report.error
    assert report.test_runs == 0 and ledger.get(town, w.mr).state is not MRState.MERGED
