"""Agent events from Claude Code's own hooks: the generated settings carry every hook, the
hook entry point records what Claude Code hands it (run exactly as Claude Code runs it: the
settings' argv, JSON on stdin, the agent's environment), never fails or talks on stdout,
and a real Claude Code session on the stand-in model leaves its events in the store."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from vermas import agents, events, hookevent
from vermas.addresses import parse_address
from vermas.events import EventKind
from vermas.town import Town

ACTOR = "sample/polecats/nux"
HOOKED = {"SessionStart", "UserPromptSubmit", "PreToolUse", "PostToolUse", "PostToolUseFailure", "Stop",
          "StopFailure", "Notification", "SessionEnd"}


def hook_argv(town: Town, kind: str, matcher: str | None = None, actor: str = ACTOR) -> list[str]:
    """The event hook's argv for `kind` exactly as the generated settings.json gives it:
    python -I -S -c BOOT KIND STORE FAILURES ACTOR [DETAIL] (so the store is argv[6]). The
    settings are written where a launch writes them (the hook records only agents launched so)."""
    settings = launched(town, actor)
    for group in settings["hooks"][kind]:  # type: ignore[index]
        if group.get("matcher") == matcher:
            for hook in group["hooks"]:
                if "args" in hook:
                    return [hook["command"], *hook["args"]]
    raise AssertionError(f"no event hook for {kind} {matcher}")


def launched(town: Town, actor: str) -> dict[str, Any]:
    """Write `actor`'s launch settings as agents.launch_spec does (without a session): what
    makes it an agent of the town for the hook. The settings."""
    address = parse_address(actor)
    settings = agents.settings_for(town, address)
    folder = town.layout.agent_runtime_dir(address.session_name)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "settings.json").write_text(json.dumps(settings))
    return settings


def fire(town: Town, kind: str, data: dict[str, Any] | bytes, matcher: str | None = None,
         argv: list[str] | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run the hook as Claude Code does: exec form, the input on stdin, the agent's env."""
    payload = data if isinstance(data, bytes) else json.dumps({"hook_event_name": kind, **data}).encode()
    env = {**os.environ, **agents.identity_env(town, parse_address(ACTOR)), "CLAUDE_PROJECT_DIR": str(town.root)}
    return subprocess.run(argv or hook_argv(town, kind, matcher), input=payload, capture_output=True, env=env,
                          timeout=30)


def rows(town: Town) -> list[tuple[str, str, str | None, str]]:
    return [(e.agent, e.kind, e.tool, e.detail) for e in events.list_events(town, limit=1000)]


# --------------------------------------------------------------------------- settings


def test_generated_settings_carry_every_event_hook(town: Town) -> None:
    settings = agents.settings_for(town, parse_address(ACTOR))
    hooks: dict[str, list[dict[str, Any]]] = settings["hooks"]  # type: ignore[assignment]
    assert set(hooks) == HOOKED
    start = hooks["SessionStart"]
    assert "prime" in start[0]["hooks"][0]["command"] and "async" not in start[0]["hooks"][0]  # context first
    assert [g.get("matcher") for g in hooks["Notification"]] == ["permission_prompt", "idle_prompt",
                                                                  "elicitation_dialog"]
    root = str(Path(hookevent.__file__).resolve().parent.parent)
    for kind, groups in hooks.items():
        if kind == "SessionStart":
            groups = groups[1:]
        assert groups, kind
        for group in groups:
            (handler,) = group["hooks"]
            assert handler["type"] == "command" and Path(handler["command"]).is_file()
            args = handler["args"]
            assert args[:3] == ["-I", "-S", "-c"] and repr(root) in args[3] and "vermas.hookevent" in args[3]
            assert args[4:8] == [kind, str(town.layout.store_path), str(town.layout.hook_failures), ACTOR]
            assert args[8:] == ([group["matcher"]] if "matcher" in group else [])
            # waited for where another event can follow within ms (their order is the evidence)
            assert handler.get("async") is (True if kind == "Notification" else None)
            assert 0 < handler["timeout"] <= 30


