"""`rig sync` and fetch-before-spawn, with real git: a bare upstream in a temp dir, `rig add`,
a commit pushed upstream afterwards, then sync / sling; an unreachable or diverged upstream
is reported, and nothing is spawned on a stale base. Also `rig add` refusing a URL that git
would read as an option (issue 8, item 18)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import call, fail, git, make_repo
from vermas import beads, rig, sling
from vermas.addresses import parse_address
from vermas.errors import Conflict, InvalidInput, NotFound
from vermas.git import GitError
from vermas.rig import SyncState, decide_sync
from vermas.sessions import TownSessions
from vermas.town import Town

RUNNER = str(Path(sys.executable).with_name("vermas-runner"))
MAYOR = parse_address("mayor")


@pytest.mark.parametrize(("local", "upstream", "up_in_local", "local_in_up", "state"), [
    ("a", "a", True, True, SyncState.UP_TO_DATE),
    ("a", "b", False, True, SyncState.FAST_FORWARDED),
    ("b", "a", True, False, SyncState.LOCAL_AHEAD),
    ("b", "c", False, False, SyncState.DIVERGED),
])
def test_decide_sync(local: str, upstream: str, up_in_local: bool, local_in_up: bool, state: SyncState) -> None:
    assert decide_sync(local, upstream, up_in_local, local_in_up) is state


class Upstream:
    """A bare repository standing for the rig's remote, and a clone to push to it from."""

    def __init__(self, tmp_path: Path) -> None:
        self.bare = tmp_path / "upstream.git"
        git(make_repo(tmp_path / "seed"), "clone", "-q", "--bare", ".", str(self.bare))
        self.work = tmp_path / "pusher"
        git(tmp_path, "clone", "-q", str(self.bare), str(self.work))
        git(self.work, "config", "user.email", "push@vermas.invalid")
        git(self.work, "config", "user.name", "pusher")

    def push(self, name: str) -> str:
        """Commit a new file upstream; its commit id."""
        (self.work / name).write_text(f"{name}\n")
        git(self.work, "add", name)
        git(self.work, "commit", "-q", "-m", f"add {name}")
        git(self.work, "push", "-q", "origin", "main")
        return git(self.work, "rev-parse", "HEAD")

    def break_it(self) -> None:
        self.bare.rename(self.bare.with_name("moved-away.git"))


@pytest.fixture
def upstream(tmp_path: Path) -> Upstream:
    return Upstream(tmp_path)


@pytest.fixture
def rigged(town: Town, upstream: Upstream) -> Town:
    rig.add(town, "gt", str(upstream.bare), prefix="gt")
    return town


def main_of(town: Town) -> str:
    return git(rig.canonical_clone(town, "gt"), "rev-parse", "refs/heads/main")


