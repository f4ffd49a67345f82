"""The merge queue by hand (issue 9, "Judgment stays with Claude"): mq_list, mq_show,
mq_retry, mq_reject, mq_resume over MCP and as `vermas-runner mq ...`, with the permission
rule (the rig's refinery or a coordinator) and nothing written by a refusal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import call, fail, make_repo
from tests.test_tools import snapshot
from vermas import beads, rig
from vermas.addresses import parse_address
from vermas.refinery import ledger
from vermas.refinery.types import MRState
from vermas.town import Town

RUNNER = str(Path(sys.executable).with_name("vermas-runner"))


def _queued(town: Town, tmp_path: Path, n: int = 2) -> list[str]:
    rig.add(town, "gt", str(make_repo(tmp_path / "upstream")), prefix="gt")
    ids = []
    for i in range(n):
        bead = beads.create(town, parse_address("mayor"), f"work {i}", rig="gt")
        made = ledger.enqueue(town, rig="gt", bead=bead.id, polecat=f"gt/polecats/p{i}",
                              branch=f"polecat/p{i}", commit=f"{i + 1:040x}")
        ids.append(made.id)
    return ids


def _to_rework(town: Town, mr_id: str) -> None:
    for state in (MRState.CLAIMED, MRState.TESTING, MRState.REWORK):
        ledger.transition(town, mr_id, state, "gt/refinery", {"why": "test"})


async def test_list_and_show(town: Town, tmp_path: Path, client_for: Any) -> None:
    first, second = _queued(town, tmp_path)
    async with client_for("gt/witness", "all") as witness:  # no rule stops reading the queue
        listed = await call(witness, "mq_list", rig="gt")
        assert [r["id"] for r in listed["requests"]] == [first, second]
        assert listed["queues"][0]["rig"] == "gt"
        assert (await call(witness, "mq_list", state="merged"))["requests"] == []
        assert "allowed: open, queued" in await fail(witness, "mq_list", state="landed")
        assert "unknown rig 'zz'" in await fail(witness, "mq_list", rig="zz")
        shown = await call(witness, "mq_show", mr_id=first)
        assert shown["request"]["state"] == "queued" and shown["events"][0]["to_state"] == "queued"


async def test_retry_reject_resume_follow_the_rule(town: Town, tmp_path: Path, client_for: Any) -> None:
    first, second = _queued(town, tmp_path)
    _to_rework(town, first)
    before = snapshot(town)
    for who in ("gt/polecats/p0", "gt/witness", "zz/refinery", "gt/crew/ann"):
        async with client_for(who, "all") as other:
            assert "may not manage gt's merge queue" in await fail(other, "mq_retry", mr_id=first)
            assert "may not manage" in await fail(other, "mq_reject", mr_id=second, reason="no")
            assert "may not manage" in await fail(other, "mq_resume", rig="gt")
    assert snapshot(town) == before
    async with client_for("gt/refinery") as refinery:
        assert "only rework, conflict or failed" in await fail(refinery, "mq_retry", mr_id=second)
        retried = await call(refinery, "mq_retry", mr_id=first)
        assert retried["state"] == "queued"
        assert "a reason is required" in await fail(refinery, "mq_reject", mr_id=second, reason=" ")
        rejected = await call(refinery, "mq_reject", mr_id=second, reason="duplicate of the first")
        assert rejected["state"] == "rejected"
        assert "already rejected" in await fail(refinery, "mq_reject", mr_id=second, reason="again")
        resumed = await call(refinery, "mq_resume", rig="gt")
        assert resumed["resume_requested"] is True
    events = ledger.events(town, second)
    assert events[-1].actor == "gt/refinery" and events[-1].evidence["reason"] == "duplicate of the first"


def _shell(town: Town, *args: str, actor: str = "overseer") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "VERMAS_TOWN"} | {"BD_ACTOR": actor}
    return subprocess.run([RUNNER, "mq", *args, "--town", str(town.root)], capture_output=True, text=True,
                          env=env, timeout=60)


def test_shell_twins(town: Town, tmp_path: Path) -> None:
    first, second = _queued(town, tmp_path)
    listed = _shell(town, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [r["id"] for r in json.loads(listed.stdout)["requests"]] == [first, second]
    table = _shell(town, "list")
    assert table.returncode == 0 and first in table.stdout and "┃" in table.stdout
    refused = _shell(town, "reject", second, "not wanted", actor="gt/polecats/p1")
    assert refused.returncode == 2 and "may not manage" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    done = _shell(town, "reject", second, "not wanted", "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["state"] == "rejected"
    shown = _shell(town, "show", second, "--json")
    assert [e["to_state"] for e in json.loads(shown.stdout)["events"]] == ["queued", "rejected"]
    assert _shell(town, "resume", "gt").returncode == 0
    assert "Queue a rework, conflict or failed merge request again" in _shell(town, "retry", "--help").stdout


async def test_bead_show_carries_its_merge_requests(town: Town, tmp_path: Path, client_for: Any) -> None:
    first, _ = _queued(town, tmp_path)
    bead = ledger.get(town, first).bead
    _to_rework(town, first)
    ledger.transition(town, first, MRState.QUEUED, "gt/refinery", {"reason": "fixed upstream"})
    async with client_for("mayor") as mayor:
        shown = await call(mayor, "bead_show", bead_id=bead)
    [summary] = shown["merge_requests"]
    assert summary["id"] == first and summary["state"] == "queued" and summary["commit"] == f"{1:040x}"
    assert summary["last"].endswith("queued: fixed upstream"), summary
