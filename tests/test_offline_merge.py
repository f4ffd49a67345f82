"""Offline towns merge (issue 19, item 1) and `up` checks what merging needs (item 2).

`--model standin` points every model call of a town at the stand-in: the sessions and the
inspector's `claude -p` calls, answered by the built-in stand-in inspector
(vermas/testing/standin/inspector.py), so verification at the default level (`shell`) runs and
passes or fails on its shell criteria. The first tests need neither tmux nor Claude Code (the
stand-in inspector's answers to the prompts the real role modules write; the readiness checks);
then the real `claude -p` against the stand-in through the real pipeline; then a real town
under `vermas-runner up --model standin` whose polecats' work is verified and merged.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import git, make_repo
from tests.refinery_rig import MergeRig
from tests.test_refinery_e2e import RIG, RUNNER, QueueTown, e2e, path, process_queue_until, runner, sling_all
from vermas import beads, protocol
from vermas.addresses import parse_address
from vermas.errors import InvalidInput
from vermas.inspector import designer, readiness, strategist
from vermas.inspector.auditor import prompt as auditor_prompt
from vermas.inspector.models import Evidence, Specification, TestResult
from vermas.inspector.pipeline import verify_for_merge
from vermas.refinery import ledger
from vermas.refinery.types import MRState
from vermas.testing.standin import StandinModelServer, find_claude_binary
from vermas.testing.standin.inspector import HAS_COMMIT, NOTE_TEST, answer
from vermas.town import RigConfig, Town
from vermas_runner import demo

MAYOR = parse_address("mayor")
NOTE_BEAD = {"id": "sp-1", "issue_type": "task", "priority": 2, "status": "open", "title": "Write demo note 1",
             "description": "Add a note file under notes/ and commit it."}
# The stand-in polecat writes a draft first and the final text only after a REWORK_REQUEST; the rig's
# test command (no BROKEN .txt) passes both, so only the verification's shell criterion can catch it.
DRAFT = ("Write the final feature notes",
         "Add feature.md.\nstandin: write feature.md = draft\nstandin: fix feature.md = final",
         "- feature.md says final: `grep -qx final feature.md`")


# ---- the stand-in inspector's answers, from the prompts the real role modules write ---------------------


def spec_of(bead: dict[str, object], acceptance: str = "") -> Specification:
    return Specification.model_validate(answer("DESIGNER", designer.prompt(bead, acceptance)))


def test_designer_turns_a_note_bead_into_a_criterion_a_shell_command_checks() -> None:
    spec = spec_of(NOTE_BEAD)
    [criterion] = spec.acceptance_criteria
    assert criterion.kind == "objective" and criterion.test_hint == NOTE_TEST and spec.title == "Write demo note 1"


def test_designer_takes_the_commands_the_bead_names_and_the_files_its_script_writes() -> None:
    bead = {**NOTE_BEAD, "title": DRAFT[0], "description": DRAFT[1]}
    spec = spec_of(bead, DRAFT[2])
    assert [(c.id, c.test_hint) for c in spec.acceptance_criteria] == [
        ("AC-1", "grep -qx final feature.md"), ("AC-2", "test -s feature.md")]
    plain = spec_of({**NOTE_BEAD, "title": "Tidy up", "description": "make it nicer, `word` is no command"})
    assert [c.test_hint for c in plain.acceptance_criteria] == [HAS_COMMIT]


def test_strategist_plans_a_valid_test_per_objective_criterion(tmp_path: Path) -> None:
    from vermas.inspector.models import TestPlan

    spec = spec_of({**NOTE_BEAD, "description": DRAFT[1]}, DRAFT[2])
    repo = make_repo(tmp_path / "repo")
    raw = answer("STRATEGIST", strategist.prompt(spec, repo, "make test"))
    plan = TestPlan.model_validate(raw, context={"spec": spec})  # names real criteria, covers every objective one
    assert [(t.criterion_id, t.command) for t in plan.tests] == [
        ("AC-1", "grep -qx final feature.md"), ("AC-2", "test -s feature.md")]


def result(passed: bool) -> TestResult:
    evidence = Evidence(command="grep -qx final feature.md", output="" if passed else "draft", output_bytes=5,
                        exit_code=0 if passed else 1, duration_s=0.01)
    return TestResult(criterion_id="AC-1", passed=passed, evidence=evidence)


def test_auditor_and_judge_answer_from_the_evidence() -> None:
    criterion = spec_of(NOTE_BEAD).acceptance_criteria[0]
    for passed in (True, False):
        prompt = auditor_prompt(criterion, [result(passed)], "asked")
        assert answer("AUDITOR", prompt)["passed"] is passed
        verdict = answer("JUDGE", prompt)
        assert (verdict["passed"], verdict["prevailing"]) == (passed, "advocate" if passed else "critic")
    assert answer("AUDITOR", auditor_prompt(criterion, [], "no tests"))["passed"] is False


# ---- readiness: what `up` checks and what holds a queue ---------------------------------------------------


def rigged_town(tmp_path: Path, verify_level: str = "shell") -> Town:
    town, _ = Town.init(tmp_path / "town")
    town.config.rigs["gt"] = RigConfig(name="gt", git_url="file:///dev/null", prefix="gt", verify_level=verify_level)
    town.save_config()
    return town


def test_a_missing_inspector_command_is_one_line_naming_the_setting(tmp_path: Path) -> None:
    town = rigged_town(tmp_path)
    town.config.inspector.command = "no-such-claude-here"
    message = readiness.problem(town, town.config.rigs["gt"])
    assert message is not None and "\n" not in message
    assert "[inspector] command" in message and str(town.layout.config_file) in message
    assert "'no-such-claude-here' is not on PATH" in message and "vermas-runner up --model standin" in message
    town.config.rigs["gt"].inspector = {"command": "/nope/claude"}
    message = readiness.problem(town, town.config.rigs["gt"])
    assert message is not None and "[rigs.gt] inspector.command" in message and "not an absolute path" in message
    with pytest.raises(InvalidInput, match="rigs.gt"):
        readiness.check_town(town)
    town.close()


def test_only_a_level_that_calls_a_model_needs_the_command_and_bad_config_is_named(tmp_path: Path) -> None:
    town = rigged_town(tmp_path, verify_level="off")
    town.config.inspector.command = "no-such-claude-here"
    assert readiness.problem(town, town.config.rigs["gt"]) is None
    readiness.check_town(town)
    town.config.rigs["gt"].verify_level = "shell"
    town.config.inspector.command = "sh"  # resolves on PATH
    assert readiness.problem(town, town.config.rigs["gt"]) is None
    town.config.rigs["gt"].inspector = {"timeout": -1}
    message = readiness.problem(town, town.config.rigs["gt"])
    assert message is not None and "[rigs.gt] inspector" in message and "timeout -1" in message
    town.close()


def test_fingerprint_changes_when_the_cause_may_have_been_fixed(tmp_path: Path) -> None:
    town = rigged_town(tmp_path)
    rig = town.config.rigs["gt"]
    tool = tmp_path / "bin" / "claude-x"
    town.config.inspector.command = str(tool)
    missing = readiness.fingerprint(town, rig)
    assert readiness.fingerprint(town, rig) == missing  # stable while nothing changed
    tool.parent.mkdir()
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    assert readiness.fingerprint(town, rig) != missing  # the command resolves now
    before = readiness.fingerprint(town, rig)
    town.config.inspector.timeout = 30
    assert readiness.fingerprint(town, rig) != before  # the config changed
    town.close()


def test_up_refuses_a_town_whose_rig_cannot_verify_before_starting_anything(tmp_path: Path) -> None:
    town = rigged_town(tmp_path)
    town.config.agent.command = "/bin/sh"  # the agent command resolves: only the inspector's is missing
    town.config.inspector.command = "no-such-claude-here"
    town.save_config()
    env = {k: v for k, v in os.environ.items() if k not in ("VERMAS_TOWN", "BD_ACTOR", "CLAUDECODE")}
    env["TMUX_TMPDIR"] = str(tmp_path)
    out = subprocess.run([RUNNER, "up", "--once", "--no-wait", "--town",
                          str(town.root)], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "[inspector] command" in lines[0] and "no-such-claude-here" in lines[0], out.stderr
    assert "started" not in out.stdout and not (tmp_path / f"tmux-{os.getuid()}").exists()
    town.close()


def test_standin_takes_over_the_inspector_and_down_puts_the_towns_own_back(tmp_path: Path) -> None:
    binary = find_claude_binary()
    if binary is None:
        pytest.skip("Claude Code CLI not installed (scripts/setup.sh installs it)")
    town = rigged_town(tmp_path)
    town.config.inspector.model, town.config.inspector.args = "haiku", ["--verbose"]
    town.config.rigs["gt"].inspector = {"command": "/my/own/claude", "model": "opus"}
    town.save_config()
    try:
        demo.choose_model(town, "standin")
        state = demo.standin_state(town)
        assert state is not None
        on_disk = Town.open(town.root)
        inspector = on_disk.config.inspector
        assert (inspector.command, inspector.args, inspector.model) == (str(binary), [], "haiku")
        assert inspector.env["ANTHROPIC_BASE_URL"] == state.url and inspector.env["HOME"].startswith(
            str(town.layout.standin_home))
        assert on_disk.config.rigs["gt"].inspector == {"model": "opus"}  # its command would override the stand-in
        readiness.check_town(on_disk)  # `up` accepts it
        on_disk.close()
    finally:
        demo.stop_standin(town)
        assert demo.restore_agent(town) and demo.restore_inspector(town)
    restored = Town.open(town.root)
    assert restored.config.inspector.command == "claude" and restored.config.inspector.env == {}
    assert (restored.config.inspector.model, restored.config.inspector.args) == ("haiku", ["--verbose"])
    assert restored.config.rigs["gt"].inspector == {"command": "/my/own/claude", "model": "opus"}
    assert not demo.restore_inspector(restored)  # once
    restored.close()
    town.close()


# ---- the real `claude -p` against the stand-in, through the real pipeline ----------------------------


@pytest.fixture
def offline_town(tmp_path: Path) -> Iterator[tuple[Town, Path]]:
    """A town whose [inspector] points at a stand-in server running the demo's policy, and a crew
    checkout of its rig `gt` (a work tree the Verifier accepts)."""
    if find_claude_binary() is None:
        pytest.skip("Claude Code CLI not installed (scripts/setup.sh installs it)")
    town = rigged_town(tmp_path)
    crew = town.root / "gt" / "crew" / "dev"
    crew.parent.mkdir(parents=True)
    git(make_repo(tmp_path / "seed").parent, "clone", "-q", str(tmp_path / "seed"), str(crew))
    with StandinModelServer(demo.standin_policy()) as server:
        demo.use_standin_inspector(town, server.base_url, tmp_path / "inspector-home")
        town.save_config()
        yield town, crew
    town.close()


@pytest.mark.claude
def test_real_claude_p_on_the_stand_in_verifies_good_work_and_fails_bad_work(offline_town: tuple[Town, Path]) -> None:
    town, crew = offline_town
    bead = beads.create(town, MAYOR, NOTE_BEAD["title"], description=str(NOTE_BEAD["description"]), rig="gt").id
    bad = verify_for_merge(town, bead, crew, actor="gt/refinery")  # no note yet: the shell criterion fails
    assert bad.overall == "FAIL" and bad.model_calls == 2, bad.summary
    [criterion] = bad.criteria
    assert (criterion.outcome, criterion.stage, criterion.error) == ("FAIL", "verifier", None)
    assert criterion.tests[0].evidence.command == NOTE_TEST
    (crew / "notes").mkdir()
    (crew / "notes" / "dev.md").write_text("work by dev\n")
    git(crew, "add", "notes")
    git(crew, "commit", "-qm", "note")
    good = verify_for_merge(town, bead, crew, actor="gt/refinery")
    assert good.overall == "PASS" and good.model_calls == 0, good.summary  # spec and plan reused
    assert {c.role for c in bad.calls} == {"designer", "strategist"} and all(c.ok for c in bad.calls)


@pytest.mark.claude
def test_inspector_env_reaches_claude_p_and_drops_the_callers_login(offline_town: tuple[Town, Path],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The caller's own endpoint and config dir must not leak into the stand-in's calls."""
    town, crew = offline_town
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:9")  # nothing listens: a leak would fail the call
    monkeypatch.setenv("CLAUDE_CONFIG_DIR", str(crew / "not-here"))
    bead = beads.create(town, MAYOR, "Tidy", description="no commands here", rig="gt").id
    report = verify_for_merge(town, bead, crew, actor="gt/refinery")
    assert report.overall == "PASS" and report.criteria[0].tests[0].evidence.command == HAS_COMMIT, report.summary
    assert not (crew / "not-here").exists()


