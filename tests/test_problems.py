"""Problems are visible where people look: what is a problem (a pure function, tested over every
case), and a real town store with a real refinery (real git, real tests, the real ledger) whose
failed request, escalated request, paused queue, held queue and open escalations all show in
`vermas-runner status --problems` (text and --json), its header's count, and the dashboard's
escalations panel; and that resolving each cause clears it."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cdp import Browser, chromium_binary
from tests.conftest import git
from tests.test_dashboard_browser import start_dashboard
from tests.refinery_rig import MergeRig
from vermas import patrol_log
from vermas.dashboard import view
from vermas.problems import (
    Problem, ProblemKind, QueueFacts, RequestFacts, WatchRow, escalation_about, find_problems,
    queue_problems, request_problems,
)
from vermas.patrol_types import StandingEscalation
from vermas.protocol import Escalation, ProtocolKind
from vermas.refinery import ledger, worker
from vermas.refinery.ledger import MergeRequestRow
from vermas.refinery.types import (
    CANNOT_RUN_TRIES, RETRY_BACKOFF_CAP_S, HoldKind, MRState, RunKind, RunOutcome, RunStatus,
)
from vermas.sessions import TownSessions
from vermas.status import AgentRow
from vermas.town import Town

RUNNER = str(Path(sys.executable).with_name("vermas-runner"))
OWNER = "runner-1"
MAX = 3


# ---------------------------------------------------------------------------------- pure rules


def req(state: MRState, attempts: int = 0, not_before: float | None = None, mr_id: str = "gt-mr1") -> RequestFacts:
    return RequestFacts(id=mr_id, rig="gt", bead="gt-b1", state=state, attempts=attempts, failures=1,
                        not_before=not_before, reason="why")


def esc(key: str, agent: str | None = None, acked: float | None = None) -> StandingEscalation:
    return StandingEscalation(key=key, to="mayor", raised_at=5.0, subject=f"ESCALATION {key}", agent=agent,
                              acked_at=acked)


@pytest.mark.parametrize(("state", "attempts", "escalated"),
                         list(itertools.product(MRState, (0, MAX - 1, MAX, MAX + 1), (False, True))))
def test_request_problems_for_every_state_attempt_count_and_escalation(
        state: MRState, attempts: int, escalated: bool) -> None:
    expected = []
    if state is MRState.FAILED:  # could not be checked, whether backing off or escalated
        expected.append(Problem.FAILED)
    # escalated: an open escalation about it, or sent back max_attempts times (the refinery escalates then)
    if escalated or (state in (MRState.REWORK, MRState.CONFLICT) and attempts >= MAX):
        expected.append(Problem.ESCALATED)
    assert request_problems(req(state, attempts), MAX, escalated) == expected


@pytest.mark.parametrize(("paused", "held", "escalated"), list(itertools.product((False, True), repeat=3)))
def test_queue_problems_for_every_combination(paused: bool, held: bool, escalated: bool) -> None:
    q = QueueFacts(rig="gt", paused_sha="a" * 40 if paused else None, paused_reason="main fails" if paused else None,
                   held=HoldKind.PUSH_REFUSED.value if held else None, held_reason="push refused" if held else None)
    expected = [p for p, on in ((Problem.PAUSED, paused), (Problem.HELD, held), (Problem.ESCALATED, escalated)) if on]
    assert queue_problems(q, escalated) == expected


@pytest.mark.parametrize(("key", "agent", "about"), [
    (ledger.mr_escalation_key("gt-mr1", MRState.FAILED), None, (ProblemKind.MERGE_REQUEST, "gt-mr1")),
    (ledger.mr_escalation_key("gt-mr1", MRState.CONFLICT), "gt/refinery", (ProblemKind.MERGE_REQUEST, "gt-mr1")),
    (ledger.target_red_key("gt", "b" * 40), None, (ProblemKind.QUEUE, "gt")),
    (ledger.hold_key("gt"), "gt/refinery", (ProblemKind.QUEUE, "gt")),  # a hold names the refinery: rides on the queue
    ("witness:gt:stuck:gt/polecats/nux", "gt/polecats/nux", (ProblemKind.AGENT, "gt/polecats/nux")),
    ("deacon:heartbeat", None, (ProblemKind.ESCALATION, "deacon:heartbeat")),
    ("mq:", None, (ProblemKind.ESCALATION, "mq:")),  # malformed: its own row, never lost
    ("mq-hold:", None, (ProblemKind.ESCALATION, "mq-hold:")),
])
def test_escalation_about(key: str, agent: str | None, about: tuple[ProblemKind, str]) -> None:
    assert escalation_about(esc(key, agent)) == about


def agent_row(address: str, problems: list[Problem]) -> WatchRow:
    return WatchRow(agent=AgentRow(address=address, session=f"s-{address}", alive=False), problems=problems)


def test_every_open_escalation_rides_on_one_row_or_has_its_own() -> None:
    mr_key, red, hold = (ledger.mr_escalation_key("gt-mr1", MRState.FAILED), ledger.target_red_key("gt", "c" * 40),
                         ledger.hold_key("gt"))
    standing = [esc(mr_key), esc(red), esc(hold, "gt/refinery", acked=9.0), esc("w:mayor", "mayor"),
                esc("w:gone", "gt/polecats/gone"), esc("deacon:x"),
                esc(ledger.mr_escalation_key("gt-gone", MRState.REJECTED))]
    rows = find_problems(
        [agent_row("mayor", [Problem.DEAD, Problem.ESCALATED])],
        [req(MRState.FAILED), req(MRState.REWORK, attempts=1, mr_id="gt-mr2"),
         req(MRState.CONFLICT, MAX, mr_id="gt-mr3")],
        [QueueFacts(rig="gt", paused_sha="c" * 40, paused_reason="main fails", held="push_refused",
                    held_reason="push refused: no"), QueueFacts(rig="ok")],
        standing, {"gt": MAX}, 99)
    shape = [(r.kind, r.subject, r.problems, [e.key for e in r.escalations]) for r in rows]
    assert shape == [
        (ProblemKind.AGENT, "mayor", [Problem.DEAD, Problem.ESCALATED], ["w:mayor"]),
        (ProblemKind.MERGE_REQUEST, "gt-mr1", [Problem.FAILED, Problem.ESCALATED], [mr_key]),
        # gt-mr2 was sent back once (under max_attempts): the polecat's to fix, not a person's
        (ProblemKind.MERGE_REQUEST, "gt-mr3", [Problem.ESCALATED], []),
        (ProblemKind.QUEUE, "gt", [Problem.PAUSED, Problem.HELD, Problem.ESCALATED], [hold, red]),  # oldest first
        # the rest, oldest first (then by key)
        (ProblemKind.ESCALATION, "deacon:x", [Problem.ESCALATED], ["deacon:x"]),
        (ProblemKind.ESCALATION, ledger.mr_escalation_key("gt-gone", MRState.REJECTED), [Problem.ESCALATED],
         [ledger.mr_escalation_key("gt-gone", MRState.REJECTED)]),  # its request is not among the facts
        (ProblemKind.ESCALATION, "w:gone", [Problem.ESCALATED], ["w:gone"]),  # its agent is not in the town
    ]
    every = [e.key for r in rows for e in r.escalations]
    assert sorted(every) == sorted(e.key for e in standing)  # each exactly once
    queue = rows[3]
    assert "paused at cccccccccccc: main fails" in queue.reason
    assert "held (push_refused): push refused: no" in queue.reason
    assert [e.acked for e in queue.escalations] == [True, False]
    assert "waits for mq retry gt-mr1" in rows[1].reason and rows[1].state == "failed"


def test_max_attempts_is_per_rig_and_nothing_is_a_problem_without_a_cause() -> None:
    conflict = RequestFacts(id="x-mr1", rig="x", bead="x-1", state=MRState.CONFLICT, attempts=2)
    assert find_problems([], [conflict], [], [], {"x": 2}, 99)[0].problems == [Problem.ESCALATED]
    assert find_problems([], [conflict], [], [], {"x": 3}, 99) == []
    assert find_problems([], [conflict], [], [], {}, 2)[0].problems == [Problem.ESCALATED]  # the default
    assert find_problems([agent_row("mayor", [])], [req(MRState.QUEUED)], [QueueFacts(rig="gt")], [], {}, MAX) == []


# ---------------------------------------------------------------------------------- a real town


def model_unavailable_for(bead: str) -> worker.Verify:
    """The inspector's model (the outside world) cannot answer for `bead`; every other request
    verifies. What the refinery does with that answer is the real worker's."""
    def verify(town: Town, r: MergeRequestRow, tree: Path, level: str, tip: str) -> RunOutcome:
        status = RunStatus.COULD_NOT_RUN if r.bead == bead else RunStatus.PASSED
        return RunOutcome(kind=RunKind.VERIFY, status=status, command=f"verify level {level}", duration_s=0.1,
                          output_tail="model unavailable: connection refused" if r.bead == bead else "PASS",
                          target_sha=tip, candidate_sha=git(tree, "rev-parse", "HEAD"))
    return verify


