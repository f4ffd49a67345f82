"""Tests for the stand-in model server, most of them driving the REAL Claude Code CLI against it.

Why: every offline end-to-end test of vermas rests on this stand-in speaking the Messages API
exactly as Claude Code expects. The protocol-level tests run everywhere; the CLI tests skip only
when the CLI is not installed (``scripts/install-claude.sh`` installs it into ``.tools/claude``).
"""

from __future__ import annotations

import http.client
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vermas.testing.standin import (
    DUMMY_API_KEY,
    ModelRequest,
    ScriptedPolicy,
    StandinModelServer,
    claude_env,
    find_claude_binary,
    text_block,
    write_claude_home,
)

CLI_TIMEOUT = 120


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _request(server: StandinModelServer, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def _sse(data: bytes) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for chunk in data.decode().strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in chunk.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


def _turn_body(text: str = "hello", **extra: Any) -> dict[str, Any]:
    """A request shaped like a Claude Code conversation turn (tools + thinking)."""
    body: dict[str, Any] = {
        "model": "claude-test",
        "max_tokens": 1000,
        "stream": True,
        "thinking": {"type": "adaptive"},
        "system": [{"type": "text", "text": "You are Claude Code."}],
        "tools": [
            {"name": "Bash", "input_schema": {"type": "object"}},
            {"name": "mcp__vermas__hook_check", "input_schema": {"type": "object"}},
        ],
        "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}],
    }
    body.update(extra)
    return body


def _req(body: dict[str, Any]) -> ModelRequest:
    return ModelRequest("POST", "/v1/messages?beta=true", {}, body, len(json.dumps(body)))


# --------------------------------------------------------------------------------------------
# protocol and policy (no CLI needed)
# --------------------------------------------------------------------------------------------


def test_streaming_reply_is_a_complete_sse_message() -> None:
    policy = ScriptedPolicy([{"text": "calling", "tool": "hook_check", "input": {"agent": "mayor"}}])
    with StandinModelServer(policy) as server:
        status, headers, data = _request(server, "POST", "/v1/messages?beta=true", _turn_body())
    assert status == 200 and headers["content-type"] == "text/event-stream"
    events = _sse(data)
    names = [name for name, _ in events]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    starts = [p["content_block"] for n, p in events if n == "content_block_start"]
    assert [b["type"] for b in starts] == ["text", "tool_use"]
    assert starts[1]["name"] == "mcp__vermas__hook_check"  # short name resolved by suffix
    partial = "".join(p["delta"]["partial_json"] for n, p in events if n == "content_block_delta" and p["index"] == 1)
    assert json.loads(partial) == {"agent": "mayor"}
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"
    assert "output_tokens" in events[-2][1]["usage"]


def test_non_streaming_and_other_routes() -> None:
    with StandinModelServer(ScriptedPolicy(["plain"])) as server:
        status, _, data = _request(server, "POST", "/v1/messages", _turn_body(stream=False))
        msg = json.loads(data)
        assert status == 200 and msg["content"] == [text_block("plain")] and msg["stop_reason"] == "end_turn"
        status, _, data = _request(server, "POST", "/v1/messages/count_tokens?beta=true", _turn_body())
        assert status == 200 and json.loads(data)["input_tokens"] > 0
        assert _request(server, "GET", "/")[0] == 200
        assert _request(server, "HEAD", "/api/hello")[0] == 200
        status, _, data = _request(server, "GET", "/v1/models")
        assert status == 404 and json.loads(data)["type"] == "error"
        assert len(server.requests) == 2  # the Messages and count_tokens requests are recorded


def test_policy_failure_is_reported_not_retried() -> None:
    with StandinModelServer(ScriptedPolicy([{"tool": "no_such_tool"}])) as server:
        status, _, data = _request(server, "POST", "/v1/messages", _turn_body())
        assert status == 400 and "no_such_tool" in json.loads(data)["error"]["message"]
        assert len(server.errors) == 1


def test_auxiliary_requests_do_not_advance_the_script() -> None:
    policy = ScriptedPolicy(["first", "second"])
    title = {
        "model": "m",
        "max_tokens": 128000,
        "stream": True,
        "tools": [],
        "system": [{"type": "text", "text": "You are naming a coding session"}],
        "messages": [{"role": "user", "content": "<session>x</session>"}],
        "output_config": {"format": {"type": "json_schema", "schema": {"type": "object", "properties": {"title": {"type": "string"}}, "required": ["title"]}}},
    }
    compact = _turn_body()
    compact["messages"].append({"role": "assistant", "content": [text_block("first")]})
    compact["messages"].append({"role": "user", "content": "CRITICAL: Respond with TEXT ONLY.\n\nYour task is to create a detailed summary of the conversation so far"})
    no_tools_turn = _turn_body(tools=[])  # `--tools ""`: still a turn (it has `thinking`)
    assert _req(title).auxiliary_kind() == "output-format"
    assert _req(compact).auxiliary_kind() == "fork:compact"
    assert _req(_turn_body()).auxiliary_kind() is None
    assert _req(no_tools_turn).auxiliary_kind() is None
    assert _req({"model": "m", "max_tokens": 1, "messages": [], "tools": [{"name": "x"}]}).auxiliary_kind() == "probe"

    with StandinModelServer(policy) as server:
        _, _, data = _request(server, "POST", "/v1/messages", dict(title, stream=False))
        assert json.loads(json.loads(data)["content"][0]["text"]) == {"title": "Stand-in session"}
        _, _, data = _request(server, "POST", "/v1/messages", dict(compact, stream=False))
        assert "<summary>" in json.loads(data)["content"][0]["text"]
        _, _, data = _request(server, "POST", "/v1/messages", _turn_body("go", stream=False))
        assert json.loads(data)["content"] == [text_block("first")]
        assert len(server.main_requests()) == 1 and len(server.requests) == 3


def test_scripted_policy_retry_templates_and_exhaustion() -> None:
    policy = ScriptedPolicy.from_json(
        {"steps": [{"tool": "hook_check", "input": {"agent": "a"}}, {"tool": "Bash", "input": {"command": "echo {{result.bead.id}}", "id": "{{result.bead.id}}"}}], "final_text": "bye"}
    )
    first = _turn_body()
    blocks = policy(_req(first))
    assert policy(_req(first)) == blocks  # an identical retry is answered the same, no advance
    call = blocks[0]
    second = _turn_body()
    second["messages"] += [
        {"role": "assistant", "content": [call]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call["id"], "content": [{"type": "text", "text": '{"bead": {"id": "gt-1"}}'}]}]},
    ]
    req2 = _req(second)
    assert req2.last_tool_result_text() == '{"bead": {"id": "gt-1"}}'
    assert req2.tool_calls()[0].name == "mcp__vermas__hook_check"
    out = policy(req2)[0]
    # Whole-string placeholders are replaced; embedded ones are left alone on purpose.
    assert out["name"] == "Bash" and out["input"] == {"command": "echo {{result.bead.id}}", "id": "gt-1"}
    third = _turn_body("again")
    assert policy(_req(third)) == [text_block("bye")] and policy.exhausted


