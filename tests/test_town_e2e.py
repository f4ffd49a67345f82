"""A real town end to end: `vermas-runner` boots Claude Code sessions (the real CLI from npm)
in tmux on the town's private socket, each with its own vermas-mcp, driven by the stand-in
model on 127.0.0.1. Real git, real tmux, real MCP; only the model is a test double."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vermas import beads, prices
from vermas.addresses import parse_address
from vermas.sessions import TownSessions
from vermas.testing.standin import StandinModelServer, find_claude_binary
from vermas.testing.standin.wire import TURN_USAGE, served_usage
from vermas.town import Town
from vermas_runner import demo

pytestmark = pytest.mark.skipif(find_claude_binary() is None,
                                reason="Claude Code CLI not installed (scripts/setup.sh installs it)")
RUNNER = str(Path(sys.executable).with_name("vermas-runner"))
CORE = ("mayor", "sample/witness", "sample/refinery")


class E2ETown:
    def __init__(self, root: Path, server: StandinModelServer) -> None:
        self.root = root
        self.server = server
        self.town = Town.open(root)
        self.sessions = TownSessions(root)

    def run(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k not in ("VERMAS_TOWN", "BD_ACTOR", "CLAUDECODE")}
        proc = subprocess.run([RUNNER, *args, "--town", str(self.root)], capture_output=True, text=True,
                              timeout=timeout, env=env)
        assert proc.returncode == 0, f"vermas-runner {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
        return proc

    def status(self) -> dict[str, object]:
        return json.loads(self.run("status", "--json").stdout)

    def alive(self) -> dict[str, bool]:
        return {a["address"]: a["alive"] for a in self.status()["agents"]}  # type: ignore[index]

    def pids(self) -> dict[str, int | None]:
        return {a: self.sessions.info(parse_address(a)).pid for a in CORE}

    def tool_results(self, tool: str) -> list[str]:
        out = []
        for req in self.server.requests:
            for call in req.tool_calls():
                if call.name.endswith(tool) and call.result is not None and not call.is_error:
                    out.append(call.text)
        return out

    def polecat_done_mail(self, bead_id: str, timeout: float = 180) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.town.db.read() as conn:
                row = conn.execute(
                    "SELECT body FROM messages WHERE kind = 'POLECAT_DONE' AND recipient = 'sample/witness' "
                    "AND subject LIKE ?", (f"%{bead_id}",)).fetchone()
            if row:
                return str(row[0])
            time.sleep(1)
        screens = {n: self.sessions.capture(parse_address(n.replace("vermas-", "", 1).replace("-", "/")))
                   for n in self.sessions.names() if "polecats" in n}
        raise AssertionError(f"no POLECAT_DONE for {bead_id} within {timeout}s; polecat screens: {screens}")


@pytest.fixture(scope="module")
def e2e(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2ETown]:
    base = tmp_path_factory.mktemp("e2e")
    town, _ = Town.init(base / "town")
    repo = demo.sample_repo(base / "sample-src")
    with StandinModelServer(demo.standin_policy()) as server:
        demo.use_standin(town, server.base_url, base / "claude-home")
        from vermas import rig

        rig.add(town, "sample", str(repo), prefix="sp", max_polecats=3)
        town.close()
        handle = E2ETown(town.root, server)
        try:
            yield handle
        finally:
            subprocess.run([RUNNER, "down", "--town", str(town.root)], capture_output=True, timeout=60)
            handle.sessions.kill_server()


def test_up_starts_core_sessions_with_mcp_connected(e2e: E2ETown) -> None:
    out = e2e.run("up", "--once").stdout
    for address in CORE:
        assert f"started {address}" in out
        # progress, one plain line per step (not a terminal): each session until it is ready
        assert f"{address}: waiting for its prompt and MCP server" in out
        assert f"\n{address}: ready" in out
    assert "\x1b" not in out
    assert all(e2e.alive()[a] for a in CORE)
    for address in CORE:  # each session's own vermas-mcp came up
        marker = e2e.root / ".runtime" / "agents" / parse_address(address).session_name / "mcp.ready"
        assert marker.is_file()
    # and each agent called it through MCP: `up` returns once the GUPP nudges are submitted,
    # the calls (and their results, seen in each agent's next model request) follow
    wanted = ("Patrol: read mail_inbox", "MERGE_READY", "use bead_ready and sling")
    deadline = time.monotonic() + 60
    results = " ".join(e2e.tool_results("hook_check"))
    while time.monotonic() < deadline and not all(w in results for w in wanted):
        time.sleep(0.5)
        results = " ".join(e2e.tool_results("hook_check"))
    assert "Patrol: read mail_inbox" in results  # witness
    assert "MERGE_READY" in results  # refinery
    assert "use bead_ready and sling" in results  # mayor


def test_up_twice_starts_nothing_twice(e2e: E2ETown) -> None:
    before = e2e.pids()
    out = e2e.run("up", "--once").stdout
    assert "started" not in out.replace("already running", "")
    assert all(f"already running {a}" in out for a in CORE)
    assert e2e.pids() == before


def test_sling_to_rig_spawns_polecat_that_finishes(e2e: E2ETown) -> None:
    bead = beads.create(e2e.town, parse_address("mayor"), "Write a note", rig="sample")
    out = e2e.run("sling", bead.id, "sample").stdout
    assert f"spawned sample/polecats/nux on polecat/nux/{bead.id}" in out
    body = e2e.polecat_done_mail(bead.id)
    assert f"branch: polecat/nux/{bead.id}" in body
    commit = next(line.split(": ")[1] for line in body.splitlines() if line.startswith("commit: "))
    clone = e2e.root / "sample" / "mayor" / "rig"
    log = subprocess.run(["git", "log", "--format=%H %an %s", f"polecat/nux/{bead.id}", "-1"], cwd=clone,
                         capture_output=True, text=True, check=True).stdout
    assert log.startswith(commit) and "sample/polecats/nux" in log
    with e2e.town.db.read() as conn:
        status = conn.execute("SELECT status FROM issues WHERE id = ?", (bead.id,)).fetchone()[0]
        mr = conn.execute("SELECT branch, commit_sha FROM merge_requests WHERE bead_id = ?", (bead.id,)).fetchone()
    assert status == "in_progress" and tuple(mr) == (f"polecat/nux/{bead.id}", commit)


def served_tokens(server: StandinModelServer, session_ids: set[str]) -> dict[str, int]:
    """What the stand-in said it used, summed over these sessions' conversation turns."""
    totals = {"input_tokens": 0, "output_tokens": 0, "cache_read_tokens": 0, "cache_creation_tokens": 0}
    for req in server.main_requests():
        if req.session_id in session_ids:
            usage = served_usage(req)
            totals["input_tokens"] += usage["input_tokens"]
            totals["output_tokens"] += usage["output_tokens"]
            totals["cache_read_tokens"] += usage["cache_read_input_tokens"]
            totals["cache_creation_tokens"] += usage["cache_creation_input_tokens"]
    return totals