def drain(town: Town, at: float, verify: worker.Verify) -> list[worker.StepReport]:
    reports = worker.drain(town, "gt", OWNER, clock=lambda: at, verify=verify)
    assert [r.error for r in reports if r.error] == []
    return reports


def cli(town: Town, *args: str, columns: int = 220) -> str:
    done = subprocess.run([RUNNER, "status", "--town", str(town.root), *args], capture_output=True, text=True,
                          timeout=120, env={"PATH": "/usr/bin:/bin", "COLUMNS": str(columns), "HOME": str(town.root)})
    assert done.returncode == 0, done.stderr
    return done.stdout


def problem_rows(town: Town) -> list[dict[str, Any]]:
    """`status --problems --json`, without the agents (no session runs in this test: all dead)."""
    return [r for r in json.loads(cli(town, "--problems", "--json")) if r["kind"] != "agent"]


def standing(town: Town) -> set[str]:
    with town.db.read() as conn:
        return set(patrol_log.standing(conn))


class Troubled:
    """A real rig whose refinery left: a request escalated after a conflict (max_attempts 1), a
    request failed (its verification could not run CANNOT_RUN_TRIES times, then escalated), the
    queue paused on a red target (escalated), and held by the town (escalated)."""

    def __init__(self, town: Town, tmp_path: Path) -> None:
        self.town = town
        self.rig = MergeRig(town, tmp_path, batch_size=1)
        config = town.config.rigs["gt"]
        town.config.rigs["gt"] = config.model_copy(update={
            "verify_level": "shell", "merge": config.merge.model_copy(update={"max_attempts": 1})})
        town.save_config()
        town.reload_config()
        self.first = self.rig.work("edit readme", {"README.md": "first version\n"})
        self.conflict = self.rig.work("edit readme too", {"README.md": "second version\n"})
        self.unverifiable = self.rig.work("add c", {"c.txt": "c\n"})
        self.verify = model_unavailable_for(self.unverifiable.bead)
        self.t = time.time()
        drain(town, self.t, self.verify)
        for _ in range(CANNOT_RUN_TRIES - 1):  # each backoff elapsed: tried again, could not run again
            self.t += RETRY_BACKOFF_CAP_S + 1
            drain(town, self.t, self.verify)
        self.red = self.rig.push_upstream("upstream.txt", "BROKEN upstream\n")
        self.waiting = self.rig.work("add d", {"d.txt": "d\n"})
        assert drain(town, self.t, self.verify)[-1].paused
        assert ledger.hold(town, "gt", HoldKind.UPSTREAM_DIRTY, "work tree dirty: README.md", "dirty-1", self.t,
                           "gt/refinery")


