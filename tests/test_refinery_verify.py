"""Verification at merge with the REAL inspector: the rig's verify level runs `claude -p` (the real
CLI, answered by the stand-in model server) on the rebased tree, through the refinery worker's own
process path on real git (bare upstream, canonical clone, polecat worktrees, real polecat_done).

PASS merges; a criterion that FAILs on its merits sends the work back with the criterion and its
evidence; a model that cannot answer (CLI missing, the Auditor's output invalid twice) is a
"could not run": failed with backoff, never merged and never sent back as the polecat's fault.
The verdict mapping itself is tabled without a model (verification_status)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import git
from tests.inspector_standin import (
    into_process_env,
    AC_ADD,
    AC_DOCS,
    ADD_TEST,
    BAD_CALC,
    DOCS_EVIDENCE,
    GOOD_CALC,
    README,
    Standin,
    objective_scripts,
    spec,
    standin,
    tspec,
)
from tests.refinery_rig import MergeRig, Work
from vermas import beads
from vermas.inspector import records
from vermas.inspector.models import CriterionOutcome, VerificationReport
from vermas.protocol import Escalation, ProtocolKind, ReworkRequest
from vermas.refinery import decide, ledger, worker
from vermas.refinery.types import CANNOT_RUN_TRIES, RETRY_BACKOFF_CAP_S, HoldKind, MRState, RunStatus
from vermas.town import Town

OWNER = "runner-1"


# ---- the verdict mapping, tabled ------------------------------------------------------------------------


def _criterion(cid: str, outcome: str, error: str | None = None) -> CriterionOutcome:
    return CriterionOutcome(criterion_id=cid, description=cid, kind="objective", outcome=outcome,
                            stage="auditor", reason=f"{cid} {outcome}", error=error)


def _report(overall: str, *criteria: CriterionOutcome) -> VerificationReport:
    return VerificationReport(bead_id="gt-1", commit="c" * 40, worktree="/w", level="audit", overall=overall,
                              summary="s", criteria=list(criteria), model_calls=0, model_cost_usd=0.0,
                              model_duration_ms=0, tests_run=0, cached_criteria=0, started_at="2026-01-01T00:00:00Z",
                              duration_s=0.0, actor="gt/refinery")


OK, BAD, ERR, SKIP = (_criterion("A", "PASS"), _criterion("B", "FAIL"), _criterion("C", "FAIL", "model unavailable"),
                      _criterion("D", "SKIPPED"))


@pytest.mark.parametrize(("report", "status", "criterion"), [
    (_report("PASS", OK), RunStatus.PASSED, None),
    (_report("PASS", OK, SKIP), RunStatus.PASSED, None),
    (_report("FAIL", OK, BAD), RunStatus.FAILED, "B"),
    (_report("FAIL", ERR, BAD), RunStatus.FAILED, "B"),  # a failure on the merits wins over an errored one
    (_report("FAIL", BAD, ERR), RunStatus.FAILED, "B"),
    (_report("FAIL", OK, ERR), RunStatus.COULD_NOT_RUN, "C"),  # only the model failed: says nothing of the code
    (_report("FAIL", ERR), RunStatus.COULD_NOT_RUN, "C"),
    (_report("FAIL", ERR, SKIP), RunStatus.COULD_NOT_RUN, "C"),
    (_report("FAIL", SKIP), RunStatus.FAILED, "D"),  # nothing decided is not a pass
])
def test_verification_status_table(report: VerificationReport, status: RunStatus, criterion: str | None) -> None:
    got, failing = worker.verification_status(report)
    assert (got, failing.criterion_id if failing else None) == (status, criterion)


# ---- the real inspector at merge ------------------------------------------------------------------------


@pytest.fixture
def sm(tmp_path: Path, town: Town, monkeypatch: pytest.MonkeyPatch) -> Iterator[Standin]:
    """The stand-in wired the way a deployed town is: town.toml's inspector command, the process env
    (the refinery worker calls the inspector with its own environment)."""
    with standin(tmp_path / "claude-home") as s:
        into_process_env(s, monkeypatch)
        yield s


def verifying_rig(town: Town, tmp_path: Path, command: str, level: str = "shell") -> MergeRig:
    mr = MergeRig(town, tmp_path)
    town.config.inspector.command = command
    town.config.rigs["gt"] = town.config.rigs["gt"].model_copy(update={"verify_level": level})
    town.save_config()
    town.reload_config()
    return mr


def calc_work(mr: MergeRig, calc: str) -> Work:
    return mr.work("Add numbers", {"calc.py": calc, "README.md": README})


def drain(town: Town, now: float | None = None) -> list[worker.StepReport]:
    clock = time.time if now is None else (lambda: now)
    reports = worker.drain(town, "gt", OWNER, clock=clock)
    assert all(r.error is None for r in reports), [r.error for r in reports]
    return reports


def test_a_pass_from_the_real_inspector_merges(town: Town, sm: Standin, tmp_path: Path) -> None:
    mr = verifying_rig(town, tmp_path, str(sm.claude))
    model = sm.script(**objective_scripts())
    w = calc_work(mr, GOOD_CALC)
    drain(town)
    row = ledger.get(town, w.mr)
    assert row.state is MRState.MERGED and row.merged_sha == mr.upstream_main()
    assert git(mr.bare, "show", "main:calc.py") == GOOD_CALC.strip()
    assert model.roles() == ["designer", "strategist"]  # the verifier decided both criteria from shell evidence
    with town.db.read() as conn:  # the inspector's report is of the rebased tree that landed
        stored = records.latest_report(conn, w.bead)
    assert stored is not None and stored.overall == "PASS" and stored.commit == row.merged_sha
    assert stored.actor == "gt/refinery" and stored.level == "shell"
    assert mr.bead_row(w.bead)["status"] == "closed"
    passed = [e.evidence for e in ledger.events(town, w.mr) if e.evidence.get("check") == "verify"]
    assert passed and passed[-1]["outcome"] == "passed" and passed[-1]["command"] == "verify level shell"


def test_a_failing_criterion_goes_back_with_the_criterion_and_its_evidence(
    town: Town, sm: Standin, tmp_path: Path
) -> None:
    mr = verifying_rig(town, tmp_path, str(sm.claude))
    sm.script(**objective_scripts())
    before = mr.upstream_main()
    w = calc_work(mr, BAD_CALC)
    drain(town)
    assert ledger.get(town, w.mr).state is MRState.REWORK
    assert mr.upstream_main() == before
    [rework] = mr.mail_to(str(w.address), ProtocolKind.REWORK_REQUEST)
    assert isinstance(rework, ReworkRequest)
    assert (rework.reason, rework.command, rework.merge_request) == ("verification", "AC-1", w.mr)
    assert "verification criterion AC-1 failed" in rework.text
    assert "expected 5, got -1" in rework.text and ADD_TEST in rework.text  # the evidence tail
    comments = [c.text for c in beads.show(town, w.bead).comments]
    assert any("verification criterion AC-1 failed" in c and "expected 5, got -1" in c for c in comments)
    row = mr.bead_row(w.bead)
    assert (row["status"], row["assignee"]) == ("hooked", str(w.address))


def test_a_missing_inspector_cli_holds_the_queue_and_merges_once_the_model_is_back(
    town: Town, sm: Standin, tmp_path: Path
) -> None:
    """The town's fault, not the request's: the queue is held once (one escalation), the request
    stays queued with nothing counted, and the hold lifts by itself once the command resolves."""
    mr = verifying_rig(town, tmp_path, str(tmp_path / "no-such-claude"))
    model = sm.script(**objective_scripts())
    before = mr.upstream_main()
    w = calc_work(mr, GOOD_CALC)
    now = 1_000_000.0
    drain(town, now)
    row = ledger.get(town, w.mr)
    assert (row.state, row.failures, row.attempts, row.merged_sha) == (MRState.QUEUED, 0, 0, None)
    hold = ledger.queue_state(town, "gt").hold
    assert hold is not None and hold.kind is HoldKind.VERIFY_UNAVAILABLE and "no-such-claude" in hold.reason
    assert mr.upstream_main() == before and model.count() == 0
    assert mr.mail_to(str(w.address), ProtocolKind.REWORK_REQUEST) == []
    for step in range(CANNOT_RUN_TRIES + 1):  # held: never tried again, never failed, escalated once
        drain(town, now + (step + 1) * (RETRY_BACKOFF_CAP_S + 1))
    row = ledger.get(town, w.mr)
    assert (row.state, row.failures) == (MRState.QUEUED, 0) and mr.upstream_main() == before
    [escalation] = mr.mail_to("mayor", ProtocolKind.ESCALATION)
    assert isinstance(escalation, Escalation) and "no-such-claude" in escalation.text
    town.config.inspector.command = str(sm.claude)  # the model is back: the probe sees the change
    town.save_config()
    drain(town, now + 10_000)
    assert ledger.get(town, w.mr).state is MRState.MERGED and ledger.queue_state(town, "gt").hold is None
    assert git(mr.bare, "show", "main:calc.py") == GOOD_CALC.strip() and model.count() == 2


def test_an_auditor_that_cannot_answer_is_could_not_run_not_rework(town: Town, sm: Standin, tmp_path: Path) -> None:
    mr = verifying_rig(town, tmp_path, str(sm.claude), level="audit")
    bad = {"passed": True, "reasoning": "r", "quotes": ["not in the output"], "confidence": 0.9}
    good = {"passed": True, "reasoning": "The README shows usage.", "quotes": [], "confidence": 0.9}
    model = sm.script(designer=[spec(AC_ADD, AC_DOCS)],
                      strategist=[{"tests": [tspec("AC-1", ADD_TEST), tspec("AC-3", DOCS_EVIDENCE)]}],
                      auditor={"AC-3": [bad, bad, good]})
    before = mr.upstream_main()
    w = calc_work(mr, GOOD_CALC)
    now = 1_000_000.0
    drain(town, now)
    row = ledger.get(town, w.mr)
    assert (row.state, row.failures) == (MRState.FAILED, 1) and mr.upstream_main() == before
    assert mr.mail_to(str(w.address), ProtocolKind.REWORK_REQUEST) == []
    assert model.count("auditor") == 2
    drain(town, now + decide.backoff(1) + 600)  # the model answers now: verified and merged
    assert ledger.get(town, w.mr).state is MRState.MERGED
    assert git(mr.bare, "show", "main:calc.py") == GOOD_CALC.strip() and model.count("auditor") == 3

