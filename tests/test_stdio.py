"""`vermas-mcp` as a real subprocess over stdio, launched the way Claude Code launches it:
the console script next to this interpreter, identity and town in the environment.

Both handshakes are exercised: the SDK's default ("auto", 2026 discover) and "legacy"
(the 2025-11-25 initialize handshake Claude Code 2.1 speaks). The client working at all
shows stdout carries only protocol: one stray print would break the JSON-RPC stream.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from mcp import Client, StdioServerParameters

from vermas.town import Town
from vermas_mcp.profiles import ALL_TOOLS

BIN_DIR = Path(sys.executable).parent
VERMAS_MCP = shutil.which("vermas-mcp", path=str(BIN_DIR))

# The 19 core tools every full profile must carry (newer tools, e.g. verify_*, may be added).
CORE_TOOLS = {
    "bead_create", "bead_show", "bead_list", "bead_ready", "bead_update", "bead_close",
    "bead_dep_add", "hook_check", "sling", "unsling", "mail_send", "mail_inbox", "mail_read",
    "mail_ack", "polecat_done", "convoy_create", "convoy_status", "convoy_list", "town_status",
}
MODES = ["auto", "legacy"]


def mcp_command() -> str:
    assert VERMAS_MCP, f"vermas-mcp console script not found next to {sys.executable}"
    return VERMAS_MCP


@pytest.fixture
def town_dir(tmp_path: Path) -> Path:
    town, _ = Town.init(tmp_path / "town")
    town.close()
    return tmp_path / "town"


@asynccontextmanager
async def stdio_client(town_dir: Path, actor: str, mode: str, args: list[str] | None = None,
                       cwd: Path | None = None) -> AsyncIterator[Client]:
    params = StdioServerParameters(
        command=mcp_command(), args=args or [],
        env={"VERMAS_TOWN": str(town_dir), "BD_ACTOR": actor},
        cwd=str(cwd) if cwd else None,
    )
    async with Client(params, mode=mode, read_timeout_seconds=60) as client:
        yield client


async def ok(client: Client, name: str, **args: Any) -> dict[str, Any]:
    result = await client.call_tool(name, args)
    assert not result.is_error, f"{name}({args}) failed: {result.content}"
    assert result.structured_content is not None, f"{name} gave no structured content"
    return result.structured_content


async def err(client: Client, name: str, **args: Any) -> str:
    result = await client.call_tool(name, args)
    assert result.is_error, f"{name}({args}) unexpectedly succeeded: {result.structured_content}"
    return " ".join(getattr(c, "text", "") for c in result.content)


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("VERMAS_TOWN", "BD_ACTOR")}
    return subprocess.run(
        [mcp_command(), *args], env={**base, **(env or {})}, cwd=cwd, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=60,
    )


@pytest.mark.parametrize("mode", MODES)
async def test_profiles_over_stdio(town_dir: Path, mode: str) -> None:
    async with stdio_client(town_dir, "rig1/polecats/nux", mode) as polecat:
        if mode == "legacy":
            assert polecat.protocol_version == "2025-11-25"
        names = {t.name for t in (await polecat.list_tools()).tools}
        assert len(names) <= 11, f"polecat profile too large: {sorted(names)}"  # 11: mol_status, mol_step_done
        assert {"hook_check", "polecat_done"} <= names
        assert not {"sling", "unsling", "convoy_create", "town_status"} & names
        assert names <= set(ALL_TOOLS)
    async with stdio_client(town_dir, "overseer", mode) as overseer:
        tools = (await overseer.list_tools()).tools
        names = [t.name for t in tools]
        assert len(names) == len(set(names)) == len(ALL_TOOLS)
        assert set(names) == set(ALL_TOOLS)
        assert CORE_TOOLS <= set(names) and len(CORE_TOOLS) == 19
        # Pydantic return types give every tool an output schema (structured content).
        assert all(t.output_schema for t in tools), [t.name for t in tools if not t.output_schema]


@pytest.mark.parametrize("mode", MODES)
async def test_tools_over_stdio(town_dir: Path, mode: str) -> None:
    async with stdio_client(town_dir, "overseer", mode) as boss, \
            stdio_client(town_dir, "rig1/polecats/nux", mode) as nux:
        hook = await ok(nux, "hook_check")
        assert hook["bead"] is None and hook["unread_mail"] == 0

        bead = await ok(boss, "bead_create", title="Fix the parser", priority=1, labels=["b", "a"])
        assert bead["id"].startswith("hq-") and bead["status"] == "open"
        assert bead["created_by"] == "overseer" and bead["labels"] == ["a", "b"]

        shown = await ok(nux, "bead_show", bead_id=bead["id"])
        assert shown["title"] == "Fix the parser" and shown["priority"] == 1

        msg = await ok(boss, "mail_send", to="rig1/polecats/nux", subject="NUDGE wake up",
                       body="x", idempotency_key="k1")
        again = await ok(boss, "mail_send", to="rig1/polecats/nux", subject="NUDGE wake up",
                         body="x", idempotency_key="k1")
        assert again["id"] == msg["id"] and msg["kind"] == "NUDGE" and msg["to"] == "rig1/polecats/nux"

        slung = await ok(boss, "sling", bead_id=bead["id"], target="rig1/polecats/nux")
        assert slung["status"] == "hooked" and slung["assignee"] == "rig1/polecats/nux"

        hook = await ok(nux, "hook_check")
        assert hook["bead"]["id"] == bead["id"]
        assert hook["unread_mail"] == 1
        assert "GUPP" in hook["instructions"]

        inbox = await ok(nux, "mail_inbox")
        assert [m["id"] for m in inbox["messages"]] == [msg["id"]]
        read = await ok(nux, "mail_read", message_id=msg["id"])
        assert read["read_at"] is not None
        assert (await ok(nux, "hook_check"))["unread_mail"] == 0

        # Expected failures are tool errors carrying an actionable message.
        text = await err(boss, "sling", bead_id=bead["id"], target="rig1/crew/max")
        assert "already hooked by rig1/polecats/nux" in text
        text = await err(nux, "bead_show", bead_id="hq-zzzz")
        assert "hq-zzzz" in text
        text = await err(boss, "bead_show", bead_id="../../etc/passwd")
        assert "invalid bead_id" in text
        # A polecat cannot call tools outside its profile.
        result = await nux.call_tool("sling", {"bead_id": bead["id"], "target": "rig1/crew/max"})
        assert result.is_error

        status = await ok(boss, "town_status")
        assert status["hooked"] == [{"agent": "rig1/polecats/nux", "bead_id": bead["id"],
                                      "title": "Fix the parser"}]


@pytest.mark.parametrize("mode", MODES)
async def test_clean_shutdown_leaves_export_current(town_dir: Path, mode: str) -> None:
    async with stdio_client(town_dir, "mayor", mode) as c:
        bead = await ok(c, "bead_create", title="exported on shutdown")
        msg = await ok(c, "mail_send", to="overseer", subject="HELP now")
        # Close immediately: the coalesced export has not had its moment yet, so the
        # shutdown path itself must leave the files current.
    issues = [json.loads(line) for line in (town_dir / ".beads" / "issues.jsonl").read_text().splitlines()]
    assert bead["id"] in {r["id"] for r in issues}
    line = next(r for r in issues if r["id"] == bead["id"])
    assert line["_type"] == "issue" and line["title"] == "exported on shutdown"
    messages = [json.loads(x) for x in (town_dir / ".beads" / "messages.jsonl").read_text().splitlines()]
    assert msg["id"] in {m["id"] for m in messages}


async def test_regression_shutdown_during_background_export_leaves_issues_jsonl_stale(town_dir: Path) -> None:
    """BUG (vermas/export.py ExportScheduler.close): close() flushes only *pending* kinds and
    never waits for an export the daemon thread has already started; the process then exits
    and the daemon thread dies mid-export, so a clean shutdown leaves issues.jsonl without
    the last bead. A 20,000-bead town makes each export take ~0.3-0.5 s, and closing stdin
    0.25-0.3 s after the commit (the export starts 0.2 s after it) lands inside that export."""
    import anyio

    from vermas import beads
    from vermas.export import export_town

    town = Town.open(town_dir)
    with town.db.write() as conn:
        for i in range(20000):
            beads.insert(conn, town.db, bead_id=f"hq-big{i:05d}", title=f"filler {i} " + "x" * 200,
                         actor="mayor", description="d" * 500)
    export_town(town)
    town.close()
    misses = []
    for delay in (0.25, 0.3):
        async with stdio_client(town_dir, "mayor", "legacy") as c:
            await anyio.sleep(0.4)  # let the start-up catch-up export settle first
            bead = await ok(c, "bead_create", title=f"late {delay}")
            await anyio.sleep(delay)
        # The server process has exited (the client waited for it): the file is final.
        ids = {json.loads(x)["id"] for x in (town_dir / ".beads" / "issues.jsonl").read_text().splitlines()}
        if bead["id"] not in ids:
            misses.append((delay, bead["id"]))
    assert not misses, f"clean shutdown left issues.jsonl without the last bead: {misses}"


def test_missing_town_exits_2(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-town"
    proc = run_cli(env={"VERMAS_TOWN": str(missing), "BD_ACTOR": "overseer"})
    assert proc.returncode == 2, proc
    assert proc.stdout == ""
    assert proc.stderr.startswith("vermas-mcp: ")
    assert "no vermas town" in proc.stderr and str(missing) in proc.stderr
    assert "vermas-runner init" in proc.stderr
    assert "Traceback" not in proc.stderr
    # A directory that exists but holds no town is refused the same way.
    (tmp_path / "empty").mkdir()
    proc = run_cli("--town", str(tmp_path / "empty"), "--actor", "overseer")
    assert proc.returncode == 2 and "no vermas town" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "empty" / ".beads").exists(), "refusing must not create a town"


def test_no_town_configured_exits_2(tmp_path: Path) -> None:
    proc = run_cli(env={"BD_ACTOR": "overseer"}, cwd=tmp_path)
    assert proc.returncode == 2
    assert "no town" in proc.stderr and "VERMAS_TOWN" in proc.stderr


@pytest.mark.parametrize("address", ["../x", "gastown/polecats/", "gastown/polecats/../../etc",
                                     "Mayor", "gastown/polecats/a/b"])
def test_invalid_address_exits_2(town_dir: Path, address: str) -> None:
    proc = run_cli(env={"VERMAS_TOWN": str(town_dir), "BD_ACTOR": address})
    assert proc.returncode == 2, proc
    assert proc.stdout == ""
    assert "invalid address" in proc.stderr and repr(address) in proc.stderr
    assert "allowed:" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("--actor", address, "--town", str(town_dir))
    assert proc.returncode == 2 and "invalid address" in proc.stderr


def test_missing_actor_exits_2(town_dir: Path) -> None:
    proc = run_cli(env={"VERMAS_TOWN": str(town_dir)})
    assert proc.returncode == 2
    assert "no actor" in proc.stderr and "BD_ACTOR" in proc.stderr


def test_unknown_profile_exits_2(town_dir: Path) -> None:
    proc = run_cli("--profile", "wizard", env={"VERMAS_TOWN": str(town_dir), "BD_ACTOR": "overseer"})
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "unknown profile 'wizard'" in proc.stderr
    assert "polecat" in proc.stderr and "all" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("mode", MODES)
async def test_profile_flag_overrides_role(town_dir: Path, mode: str) -> None:
    async with stdio_client(town_dir, "rig1/polecats/nux", mode, args=["--profile", "all"]) as c:
        assert {t.name for t in (await c.list_tools()).tools} == set(ALL_TOOLS)


# --- Every request gets a reply (issue 8, items 13 and 14) -------------------------------------
# A raw JSON-RPC driver: the SDK client cannot send a lone surrogate or a bad line (its own
# encoder refuses them), and the point is what reaches the server's wire, byte for byte.

class RawWire:
    """vermas-mcp as a subprocess, spoken to in raw lines; every read has a deadline, so a
    lost reply fails the test in seconds instead of hanging it."""

    def __init__(self, town_dir: Path, actor: str = "overseer") -> None:
        env = {**{k: v for k, v in os.environ.items() if k not in ("VERMAS_TOWN", "BD_ACTOR")},
               "VERMAS_TOWN": str(town_dir), "BD_ACTOR": actor}
        self.proc = subprocess.Popen([mcp_command()], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, env=env)
        self.send(b'{"jsonrpc":"2.0","id":"init","method":"initialize","params":{"protocolVersion":'
                  b'"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}')
        assert self.reply()["id"] == "init"
        self.send(b'{"jsonrpc":"2.0","method":"notifications/initialized"}')

    def send(self, line: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + b"\n")
        self.proc.stdin.flush()

    def reply(self, timeout: float = 15) -> dict[str, Any]:
        """The next line from the server, which must be strict JSON (pydantic's parser, the one
        the SDK client uses, refuses lone surrogates that the stdlib would let through)."""
        import select

        import mcp_types

        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, f"no reply within {timeout} s (server alive: {self.proc.poll() is None})"
        line = self.proc.stdout.readline()
        assert line.endswith(b"\n"), f"server closed the wire: {line!r}, exit {self.proc.poll()}"
        mcp_types.jsonrpc_message_adapter.validate_json(line, by_name=False)
        data: dict[str, Any] = json.loads(line)
        return data

    def call(self, request_id: int, tool: str, arguments: bytes) -> dict[str, Any]:
        self.send(b'{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"%s","arguments":%s}}'
                  % (request_id, tool.encode(), arguments))
        reply = self.reply()
        assert reply["id"] == request_id, reply
        return reply

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            assert self.proc.stdout is not None
            self.proc.stdout.close()


def refusal(reply: dict[str, Any]) -> str:
    """The text of an error reply: a tool error (isError) or a JSON-RPC error."""
    if "error" in reply:
        return str(reply["error"]["message"])
    assert reply["result"]["isError"] is True, f"expected an error, got {reply}"
    return " ".join(c.get("text", "") for c in reply["result"]["content"])


@pytest.fixture
def wire(town_dir: Path) -> Any:
    raw = RawWire(town_dir)
    yield raw
    raw.close()


@pytest.mark.parametrize("arguments", [
    rb'{"title":"a\ud800b"}',                      # a lone high surrogate escape
    rb'{"title":"ok","labels":["x\udfff"]}',        # a lone low surrogate, in a list
    b'{"title":"bad \xff byte"}',                   # bytes that are not UTF-8 at all
    rb'{"title":"ok","description":"\ud800\ud800"}',
])
def test_lone_surrogate_request_gets_a_reply_and_writes_nothing(wire: RawWire, town_dir: Path,
                                                                arguments: bytes) -> None:
    refusal(wire.call(1, "bead_create", arguments))
    # The server still serves, and nothing was written.
    listed = wire.call(2, "bead_list", b"{}")
    assert listed["result"]["structuredContent"]["beads"] == []
    made = wire.call(3, "bead_create", b'{"title":"after the bad one \\ud83d\\ude00"}')
    assert made["result"]["structuredContent"]["title"] == "after the bad one \U0001F600"


def test_reply_text_with_a_lone_surrogate_is_escaped_not_dropped(wire: RawWire) -> None:
    # The SDK echoes an unknown tool's name into its error text: a lone surrogate there made
    # the reply unencodable, which killed the SDK's writer task and with it the server.
    text = refusal(wire.call(1, "no_such\\ud800tool", b"{}"))
    assert "no_such\\ud800tool" in text
    assert wire.call(2, "bead_list", b"{}")["result"]["isError"] is False


def test_lines_that_are_not_json_rpc_get_an_error_with_the_id_if_any(wire: RawWire) -> None:
    wire.send(b"this is not json")
    reply = wire.reply()
    assert reply["id"] is None and reply["error"]["code"] == -32700
    assert "not valid JSON" in reply["error"]["message"]
    wire.send(b'{"id": 7, "what": "no method"}')
    reply = wire.reply()
    assert reply["id"] == 7 and reply["error"]["code"] == -32600
    assert "JSON-RPC 2.0" in reply["error"]["message"]
    wire.send(b"")  # blank lines are skipped, not answered
    assert wire.call(8, "bead_list", b"{}")["result"]["isError"] is False


def test_line_over_64_mib_gets_an_error_and_the_server_keeps_serving(wire: RawWire) -> None:
    import threading

    MAX_LINE = 64 * 1024 * 1024  # noqa: N806 - the documented limit, not imported: the old code lacks it
    huge = (b'{"jsonrpc":"2.0","id":41,"method":"tools/call","params":{"name":"bead_create",'
            b'"arguments":{"title":"big","description":"' + b"x" * (MAX_LINE + 1024) + b'"}}}')
    # Written from a thread: the server answers before the client has finished writing.
    writer = threading.Thread(target=wire.send, args=(huge,))
    writer.start()
    reply = wire.reply(timeout=60)
    writer.join()
    assert reply["id"] == 41 and reply["error"]["code"] == -32600
    assert "too large" in reply["error"]["message"] and "64 MiB" in reply["error"]["message"]
    # The id comes after the payload: not recoverable, so null.
    wire.send(b'{"jsonrpc":"2.0","method":"tools/call","params":{"name":"bead_list","arguments":{"p":"'
              + b"y" * (MAX_LINE + 1) + b'"}},"id":42}')
    reply = wire.reply(timeout=60)
    assert reply["id"] is None and "too large" in reply["error"]["message"]
    listed = wire.call(43, "bead_list", b"{}")
    assert listed["result"]["structuredContent"]["beads"] == []


async def test_line_splitter_bounds_memory_and_resyncs_after_an_oversize_line() -> None:
    import asyncio

    from vermas_mcp.stdio import LineSplitter, Oversize

    reader = asyncio.StreamReader()
    reader.feed_data(b'{"a":1}\n' + b'{"id":"k' + b"z" * 50 + b'"}\n')
    reader.feed_data(b'{"jsonrpc":"2.0","id":9,' + b"q" * 40)
    reader.feed_data(b"q" * 40)
    reader.feed_data(b'}\n{"b":2}\nlast-without-newline')
    reader.feed_eof()
    lines = LineSplitter(reader, limit=30)
    assert await lines.next() == b'{"a":1}'
    first = await lines.next()
    assert isinstance(first, Oversize) and first.size == 60
    second = await lines.next()
    assert isinstance(second, Oversize) and second.size == 105
    assert await lines.next() == b'{"b":2}'
    assert await lines.next() == b"last-without-newline"
    assert await lines.next() is None


@pytest.mark.parametrize("head,expected", [
    (b'{"jsonrpc":"2.0","id":12,"method":"x","params":{"a":"' + b"z" * 100, 12),
    (b'{"jsonrpc":"2.0","id":"abc","method"', "abc"),
    (b'{"method":"x","params":{"id":5,"more":"', None),   # an id inside params is not the request's
    (b'{"method":"x","params":{"text":"\\"id\\": 5, ', None),  # nor one inside a string
    (b'{"id":true,"method":"x"', None),                   # not a valid JSON-RPC id
    (b'{"method":"x","id":  7 ,"params"', 7),
    (b'[1,2', None),
])
def test_recover_id_reads_only_the_top_level_id(head: bytes, expected: object) -> None:
    from vermas_mcp.stdio import recover_id

    assert recover_id(head) == expected