def shell(town: Town, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VERMAS_TOWN", "BD_ACTOR")}
    return subprocess.run([RUNNER, *args, "--town", str(town.root)], capture_output=True, text=True,
                          env=env, timeout=120)


def test_sync_brings_a_commit_pushed_after_rig_add(rigged: Town, upstream: Upstream) -> None:
    before = main_of(rigged)
    pushed = upstream.push("late.txt")
    result = rig.sync(rigged, "gt")
    assert (result.state, result.before, result.after, result.new_commits) == (
        SyncState.FAST_FORWARDED, before, pushed, 1)
    assert main_of(rigged) == pushed
    clone = rig.canonical_clone(rigged, "gt")
    assert (clone / "late.txt").read_text() == "late.txt\n"  # the checked-out branch moved with its files
    assert git(clone, "status", "--porcelain", "--untracked-files=no") == ""
    again = rig.sync(rigged, "gt")
    assert (again.state, again.new_commits) == (SyncState.UP_TO_DATE, 0)


def test_sync_keeps_local_commits_ahead(rigged: Town) -> None:
    clone = rig.canonical_clone(rigged, "gt")
    git(clone, "-c", "user.email=l@vermas.invalid", "-c", "user.name=l", "commit", "-q", "--allow-empty",
        "-m", "local, not pushed yet")
    local = main_of(rigged)
    result = rig.sync(rigged, "gt")
    assert (result.state, result.after, result.local_commits) == (SyncState.LOCAL_AHEAD, local, 1)


def test_diverged_branch_is_refused_and_left_alone(rigged: Town, upstream: Upstream) -> None:
    clone = rig.canonical_clone(rigged, "gt")
    git(clone, "-c", "user.email=l@vermas.invalid", "-c", "user.name=l", "commit", "-q", "--allow-empty",
        "-m", "local only")
    local = main_of(rigged)
    upstream.push("theirs.txt")
    with pytest.raises(Conflict, match=r"diverged \(1 local commit\(s\) not upstream, 1 upstream not local\)"):
        rig.sync(rigged, "gt")
    assert main_of(rigged) == local


def test_fast_forward_blocked_by_local_edits_is_reported(rigged: Town, upstream: Upstream) -> None:
    """The canonical clone's work tree holds uncommitted edits to a file the upstream changed
    (as the rig's bead export can): git refuses to overwrite them, and the sync says so."""
    clone = rig.canonical_clone(rigged, "gt")
    before = main_of(rigged)
    (clone / "README.md").write_text("edited here\n")
    (upstream.work / "README.md").write_text("edited upstream\n")
    git(upstream.work, "commit", "-q", "-am", "upstream edit")
    git(upstream.work, "push", "-q", "origin", "main")
    with pytest.raises(GitError, match=r"rig gt: fetched, but could not fast-forward main .*README.md"):
        rig.sync(rigged, "gt")
    assert main_of(rigged) == before and (clone / "README.md").read_text() == "edited here\n"


def test_concurrent_syncs_all_succeed(rigged: Town, upstream: Upstream) -> None:
    """Slings at once each sync first; the per-rig lock keeps git's ref and index locks apart."""
    pushed = upstream.push("busy.txt")
    results: list[Any] = []

    def run() -> None:
        try:
            results.append(rig.sync(rigged, "gt").state)
        except Exception as exc:  # collected, so the assertion shows it
            results.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(map(str, results)) == ["fast_forwarded", "up_to_date", "up_to_date", "up_to_date"]
    assert main_of(rigged) == pushed


def test_unknown_rig(town: Town) -> None:
    with pytest.raises(NotFound, match="unknown rig 'nope'; rigs in this town: none yet"):
        rig.sync(town, "nope")


def test_shell_rig_sync(rigged: Town, upstream: Upstream) -> None:
    pushed = upstream.push("shell.txt")
    proc = shell(rigged, "rig", "sync", "gt", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["after"] == pushed and json.loads(proc.stdout)["state"] == "fast_forwarded"
    table = shell(rigged, "rig", "sync", "gt")
    assert table.returncode == 0 and "up_to_date" in table.stdout
    upstream.break_it()
    broken = shell(rigged, "rig", "sync", "gt")
    assert broken.returncode == 2, broken.stdout
    assert broken.stderr.count("\n") == 1 and "Traceback" not in broken.stderr
    assert "rig gt: fetching the upstream" in broken.stderr and "main stays at" in broken.stderr
    assert "does not appear to be a git repository" in broken.stderr


async def test_mcp_rig_sync(rigged: Town, upstream: Upstream, client_for: Any) -> None:
    pushed = upstream.push("mcp.txt")
    async with client_for("mayor") as mayor:
        assert (await call(mayor, "rig_sync", rig="gt"))["after"] == pushed
        upstream.break_it()
        assert "rig gt: fetching the upstream" in await fail(mayor, "rig_sync", rig="gt")
    async with client_for("gt/polecats/nux") as polecat:  # not in a polecat's profile
        assert "rig_sync" not in {t.name for t in (await polecat.list_tools()).tools}


# --- spawning: every new polecat starts from the upstream's latest --------------------------

@pytest.fixture
def sessions(rigged: Town) -> Iterator[TownSessions]:
    """The town's own tmux socket; sessions run a stand-in agent (bash sleeping), no model."""
    rigged.config.agent.command = "bash"
    rigged.config.agent.args = ["-c", "sleep 600", "--"]
    rigged.save_config()
    tmux = TownSessions(rigged.root)
    yield tmux
    tmux.kill_server()


def polecat_rows(town: Town) -> int:
    with town.db.read() as conn:
        return int(conn.execute("SELECT COUNT(*) FROM polecats").fetchone()[0])


@pytest.mark.tmux
def test_spawned_polecat_has_the_commit_pushed_after_rig_add(rigged: Town, upstream: Upstream,
                                                             sessions: TownSessions) -> None:
    pushed = upstream.push("late.txt")  # after rig add; no sync by hand
    bead = beads.create(rigged, MAYOR, "use the late file", rig="gt")
    slung = sling.sling(rigged, MAYOR, bead.id, "gt", sessions=sessions, kick="none")
    worktree = rigged.root / "gt" / "polecats" / str(slung.assignee).rsplit("/", 1)[1]
    assert (worktree / "late.txt").read_text() == "late.txt\n"
    assert git(worktree, "rev-parse", "HEAD") == pushed
    assert git(worktree, "rev-parse", "--abbrev-ref", "HEAD") == f"polecat/nux/{bead.id}"

    # and from the shell, with another commit pushed meanwhile
    second = upstream.push("later.txt")
    other = beads.create(rigged, MAYOR, "use the later file", rig="gt")
    proc = shell(rigged, "sling", other.id, "gt", "--no-wait", "--actor", "mayor")
    assert proc.returncode == 0, proc.stderr
    assert git(rigged.root / "gt" / "polecats" / "slit", "rev-parse", "HEAD") == second


async def test_unreachable_upstream_spawns_nothing(rigged: Town, upstream: Upstream, client_for: Any,
                                                   tmp_path: Path) -> None:
    """The fetch fails before any session starts: a clear error, the slot freed, the bead
    back to open, no worktree or branch left."""
    upstream.break_it()
    tmux = TownSessions(rigged.root, socket=f"vermas-test-{os.getpid()}-{tmp_path.name}")
    bead = beads.create(rigged, MAYOR, "work on a stale base?", rig="gt")
    try:
        with pytest.raises(GitError, match=r"no polecat spawned: rig gt: fetching the upstream .* failed"):
            sling.sling(rigged, MAYOR, bead.id, "gt", sessions=tmux, kick="none")
    finally:
        tmux.kill_server()
    proc = shell(rigged, "sling", bead.id, "gt", "--no-wait", "--actor", "mayor")
    assert proc.returncode == 2 and "no polecat spawned" in proc.stderr and "rig sync gt" in proc.stderr
    async with client_for("mayor") as mayor:
        assert "no polecat spawned" in await fail(mayor, "sling", bead_id=bead.id, target="gt")
    assert polecat_rows(rigged) == 0
    assert list((rigged.root / "gt" / "polecats").iterdir()) == []
    assert git(rig.canonical_clone(rigged, "gt"), "branch", "--list", "polecat/*") == ""
    with rigged.db.read() as conn:
        after = beads.fetch(conn, bead.id)
    assert (after.status, after.assignee) == ("open", None)


# --- issue 8, item 18: a rig URL is never a git option ---------------------------------------

@pytest.mark.parametrize("url", ["--upload-pack=touch {marker}", "-uupload", "--", "-"])
def test_rig_add_refuses_option_like_urls(town: Town, tmp_path: Path, url: str) -> None:
    marker = tmp_path / "pwned"
    config_before = town.layout.config_file.read_bytes()
    with pytest.raises(InvalidInput, match="starts with '-', which git would read as an option"):
        rig.add(town, "bad", url.format(marker=marker))
    assert not marker.exists()
    assert not (town.root / "bad").exists()
    assert town.layout.config_file.read_bytes() == config_before


@pytest.mark.parametrize(("url", "message"), [("", "non-empty"), ("   ", "non-empty"),
                                              ("/tmp/a\nb", "one line"), ("/tmp/a\x00b", "control")])
def test_rig_add_refuses_empty_and_multiline_urls(town: Town, url: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        rig.add(town, "bad", url)
    assert not (town.root / "bad").exists()


def test_shell_rig_add_refuses_option_like_url(town: Town, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    env = {k: v for k, v in os.environ.items() if k != "VERMAS_TOWN"}
    argv = [RUNNER, "rig", "add", "--town", str(town.root), "bad", "--", f"--upload-pack=touch {marker}"]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2 and "starts with '-'" in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists() and not (town.root / "bad").exists()