def test_cost_of_a_polecat_is_exactly_what_the_model_served(e2e: E2ETown) -> None:
    """The real CLI writes each reply's usage into its transcript (once per content block);
    `cost` finds the transcript through the hooks, counts each message once, and gives the
    polecat and its bead exactly the tokens the stand-in reported, priced by the table."""
    bead = beads.create(e2e.town, parse_address("mayor"), "Cost a note", rig="sample")
    since = time.time()
    out = e2e.run("sling", bead.id, "sample").stdout
    address = out.split("spawned ")[1].split(" ")[0]
    try:
        _check_cost(e2e, bead.id, address, since)
    finally:  # its slot back for the tests after this one (the module's rig has 3)
        e2e.run("polecat", "nuke", address, "--force")


def _check_cost(e2e: E2ETown, bead_id: str, address: str, since: float) -> None:
    e2e.polecat_done_mail(bead_id)
    deadline, report, expected, sessions = time.monotonic() + 120, {}, {}, set()
    while time.monotonic() < deadline:
        with e2e.town.db.read() as conn:
            sessions = {r[0] for r in conn.execute(
                "SELECT session_id FROM agent_transcripts WHERE agent = ? AND seen_at >= ?", (address, since))}
        report = json.loads(e2e.run("cost", "--by", "bead", "--json").stdout)
        expected = served_tokens(e2e.server, sessions)
        got = next((b["tokens"] for b in report["by_bead"] if b["key"] == bead_id), None)
        if sessions and expected["output_tokens"] and got == expected:
            break
        time.sleep(1)
    line = next(b for b in report["by_bead"] if b["key"] == bead_id)
    assert line["tokens"] == expected, (line, expected, sessions)
    turns = expected["output_tokens"] // TURN_USAGE["output_tokens"]
    assert turns >= 3 and line["messages"] == turns  # hook_check, the note, polecat_done at least
    models = {r.model for r in e2e.server.main_requests() if r.session_id in sessions}
    assert len(models) == 1
    t = line["tokens"]
    assert line["cost_usd"] == pytest.approx(prices.estimate_usd(
        models.pop(), t["input_tokens"], t["output_tokens"], t["cache_read_tokens"], t["cache_creation_tokens"]),
        abs=1e-6)
    agent = next(a for a in report["by_agent"] if a["key"] == address)
    assert agent["tokens"]["output_tokens"] >= t["output_tokens"]
    status = e2e.status()
    assert status["cost"]["total"]["messages"] >= turns  # the same figures in `status --json`
    table = e2e.run("cost").stdout
    assert address in table and "total" in table


