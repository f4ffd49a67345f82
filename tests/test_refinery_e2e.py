"""The refinery end to end: polecats are real Claude Code sessions (the CLI from npm, in tmux on
the town's private socket, each with its own vermas-mcp) played by the stand-in polecat
(vermas/testing/standin/polecat.py), whose bead text scripts the work and the rework; the
merge queue is the real worker on a rig whose upstream is a bare repository, with a real test
command. Only the model is a double.

Who drives the queue: `process_queue_until` does what the runner's patrol does each round (the
patrol's GUPP nudges, then `worker.drain` of the rig's queue) from a thread of the test. When the
runner's patrol drives the refinery itself, that helper is the one thing to change.

The first tests run without tmux or Claude Code: the stand-in polecat's decisions on synthetic
requests, and its shell commands on real git (the conflict resolution that the e2e test relies on).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from tests.conftest import git, make_repo
from tests.refinery_rig import MergeRig
from vermas import beads, convoy, patrol, polecat, protocol
from vermas.addresses import parse_address
from vermas.refinery import ledger, worker
from vermas.refinery.types import MRState
from vermas.sessions import TownSessions
from vermas.testing.standin import BeadScript, ModelRequest, StandinModelServer, find_claude_binary, polecat_policy
from vermas.testing.standin.polecat import rebase_command, write_command
from vermas.town import Town
from vermas_mcp.server import build_server
from vermas_runner import demo

E2E = (pytest.mark.tmux, pytest.mark.claude, pytest.mark.slow,
       pytest.mark.skipif(find_claude_binary() is None,
                          reason="Claude Code CLI not installed (scripts/setup.sh installs it)"))
MAYOR = parse_address("mayor")
OWNER = "test-runner"
RIG = "gt"
ROUND_S = 0.5
F = Callable[..., None]


def e2e(test: F) -> F:
    """Marks of a test that runs real Claude Code sessions in tmux (the module's first tests need neither)."""
    for mark in E2E:
        test = mark(test)
    return test


# ---- the stand-in polecat without Claude Code -----------------------------------------------------------


def request(messages: list[dict[str, Any]]) -> ModelRequest:
    tools = [{"name": n} for n in ("Bash", "mcp__vermas__hook_check", "mcp__vermas__mail_inbox",
                                   "mcp__vermas__mail_read", "mcp__vermas__mol_step_done",
                                   "mcp__vermas__polecat_done")]
    body = {"model": "m", "max_tokens": 1000, "system": "You are a vermas polecat", "tools": tools,
            "messages": messages}
    return ModelRequest("POST", "/v1/messages", {"X-Claude-Code-Session-Id": "s1"}, body)


def converse(policy: Callable[[ModelRequest], list[dict[str, Any]]], prompt: str, results: list[Any],
             history: list[dict[str, Any]] | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Play a round: the prompt, then each result (JSON-able, or text) answering the policy's last
    tool call. Returns (the tool calls made, the conversation)."""
    messages = [*(history or []), {"role": "user", "content": prompt}]
    calls: list[dict[str, Any]] = []
    for result in [*results, None]:
        blocks = policy(request(messages))
        messages.append({"role": "assistant", "content": blocks})
        uses = [b for b in blocks if b["type"] == "tool_use"]
        if not uses:
            break
        calls.append(uses[0])
        text = result if isinstance(result, str) else json.dumps(result)
        messages.append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": uses[0]["id"],
                                                       "content": text}]})
    return calls, messages


SCRIPTED = "Make the feature.\nstandin: write feature.txt = BROKEN\nstandin: fix feature.txt = working"


def test_bead_script_reads_write_and_fix_lines_and_refuses_paths_outside() -> None:
    text = "prose\nstandin: write a/b.txt = one\\ntwo\nstandin: fix a/b.txt = ok\n  standin: write c = "
    script = BeadScript.parse(text)
    assert script.writes == {"a/b.txt": "one\ntwo", "c": ""} and script.fixes == {"a/b.txt": "ok"}
    assert BeadScript.parse("no lines here") == BeadScript()
    with pytest.raises(ValueError, match="inside the worktree"):
        BeadScript.parse("standin: write ../x = y")


def test_stand_in_polecat_writes_then_fixes_on_a_rework_request() -> None:
    policy = polecat_policy()
    bead = {"id": "gt-abc", "title": "Feature", "description": SCRIPTED}
    calls, history = converse(policy, "GUPP", [{"bead": bead, "unread_mail": 0}, "abc123 gt-abc: Feature",
                                               {"id": "gt-mr1"}])
    assert [c["name"] for c in calls] == ["mcp__vermas__hook_check", "Bash", "mcp__vermas__polecat_done"]
    assert "printf '%s\\n' BROKEN > feature.txt" in calls[1]["input"]["command"]
    inbox = {"messages": [{"id": "m1", "subject": "MERGED gt-other"}, {"id": "m2", "subject": "REWORK_REQUEST gt-abc"}]}
    body = "bead: gt-abc\nmerge_request: gt-mr1\nreason: tests\ncommand: grep\n\nfix it"
    calls, _ = converse(policy, "GUPP again", [{"bead": bead, "unread_mail": 2}, inbox, {"id": "m2", "body": body},
                                               "def456 fix", {"id": "gt-mr2"}], history)
    assert [c["name"].rsplit("__", 1)[-1] for c in calls] == ["hook_check", "mail_inbox", "mail_read", "Bash",
                                                              "polecat_done"]
    assert calls[2]["input"] == {"message_id": "m2"}
    fix = calls[3]["input"]["command"]
    assert "working > feature.txt" in fix and "fix after gt-mr1" in fix
    assert policy.rounds == 2


def test_stand_in_polecat_rebases_on_a_conflict_and_escalates_what_it_cannot_fix() -> None:
    policy = polecat_policy()
    plain = {"id": "gt-p", "title": "Plain", "description": "just do it"}
    inbox = {"messages": [{"id": "m1", "subject": "REWORK_REQUEST gt-p"}]}
    conflict = "bead: gt-p\nreason: conflict\ntarget_sha: 0123abc\nfiles: README.md\n\nrebase"
    calls, _ = converse(policy, "GUPP", [{"bead": plain, "unread_mail": 1}, inbox, {"body": conflict}, "ok", {}])
    assert "rebase 0123abc" in calls[3]["input"]["command"]
    assert calls[4]["input"]["status"] == "COMPLETED" and "README.md" in calls[4]["input"]["summary"]
    tests = "bead: gt-p\nreason: tests\n\nred"
    calls, _ = converse(polecat_policy(), "GUPP", [{"bead": plain, "unread_mail": 1}, inbox, {"body": tests}, {}])
    assert calls[-1]["input"]["status"] == "ESCALATED"
    calls, _ = converse(polecat_policy(), "GUPP", [{"bead": None, "unread_mail": 0}])
    assert len(calls) == 1  # an empty hook: check it and wait
    calls, _ = converse(polecat_policy(), "GUPP", [{"bead": plain, "unread_mail": 0}, "ok", {}])
    assert "notes/" in calls[1]["input"]["command"]  # a plain bead: the demo's note, as before


def bash(cwd: Path, command: str) -> subprocess.CompletedProcess[str]:
    env = {"GIT_AUTHOR_NAME": "pc", "GIT_COMMITTER_NAME": "pc", "GIT_AUTHOR_EMAIL": "pc@vermas.invalid",
           "GIT_COMMITTER_EMAIL": "pc@vermas.invalid", "PATH": "/usr/bin:/bin", "HOME": str(cwd)}
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True)


def test_write_and_rebase_commands_on_real_git_keep_both_sides(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    (repo / "README.md").write_text("sample\nsecond\n")
    git(repo, "commit", "-qam", "two lines")
    git(repo, "checkout", "-qb", "polecat/b")
    done = bash(repo, write_command({"README.md": "sample, edited by B\nsecond", "d/new.txt": "x"}, "B's edit"))
    assert done.returncode == 0, done.stderr
    git(repo, "checkout", "-q", "main")
    (repo / "README.md").write_text("sample, edited by A\nsecond\n")
    git(repo, "commit", "-qam", "A's edit")
    target = git(repo, "rev-parse", "HEAD")
    git(repo, "checkout", "-q", "polecat/b")
    rebased = bash(repo, rebase_command(target))
    assert rebased.returncode == 0, rebased.stdout + rebased.stderr
    assert (repo / "README.md").read_text() == "sample, edited by A\nsample, edited by B\nsecond\n"
    assert (repo / "d" / "new.txt").read_text() == "x\n"
    assert git(repo, "rev-parse", "HEAD~1") == target and not git(repo, "status", "--porcelain")


# ---- the queue, end to end ---------------------------------------------------------------------------------


class QueueTown:
    """A town on the stand-in model with rig `gt` on a bare upstream (tests/refinery_rig.py), and
    the loop that stands in for the runner's patrol."""

    def __init__(self, town: Town, rig: MergeRig, server: StandinModelServer | None, runner: bool = False) -> None:
        self.town, self.rig, self.server = town, rig, server
        self.runner = runner  # True: `vermas-runner up` runs the patrol (and the queue); no test thread
        self.sessions = TownSessions(town.root)
        self.reports: list[worker.StepReport] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the runner's patrol, until it drives the refinery itself --------------------------------------------

    def _kill(self, address: str) -> None:
        self.sessions.kill(parse_address(address))

    def _rounds(self) -> None:
        while not self._stop.is_set():
            try:
                patrol.patrol_once(self.town, self.sessions)
                self.reports += worker.drain(self.town, RIG, OWNER, kill_session=self._kill)
            except Exception as exc:  # noqa: BLE001 - shown in the failure message, the loop goes on
                self.errors.append(f"{type(exc).__name__}: {exc}")
            self._stop.wait(ROUND_S)

    def start(self) -> None:
        if self._thread is None and not self.runner:
            self._thread = threading.Thread(target=self._rounds, name="test-runner-patrol", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=120)

    # -- what a failure shows ----------------------------------------------------------------------------

    def diagnostics(self) -> str:
        out = ["merge requests:"]
        for req in ledger.list_requests(self.town, rig=RIG):
            out.append(f"  {req.id} {req.state.value} bead={req.bead} polecat={req.polecat} commit={req.commit[:10]}")
            for ev in ledger.events(self.town, req.id):
                evidence = {k: v for k, v in ev.evidence.items() if k in ("reason", "files", "command", "exit_status",
                                                                        "output_tail", "merged_sha", "cleanup")}
                out.append(f"    {ev.from_state and ev.from_state.value} -> {ev.to_state.value}: {evidence}")
        worked = [r for r in self.reports if r.progressed or r.error]
        out.append("queue steps (last 8 that did something): " + "; ".join(
            r.model_dump_json(exclude_defaults=True) for r in worked[-8:]))
        out.append(f"driver errors: {self.errors[-5:]}")
        if self.server is not None:
            out.append(f"stand-in policy errors: {[e.error[:500] for e in self.server.errors[-3:]]}")
        for name in self.sessions.names():
            if "polecats" in name:
                address = parse_address(name.removeprefix("vermas-").replace("-", "/"))
                tail = "\n".join(self.sessions.capture(address).rstrip().splitlines()[-25:])
                out.append(f"--- pane {name} (last 25 lines) ---\n{tail}")
        return "\n".join(out)

    # -- git and the ledger --------------------------------------------------------------------------------

    def requests(self, bead: str) -> list[ledger.MergeRequestRow]:
        return ledger.list_requests(self.town, bead=bead)

    def bead_status(self, bead: str) -> str:
        return str(self.rig.bead_row(bead)["status"])

    def upstream_file(self, path: str) -> str:
        return git(self.rig.bare, "show", f"main:{path}") + "\n"

    def mail(self, kind: protocol.ProtocolKind, to_prefix: str = f"{RIG}/polecats/") -> list[protocol.ProtocolMessage]:
        with self.town.db.read() as conn:
            rows = conn.execute("SELECT subject, body FROM messages WHERE recipient LIKE ? ORDER BY created_ts",
                                (to_prefix + "%",)).fetchall()
        parsed = [protocol.parse(r[0], r[1]) for r in rows]
        return [m for m in parsed if m is not None and m.KIND is kind]


def path(qt: QueueTown, mr_id: str) -> list[MRState]:
    """The states a request went through (its cleanup note, merged -> merged, left out)."""
    return [e.to_state for e in ledger.events(qt.town, mr_id) if e.from_state is not e.to_state]


def process_queue_until(qt: QueueTown, done: Callable[[], bool], what: str, timeout: float | None = None) -> None:
    """Let the queue be processed (the runner's own patrol under `up`, or the test's stand-in for it,
    started once) until `done()`; fail after `timeout` s with the requests' events, the queue steps and the panes."""
    qt.start()
    timeout = timeout or (180 if qt.runner else 75)  # the runner's patrol rounds are slower than the test's
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done():
            return
        time.sleep(0.25)
    raise AssertionError(f"{what}: not within {timeout:.0f}s\n{qt.diagnostics()}")


@pytest.fixture
def qt(tmp_path: Path) -> Iterator[QueueTown]:
    town, _ = Town.init(tmp_path / "town")
    with StandinModelServer(demo.standin_policy()) as server:
        demo.use_standin(town, server.base_url, tmp_path / "claude-home")
        rig = MergeRig(town, tmp_path)
        handle = QueueTown(town, rig, server)
        try:
            yield handle
        finally:
            handle.stop()
            handle.sessions.kill_server()
            town.close()


RUNNER = str(Path(sys.executable).parent / "vermas-runner")


def runner(root: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VERMAS_TOWN", "BD_ACTOR", "CLAUDECODE")}
    return subprocess.run([RUNNER, *args, "--town", str(root)], capture_output=True, text=True, timeout=timeout,
                          env=env)


def up_town(tmp_path: Path, upstream: str = "bare") -> Iterator[QueueTown]:
    """The same rig, but the town runs as a person runs it: `vermas-runner up --detach --model standin`
    (its own stand-in model process, its own runner whose patrol drives the merge queue). The body
    of the `up` fixture (tests/conftest.py), shared by the refinery and molecule end-to-end tests.
    `upstream`: the rig's upstream kind (refinery_rig.MergeRig; "checkout" is a person's own repository)."""
    town, _ = Town.init(tmp_path / "town")
    rig = MergeRig(town, tmp_path, upstream=upstream)
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


def sling_all(qt: QueueTown, *descriptions: tuple[str, str]) -> list[str]:
    """Beads created and slung to the rig (core sling; the GUPP nudge from a thread of this process)."""
    from vermas import sling

    ids = [beads.create(qt.town, MAYOR, title, description=text, rig=RIG).id for title, text in descriptions]
    for bead in ids:
        sling.sling(qt.town, MAYOR, bead, RIG, sessions=qt.sessions)
    return ids


def assert_cleaned_up(qt: QueueTown, bead_ids: list[str]) -> None:
    """Every request's polecat: worktree removed, branch deleted, slot freed, session gone."""
    for bead in bead_ids:
        merged = [r for r in qt.requests(bead) if r.state is MRState.MERGED]
        assert len(merged) == 1, qt.diagnostics()
        req = merged[0]
        name = req.polecat.rsplit("/", 1)[1]
        assert not qt.town.layout.polecat_worktree(RIG, name).exists(), qt.diagnostics()
        assert not qt.rig.branch_exists(req.branch) and req.cleaned_at is not None
        assert not qt.sessions.alive(parse_address(req.polecat))
    assert qt.rig.slots() == [] and polecat.list_polecats(qt.town, RIG) == []


async def convoy_and_sling(town: Town, titles: list[str]) -> tuple[str, list[str]]:
    """As the mayor does it, over MCP: three beads, convoy_create, then sling each to the rig."""
    async with Client(build_server(town, MAYOR, "mayor")) as c:
        ids = []
        for title in titles:
            made = await c.call_tool("bead_create", {"title": title, "rig": RIG})
            assert not made.is_error, made.content
            ids.append(made.structured_content["id"])
        created = await c.call_tool("convoy_create", {"title": "three notes", "bead_ids": ids})
        assert not created.is_error, created.content
        for bead in ids:
            slung = await c.call_tool("sling", {"bead_id": bead, "target": RIG})
            assert not slung.is_error, slung.content
        return str(created.structured_content["id"]), ids


@e2e
def test_a_convoy_of_three_is_merged_onto_the_upstream_and_lands(qt: QueueTown) -> None:
    convoy_of_three_lands(qt)


@e2e
def test_under_up_the_runners_own_patrol_merges_a_convoy_of_three(up: QueueTown) -> None:
    """No test thread drives anything: the detached runner's patrol nudges, merges and cleans up."""
    convoy_of_three_lands(up)
    assert not up.errors and up._thread is None
    owners = {e.evidence.get("lease_owner") for req in ledger.list_requests(up.town, rig=RIG)
              for e in ledger.events(up.town, req.id) if e.to_state is MRState.CLAIMED}
    assert owners and None not in owners and OWNER not in owners, owners  # claimed by the runner's worker


def convoy_of_three_lands(qt: QueueTown) -> None:
    convoy_id, ids = asyncio.run(convoy_and_sling(qt.town, ["Note one", "Note two", "Note three"]))
    process_queue_until(qt, lambda: convoy.status(qt.town, convoy_id).landed, "the convoy of three to land")
    process_queue_until(qt, lambda: qt.rig.slots() == [], "every slot to be freed after the merges")
    for bead in ids:
        row = qt.rig.bead_row(bead)
        [req] = qt.requests(bead)  # each merged on its first request
        assert row["status"] == "closed" and row["close_reason"] == f"merged in {req.merged_sha}", qt.diagnostics()
        assert git(qt.rig.bare, "merge-base", "--is-ancestor", str(req.merged_sha), "main") == ""
        note = f"notes/{req.polecat.replace('/', '-')}.md"
        assert qt.upstream_file(note) == f"work by {req.polecat}\n"  # the plain bead's work, as before
    assert qt.rig.upstream_main() == git(qt.rig.clone, "rev-parse", "main")
    assert convoy.status(qt.town, convoy_id).closed == 3
    assert len(qt.mail(protocol.ProtocolKind.MERGED)) == 3 and not qt.mail(protocol.ProtocolKind.REWORK_REQUEST)
    assert_cleaned_up(qt, ids)


FAILING = ("Add the feature",
           "Add feature.txt.\nstandin: write feature.txt = BROKEN\nstandin: fix feature.txt = working")


@e2e
def test_a_change_that_fails_the_tests_is_reworked_by_its_polecat_and_merged(qt: QueueTown) -> None:
    [bead] = sling_all(qt, FAILING)
    first, second = failing_bead_is_reworked_and_merged(qt, bead)
    assert first.polecat == second.polecat  # its polecat, alive, fixed it


@e2e
def test_under_up_a_change_that_fails_the_tests_is_reworked_on_its_branch_and_merged(up: QueueTown) -> None:
    """Under `up` the witness stops a polecat's session when it reports done, so the rework goes to a
    new polecat on the SAME branch (vermas.polecat.respawn_on_branch): compare branches, not names."""
    [bead] = sling_all(up, FAILING)
    first, second = failing_bead_is_reworked_and_merged(up, bead)
    assert first.branch == second.branch, up.diagnostics()


def failing_bead_is_reworked_and_merged(qt: QueueTown, bead: str) -> tuple[ledger.MergeRequestRow,
                                                                          ledger.MergeRequestRow]:
    process_queue_until(qt, lambda: qt.bead_status(bead) == "closed", "the failing bead to be fixed and merged")
    first, second = qt.requests(bead)
    # Sent back for rework, then replaced by the fix's request (a new commit), which merged.
    assert path(qt, first.id) == [MRState.QUEUED, MRState.CLAIMED, MRState.TESTING, MRState.REWORK,
                                  MRState.REJECTED], qt.diagnostics()
    assert second.state is MRState.MERGED, qt.diagnostics()
    events = ledger.events(qt.town, first.id)
    assert events[-1].evidence["reason"] == f"superseded by {second.id}"
    sent_back = next(e for e in events if e.to_state is MRState.REWORK)
    assert sent_back.evidence["command"] == qt.town.config.rigs[RIG].test_command
    assert sent_back.evidence["exit_status"] == 1
    [rework] = qt.mail(protocol.ProtocolKind.REWORK_REQUEST)
    assert isinstance(rework, protocol.ReworkRequest)
    assert (rework.bead, rework.reason, rework.merge_request) == (bead, "tests", first.id)
    with qt.town.db.read() as conn:  # the polecat read it (mail_read) before fixing
        read = conn.execute("SELECT read_at FROM messages WHERE subject = ?", (f"REWORK_REQUEST {bead}",)).fetchone()
    assert read[0] is not None
    assert qt.upstream_file("feature.txt") == "working\n"
    assert "BROKEN" not in git(qt.rig.bare, "show", "main:feature.txt")
    comments = [c.text for c in beads.show(qt.town, bead).comments]
    assert any(first.id in c and "fail" in c.lower() for c in comments), comments
    process_queue_until(qt, lambda: qt.rig.slots() == [], "the slot to be freed after the merge")
    assert_cleaned_up(qt, [bead])
    return first, second


def same_lines(who: str) -> tuple[str, str]:
    return (f"Edit the README ({who})", f"standin: write README.md = sample, edited by {who}")


@e2e
def test_two_beads_on_the_same_lines_make_one_merge_and_one_conflict_rework_then_both_land(qt: QueueTown) -> None:
    ids = sling_all(qt, same_lines("A"), same_lines("B"))
    process_queue_until(qt, lambda: all(qt.bead_status(b) == "closed" for b in ids),
                        "both beads to be merged, the second after its conflict rework")
    history = {b: [r.state for r in qt.requests(b)] for b in ids}
    # One merged at once; the other's request met a conflict and was replaced by the rebased one.
    assert sorted(history.values(), key=len) == [[MRState.MERGED], [MRState.REJECTED, MRState.MERGED]], \
        qt.diagnostics()
    second = next(b for b, states in history.items() if len(states) == 2)
    assert MRState.CONFLICT in path(qt, qt.requests(second)[0].id), qt.diagnostics()
    first = next(b for b in ids if b != second)
    [rework] = qt.mail(protocol.ProtocolKind.REWORK_REQUEST)
    assert isinstance(rework, protocol.ReworkRequest)
    first_merge = qt.requests(first)[0].merged_sha
    assert (rework.bead, rework.reason, rework.files, rework.target_sha) == (second, "conflict", "README.md",
                                                                               first_merge), qt.diagnostics()
    conflict = [e for e in ledger.events(qt.town, qt.requests(second)[0].id) if e.to_state is MRState.CONFLICT]
    assert conflict and conflict[0].evidence["files"] == ["README.md"]
    who = {b: "A" if b == ids[0] else "B" for b in ids}
    # The polecat rebased onto the target and kept both sides: the first merge's line, then its own.
    assert qt.upstream_file("README.md") == f"sample, edited by {who[first]}\nsample, edited by {who[second]}\n"
    process_queue_until(qt, lambda: qt.rig.slots() == [], "both slots to be freed after the merges")
    assert_cleaned_up(qt, ids)
