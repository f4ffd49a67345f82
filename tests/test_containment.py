"""The Verifier's containment (issue 8, item 1 and 2): one test per escape, through the real path
(vermas.inspector.verifier.run_command, which the pipeline and verify_run use), in both modes
where the machine allows (namespace: user/PID/mount namespaces; process: helper tree only)."""

from __future__ import annotations

import os
import secrets
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_repo
from tests.test_inspector_tools import sm  # noqa: F401,F811 - the stand-in model fixture
from vermas import beads, contain
from vermas.addresses import parse_address
from vermas.errors import InvalidInput
from vermas.inspector.pipeline import resolve_worktree
from vermas.inspector.verifier import run_command, town_private_paths
from vermas.town import RigConfig, Town

MODES = ["namespace", "process"]


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "namespace" and not contain.namespaces_available():
        pytest.skip("user/PID/mount namespaces are not available here")
    monkeypatch.setenv("VERMAS_CONTAIN", request.param)
    return str(request.param)


@pytest.fixture
def namespace_only(monkeypatch: pytest.MonkeyPatch) -> None:
    if not contain.namespaces_available():
        pytest.skip("user/PID/mount namespaces are not available here")
    monkeypatch.setenv("VERMAS_CONTAIN", "namespace")


def worktree(town: Town, kind: str = "crew", name: str = "dev") -> Path:
    if "app" not in town.config.rigs:
        town.config.rigs["app"] = RigConfig(name="app", git_url="file:///dev/null", prefix="app")
        town.save_config()
    return make_repo(town.root / "app" / kind / name)


def run(town: Town, wt: Path, command: str, timeout: float = 20):  # type: ignore[no-untyped-def]
    return run_command(command, wt, timeout, hidden=town_private_paths(town.root))