async def test_sling_tool_to_rig_spawns_polecat(e2e: E2ETown) -> None:
    """The MCP tool path: the mayor's sling(bead, rig) spawns a polecat whose GUPP nudge is
    sent from the tool's own process once the session is ready."""
    from mcp import Client

    from vermas_mcp.server import build_server

    bead = beads.create(e2e.town, parse_address("mayor"), "Slung through MCP", rig="sample")
    server = build_server(e2e.town, parse_address("mayor"), "mayor")
    async with Client(server) as client:
        result = await client.call_tool("sling", {"bead_id": bead.id, "target": "sample"})
        assert not result.is_error, result.content
        holder = result.structured_content["assignee"]
        assert result.structured_content["status"] == "hooked" and holder.startswith("sample/polecats/")
        body = e2e.polecat_done_mail(bead.id)  # the kick thread lives in this (the tool's) process
    assert f"polecat: {holder}" in body and f"branch: polecat/{holder.rsplit('/', 1)[1]}/{bead.id}" in body


def test_nudge_to_idle_session_is_submitted_once(e2e: E2ETown) -> None:
    token = f"nudge-token-{time.monotonic_ns()}"
    out = json.loads(e2e.run("nudge", "mayor", f"please note {token}", "--json").stdout)
    assert out["submitted"] is True and out["queued_message_id"] is None
    deadline = time.monotonic() + 30
    seen: list[int] = []
    while time.monotonic() < deadline:
        convos = [r for r in e2e.server.requests if token in r.last_user_text()]
        if convos:
            history = json.dumps(convos[-1].messages)
            seen = [history.count(token)]
            break
        time.sleep(0.5)
    assert seen == [1], "the nudge must reach the model exactly once"


def test_down_then_up_resumes_hooked_work(e2e: E2ETown) -> None:
    bead = beads.create(e2e.town, parse_address("mayor"), "Resume me", rig="sample")
    out = e2e.run("sling", bead.id, "sample", "--no-wait").stdout
    address = out.split("spawned ")[1].split(" ")[0]
    e2e.run("down")
    assert not any(e2e.alive().values())
    with e2e.town.db.read() as conn:
        row = conn.execute("SELECT status, assignee FROM issues WHERE id = ?", (bead.id,)).fetchone()
    assert tuple(row) == ("hooked", address)  # GUPP: the hook outlives the session
    up = e2e.run("up", "--once").stdout
    assert f"started {address}" in up
    body = e2e.polecat_done_mail(bead.id)
    assert f"polecat: {address}" in body


def test_session_killed_from_outside_is_reported_dead(e2e: E2ETown) -> None:
    e2e.run("up", "--once", "--no-wait")
    assert e2e.alive()["sample/witness"]
    subprocess.run(["tmux", "-L", e2e.sessions.socket, "kill-session", "-t", "vermas-sample-witness"], check=True)
    alive = e2e.alive()
    assert alive["sample/witness"] is False and alive["mayor"] is True
    table = e2e.run("status").stdout
    assert "dead" in table and "rig sample (prefix sp" in table and "polecat/nux/" in table


def test_trust_dialog_is_answered_when_the_entry_went_missing(e2e: E2ETown) -> None:
    """An exiting session can rewrite ~/.claude.json without our trust entry; the runner
    then answers Claude Code's folder-trust question itself instead of waiting forever."""
    from vermas import agents
    from vermas.sessions import launch

    address = parse_address("sample/crew/zed")
    spec = agents.launch_spec(e2e.town, address)
    subprocess.run(["git", "init", "-q", spec.cwd], check=True)  # its own checkout: not covered
    assert e2e.sessions.start(address, Path(spec.cwd), spec.argv, spec.env)
    try:
        assert e2e.sessions.wait_for(address, "Yes, I trust this folder", timeout=60)
        assert launch.wait_ready(e2e.town, e2e.sessions, address, timeout=60)
        assert nudge_screen(e2e, address).ready
    finally:
        e2e.sessions.kill(address)


def nudge_screen(e2e: E2ETown, address: object) -> object:
    from vermas.sessions import nudge

    return nudge.read_screen(e2e.sessions.capture(address))  # type: ignore[arg-type]
