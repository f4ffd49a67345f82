"""Shared fixtures: real towns in temp dirs, real MCP clients over the SDK's in-memory
transport, real git repositories."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from vermas.addresses import parse_address
from vermas.town import Town
from vermas_mcp.server import build_server

# Markers by what a test needs (registered in pyproject.toml). Marked from the fixtures a
# test uses (directly or through other fixtures) and, for whole end-to-end modules, by
# module, so a new test gets its marks without anyone remembering to add them.
# Quick loop: pytest -m "not tmux and not claude and not slow".
FIXTURE_MARKS = {
    "e2e": ("tmux", "claude", "slow"),  # test_town_e2e: a real town in tmux on the stand-in model
    "claude_bin": ("claude",),  # test_standin_model: the real Claude Code CLI
    "private_tmux": ("tmux",),
    "rigged": ("tmux",),  # the patrol tests: a rig town on its own tmux socket
    "up": ("tmux", "claude", "slow"),  # a town under `vermas-runner up --model standin`, rig on a bare upstream
    "sm": ("claude",),  # tests/inspector_standin.py: the real CLI against the stand-in model
}
MODULE_MARKS = {
    "test_town_e2e": ("tmux", "claude", "slow"),
    "test_dashboard_browser": ("tmux", "claude", "slow"),  # a running town; one test also needs chromium
    "test_patrol_e2e": ("tmux", "claude", "slow"),  # the witness and deacon patrols, a real town
    "test_bench_town_smoke": ("tmux", "claude", "slow"),
    "test_claude_mcp_add": ("claude",),
    "test_bench_smoke": ("slow",),
    "test_stdio": ("slow",),  # each test starts vermas-mcp processes: 1.5-4 s apiece
    "test_zygote": ("slow",),
}
# Measured over 4 s each (pytest --durations) with neither tmux nor Claude Code.
SLOW_TESTS = {
    "test_crash.py::test_sigkill_writers_lose_nothing_acknowledged",
    "test_concurrency.py::test_many_writers_lose_and_duplicate_nothing",
    "test_concurrency.py::test_sling_races_have_exactly_one_winner",
    "test_runner_lock.py::test_detached_runner_is_stopped_by_down",
    "test_inspector_verifier.py::test_parallelism_is_bounded_and_faster_than_serial",
}


pytest_plugins = ["tests.leakguard"]  # fails a module that leaves a process or tmux server of its own


def pytest_configure(config: pytest.Config) -> None:
    from tests import leakguard

    leakguard.install()


def pytest_unconfigure(config: pytest.Config) -> None:
    from tests import leakguard

    leakguard.uninstall()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        names = set(MODULE_MARKS.get(item.module.__name__.rpartition(".")[2], ()) if item.module else ())
        if f"{item.path.name}::{item.name.partition('[')[0]}" in SLOW_TESTS:
            names.add("slow")
        for fixture in getattr(item, "fixturenames", ()):
            names.update(FIXTURE_MARKS.get(fixture, ()))
        for name in sorted(names):
            item.add_marker(name)


@pytest.fixture
def town(tmp_path: Path) -> Town:
    t, _ = Town.init(tmp_path / "town")
    yield t
    t.close()


@pytest.fixture
def client_for(town: Town) -> Callable[..., Any]:
    """`async with client_for("mayor") as c:` gives an MCP client acting as that address."""

    @asynccontextmanager
    async def make(address: str, profile: str | None = None, mode: str = "auto") -> AsyncIterator[Client]:
        actor = parse_address(address)
        server = build_server(town, actor, profile or actor.role.value)
        async with Client(server, mode=mode) as client:
            yield client

    return make


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def make_repo(path: Path) -> Path:
    """A real git repository with one commit on main."""
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.email", "test@vermas.invalid")
    git(path, "config", "user.name", "vermas test")
    (path / "README.md").write_text("sample\n")
    git(path, "add", "README.md")
    git(path, "commit", "-q", "-m", "initial")
    return path


README = Path(__file__).resolve().parents[1] / "README.md"


def stop_detached_town(town_root: Path, env: dict[str, str], tmux_dir: Path, runner: str = "vermas-runner") -> None:
    """Tear down a town a test booted with `up --detach` in its own TMUX_TMPDIR: `down`, then
    kill whatever tmux server of its own is left (never another), then the tmux folder."""
    from vermas.sessions import TownSessions  # deferred: libtmux only for the tests that boot a town

    if town_root.is_dir():
        subprocess.run([runner, "down", "--town", str(town_root)], env=env, capture_output=True, timeout=120)
        old = os.environ.get("TMUX_TMPDIR")
        os.environ["TMUX_TMPDIR"] = str(tmux_dir)
        try:
            TownSessions(town_root).kill_server()
        finally:
            if old is None:
                os.environ.pop("TMUX_TMPDIR")
            else:
                os.environ["TMUX_TMPDIR"] = old
    shutil.rmtree(tmux_dir, ignore_errors=True)


def readme_block(heading: str) -> str:
    """The first ```sh block under `heading` in README.md, exactly as written (the README's
    command sequences are tested as a newcomer would paste them)."""
    text = README.read_text()
    assert heading in text, f"no {heading!r} in README.md"
    section = text[text.index(heading):]
    section = section[:section.find("\n## ", len(heading))]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match, f"no ```sh block under {heading!r} in README.md"
    return match.group(1)


async def call(client: Any, name: str, **args: Any) -> dict[str, Any]:
    """Call a tool that must succeed; its structured result."""
    result = await client.call_tool(name, args)
    assert not result.is_error, f"{name} failed: {result.content}"
    return result.structured_content


async def fail(client: Any, name: str, **args: Any) -> str:
    """Call a tool that must fail; its error text."""
    result = await client.call_tool(name, args)
    assert result.is_error, f"{name} unexpectedly succeeded: {result.structured_content}"
    return result.content[0].text


def process_gone(pid: int, within: float = 3.0) -> bool:
    """Gone or a zombie within `within` seconds (SIGKILL is delivered asynchronously, and
    reaping an orphan is init's business)."""
    deadline = time.monotonic() + within
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:
            if Path(f"/proc/{pid}/stat").read_text().split(") ")[-1].startswith("Z"):
                return True
        except OSError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


@pytest.fixture
def rigged(tmp_path: Path) -> Iterator[Any]:
    """A town with one rig on a real repo and its own tmux socket (test_witness_effects.Rigged),
    for the patrol tests; its sessions and store are closed afterwards."""
    from tests.test_witness_effects import Rigged  # deferred: only the patrol tests need it

    r = Rigged(tmp_path)
    try:
        yield r
    finally:
        r.close()


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Any]:
    """A town with rig `gt` on a bare upstream, run by `vermas-runner up --detach --model standin`
    (tests.test_refinery_e2e.QueueTown); taken down afterwards."""
    from tests.test_refinery_e2e import up_town  # deferred: only the end-to-end tests need it

    yield from up_town(tmp_path)