@pytest.fixture
def troubled(town: Town, tmp_path: Path) -> Iterator[Troubled]:
    try:
        yield Troubled(town, tmp_path)
    finally:
        TownSessions(town.root).kill_server()  # `status` only looks; nothing should be running


@pytest.mark.slow
def test_a_troubled_queue_shows_everywhere_and_clears_as_each_cause_goes(town: Town, troubled: Troubled) -> None:
    t, first, conflict, unverifiable = troubled, troubled.first, troubled.conflict, troubled.unverifiable
    assert ledger.get(town, first.mr).state is MRState.MERGED
    assert ledger.get(town, conflict.mr).state is MRState.CONFLICT
    assert (ledger.get(town, unverifiable.mr).state, ledger.get(town, unverifiable.mr).failures) == (
        MRState.FAILED, CANNOT_RUN_TRIES)
    conflict_key = ledger.mr_escalation_key(conflict.mr, MRState.CONFLICT)
    failed_key = ledger.mr_escalation_key(unverifiable.mr, MRState.FAILED)
    red_key = ledger.target_red_key("gt", t.red)
    # every ESCALATION mail the refinery sent has its row in the escalations table
    assert len(t.rig.mail_to("mayor", ProtocolKind.ESCALATION)) == 4
    assert standing(town) == {conflict_key, failed_key, red_key, ledger.hold_key("gt")}
    patrol_log.raise_escalation(town, "deacon", "deacon", "deacon:test", "overseer",
                                Escalation(text="the deacon needs a person", reason="test"), "a test cause", t.t)

    rows = problem_rows(town)
    got = {(r["kind"], r["subject"]): (r["problems"], sorted(e["key"] for e in r["escalations"])) for r in rows}
    assert got == {
        ("merge_request", conflict.mr): (["escalated"], [conflict_key]),
        ("merge_request", unverifiable.mr): (["failed", "escalated"], [failed_key]),
        ("queue", "gt"): (["paused", "held", "escalated"], sorted([red_key, ledger.hold_key("gt")])),
        ("escalation", "deacon:test"): (["escalated"], ["deacon:test"]),
    }
    by = {r["subject"]: r for r in rows}
    failed_reason = by[unverifiable.mr]["reason"]
    assert "could not run" in failed_reason and f"mq retry {unverifiable.mr}" in failed_reason
    assert "held (upstream_dirty): work tree dirty: README.md" in by["gt"]["reason"]
    assert f"paused at {t.red[:12]}" in by["gt"]["reason"]

    text = cli(town, "--problems")
    everything = json.loads(cli(town, "--problems", "--json"))
    assert f"problems {len(everything)}" in text  # the header counts every problem, agents or not
    for needle in (conflict.mr, unverifiable.mr, "queue gt", "paused held escalated", "deacon:test",
                   "held (upstream_dirty)"):
        assert needle in text, (needle, text)
    plain = cli(town, columns=400)  # plain `status`: the rig's queue line says paused and held, with reasons
    assert "held (upstream_dirty)" in plain and f"paused at {t.red[:12]}" in plain

    snap = view.snapshot(town, panes={})  # the dashboard's escalations panel
    panel = {(p.kind.value, p.subject): [x.value for x in p.problems] for p in snap.problems}
    assert panel == {k: v[0] for k, v in got.items()}
    assert '<section id="escalations"><h2>Problems and open escalations</h2>' in (
        Path(view.__file__).with_name("page.html").read_text())

    # the causes go, one by one, and so do their rows
    ledger.reject(town, conflict.mr, "overseer", "a person judged it")  # mq_reject's core
    assert conflict.mr not in {r["subject"] for r in problem_rows(town)} and conflict_key not in standing(town)
    ledger.retry(town, unverifiable.mr, "overseer")  # mq_retry's core
    assert failed_key not in standing(town)
    assert {r["subject"] for r in problem_rows(town)} == {"gt", "deacon:test"}
    patrol_log.resolve(town, "deacon", "deacon:test", "fixed", t.t)
    ledger.release_hold(town, "gt", "the work tree is clean", "gt/refinery", t.t)
    assert [(r["subject"], r["problems"]) for r in problem_rows(town)] == [("gt", ["paused", "escalated"])]
    t.rig.push_upstream("upstream.txt", "fine now\n")
    drain(town, t.t, model_unavailable_for("-"))  # the model answers now: every request verifies
    assert ledger.queue_state(town, "gt").paused_sha is None and standing(town) == set()
    assert problem_rows(town) == [] and view.snapshot(town, panes={}).problems == []
    assert ledger.get(town, unverifiable.mr).state is MRState.MERGED
    assert ledger.get(town, t.waiting.mr).state is MRState.MERGED