# ---- a real town under `up --model standin`: verified at level shell, merged -------------------------------


def verifying_up_town(tmp_path: Path) -> Iterator[QueueTown]:
    """Rig `gt` on a bare upstream verifying at the default level (shell), run by
    `vermas-runner up --detach --model standin`; `down` afterwards."""
    town, _ = Town.init(tmp_path / "town")
    rig = MergeRig(town, tmp_path)
    town.config.rigs[RIG].verify_level = "shell"
    town.config.inspector.model = "my-own-model"  # the town's own inspector settings, which `down` must put back
    town.save_config()
    handle = QueueTown(town, rig, None, runner=True)
    try:
        started = runner(town.root, "up", "--detach", "--model", "standin")
        assert started.returncode == 0, f"up failed:\n{started.stdout}\n{started.stderr}"
        town.reload_config()
        yield handle
    finally:
        runner(town.root, "down", timeout=120)
        handle.sessions.kill_server()
        town.close()


@pytest.fixture
def vup(tmp_path: Path) -> Iterator[QueueTown]:
    yield from verifying_up_town(tmp_path)


def verifications(qt: QueueTown, mr_id: str) -> list[dict[str, object]]:
    return [e.evidence for e in ledger.events(qt.town, mr_id) if e.evidence.get("run") == "verify"
            or e.evidence.get("check") == "verify"]