def alive_with(token: str) -> list[int]:
    """PIDs whose command line carries token (seen from outside any namespace)."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if token.encode() in Path(f"/proc/{entry.name}/cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def test_parent_environment_holds_no_secret(town: Town, mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "s3cr3t-" + secrets.token_hex(8)
    monkeypatch.setenv("SECRET", secret)
    monkeypatch.setenv("ANTHROPIC_API_KEY", secret)
    ev = run(town, worktree(town), 'cat /proc/$PPID/environ; env; echo END')
    assert "END" in ev.output and secret not in ev.output


def test_no_vermas_process_environment_is_readable(town: Town, namespace_only: None,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "s3cr3t-" + secrets.token_hex(8)
    monkeypatch.setenv("SECRET", secret)
    ev = run(town, worktree(town), f'for f in /proc/[0-9]*/environ; do cat $f; done 2>&1; '
                                   f'cat /proc/{os.getpid()}/environ 2>&1; echo END')
    assert "END" in ev.output and secret not in ev.output


def test_kill_of_parent_leaves_the_caller_alive(town: Town, mode: str) -> None:
    ev = run(town, worktree(town), "kill -9 $PPID; sleep 0.2; echo survived")
    assert os.getpid() > 0  # we are still here to assert anything
    assert ev.error is None


def test_kill_of_the_server_pid_does_not_reach_it(town: Town, namespace_only: None) -> None:
    ev = run(town, worktree(town), f"kill -9 {os.getpid()} {os.getppid()}; echo rc=$?")
    assert "rc=1" in ev.output  # no such process in the test's world


def test_store_cannot_be_written_nor_read(town: Town, namespace_only: None) -> None:
    bead = beads.create(town, parse_address("mayor"), "original title", "")
    db = town.root / ".beads" / "vermas.db"
    wt = worktree(town)
    (wt / "evil.py").write_text(f"import sqlite3\nc = sqlite3.connect({str(db)!r})\n"
                                "c.execute(\"UPDATE issues SET title = 'pwned'\")\nc.commit()\nprint('WROTE')\n")
    ev = run(town, wt, f"{sys.executable} evil.py 2>&1; echo LS:; ls -A {db.parent}; echo :LS")
    assert ":LS" in ev.output and "WROTE" not in ev.output
    assert "LS:\n:LS" in ev.output  # the store's folder is an empty cover inside the sandbox
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT title FROM issues WHERE id = ?", (bead.id,)).fetchone()[0] == "original title"


def test_nothing_outside_the_worktree_is_writable(town: Town, namespace_only: None) -> None:
    wt = worktree(town)
    other = worktree(town, "polecats", "p1")
    run(town, wt, f"touch ../escape; touch {other}/escape; touch {town.root}/escape; "
                       "mount -o remount,rw / 2>/dev/null; touch ../escape2; touch inside; echo $TMPDIR > tmpdir")
    assert not (wt.parent / "escape").exists() and not (other / "escape").exists()
    assert not (town.root / "escape").exists() and not (wt.parent / "escape2").exists()
    assert (wt / "inside").exists()  # the work tree itself is writable
    assert not Path((wt / "tmpdir").read_text().strip()).exists()  # the private tmp is gone after


def test_setsid_and_double_fork_children_do_not_outlive_the_run(town: Town, mode: str) -> None:
    token = f"3000.{secrets.randbelow(10**6):06d}"
    ev = run(town, worktree(town), f"setsid sleep {token} & (sleep {token} &); "
                                   f"(setsid sh -c 'sleep {token} & exit' &); env -i sleep {token} & "
                                   "sleep 0.3; echo started")
    assert "started" in ev.output
    deadline = time.monotonic() + 3
    while alive_with(token) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert alive_with(token) == []


def test_timeout_kills_the_whole_tree(town: Town, mode: str) -> None:
    token = f"3000.{secrets.randbelow(10**6):06d}"
    start = time.monotonic()
    ev = run(town, worktree(town), f"setsid sleep {token} & sleep {token} & (sleep {token} &); sleep {token}",
             timeout=1)
    assert ev.timed_out and time.monotonic() - start < 5
    deadline = time.monotonic() + 3
    while alive_with(token) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert alive_with(token) == []


def test_worktrees_outside_the_town_are_refused(town: Town, tmp_path: Path) -> None:
    outside = make_repo(tmp_path / "elsewhere")
    bead = beads.create(town, parse_address("mayor"), "t", "")
    with pytest.raises(InvalidInput, match="not one of this town's work trees; allowed: .*polecats"):
        resolve_worktree(town, bead.id, str(outside))
    canonical = worktree(town, "mayor", "rig")  # the canonical clone holds every worktree's git dir
    with pytest.raises(InvalidInput, match="not one of this town's work trees"):
        resolve_worktree(town, bead.id, str(canonical))
    link = town.root / "app" / "crew" / "link"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(outside)  # a symlink inside the town to a repository outside: the real path counts
    with pytest.raises(InvalidInput, match="not one of this town's work trees"):
        resolve_worktree(town, bead.id, str(link))
    assert resolve_worktree(town, bead.id, str(worktree(town, "polecats", "p2"))).name == "p2"


async def test_escapes_through_the_mcp_verify_run(client_for: Any, town: Town, sm: Any,  # noqa: F811
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Once end to end: the stand-in Strategist plans the escapes, verify_run runs them."""
    from tests.conftest import call
    from tests.inspector_standin import criterion, spec, tspec

    secret = "s3cr3t-" + secrets.token_hex(8)
    monkeypatch.setenv("SECRET", secret)
    token = f"3000.{secrets.randbelow(10**6):06d}"
    wt = worktree(town)
    bead = beads.create(town, parse_address("overseer"), "original title", "escape").id
    (wt / "evil.py").write_text(f"import sqlite3\nc = sqlite3.connect({str(town.db.path)!r})\n"
                                "c.execute(\"UPDATE issues SET title = 'pwned'\")\nc.commit()\n")
    command = (f"cat /proc/$PPID/environ; {sys.executable} evil.py; setsid sleep {token} & "
               f"(sleep {token} &); kill -9 $PPID; sleep 0.2; echo END")
    sm.script(designer=[spec(criterion("AC-1", "escapes"))], strategist=[{"tests": [tspec("AC-1", command)]}])
    async with client_for("overseer") as c:
        await call(c, "verify_spec", bead_id=bead)
        await call(c, "verify_plan", bead_id=bead, worktree=str(wt))
        run_ = await call(c, "verify_run", bead_id=bead, worktree=str(wt))
        output = run_["results"][0]["evidence"]["output"]
        assert secret not in output
        assert "END" in output or run_["results"][0]["evidence"]["signal"]
    assert beads.show(town, bead).title == "original title"
    time.sleep(0.3)
    assert alive_with(token) == []