@pytest.mark.slow
def test_an_escalation_raised_again_after_it_was_resolved_is_a_new_one(town: Town, tmp_path: Path) -> None:
    """A request retried by a person and failing again escalates again (a new change of state):
    a second mail and a standing row, not silence."""
    rig = MergeRig(town, tmp_path, batch_size=1)
    config = town.config.rigs["gt"]
    town.config.rigs["gt"] = config.model_copy(update={"verify_level": "shell"})
    town.save_config()
    w = rig.work("add c", {"c.txt": "c\n"})
    verify, at = model_unavailable_for(w.bead), time.time()
    for _ in range(CANNOT_RUN_TRIES):
        drain(town, at, verify)
        at += RETRY_BACKOFF_CAP_S + 1
    key = ledger.mr_escalation_key(w.mr, MRState.FAILED)
    assert standing(town) == {key} and len(rig.mail_to("mayor", ProtocolKind.ESCALATION)) == 1
    ledger.retry(town, w.mr, "overseer")
    assert standing(town) == set()
    for _ in range(CANNOT_RUN_TRIES):
        drain(town, at, verify)
        at += RETRY_BACKOFF_CAP_S + 1
    assert standing(town) == {key} and len(rig.mail_to("mayor", ProtocolKind.ESCALATION)) == 2