@e2e
def test_under_up_on_the_standin_a_polecats_work_is_verified_by_claude_p_and_merged(vup: QueueTown) -> None:
    town = vup.town
    assert town.config.inspector.env["ANTHROPIC_BASE_URL"] == town.config.agent.env["ANTHROPIC_BASE_URL"]
    assert town.config.inspector.command == town.config.agent.command
    [bead] = sling_all(vup, ("Write a note", "Add a note file under notes/ and commit it."))
    process_queue_until(vup, lambda: vup.bead_status(bead) == "closed", "the note bead to be verified and merged",
                        timeout=240)
    [req] = vup.requests(bead)
    assert req.state is MRState.MERGED and MRState.FAILED not in path(vup, req.id), vup.diagnostics()
    [check] = [e for e in verifications(vup, req.id)]
    assert check["outcome"] == "passed" and check["command"] == "verify level shell", check
    with town.db.read() as conn:  # the real claude -p answered the Designer and the Strategist
        report = json.loads(conn.execute("SELECT report_json FROM verification_reports WHERE bead_id = ? "
                                         "ORDER BY rowid DESC LIMIT 1", (bead,)).fetchone()[0])
    assert report["overall"] == "PASS" and {c["role"] for c in report["calls"]} == {"designer", "strategist"}
    assert report["criteria"][0]["tests"][0]["evidence"]["command"] == NOTE_TEST
    assert git(vup.rig.bare, "merge-base", "--is-ancestor", str(req.merged_sha), "main") == ""
    down = runner(town.root, "down", timeout=120)
    assert "[agent]" in down.stdout and "[inspector]" in down.stdout and "is the town's own again" in down.stdout
    restored = Town.open(town.root)
    assert restored.config.inspector.command == "claude" and restored.config.inspector.env == {}
    assert restored.config.inspector.model == "my-own-model" and restored.config.agent.command == "claude"
    assert not restored.layout.standin_saved_inspector.exists()
    restored.close()