def test_deferred_tools_are_loaded_with_toolsearch_first() -> None:
    body = _turn_body(tools=[{"name": "ToolSearch", "input_schema": {"type": "object"}}, {"name": "Bash", "input_schema": {"type": "object"}}])
    body["messages"].append(
        {
            "role": "system",
            "content": [{"type": "text", "text": "The following deferred tools are now available via ToolSearch. Use ToolSearch before calling them:\nWebFetch\nmcp__vermas__hook_check\nmcp__vermas__polecat_done\n\nmore"}],
        }
    )
    req = _req(body)
    assert req.deferred_tool_names() == ["WebFetch", "mcp__vermas__hook_check", "mcp__vermas__polecat_done"]
    policy = ScriptedPolicy([{"tool": "hook_check", "input": {}}, {"tool": "polecat_done", "input": {}}])
    blocks = policy(req)
    assert blocks[0]["name"] == "ToolSearch"
    assert blocks[0]["input"]["query"] == "select:mcp__vermas__hook_check,mcp__vermas__polecat_done"
    assert policy.position == 0  # the search did not consume the step


def test_cli_form_serves_a_json_script(tmp_path: Path) -> None:
    script = tmp_path / "steps.json"
    script.write_text(json.dumps(["from the file"]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "vermas.testing.standin", "--port", "0", "--script", str(script)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("ANTHROPIC_BASE_URL=http://127.0.0.1:")
        port = int(line.rsplit(":", 1)[1])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("POST", "/v1/messages", body=json.dumps(_turn_body(stream=False)))
        assert json.loads(conn.getresponse().read())["content"] == [text_block("from the file")]
        conn.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# --------------------------------------------------------------------------------------------
# the real Claude Code CLI
# --------------------------------------------------------------------------------------------


@pytest.fixture
def claude_bin() -> Path:
    path = find_claude_binary()
    if path is None:
        pytest.skip("Claude Code CLI not installed: run scripts/install-claude.sh (or set VERMAS_CLAUDE_BIN)")
    return path


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A private HOME, so the user's ~/.claude.json and ~/.claude/ are never read or touched."""
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


def run_claude_p(claude: Path, server: StandinModelServer, home: Path, cwd: Path, *args: str) -> dict[str, Any]:
    """``claude -p ... --output-format json`` against the stand-in; the parsed JSON result."""
    proc = subprocess.run(
        [str(claude), "-p", *args, "--output-format", "json", "--no-session-persistence"],
        env=claude_env(server.base_url, home),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    assert not server.errors, server.errors[0].error
    assert proc.returncode == 0, f"claude exited {proc.returncode}\nstdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-2000:]}"
    return json.loads(proc.stdout)


def test_cli_say_hi(claude_bin: Path, home: Path, workdir: Path) -> None:
    with StandinModelServer(ScriptedPolicy(["Hi from the stand-in model!"])) as server:
        result = run_claude_p(claude_bin, server, home, workdir, "say hi")
        turns = server.main_requests()
    assert result["result"] == "Hi from the stand-in model!"
    assert result["is_error"] is False
    assert len(turns) == 1 and turns[0].last_user_text().strip() == "say hi"
    assert turns[0].route == "/v1/messages" and turns[0].stream
    assert "Bash" in turns[0].tool_names()


def test_cli_runs_a_scripted_bash_call(claude_bin: Path, home: Path, workdir: Path) -> None:
    target = workdir / "made-by-claude.txt"
    marker = "BASH-RAN-" + uuid.uuid4().hex[:8]
    policy = ScriptedPolicy(
        [
            {"text": "Creating the file.", "tool": "Bash", "input": {"command": f"echo hello > {shlex.quote(str(target))} && echo {marker}", "description": "create a file"}},
            "The file is there.",
        ]
    )
    with StandinModelServer(policy) as server:
        result = run_claude_p(claude_bin, server, home, workdir, "create the file", "--allowedTools", "Bash")
        turns = server.main_requests()
    assert target.read_text() == "hello\n"
    assert result["result"] == "The file is there." and result["permission_denials"] == []
    assert len(turns) == 2
    call = turns[1].last_tool_result()
    assert call is not None and call.name == "Bash" and not call.is_error
    assert marker in turns[1].last_tool_result_text()


def test_cli_json_schema_structured_output(claude_bin: Path, home: Path, workdir: Path) -> None:
    schema = {
        "type": "object",
        "properties": {"verdict": {"type": "string", "enum": ["PASS", "FAIL"]}, "reasons": {"type": "array", "items": {"type": "string"}}},
        "required": ["verdict", "reasons"],
        "additionalProperties": False,
    }
    answer = {"verdict": "PASS", "reasons": ["tests green", "diff small"]}
    with StandinModelServer(ScriptedPolicy([{"structured": answer}])) as server:
        result = run_claude_p(claude_bin, server, home, workdir, "assess the evidence", "--json-schema", json.dumps(schema))
        turns = server.main_requests()
    assert result["structured_output"] == answer
    assert json.loads(result["result"]) == answer
    # On the wire: a StructuredOutput tool whose input_schema is the schema, no output_format.
    assert turns[0].structured_output_schema() == schema
    assert turns[0].output_format_schema() is None
    assert len(turns) == 1  # the CLI stops as soon as StructuredOutput is called


MINI_MCP_SERVER = '''
import sys
from mcp.server.mcpserver import MCPServer

server = MCPServer("vermas")

@server.tool()
def hook_check(agent: str) -> dict:
    """What hangs on the agent's hook."""
    return {"bead": {"id": "gt-a1b2", "assignee": agent}}

@server.tool()
def polecat_done(bead_id: str) -> str:
    """Report the bead done."""
    open(sys.argv[1], "w").write(bead_id)
    return "closed " + bead_id

server.run()
'''


def test_cli_calls_deferred_mcp_tools(claude_bin: Path, home: Path, workdir: Path, tmp_path: Path) -> None:
    """MCP tools are deferred behind ToolSearch; the scripted policy loads them like a model would."""
    server_py = tmp_path / "mini_mcp.py"
    server_py.write_text(MINI_MCP_SERVER)
    done_file = tmp_path / "done.txt"
    config = tmp_path / "mcp.json"
    config.write_text(json.dumps({"mcpServers": {"vermas": {"command": sys.executable, "args": [str(server_py), str(done_file)]}}}))
    policy = ScriptedPolicy(
        [
            {"tool": "hook_check", "input": {"agent": "gastown/polecats/slot1"}},
            {"tool": "polecat_done", "input": {"bead_id": "{{result.bead.id}}"}},
            "Done.",
        ]
    )
    with StandinModelServer(policy) as server:
        result = run_claude_p(claude_bin, server, home, workdir, "work your hook", "--mcp-config", str(config), "--strict-mcp-config", "--allowedTools", "mcp__vermas")
        turns = server.main_requests()
    assert result["result"] == "Done."
    assert done_file.read_text() == "gt-a1b2"
    assert "mcp__vermas__hook_check" in turns[0].deferred_tool_names()
    assert [c.name for c in turns[-1].tool_calls()] == ["ToolSearch", "mcp__vermas__hook_check", "mcp__vermas__polecat_done"]


# --------------------------------------------------------------------------------------------
# the interactive TUI in tmux, on a private socket
# --------------------------------------------------------------------------------------------


class PrivateTmux:
    """A tmux server on its own socket (``tmux -L``), so no other tmux server is ever touched."""

    def __init__(self, env: dict[str, str]) -> None:
        self.socket = f"vermas-standin-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        # Started from a clean environment: the server's global env is what windows inherit.
        self.env = {k: v for k, v in env.items() if k not in ("TMUX", "TMUX_PANE")}

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["tmux", "-L", self.socket, "-f", "/dev/null", *args], env=self.env, capture_output=True, text=True, timeout=30)

    def capture(self, target: str) -> str:
        return self.run("capture-pane", "-p", "-t", target).stdout

    def wait_for(self, target: str, needle: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.capture(target)
            if needle in screen:
                return screen
            time.sleep(0.3)
        raise AssertionError(f"{needle!r} did not appear within {timeout}s; screen:\n{screen}")

    @property
    def socket_path(self) -> Path:
        return Path(os.environ.get("TMUX_TMPDIR", "/tmp")) / f"tmux-{os.getuid()}" / self.socket

    def kill(self) -> None:
        """Kill this server only, and remove its socket file (tmux 3.3a leaves it behind)."""
        self.run("kill-server")
        self.socket_path.unlink(missing_ok=True)


@pytest.fixture
def private_tmux(home: Path) -> Iterator[PrivateTmux]:
    tmux = PrivateTmux(claude_env("http://127.0.0.1:1", home))
    try:
        yield tmux
    finally:
        tmux.kill()


FIRST_RUN_SCREENS = (
    "Unable to connect to Anthropic services",
    "Detected a custom API key",
    "trust this folder",
    "Bypass Permissions mode",
    "Choose the text style",
)


def test_tui_reaches_prompt_and_runs_a_script(claude_bin: Path, home: Path, workdir: Path, private_tmux: PrivateTmux) -> None:
    assert shutil.which("tmux"), "tmux is required for the TUI test"
    subprocess.run(["git", "init", "-q", str(workdir)], check=True)
    write_claude_home(home, DUMMY_API_KEY, trusted_dirs=[workdir])
    target = workdir / "tui.txt"
    policy = ScriptedPolicy([{"tool": "Bash", "input": {"command": f"echo tui > {shlex.quote(str(target))}"}}, "TUI script finished."])
    with StandinModelServer(policy) as server:
        env = claude_env(server.base_url, home, extra={"IS_SANDBOX": "1"})  # root needs IS_SANDBOX for bypass
        env_args = [arg for key in ("HOME", "ANTHROPIC_BASE_URL", "ANTHROPIC_API_KEY", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "DISABLE_AUTOUPDATER", "IS_SANDBOX") for arg in ("-e", f"{key}={env[key]}")]
        command = shlex.join([str(claude_bin), "--dangerously-skip-permissions"])
        started = private_tmux.run("new-session", "-d", "-s", "agent", "-x", "200", "-y", "50", "-c", str(workdir), *env_args, command)
        assert started.returncode == 0, started.stderr
        screen = private_tmux.wait_for("agent", "bypass permissions on")
        assert "❯" in screen
        for text in FIRST_RUN_SCREENS:
            assert text not in screen, screen
        private_tmux.run("send-keys", "-t", "agent", "-l", "please do it")
        time.sleep(0.3)
        private_tmux.run("send-keys", "-t", "agent", "Enter")
        private_tmux.wait_for("agent", "TUI script finished.")
        assert not server.errors, server.errors[0].error
        assert target.read_text() == "tui\n"
        assert [r.last_user_text().strip() for r in server.main_requests()][0] == "please do it"
