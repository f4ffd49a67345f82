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
        assert len(names) <= 10, f"polecat profile too large: {sorted(names)}"
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