@e2e
def test_under_up_on_the_standin_work_failing_a_shell_criterion_is_reworked_then_merged(vup: QueueTown) -> None:
    from vermas import sling

    bead = beads.create(vup.town, MAYOR, DRAFT[0], description=DRAFT[1], rig=RIG, acceptance_criteria=DRAFT[2]).id
    sling.sling(vup.town, MAYOR, bead, RIG, sessions=vup.sessions)
    process_queue_until(vup, lambda: vup.bead_status(bead) == "closed", "the draft to be reworked and merged",
                        timeout=300)
    first, second = vup.requests(bead)[:2]
    states = path(vup, first.id)
    assert MRState.REWORK in states and MRState.FAILED not in states, vup.diagnostics()
    sent_back = next(e for e in ledger.events(vup.town, first.id) if e.to_state is MRState.REWORK)
    assert sent_back.evidence["run"] == "verify" and sent_back.evidence["status"] == "failed", sent_back.evidence
    assert sent_back.evidence["criterion"] == "AC-1"
    rework = [m for m in vup.mail(protocol.ProtocolKind.REWORK_REQUEST, to_prefix="")
              if isinstance(m, protocol.ReworkRequest) and m.bead == bead]
    assert rework and rework[0].reason == "verification"
    merged = [r for r in vup.requests(bead) if r.state is MRState.MERGED]
    assert len(merged) == 1 and vup.upstream_file("feature.md") == "final\n", vup.diagnostics()


# ---- a verification that cannot run for a reason of the town holds the queue -------------------------------


def escalations(town: Town, key: str) -> list[tuple[float | None]]:
    with town.db.read() as conn:
        return [(r[0],) for r in conn.execute("SELECT resolved_at FROM escalations WHERE key = ?", (key,))]