def test_launch_spec_writes_those_settings(town: Town) -> None:
    crew = parse_address("sample/crew/zed")  # (a polecat's launch needs its git worktree)
    spec = agents.launch_spec(town, crew)
    written = json.loads((Path(spec.runtime_dir) / "settings.json").read_text())
    assert written["hooks"] == agents.settings_for(town, crew)["hooks"]


# --------------------------------------------------------------------------- the hook


def test_hook_records_each_event_with_its_tool_and_detail(town: Town) -> None:
    common = {"session_id": "s-1", "transcript_path": "/dev/null", "cwd": str(town.root)}
    cases: list[tuple[str, str | None, dict[str, Any]]] = [
        ("SessionStart", None, {**common, "source": "startup"}),
        ("UserPromptSubmit", None, {**common, "prompt": "check your hook"}),
        ("PreToolUse", None, {**common, "tool_name": "Bash", "tool_input": {"command": 'echo "tool_name":"x"'}}),
        ("PostToolUse", None, {**common, "tool_name": "Bash", "tool_input": {}, "tool_response": {"stdout": "ok"}}),
        ("PostToolUseFailure", None, {**common, "tool_name": "Edit", "error": "no such file", "is_interrupt": False}),
        ("Stop", None, {**common, "stop_hook_active": False}),
        ("Notification", "permission_prompt", {**common, "message": "Claude needs your permission to use Bash",
                                               "notification_type": "permission_prompt"}),
        ("Notification", "idle_prompt", {**common, "message": "waiting", "notification_type": "idle_prompt"}),
        ("SessionEnd", None, {**common, "reason": "prompt_input_exit"}),
    ]
    before = time.time()
    for kind, matcher, data in cases:
        proc = fire(town, kind, data, matcher)
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"", b"")
    assert rows(town) == [
        (ACTOR, "SessionStart", None, "startup"), (ACTOR, "UserPromptSubmit", None, ""),
        (ACTOR, "PreToolUse", "Bash", ""), (ACTOR, "PostToolUse", "Bash", ""),
        (ACTOR, "PostToolUseFailure", "Edit", "no such file"), (ACTOR, "Stop", None, ""),
        (ACTOR, "Notification", None, "permission_prompt"), (ACTOR, "Notification", None, "idle_prompt"),
        (ACTOR, "SessionEnd", None, "prompt_input_exit"),
    ]
    stamps = [e.at for e in events.list_events(town)]
    assert before <= stamps[0] and stamps == sorted(stamps) and stamps[-1] <= time.time()
    assert events.hook_failures(town) == 0
    with town.db.read() as conn:  # Claude Code's session id on every row: the witness keys SessionEnd by it
        assert {r[0] for r in conn.execute("SELECT session FROM agent_events")} == {"s-1"}
    fire(town, "Stop", {"transcript_path": "/dev/null"}, None)  # no session id given: none stored
    with town.db.read() as conn:
        assert conn.execute("SELECT session FROM agent_events ORDER BY id DESC LIMIT 1").fetchone()[0] is None


def test_odd_input_still_records_the_event(town: Town) -> None:
    for payload in (b"", b"not json", b'{"tool_name": "Bash"', b"[1, 2]", b"\xff\xfe", b'{"tool_name": 7}'):
        proc = fire(town, "PreToolUse", payload)
        assert (proc.returncode, proc.stdout) == (0, b"")
    assert rows(town) == [(ACTOR, "PreToolUse", None, "")] * 6
    big = {"tool_name": "Write", "tool_input": {"content": "x" * 3_000_000}}  # a large Write: read whole
    assert fire(town, "PreToolUse", big).returncode == 0
    assert rows(town)[-1] == (ACTOR, "PreToolUse", "Write", "")


