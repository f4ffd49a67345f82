"""The whole inspector pipeline with the REAL `claude -p` answering every role, driven by a stand-in
model server on 127.0.0.1 scripted per test; real git candidates, real test subprocesses."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import process_gone
from tests.inspector_standin import (
    town_candidate,
    AC_ADD,
    AC_DOCS,
    AC_README,
    ADD_TEST,
    BAD_CALC,
    DOCS_EVIDENCE,
    GOOD_CALC,
    README,
    README_TEST,
    Standin,
    commit_change,
    criterion,
    make_candidate,
    objective_scripts,
    spec,
    standin,
    tspec,
)
from vermas import beads
from vermas.addresses import parse_address
from vermas.export import export_town
from vermas.inspector import records
from vermas.inspector.backend import ModelOutputInvalid
from vermas.inspector.pipeline import Inspector
from vermas.town import Town

OVERSEER = parse_address("overseer")
USAGE_LINE = "Usage: `from calc import add; add(2, 3)` returns 5."


@pytest.fixture
def sm(tmp_path: Path) -> Iterator[Standin]:
    with standin(tmp_path / "claude-home") as s:
        yield s


def inspector(town: Town, sm: Standin, level: str = "full") -> Inspector:
    town.config.inspector.command = str(sm.claude)
    town.config.inspector.level = level
    return Inspector(town, "overseer", env=sm.env)


def new_bead(town: Town, ac: str = "") -> str:
    return beads.create(town, OVERSEER, "Add numbers",
                        "Implement add(a, b) in calc.py and document its usage in README.md",
                        acceptance_criteria=ac).id


async def test_planted_bad_change_fails_with_evidence_that_shows_why(town: Town, sm: Standin, tmp_path: Path) -> None:
    model = sm.script(**objective_scripts())
    repo = make_candidate(town_candidate(town), calc=BAD_CALC)
    bead_id = new_bead(town, ac="adds numbers; documented")

    report = await inspector(town, sm).verify(bead_id, str(repo))

    assert report.overall == "FAIL"
    add = report.outcome("AC-1")
    assert (add.outcome, add.stage) == ("FAIL", "verifier")
    evidence = add.tests[0].evidence
    assert evidence.exit_code == 1 and evidence.failure == "exit code 1"
    assert "add(2, 3) = -1" in evidence.output and "expected 5, got -1" in evidence.output
    assert report.outcome("AC-2").outcome == "PASS"
    # Decided from shell evidence alone: only the Designer and Strategist were asked anything.
    assert model.roles() == ["designer", "strategist"]
    assert [c.role for c in report.calls] == ["designer", "strategist"] and report.model_calls == 2
    # The Designer saw the bead's own text; the spec went into the bead, and the report was stored.
    assert "adds numbers; documented" in model.asked[0][2]
    shown = beads.show(town, bead_id)
    assert "- [ ] AC-1 (objective): add(2, 3) returns 5" in shown.acceptance_criteria
    with town.db.read() as conn:
        stored = records.latest_report(conn, bead_id)
        summary = records.latest_report_summary(conn, bead_id)
    assert stored is not None and stored.overall == "FAIL" and stored.commit == report.commit
    assert summary is not None and summary.overall == "FAIL" and summary.criteria[0].outcome == "FAIL"


async def test_good_change_passes_with_no_model_call_beyond_designer_and_strategist(
    town: Town, sm: Standin, tmp_path: Path
) -> None:
    model = sm.script(**objective_scripts())
    repo = make_candidate(town_candidate(town), calc=GOOD_CALC)
    bead_id = new_bead(town)

    report = await inspector(town, sm).verify(bead_id, str(repo))

    assert report.overall == "PASS", report.summary
    assert [(c.criterion_id, c.outcome, c.stage) for c in report.criteria] == [
        ("AC-1", "PASS", "verifier"), ("AC-2", "PASS", "verifier")]
    assert model.roles() == ["designer", "strategist"]
    assert len(sm.server.main_requests()) == 2
    # Cost and duration come from Claude's own JSON result, per call.
    assert report.model_calls == 2 and report.model_cost_usd > 0
    assert all(c.ok and c.cost_usd > 0 and c.duration_ms > 0 for c in report.calls)
    assert report.tests_run == 2 and report.cached_criteria == 0


async def test_rework_reuses_spec_and_plan_and_an_unchanged_commit_is_cached(
    town: Town, sm: Standin, tmp_path: Path
) -> None:
    marker = town_candidate(town) / ".runs.log"  # inside the work tree: the only place a test may write
    model = sm.script(
        designer=[spec(AC_ADD, AC_README)],
        strategist=[{"tests": [tspec("AC-1", f"echo run >> {marker}; {ADD_TEST}"),
                               tspec("AC-2", f"echo run >> {marker}; {README_TEST}")]}],
    )
    repo = make_candidate(town_candidate(town), calc=BAD_CALC)
    bead_id = new_bead(town)
    insp = inspector(town, sm)

    first = await insp.verify(bead_id, str(repo))
    assert first.overall == "FAIL" and marker.read_text().count("run") == 2

    fixed = commit_change(repo, "calc.py", GOOD_CALC, "fix add")
    second = await insp.verify(bead_id, str(repo))
    assert second.overall == "PASS" and second.commit == fixed
    assert second.model_calls == 0 and model.count() == 2  # spec and plan reused: no model call
    assert second.tests_run == 2 and marker.read_text().count("run") == 4

    requests_before = len(sm.server.requests)
    third = await insp.verify(bead_id, str(repo))
    assert third.overall == "PASS" and third.commit == fixed
    assert third.model_calls == 0 and third.tests_run == 0 and third.cached_criteria == 2
    assert all(c.cached for c in third.criteria)
    assert marker.read_text().count("run") == 4  # no test ran
    assert len(sm.server.requests) == requests_before  # and the model was not contacted at all

    # A changed bead is re-specified; a changed spec is re-planned; the cache key includes the tests.
    beads.update(town, OVERSEER, bead_id, description="Implement add(a, b); also document it")
    sm.script(designer=[spec(AC_ADD, criterion("AC-2", "README.md shows how to call add"))],
              strategist=[{"tests": [tspec("AC-1", ADD_TEST), tspec("AC-2", README_TEST)]}])
    fourth = await insp.verify(bead_id, str(repo))
    assert [c.role for c in fourth.calls] == ["designer", "strategist"]
    assert fourth.tests_run == 2 and fourth.cached_criteria == 0 and fourth.overall == "PASS"


async def test_subjective_criterion_goes_through_the_auditor(town: Town, sm: Standin, tmp_path: Path) -> None:
    model = sm.script(
        designer=[spec(AC_ADD, AC_DOCS)],
        strategist=[{"tests": [tspec("AC-1", ADD_TEST), tspec("AC-3", DOCS_EVIDENCE)]}],
        auditor={"AC-3": [{"passed": True, "reasoning": "The README shows a runnable example and its result.",
                           "quotes": [USAGE_LINE], "confidence": 0.9}]},
    )
    repo = make_candidate(town_candidate(town))
    bead_id = new_bead(town)

    report = await inspector(town, sm, level="audit").verify(bead_id, str(repo))

    assert report.overall == "PASS"
    docs = report.outcome("AC-3")
    assert (docs.outcome, docs.stage) == ("PASS", "auditor")
    assert docs.audit is not None and docs.audit.quotes == [USAGE_LINE] and docs.audit.confidence == 0.9
    assert report.outcome("AC-1").stage == "verifier"
    assert model.roles() == ["designer", "strategist", "auditor"]
    role, criterion_id, prompt = model.asked[2]
    assert criterion_id == "AC-3" and USAGE_LINE in prompt and "$ cat README.md" in prompt

    # At level shell the same commit needs no model: AC-1 comes from the cache (a Verifier
    # decision holds at any level) and the subjective AC-3 is skipped, not judged.
    shell = await inspector(town, sm, level="shell").verify(bead_id, str(repo))
    assert model.count() == 3 and shell.model_calls == 0
    assert shell.outcome("AC-1").cached and shell.outcome("AC-3").outcome == "SKIPPED"
    assert shell.outcome("AC-3").stage == "policy" and shell.overall == "PASS"


async def test_contested_criterion_goes_through_the_panel(town: Town, sm: Standin, tmp_path: Path) -> None:
    model = sm.script(
        designer=[spec(AC_ADD, AC_DOCS)],
        strategist=[{"tests": [tspec("AC-1", ADD_TEST), tspec("AC-3", DOCS_EVIDENCE)]}],
        auditor={"AC-3": [{"passed": True, "reasoning": "Probably clear enough.", "quotes": [],
                           "confidence": 0.4}]},
        advocate={"AC-3": [{"argument": "It has a usage line with a worked example.", "quotes": [USAGE_LINE]}]},
        critic={"AC-3": [{"argument": "One line is not an explanation; no install or error cases.",
                          "quotes": ["# calc"]}]},
        judge={"AC-3": [{"passed": False, "prevailing": "critic",
                         "reasoning": "A newcomer learns the call but not installation or limits.",
                         "quotes": [USAGE_LINE]}]},
    )
    repo = make_candidate(town_candidate(town))
    bead_id = new_bead(town)

    report = await inspector(town, sm, level="full").verify(bead_id, str(repo))

    docs = report.outcome("AC-3")
    assert (docs.outcome, docs.stage) == ("FAIL", "panel")
    assert "confidence 0.40 below 0.70" in docs.reason and "Judge: FAIL" in docs.reason
    assert docs.verdict is not None and docs.verdict.prevailing == "critic"
    assert docs.advocate is not None and docs.critic is not None and docs.critic.quotes == ["# calc"]
    assert report.overall == "FAIL" and report.outcome("AC-1").outcome == "PASS"
    assert sorted(model.roles()) == sorted(["designer", "strategist", "auditor", "advocate", "critic", "judge"])
    judge_prompt = next(p for r, _, p in model.asked if r == "judge")
    assert "no install or error cases" in judge_prompt and "worked example" in judge_prompt
    assert "$ cat README.md" in judge_prompt
    assert report.model_calls == 6


async def test_auditor_contradicting_the_tests_at_level_audit_is_a_conservative_fail(
    town: Town, sm: Standin, tmp_path: Path
) -> None:
    """An ambiguous failure (command not found) goes to the Auditor; its PASS contradicts the
    exit code, and level audit has no panel, so the criterion FAILs."""
    model = sm.script(
        designer=[spec(AC_ADD)],
        strategist=[{"tests": [tspec("AC-1", "calc-cli add 2 3")]}],
        auditor={"AC-1": [{"passed": True, "reasoning": "The tool is probably fine.", "quotes": [],
                           "confidence": 0.95}]},
    )
    repo = make_candidate(town_candidate(town))
    report = await inspector(town, sm, level="audit").verify(new_bead(town), str(repo))

    add = report.outcome("AC-1")
    assert add.tests[0].evidence.exit_code == 127 and "command not found" in add.tests[0].evidence.output
    assert (add.outcome, add.stage) == ("FAIL", "policy")
    assert "contested" in add.reason and "level audit has no panel" in add.reason
    assert model.roles() == ["designer", "strategist", "auditor"]


async def test_malformed_designer_output_is_retried_once_then_reported_and_nothing_written(
    town: Town, sm: Standin, tmp_path: Path
) -> None:
    duplicate = spec(AC_ADD, criterion("AC-1", "again"))
    model = sm.script(designer=[duplicate, duplicate])
    repo = make_candidate(town_candidate(town))
    bead_id = new_bead(town, ac="as written by a human")
    export_town(town, force=True)
    before = (town.beads_dir / "issues.jsonl").read_text()

    with pytest.raises(ModelOutputInvalid) as caught:
        await inspector(town, sm).verify(bead_id, str(repo))

    message = str(caught.value)
    assert "designer gave invalid output twice" in message and "'AC-1' is used twice" in message
    assert [c.attempt for c in caught.value.calls] == [1, 2]
    assert not any(c.ok for c in caught.value.calls)
    assert model.count("designer") == 2
    retry_prompt = model.asked[1][2]
    assert "YOUR PREVIOUS ANSWER WAS REJECTED" in retry_prompt and "used twice" in retry_prompt
    assert beads.show(town, bead_id).acceptance_criteria == "as written by a human"
    with town.db.read() as conn:
        assert records.load_spec_row(conn, bead_id) is None and records.latest_report(conn, bead_id) is None
    export_town(town)
    assert (town.beads_dir / "issues.jsonl").read_text() == before


async def test_invented_quote_is_retried_once_with_the_error_and_the_second_answer_counts(
    town: Town, sm: Standin, tmp_path: Path
) -> None:
    model = sm.script(
        designer=[spec(AC_DOCS)],
        strategist=[{"tests": [tspec("AC-3", DOCS_EVIDENCE)]}],
        auditor={"AC-3": [
            {"passed": True, "reasoning": "r", "quotes": ["Installation: pip install calc"], "confidence": 0.9},
            {"passed": True, "reasoning": "r", "quotes": [USAGE_LINE], "confidence": 0.9},
        ]},
    )
    repo = make_candidate(town_candidate(town))
    report = await inspector(town, sm, level="audit").verify(new_bead(town), str(repo))

    docs = report.outcome("AC-3")
    assert (docs.outcome, docs.stage, docs.error) == ("PASS", "auditor", None)
    auditor_calls = [c for c in report.calls if c.role == "auditor"]
    assert [(c.attempt, c.ok) for c in auditor_calls] == [(1, False), (2, True)]
    assert "does not occur in the evidence" in (auditor_calls[0].error or "")
    assert "does not occur in the evidence" in model.asked[-1][2]


async def test_auditor_failing_twice_fails_its_criterion_clearly_and_is_not_cached(
    town: Town, sm: Standin, tmp_path: Path
) -> None:
    bad = {"passed": True, "reasoning": "r", "quotes": ["not in the output"], "confidence": 0.9}
    good = {"passed": True, "reasoning": "r", "quotes": [], "confidence": 0.9}
    model = sm.script(designer=[spec(AC_ADD, AC_DOCS)],
                      strategist=[{"tests": [tspec("AC-1", ADD_TEST), tspec("AC-3", DOCS_EVIDENCE)]}],
                      auditor={"AC-3": [bad, bad, good]})
    repo = make_candidate(town_candidate(town))
    bead_id = new_bead(town)
    insp = inspector(town, sm, level="audit")

    report = await insp.verify(bead_id, str(repo))
    docs = report.outcome("AC-3")
    assert (docs.outcome, docs.stage) == ("FAIL", "auditor") and report.overall == "FAIL"
    assert docs.error and "auditor (criterion AC-3) gave invalid output twice" in docs.error
    assert report.outcome("AC-1").outcome == "PASS"

    again = await insp.verify(bead_id, str(repo))  # the failure was not cached: the Auditor is asked again
    assert again.outcome("AC-3").outcome == "PASS" and again.outcome("AC-1").cached
    assert model.count("auditor") == 3 and again.tests_run == 1


async def test_hanging_forking_and_flooding_tests_are_contained_and_the_run_still_reports(
    town: Town, sm: Standin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VERMAS_CONTAIN", "process")  # PIDs are read from outside: no PID namespace
    pids = town_candidate(town) / ".pids"
    sm.script(
        designer=[spec(criterion("AC-1", "hangs"), criterion("AC-2", "forks"), criterion("AC-3", "floods"),
                       criterion("AC-4", "fine"))],
        strategist=[{"tests": [
            tspec("AC-1", "sleep 600", timeout=1),
            tspec("AC-2", f"for i in 1 2 3; do sleep 600 & echo $! >> {pids}; done; echo forked; wait",
                      timeout=1),
            tspec("AC-3", "yes flood", timeout=20),
            tspec("AC-4", README_TEST),
        ]}],
    )
    repo = make_candidate(town_candidate(town))
    start = time.monotonic()
    report = await inspector(town, sm, level="shell").verify(new_bead(town), str(repo))
    assert time.monotonic() - start < 15

    hang, fork, flood, fine = (report.outcome(f"AC-{i}") for i in (1, 2, 3, 4))
    assert hang.tests[0].evidence.timed_out and hang.tests[0].evidence.signal == "SIGKILL"
    assert "timed out after" in (hang.tests[0].evidence.failure or "")
    assert fork.tests[0].evidence.timed_out and "forked" in fork.tests[0].evidence.output
    children = [int(p) for p in pids.read_text().split()]
    assert len(children) == 3 and all(process_gone(p) for p in children)  # the whole group was killed
    ev = flood.tests[0].evidence
    assert ev.flooded and ev.truncated and ev.output_bytes > 64 * 1024 * 1024
    assert len(ev.output) < 70_000 and "bytes omitted by the Verifier" in ev.output
    assert fine.outcome == "PASS"
    # Ambiguous failures at level shell: not a pass, decided by policy, and the report exists.
    assert [c.outcome for c in (hang, fork, flood)] == ["FAIL"] * 3
    assert {c.stage for c in (hang, fork, flood)} == {"policy"}
    assert report.overall == "FAIL"


async def test_verify_uses_the_latest_merge_request_worktree_by_default(
    town: Town, sm: Standin, tmp_path: Path
) -> None:
    sm.script(**objective_scripts())
    bead_id = new_bead(town)
    with pytest.raises(Exception, match="has no merge request.*pass worktree=PATH"):
        await inspector(town, sm).verify(bead_id)
    worktree = make_candidate(town.root / "gastown" / "polecats" / "nux")
    stamp = "2026-11-01T00:00:00Z"
    with town.db.write() as conn:
        conn.execute(
            "INSERT INTO merge_requests (id, bead_id, rig, polecat, branch, commit_sha, base, state, summary, "
            "created_at) VALUES ('gt-mr1', ?, 'gastown', 'gastown/polecats/nux', 'main', 'x', 'main', 'queued', '', ?)",
            (bead_id, stamp))
    report = await inspector(town, sm).verify(bead_id)
    assert report.worktree == str(worktree) and report.overall == "PASS"


async def test_verify_spec_keeps_the_humans_criteria_as_designer_input(town: Town, sm: Standin) -> None:
    model = sm.script(designer=[spec(AC_ADD), spec(AC_ADD, AC_README)])
    bead_id = new_bead(town, ac="must add; must be documented")
    insp = inspector(town, sm)
    first = await insp.spec(bead_id)
    assert not first.reused and first.acceptance_criteria.startswith("- [ ] AC-1")
    assert (await insp.spec(bead_id)).reused and model.count("designer") == 1
    second = await insp.spec(bead_id, refresh=True)
    assert [c.id for c in second.specification.acceptance_criteria] == ["AC-1", "AC-2"]
    # The refresh was asked with the human's text, not with the Designer's own rendering.
    assert "must add; must be documented" in model.asked[1][2] and "- [ ] AC-1" not in model.asked[1][2]
    assert README and "AC-2 (objective)" in beads.show(town, bead_id).acceptance_criteria