@pytest.mark.claude
def test_a_missing_inspector_command_holds_the_queue_once_and_it_resumes_once_fixed(tmp_path: Path) -> None:
    from vermas.refinery import worker
    from vermas.refinery.types import HoldKind

    if find_claude_binary() is None:
        pytest.skip("Claude Code CLI not installed (scripts/setup.sh installs it)")
    town, _ = Town.init(tmp_path / "town")
    rig = MergeRig(town, tmp_path)
    town.config.rigs[RIG].verify_level = "shell"
    town.config.inspector.command = "no-such-claude-here"
    town.save_config()
    one, two = rig.work("First change", {"one.txt": "1\n"}), rig.work("Second change", {"two.txt": "2\n"})
    before = rig.upstream_main()
    first = worker.process_rig(town, RIG, "t", 1000.0)
    hold = ledger.queue_state(town, RIG).hold
    assert hold is not None and hold.kind is HoldKind.VERIFY_UNAVAILABLE, first
    assert "[inspector] command" in hold.reason and "no-such-claude-here" in hold.reason
    assert first.paused and not first.failed and not first.escalated
    for mr in (one.mr, two.mr):  # back to queued, nothing counted against the requests
        req = ledger.get(town, mr)
        assert (req.state, req.failures, req.attempts) == (MRState.QUEUED, 0, 0), path(QueueTown(town, rig, None), mr)
    assert escalations(town, f"mq-hold:{RIG}") == [(None,)]
    claims = len([e for e in ledger.events(town, one.mr) if e.to_state is MRState.CLAIMED])
    for n in range(3):  # held: nothing claimed or tested again, no second escalation
        again = worker.process_rig(town, RIG, "t", 1010.0 + n)
        assert again.test_runs == 0 and not again.merged, again
    assert len([e for e in ledger.events(town, one.mr) if e.to_state is MRState.CLAIMED]) == claims
    assert escalations(town, f"mq-hold:{RIG}") == [(None,)] and rig.upstream_main() == before
    with StandinModelServer(demo.standin_policy()) as server:  # the cause fixed in town.toml
        edited = Town.open(town.root)
        demo.use_standin_inspector(edited, server.base_url, tmp_path / "inspector-home")
        edited.save_config()
        edited.close()
        town.reload_config()  # what the runner does every round
        worker.drain(town, RIG, "t", clock=lambda: 1100.0)
    assert ledger.queue_state(town, RIG).hold is None
    assert {ledger.get(town, mr).state for mr in (one.mr, two.mr)} == {MRState.MERGED}
    assert rig.upstream_files() >= {"one.txt", "two.txt"}
    [(resolved,)] = escalations(town, f"mq-hold:{RIG}")
    assert resolved is not None
    town.close()


@e2e
def test_a_running_runner_holds_on_a_broken_town_toml_and_resumes_when_it_is_fixed(vup: QueueTown) -> None:
    """The runner reads town.toml every round: an edit breaking the inspector holds the queue
    (no request fails), the edit fixing it lets the held work merge, with no down/up."""
    town = vup.town
    command = town.config.inspector.command

    def set_command(value: str) -> None:
        edited = Town.open(town.root)
        edited.config.inspector.command = value
        edited.save_config()
        edited.close()

    deadline = time.monotonic() + 120  # the detached runner re-points town.toml at the stand-in as it starts
    while "patrolling" not in (town.layout.runner_log.read_text() if town.layout.runner_log.exists() else ""):
        assert time.monotonic() < deadline, "the runner did not start patrolling"
        time.sleep(0.2)
    set_command("/nonexistent/claude")
    [bead] = sling_all(vup, ("Write a note", "Add a note file under notes/ and commit it."))
    process_queue_until(vup, lambda: ledger.queue_state(town, RIG).hold is not None, "the queue to be held",
                        timeout=240)
    hold = ledger.queue_state(town, RIG).hold
    assert hold is not None and "/nonexistent/claude" in hold.reason
    assert all(r.state is not MRState.FAILED and r.failures == 0 for r in vup.requests(bead)), vup.diagnostics()
    problems = runner(town.root, "status", "--problems")  # where people look
    assert "/nonexistent/claude" in problems.stdout, problems.stdout + problems.stderr
    assert escalations(town, f"mq-hold:{RIG}") == [(None,)]
    set_command(command)
    process_queue_until(vup, lambda: vup.bead_status(bead) == "closed", "the held bead to merge once fixed",
                        timeout=240)
    assert ledger.queue_state(town, RIG).hold is None
    assert [r.state for r in vup.requests(bead)] == [MRState.MERGED], vup.diagnostics()
    [(resolved,)] = escalations(town, f"mq-hold:{RIG}")
    assert resolved is not None