def _failing_runs(argv: list[str], town_env: dict[str, str]) -> list[subprocess.CompletedProcess[bytes]]:
    payload = json.dumps({"hook_event_name": "PreToolUse", "tool_name": "Bash"}).encode()
    return [subprocess.run(argv, input=payload, capture_output=True, env=town_env, timeout=30) for _ in range(2)]


def test_missing_town_never_fails_the_agent_nor_creates_a_store(tmp_path: Path, town: Town) -> None:
    argv = hook_argv(town, "PreToolUse")
    gone = tmp_path / "gone"
    argv[6:9] = [str(gone / ".beads" / "vermas.db"), str(gone / ".runtime" / "hook-failures.log"), "mayor"]
    for proc in _failing_runs(argv, dict(os.environ)):
        assert (proc.returncode, proc.stdout) == (0, b"")
    assert not gone.exists()  # nothing created, nothing to count into
    store_gone = hook_argv(town, "PreToolUse")
    store_gone[6] = str(tmp_path / "town" / ".beads" / "other.db")  # the town is there, its store is not
    assert all(p.returncode == 0 and p.stdout == b"" for p in _failing_runs(store_gone, dict(os.environ)))
    assert not (tmp_path / "town" / ".beads" / "other.db").exists()
    assert events.hook_failures(town) == 2


def test_broken_store_is_counted_not_raised(tmp_path: Path, town: Town) -> None:
    argv = hook_argv(town, "PreToolUse")
    broken = tmp_path / "broken.db"
    broken.write_bytes(b"this is not a database" * 100)
    argv[6] = str(broken)
    for proc in _failing_runs(argv, dict(os.environ)):
        assert (proc.returncode, proc.stdout) == (0, b"")
    lines = town.layout.hook_failures.read_text().splitlines()
    assert len(lines) == 2 and all("PreToolUse sample/polecats/nux" in line for line in lines)
    assert "not a database" in lines[0]
    assert events.hook_failures(town) == 2


def test_store_without_the_table_and_bad_arguments_exit_zero(tmp_path: Path, town: Town) -> None:
    old = tmp_path / "old.db"
    sqlite3.connect(old).execute("CREATE TABLE t(x)").connection.commit()
    argv = hook_argv(town, "Stop")
    argv[6] = str(old)
    assert all(p.returncode == 0 and p.stdout == b"" for p in _failing_runs(argv, dict(os.environ)))
    assert "no such table: agent_events" in town.layout.hook_failures.read_text()
    short = hook_argv(town, "Stop")[:6]  # too few arguments: nothing to do, still exit 0
    proc = subprocess.run(short, input=b"{}", capture_output=True, timeout=30)
    assert (proc.returncode, proc.stdout) == (0, b"")