PANEL_JS = ("[...document.querySelectorAll('#escalations tr[data-kind]')]"
            ".map(r => [r.dataset.kind, r.dataset.subject, r.cells[0].textContent])")


@pytest.mark.slow
@pytest.mark.chromium
@pytest.mark.skipif(chromium_binary() is None, reason="chromium not installed (scripts/setup.sh installs it)")
def test_the_dashboard_page_shows_the_problems_in_its_escalations_panel(town: Town, troubled: Troubled,
                                                                         tmp_path: Path) -> None:
    """The real page in headless Chromium, served by `vermas-runner dashboard`, rows its panel
    from the snapshot: each row kind, subject and problems, ack and retry buttons included."""
    proc, url = start_dashboard(town.root, {k: v for k, v in os.environ.items() if k != "VERMAS_TOWN"})
    try:
        with Browser(tmp_path / "chromium-profile") as browser:
            browser.navigate(url)
            rows = browser.wait_for(f"(r => r.length === 3 && r)({PANEL_JS})", 60, "three problem rows")
            assert browser.evaluate("document.body.dataset.updated")  # the whole render ran, past the panel
            assert sorted(map(tuple, rows)) == sorted([
                ("merge_request", troubled.conflict.mr, "escalated"),
                ("merge_request", troubled.unverifiable.mr, "failed escalated"),
                ("queue", "gt", "paused held escalated")])
            buttons = browser.evaluate("[...document.querySelectorAll('#escalations button')].map(b => b.textContent)")
            assert buttons.count("ack") == 4 and buttons.count("retry") == 2  # one per escalation, per request
            ledger.reject(town, troubled.conflict.mr, "overseer", "a person judged it")
            browser.wait_for(f"{PANEL_JS}.length === 2", 60, "the rejected request's row gone")
    finally:
        proc.terminate()
        proc.wait(30)


def test_a_request_rejected_for_a_gone_branch_stands_escalated_until_its_bead_has_new_work(
        town: Town, tmp_path: Path) -> None:
    rig = MergeRig(town, tmp_path)
    w = rig.work("add a", {"a.txt": "a\n"})
    git(rig.clone, "worktree", "remove", "--force", str(w.worktree))
    git(rig.clone, "branch", "-D", w.branch)
    worker.drain(town, "gt", OWNER)
    key = ledger.mr_escalation_key(w.mr, MRState.REJECTED)
    assert ledger.get(town, w.mr).state is MRState.REJECTED and standing(town) == {key}
    [row] = [r for r in view.snapshot(town, panes={}).problems if r.kind is ProblemKind.MERGE_REQUEST]
    assert (row.subject, row.problems, row.state) == (w.mr, [Problem.ESCALATED], "rejected")
    again = ledger.enqueue(town, rig="gt", bead=w.bead, polecat=str(w.address), branch="polecat/again",
                           commit=rig.upstream_main())  # the bead re-slung and done again: its new request
    assert again.created and standing(town) == set() and view.snapshot(town, panes={}).problems == []
