"""The town's MCP zygote: vermas-mcp launches are served by forked, pre-warmed children,
with the same behaviour as the in-process path, and nothing outlives its launcher."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mcp import Client, StdioServerParameters

from vermas import up
from vermas.addresses import parse_address
from vermas.agents import ready_marker, runtime_dir
from vermas.town import Town

MCP = str(Path(sys.executable).with_name("vermas-mcp"))


@pytest.fixture
def zygote_town(tmp_path: Path) -> Iterator[Town]:
    town, _ = Town.init(tmp_path / "town")
    pid = up.start_zygote(town)
    assert pid is not None, (town.root / ".runtime" / "mcp-zygote.log").read_text()
    try:
        yield town
    finally:
        up.stop_zygote(town)
        assert up.zygote_pid(town) is None
        town.close()


def env_for(town: Town, actor: str, zygote: str = "on") -> dict[str, str]:
    return {"PATH": os.environ["PATH"], "VERMAS_TOWN": str(town.root), "BD_ACTOR": actor, "VERMAS_ZYGOTE": zygote}


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


async def test_launch_is_served_by_a_zygote_child(zygote_town: Town) -> None:
    address = parse_address("gt/witness")
    runtime_dir(zygote_town, address).mkdir(parents=True)
    params = StdioServerParameters(command=MCP, args=[], env=env_for(zygote_town, "gt/witness"))
    async with Client(params) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert "hook_check" in names and "polecat_done" not in names  # the witness profile
        created = await client.call_tool("mail_send", {"to": "mayor", "subject": "HELP from the zygote"})
        assert not created.is_error and created.structured_content["sender"] == "gt/witness"
        server_pid = int(ready_marker(zygote_town, address).read_text())
        assert parent_of(server_pid) == up.zygote_pid(zygote_town)
    with zygote_town.db.read() as conn:
        assert conn.execute("SELECT sender FROM messages").fetchall()[0][0] == "gt/witness"


@pytest.mark.parametrize(("actor", "args", "expected"), [
    ("gt/polecats/../x", [], "invalid address"),
    ("mayor", ["--profile", "emperor"], "unknown profile 'emperor'"),
])
def test_bad_launch_through_zygote_exits_2(zygote_town: Town, actor: str, args: list[str], expected: str) -> None:
    proc = subprocess.run([MCP, *args], env=env_for(zygote_town, actor), capture_output=True, text=True,
                          timeout=30, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2 and expected in proc.stderr and proc.stdout == ""


def test_child_exits_when_its_launcher_is_killed(zygote_town: Town) -> None:
    address = parse_address("mayor")
    runtime_dir(zygote_town, address).mkdir(parents=True)
    launcher = subprocess.Popen([MCP], env=env_for(zygote_town, "mayor"), stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    marker = ready_marker(zygote_town, address)
    deadline = time.monotonic() + 20
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int(marker.read_text())
    assert child != launcher.pid
    launcher.send_signal(signal.SIGKILL)
    launcher.wait(timeout=10)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]
    launcher.stdin.close()  # type: ignore[union-attr]


async def test_without_zygote_the_launcher_serves_in_process(tmp_path: Path) -> None:
    town, _ = Town.init(tmp_path / "town")
    assert up.zygote_pid(town) is None
    params = StdioServerParameters(command=MCP, args=[], env=env_for(town, "mayor"))
    async with Client(params) as client:
        result = await client.call_tool("bead_create", {"title": "made in-process"})
        assert not result.is_error


def test_zygote_refuses_a_second_instance(zygote_town: Town) -> None:
    proc = subprocess.run([sys.executable, "-m", "vermas_mcp.zygote", "--town", str(zygote_town.root)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "already running" in proc.stderr