def test_locked_store_waits_bounded_then_counts(town: Town) -> None:
    """A writer holding the store past the busy timeout costs one counted event, never a hang."""
    holder = sqlite3.connect(town.layout.store_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        argv = hook_argv(town, "Stop")
        shorter = "import vermas.hookevent as h; h.BUSY_TIMEOUT_S = 0.3; from vermas.hookevent import main"
        argv[4] = argv[4].replace("from vermas.hookevent import main", shorter)
        start = time.monotonic()
        proc = fire(town, "Stop", {}, argv=argv)
        assert (proc.returncode, proc.stdout) == (0, b"") and time.monotonic() - start < 10
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert "locked" in town.layout.hook_failures.read_text()
    assert fire(town, "Stop", {}).returncode == 0 and rows(town) == [(ACTOR, "Stop", None, "")]


def test_failure_log_is_bounded(tmp_path: Path, town: Town, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hookevent, "MAX_FAILURE_LOG", 200)
    log = tmp_path / "failures.log"
    for _ in range(20):
        hookevent.count_failure(str(log), "x" * 50 + "\nsecond line")
    lines = log.read_text().splitlines()
    assert 3 <= len(lines) <= 5 and all("second line" in line for line in lines)  # one line per failure
    monkeypatch.chdir(tmp_path)
    hookevent.count_failure("relative.log", "x")
    assert not (tmp_path / "relative.log").exists()


# --------------------------------------------------------------------------- store


def test_retention_keeps_the_newest_per_agent(town: Town, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hookevent, "KEEP_PER_AGENT", 20)
    for i in range(100):
        events.record(town, ACTOR, EventKind.PRE_TOOL_USE, tool=f"t{i}", at=1000.0 + i)
        if i % 10 == 0:
            events.record(town, "mayor", EventKind.STOP, at=1000.0 + i)
    mine = events.list_events(town, agent=ACTOR, limit=1000)
    assert 20 <= len(mine) < 20 + hookevent.PRUNE_EVERY and mine[-1].tool == "t99"
    assert [e.at for e in mine] == sorted(e.at for e in mine)
    assert len(events.list_events(town, agent="mayor")) == 10  # another agent's history is its own
    with town.db.read() as conn:
        plan = " ".join(r[3] for r in conn.execute(f"EXPLAIN QUERY PLAN {hookevent.PRUNE}", (ACTOR, 19)))
    assert "agent_events_agent_at" in plan and "SCAN agent_events" not in plan


def test_a_store_from_before_the_table_gains_it_on_open(tmp_path: Path) -> None:
    from vermas.store import SCHEMA_VERSION

    town, _ = Town.init(tmp_path / "town")
    town.close()
    conn = sqlite3.connect(town.layout.store_path)
    conn.executescript("DROP TABLE agent_events; PRAGMA user_version = 3;")
    conn.close()
    town = Town.open(tmp_path / "town")
    try:
        assert fire(town, "Stop", {}).returncode == 0 and rows(town) == [(ACTOR, "Stop", None, "")]
        with town.db.read() as c:
            assert c.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        town.close()


def test_latest_and_filters(town: Town) -> None:
    events.record(town, ACTOR, EventKind.PRE_TOOL_USE, tool="Bash", at=10.0)
    events.record(town, "mayor", EventKind.TOOL, tool="hook_check", at=11.0)
    events.record(town, ACTOR, EventKind.POST_TOOL_USE, tool="Bash", at=12.0)
    events.record(town, "mayor", EventKind.STOP, at=13.0)
    latest = events.latest(town)
    assert {a: (e.kind, e.at) for a, e in latest.items()} == {ACTOR: ("PostToolUse", 12.0), "mayor": ("Stop", 13.0)}
    assert list(events.latest(town, ["mayor", "sample/witness"])) == ["mayor"]
    assert [e.kind for e in events.list_events(town, agent="mayor")] == ["tool", "Stop"]
    assert [e.agent for e in events.list_events(town, kind="PreToolUse")] == [ACTOR]
    assert [e.at for e in events.list_events(town, limit=2)] == [12.0, 13.0]  # the newest, oldest first
    first = events.list_events(town)[0].id
    assert [e.at for e in events.list_events(town, after_id=first, limit=2)] == [11.0, 12.0]
    assert latest["mayor"].time == "1970-01-01T00:00:13.000+00:00"
    assert latest["mayor"].label == "Stop" and events.list_events(town)[1].label == "tool:hook_check"


# --------------------------------------------------------------------------- MCP tool calls


async def test_every_mcp_tool_call_is_activity(town: Town, client_for: Any) -> None:
    async with client_for("mayor") as client:
        assert not (await client.call_tool("hook_check", {})).is_error
        refused = await client.call_tool("mail_inbox", {"no_such_parameter": 1})
        assert refused.is_error
        assert not (await client.call_tool("hook_check", {})).is_error
    assert rows(town) == [("mayor", "tool", "hook_check", ""), ("mayor", "tool", "mail_inbox", ""),
                          ("mayor", "tool", "hook_check", "")]
    assert events.latest(town, ["mayor"])["mayor"].label == "tool:hook_check"


async def test_a_store_refusing_the_event_never_fails_the_tool(town: Town, client_for: Any) -> None:
    with town.db.write() as conn:
        conn.execute("DROP TABLE agent_events")
    async with client_for("mayor") as client:
        result = await client.call_tool("hook_check", {})
    assert not result.is_error, result.content
    assert events.hook_failures(town) == 1
    assert "tool:hook_check mayor: no such table" in town.layout.hook_failures.read_text()


def test_list_refuses_bad_filters(town: Town) -> None:
    from vermas.errors import InvalidInput

    for kwargs, message in (({"kind": "Bogus"}, "allowed: SessionStart"), ({"agent": "a/b/c"}, "invalid address"),
                            ({"limit": 0}, "allowed: 1 to 100000")):
        with pytest.raises(InvalidInput, match=message):
            events.list_events(town, **kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the shell


RUNNER = str(Path(__import__("sys").executable).with_name("vermas-runner"))


def runner(town: Town, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VERMAS_TOWN", "BD_ACTOR")} | {"COLUMNS": "120"}
    return subprocess.run([RUNNER, *args, "--town", str(town.root)], capture_output=True, text=True, env=env,
                          timeout=60)


def seed(town: Town) -> None:
    events.record(town, ACTOR, EventKind.PRE_TOOL_USE, tool="Bash", at=1_800_000_000.0)
    events.record(town, ACTOR, EventKind.POST_TOOL_USE_FAILURE, tool="Bash", detail="exit 1", at=1_800_000_001.5)
    events.record(town, "mayor", EventKind.NOTIFICATION, detail="permission_prompt", at=1_800_000_002.0)
    events.record(town, "mayor", EventKind.TOOL, tool="hook_check", at=1_800_000_003.25)


def test_events_command_table_json_and_filters(town: Town) -> None:
    seed(town)
    out = runner(town, "events")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "time (UTC)" in lines[1] and lines[-1] == "4 event(s)"
    body = [line for line in lines if "│" in line]
    assert [[cell.strip() for cell in line.split("│")[2:4]] for line in body] == [
        [ACTOR, "PreToolUse:Bash"], [ACTOR, "PostToolUseFailure:Bash"],
        ["mayor", "Notification:permission_prompt"], ["mayor", "tool:hook_check"]]
    assert "08:00:01.500" in body[1] and "exit 1" in body[1]
    data = json.loads(runner(town, "events", "--json").stdout)
    assert [(e["agent"], e["kind"], e["tool"], e["detail"]) for e in data] == [
        (ACTOR, "PreToolUse", "Bash", ""), (ACTOR, "PostToolUseFailure", "Bash", "exit 1"),
        ("mayor", "Notification", None, "permission_prompt"), ("mayor", "tool", "hook_check", "")]
    assert data[3]["time"] == "2027-01-15T08:00:03.250+00:00" and data[3]["at"] == 1_800_000_003.25
    only = json.loads(runner(town, "events", "--json", "--agent", "mayor", "--kind", "tool").stdout)
    assert [e["tool"] for e in only] == ["hook_check"]
    assert [e["kind"] for e in json.loads(runner(town, "events", "--json", "--limit", "1").stdout)] == ["tool"]
    bad = runner(town, "events", "--kind", "Bogus")
    assert bad.returncode == 2 and "invalid event kind 'Bogus'; allowed: SessionStart" in bad.stderr and not bad.stdout
    town.layout.hook_failures.write_text("1 x\n2 y\n")
    assert "2 hook run(s) could not record theirs" in runner(town, "events").stdout


def test_events_follow_prints_new_events_as_they_land(town: Town) -> None:
    import signal

    seed(town)
    env = {k: v for k, v in os.environ.items() if k not in ("VERMAS_TOWN", "BD_ACTOR")}
    proc = subprocess.Popen([RUNNER, "events", "--follow", "--json", "--agent", ACTOR, "--town", str(town.root)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    import threading

    watchdog = threading.Timer(60, proc.kill)  # a line that never comes fails the test, not the run
    watchdog.start()
    try:
        assert proc.stdout is not None
        first = [json.loads(proc.stdout.readline()) for _ in range(2)]  # the backlog, then new ones
        assert [e["kind"] for e in first] == ["PreToolUse", "PostToolUseFailure"]
        events.record(town, "mayor", EventKind.STOP)  # another agent's: filtered out
        events.record(town, ACTOR, EventKind.STOP)
        new = json.loads(proc.stdout.readline())
        assert (new["agent"], new["kind"]) == (ACTOR, "Stop")
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
        watchdog.cancel()
    assert proc.returncode == 0 and "Traceback" not in err


def test_status_shows_each_agents_latest_event(town: Town) -> None:
    seed(town)
    status = json.loads(runner(town, "status", "--json").stdout)
    mayor = next(a for a in status["agents"] if a["address"] == "mayor")
    assert mayor["last_event"]["kind"] == "tool" and mayor["last_event"]["tool"] == "hook_check"
    assert mayor["last_event"]["time"] == "2027-01-15T08:00:03.250+00:00"
    assert "tool:hook_check @08:00:03" in runner(town, "status").stdout


# --------------------------------------------------------------------------- real Claude Code


@pytest.mark.claude
@pytest.mark.tmux
@pytest.mark.slow
def test_real_session_records_its_events_in_order(tmp_path: Path) -> None:
    """The real CLI in tmux on the town's private socket, launched the way `up` launches an
    agent, driven by the stand-in model through a Bash call and a vermas MCP tool call."""
    from vermas.sessions import TownSessions, launch
    from vermas.testing.standin import ScriptedPolicy, StandinModelServer, find_claude_binary
    from vermas_runner import demo

    if find_claude_binary() is None:
        pytest.skip("Claude Code CLI not installed (scripts/setup.sh installs it)")
    town, _ = Town.init(tmp_path / "town")
    address = parse_address("mayor")
    policy = ScriptedPolicy([
        {"tool": "mcp__vermas__hook_check", "input": {}, "wait_for_tool": True},
        {"tool": "Bash", "input": {"command": "echo evidence-ran", "description": "say it"}},
        "All done.",
    ])
    with StandinModelServer(policy) as server:
        demo.use_standin(town, server.base_url, tmp_path / "claude-home")
        sessions = TownSessions(town.root)
        try:
            assert launch.start_agent(town, sessions, address)
            nudged = launch.kick(town, sessions, address)
            assert nudged is not None and nudged.submitted, sessions.capture(address)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not policy.exhausted:
                time.sleep(0.5)
            assert policy.exhausted, sessions.capture(address)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and "Stop" not in [e.kind for e in events.list_events(town)]:
                time.sleep(0.3)
        finally:
            sessions.kill_server()  # SIGHUP: Claude Code still runs its SessionEnd hooks
        assert not server.errors, server.errors[0].error
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and "SessionEnd" not in [e.kind for e in events.list_events(town)]:
        time.sleep(0.3)
    seen = sorted(events.list_events(town, agent="mayor", limit=1000), key=lambda e: (e.at, e.id))
    labels = [e.label for e in seen]
    assert labels[0] == "SessionStart:startup"
    expected = ["UserPromptSubmit", "PreToolUse:mcp__vermas__hook_check", "tool:hook_check",
                "PostToolUse:mcp__vermas__hook_check", "PreToolUse:Bash", "PostToolUse:Bash", "Stop",
                "SessionEnd:other"]
    it = iter(labels)
    assert all(label in it for label in expected), labels  # each in this order (others may come between)
    assert events.hook_failures(town) == 0


@pytest.mark.slow
def test_bench_hooks_quick_reports_its_figures(tmp_path: Path) -> None:
    import sys

    out = tmp_path / "bench.json"
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, str(root / "bench" / "bench_hooks.py"), "--quick", "--json-out", str(out)],
                          cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(out.read_text())["figures"]
    for key in ("hook_p50_ms", "hook_p99_ms", "naive_p50_ms", "naive_over_hook_p50_ratio", "python_bare_p50_ms"):
        assert figures[key] > 0, key
    assert figures["hook_failures"] == 0 and figures["events_stored"] == 40 + 10 + 2 + 4
    assert "hook event p50" in proc.stdout  # the table follows the JSON


# --------------------------------------------------------------------------- issue 20, item 12


def test_made_up_names_are_refused_by_the_hook_and_counted(town: Town) -> None:
    """An event for an address the town never launched is not recorded (it grew the table without
    bound); a launched agent's still is. Run as Claude Code runs the hook."""
    argv = hook_argv(town, "PreToolUse")  # writes ACTOR's launch settings
    for n in range(20):
        made_up = [*argv[:8], f"sample/polecats/ghost{n}"]
        proc = fire(town, "PreToolUse", {"tool_name": "Bash"}, argv=made_up)
        assert (proc.returncode, proc.stdout) == (0, b"")
    for odd in ("", "../../x", "a\x01b", "/" * 300):
        assert fire(town, "Stop", {}, argv=[*argv[:8], odd]).returncode == 0
    assert rows(town) == []
    failures = town.layout.hook_failures.read_text().splitlines()
    assert len(failures) == 24 and "refused: not an agent of this town" in failures[0]
    assert "ghost0" in failures[0]
    assert fire(town, "PreToolUse", {"tool_name": "Bash"}).returncode == 0
    assert rows(town) == [(ACTOR, "PreToolUse", "Bash", "")]


def test_a_launched_agent_passes_the_check(town: Town) -> None:
    """The check reads the settings file agents.launch_spec writes, at the path layout gives."""
    crew = parse_address("sample/crew/ann")
    assert not hookevent.is_town_agent(str(town.layout.hook_failures), str(crew))
    folder = town.layout.agent_runtime_dir(crew.session_name)
    folder.mkdir(parents=True)
    (folder / "settings.json").write_text(json.dumps(agents.settings_for(town, crew)))
    assert hookevent.is_town_agent(str(town.layout.hook_failures), str(crew))
    assert not hookevent.is_town_agent("relative/hook-failures.log", str(crew))


def test_retention_applies_per_table_as_well_as_per_agent(town: Town, monkeypatch: pytest.MonkeyPatch) -> None:
    """Writers other than the hook (the MCP layer records every tool call under its actor) are
    bounded too: at most KEEP_EVENTS rows in all, the oldest going first."""
    monkeypatch.setattr(hookevent, "KEEP_EVENTS", 300)
    with town.db.write() as conn:
        for n in range(2000):
            hookevent.insert_event(conn, f"made/up/name{n}", "tool", 1000.0 + n, "bead_show", "")
    with town.db.read() as conn:
        count, oldest = conn.execute("SELECT count(*), min(at) FROM agent_events").fetchone()
        plan = " ".join(r[3] for r in conn.execute(f"EXPLAIN QUERY PLAN {hookevent.PRUNE_TABLE}", (5,)))
    assert 300 <= count < 300 + hookevent.PRUNE_EVERY and oldest > 1000.0 + 2000 - 300 - hookevent.PRUNE_EVERY
    assert "SCAN" not in plan  # a range of the rowid, not a scan


def test_the_table_stays_bounded_at_the_real_limit(town: Town) -> None:
    """172k rows from made-up names in the probe: with the real KEEP_EVENTS the table stops there."""
    extra = 5000
    with town.db.write() as conn:
        conn.executemany("INSERT INTO agent_events(id, agent, kind, at, detail) VALUES (?, ?, 'tool', ?, '')",
                         ((n, f"x/y/n{n}", float(n)) for n in range(1, hookevent.KEEP_EVENTS + 1)))
        for n in range(extra):
            hookevent.insert_event(conn, f"x/y/m{n}", "tool", 1e9 + n, None, "")
        count = conn.execute("SELECT count(*) FROM agent_events").fetchone()[0]
    assert hookevent.KEEP_EVENTS <= count < hookevent.KEEP_EVENTS + hookevent.PRUNE_EVERY
