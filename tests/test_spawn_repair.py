"""A spawn that dies part way is finished or rolled back, and nuke copes with any state.

1. `spawnrepair.decide` and `decide_nuke` over every observed state (pure, exhaustive),
   against a model of what each step does: nothing is deleted that holds work, and one
   repair leaves a state the next look finds nothing to do in.
2. The real thing: `vermas-runner sling BEAD RIG` SIGKILLed right after each step of the
   spawn, then `vermas-runner up` or the runner's patrol repairs it (real git, real tmux on
   the town's private socket; the agent is a shell that sleeps, as no model is needed).
3. `vermas-runner polecat nuke` from each partial state: no worktree, a plain folder, an
   empty one, a registered worktree without its branch, an unfinished `worktree add`, a
   branch without a worktree (merged and not).
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from tests.conftest import git, make_repo
from vermas import beads, patrol, polecat, rig
from vermas.agents import launch_spec, workdir
from vermas.addresses import parse_address
from vermas.errors import Conflict
from vermas.protocol import PolecatState
from vermas.sessions import TownSessions
from vermas.spawnrepair import (
    BranchState,
    SandboxSeen,
    SpawnSeen,
    Step,
    TreeState,
    decide,
    decide_nuke,
)
from vermas.town import Town

RUNNER = str(Path(sys.executable).with_name("vermas-runner"))
MAYOR = parse_address("mayor")
STORED = [s for s in PolecatState if s is not PolecatState.NUKED]


# --- 1. The decisions, over every observed state ---------------------------------------------


def sandboxes() -> Iterator[SandboxSeen]:
    """Every sandbox observation can produce (a stale git entry only where the folder is not
    that worktree; dirty only for a finished one)."""
    for tree, branch in itertools.product(TreeState, BranchState):
        for stale in ((False, True) if tree in (TreeState.MISSING, TreeState.EMPTY, TreeState.PLAIN) else (False,)):
            for dirty in ((False, True) if tree is TreeState.GOOD else (False,)):
                yield SandboxSeen(tree=tree, branch=branch, stale_entry=stale, dirty=dirty)


def observations() -> Iterator[SpawnSeen]:
    for state, spawner, hooked, alive, box in itertools.product(
            STORED, (False, True), (False, True), (False, True), list(sandboxes())):
        yield SpawnSeen(state=state, spawner_alive=spawner, bead_hooked=hooked, session_alive=alive, sandbox=box)


def simulate(seen: SpawnSeen, steps: tuple[Step, ...]) -> SpawnSeen | None:
    """What the steps do to the world, with every precondition the effects rely on asserted
    (None: the slot is gone)."""
    box = seen.sandbox
    for i, step in enumerate(steps):
        if step is Step.KILL_SESSION:
            assert seen.session_alive and i == 0
            seen = replace(seen, session_alive=False)
        elif step is Step.REMOVE_TREE:
            assert box.tree in (TreeState.UNFINISHED, TreeState.GOOD) and not box.dirty, "would delete work"
            box = replace(box, tree=TreeState.MISSING, stale_entry=False)
        elif step is Step.SET_ASIDE:
            assert box.tree in (TreeState.PLAIN, TreeState.UNFINISHED, TreeState.GOOD)
            registered = box.tree in (TreeState.UNFINISHED, TreeState.GOOD)
            box = replace(box, tree=TreeState.MISSING, stale_entry=box.stale_entry or registered, dirty=False)
        elif step is Step.REMOVE_EMPTY_DIR:
            assert box.tree is TreeState.EMPTY
            box = replace(box, tree=TreeState.MISSING)
        elif step is Step.PRUNE:
            assert box.tree is TreeState.MISSING, "pruning (worktree remove -f -f) must never meet a folder"
            box = replace(box, stale_entry=False)
        elif step is Step.DELETE_BRANCH:
            assert box.branch is BranchState.MERGED, "never delete a branch with unmerged commits"
            box = replace(box, branch=BranchState.NONE)
        elif step is Step.MAKE_TREE:
            assert box.tree is TreeState.MISSING and not box.stale_entry
            assert not seen.session_alive, "a sandbox is never rebuilt under a running session"
            branch = BranchState.MERGED if box.branch is BranchState.NONE else box.branch
            box = replace(box, tree=TreeState.GOOD, branch=branch)
        elif step is Step.MARK_STARTED:
            seen = replace(seen, state=PolecatState.STARTED)
        elif step is Step.RELEASE_SLOT:
            assert i == len(steps) - 1
            assert not seen.session_alive, "a released slot leaves no session behind"
            assert box.tree is TreeState.MISSING and not box.stale_entry, "nor a folder or git entry"
            return None
        seen = replace(seen, sandbox=box)
    return seen


ALL = list(observations())


def test_the_observation_space_is_covered() -> None:
    assert len(ALL) == len(STORED) * 2 * 2 * 2 * len(list(sandboxes())) == 6 * 8 * 27


@pytest.mark.parametrize("seen", ALL, ids=lambda s: (
    f"{s.state.value}-{'locked' if s.spawner_alive else 'free'}-{'hooked' if s.bead_hooked else 'unhooked'}-"
    f"{'alive' if s.session_alive else 'dead'}-{s.sandbox.tree.value}-{s.sandbox.branch.value}"
    f"{'-stale' if s.sandbox.stale_entry else ''}{'-dirty' if s.sandbox.dirty else ''}"))
def test_repair_plan(seen: SpawnSeen) -> None:
    plan = decide(seen)
    if seen.spawner_alive:
        assert plan.steps == ()  # a spawn in progress is never touched
        return
    after = simulate(seen, plan.steps)
    if seen.state is PolecatState.SPAWNING:  # a half-made spawn never stays half-made
        assert after is None or after.state is PolecatState.STARTED
        if after is not None:  # finished only when there is a session in a finished worktree
            assert seen.session_alive and seen.bead_hooked and seen.sandbox.tree is TreeState.GOOD
            assert plan.steps == (Step.MARK_STARTED,)
    else:
        assert after is not None, "a made polecat is repaired, not released"
        assert Step.DELETE_BRANCH not in plan.steps
    if after is not None:
        assert after.sandbox.tree is TreeState.GOOD and not after.sandbox.stale_entry
        if seen.sandbox.tree is TreeState.GOOD:
            assert after.sandbox == seen.sandbox  # a finished worktree is kept as it is
        if after.state is PolecatState.WORKING:
            assert after.session_alive  # `working` only with the session that got its nudge
        assert decide(after).steps == (), "one repair is enough"
    if seen.sandbox.tree is TreeState.PLAIN:
        assert Step.SET_ASIDE in plan.steps  # a folder git did not make is moved, never deleted
    if seen.state is not PolecatState.SPAWNING and seen.sandbox.tree is not TreeState.GOOD:
        assert Step.REMOVE_TREE not in plan.steps


@pytest.mark.parametrize("force", [False, True])
@pytest.mark.parametrize("seen", [s for s in ALL if not s.bead_hooked], ids=lambda s: (
    f"{s.state.value}-{'locked' if s.spawner_alive else 'free'}-{'alive' if s.session_alive else 'dead'}-"
    f"{s.sandbox.tree.value}-{s.sandbox.branch.value}{'-stale' if s.sandbox.stale_entry else ''}"
    f"{'-dirty' if s.sandbox.dirty else ''}"))
def test_nuke_plan(seen: SpawnSeen, force: bool) -> None:
    refuse = seen.spawner_alive or (seen.sandbox.branch is BranchState.UNMERGED and not force)
    if refuse:
        with pytest.raises(Conflict):
            decide_nuke(seen, force)
        return
    plan = decide_nuke(seen, force)
    assert simulate(seen, plan.steps) is None  # gone from any state; the model asserts nothing of value is lost


def test_nuke_refusals_say_why() -> None:
    box = SandboxSeen(tree=TreeState.GOOD, branch=BranchState.UNMERGED)
    seen = SpawnSeen(PolecatState.WORKING, False, True, True, box)
    with pytest.raises(Conflict, match="not merged into the rig's default branch.*--force \\(the branch is kept"):
        decide_nuke(seen, force=False, address="gt/polecats/nux")
    with pytest.raises(Conflict, match="gt/polecats/nux is being spawned, repaired or nuked"):
        decide_nuke(replace(seen, spawner_alive=True), force=True, address="gt/polecats/nux")


# --- 2. SIGKILL at each step of a real spawn, then up / the patrol -------------------------------


class StubTown:
    """A town whose agents are shells that sleep, on the town's own tmux socket."""

    def __init__(self, base: Path, max_polecats: int = 1) -> None:
        self.town, _ = Town.init(base / "town")
        rig.add(self.town, "gt", str(make_repo(base / "src")), prefix="gt", max_polecats=max_polecats)
        self.town.config.agent.command, self.town.config.agent.args = "sh", ["-c", "sleep 600", "agent"]
        self.town.config.rigs["gt"].verify_level = "off"  # no model: `up` would refuse a rig that verifies with one
        self.town.save_config()
        self.sessions = TownSessions(self.town.root)
        self.clone = rig.canonical_clone(self.town, "gt")

    def runner(self, *args: str, env: dict[str, str] | None = None, check: bool = True,
               ) -> subprocess.CompletedProcess[str]:
        base = {k: v for k, v in os.environ.items() if k not in ("VERMAS_TOWN", "BD_ACTOR", polecat.KILL_AT_ENV)}
        proc = subprocess.run([RUNNER, *args, "--town", str(self.town.root)], capture_output=True, text=True,
                              timeout=120, env={**base, **(env or {})})
        if check:
            assert proc.returncode == 0, f"{args}: {proc.stdout}\n{proc.stderr}"
        return proc

    def bead(self, title: str = "do it") -> str:
        return beads.create(self.town, MAYOR, title, rig="gt").id

    def bead_row(self, bead_id: str) -> tuple[str, str | None]:
        with self.town.db.read() as conn:
            row = conn.execute("SELECT status, assignee FROM issues WHERE id = ?", (bead_id,)).fetchone()
        return row[0], row[1]

    def branches(self) -> list[str]:
        return git(self.clone, "branch", "--format=%(refname:short)").split()

    def worktrees(self) -> list[str]:
        return [line.split(" ", 1)[1] for line in git(self.clone, "worktree", "list", "--porcelain").splitlines()
                if line.startswith("worktree ")]

    def close(self) -> None:
        self.runner("down", check=False)
        self.sessions.kill_server()
        self.town.close()


@pytest.fixture
def stub(tmp_path: Path) -> Iterator[StubTown]:
    s = StubTown(tmp_path)
    try:
        yield s
    finally:
        s.close()


NUX = parse_address("gt/polecats/nux")


def killed_sling(stub: StubTown, step: str) -> str:
    """`vermas-runner sling BEAD gt` SIGKILLed right after `step`; the bead id."""
    bead_id = stub.bead()
    proc = stub.runner("sling", bead_id, "gt", env={polecat.KILL_AT_ENV: step}, check=False)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stdout, proc.stderr)
    assert [(p.name, p.state) for p in polecat.list_polecats(stub.town)] == [("nux", PolecatState.SPAWNING)]
    assert stub.bead_row(bead_id) == ("hooked", str(NUX))
    return bead_id


WORKTREE_AFTER = {"allocated": False, "branch": False, "registered": True, "checked-out": True, "session": True}


@pytest.mark.tmux
@pytest.mark.parametrize("how", ["up", "patrol"])
@pytest.mark.parametrize("step", polecat.SPAWN_STEPS)
def test_sigkilled_sling_is_repaired(stub: StubTown, step: str, how: str) -> None:
    bead_id = killed_sling(stub, step)
    worktree = stub.town.layout.polecat_worktree("gt", "nux")
    assert (str(worktree) in stub.worktrees()) is WORKTREE_AFTER[step]
    assert stub.sessions.alive(NUX) is (step == "session")
    # The bug: the slot counts against max_polecats (1 here) while nothing works in it.
    refused = stub.runner("sling", stub.bead("another"), "gt", "--no-wait", check=False)
    assert refused.returncode == 2 and "1 of 1 polecats busy" in refused.stderr

    if how == "up":
        out = stub.runner("up", "--once", "--no-wait").stdout
        assert "repaired gt/polecats/nux" in out
    else:
        actions = patrol.patrol_once(stub.town, stub.sessions)
        assert patrol.Action("repair", "gt/polecats/nux") in actions

    polecats = polecat.list_polecats(stub.town)
    if step == "session":  # the session was up: the spawn is finished, and the patrol nudges it
        assert [(p.name, p.state) for p in polecats] == [("nux", PolecatState.STARTED)]
        assert stub.bead_row(bead_id) == ("hooked", str(NUX))
        assert git(worktree, "rev-parse", "--abbrev-ref", "HEAD") == f"polecat/nux/{bead_id}"
        assert (worktree / "README.md").is_file() and stub.sessions.alive(NUX)
        return
    # Rolled back: no slot, bead open, no worktree, no git entry, no merged branch, no session.
    assert polecats == []
    assert stub.bead_row(bead_id) == ("open", None)
    assert not worktree.exists() and str(worktree) not in stub.worktrees()
    assert stub.branches() == ["main"]
    assert not stub.sessions.alive(NUX)
    # ... and the slot is free again: the bead is slung anew into a real git worktree.
    stub.runner("sling", bead_id, "gt", "--no-wait")
    assert git(worktree, "rev-parse", "--abbrev-ref", "HEAD") == f"polecat/nux/{bead_id}"
    assert git(worktree, "status", "--porcelain") == "" and (worktree / "README.md").is_file()


@pytest.mark.tmux
def test_patrol_leaves_a_spawn_in_progress_alone(stub: StubTown) -> None:
    bead_id = stub.bead()
    info, lock = polecat._allocate(stub.town, MAYOR, bead_id, "gt", force=False)
    try:
        assert patrol.observe(stub.town, stub.sessions).abandoned_spawns == ()
        assert polecat.repair_spawns(stub.town, stub.sessions) == []
        with pytest.raises(Conflict, match="being spawned"):
            polecat.nuke(stub.town, "gt", info.name, force=True, sessions=stub.sessions)
    finally:
        lock.release()
    assert patrol.observe(stub.town, stub.sessions).abandoned_spawns == (("gt", "nux"),)


@pytest.mark.tmux
def test_up_rebuilds_a_plain_folder_into_the_worktree_and_keeps_its_files(stub: StubTown) -> None:
    """What the old `up` made of a half-made spawn: a `working` polecat in a plain folder."""
    bead_id = stub.bead()
    info = polecat.allocate(stub.town, MAYOR, bead_id, "gt")
    polecat.set_state(stub.town, "gt", "nux", PolecatState.WORKING)
    worktree = Path(str(info.worktree))
    worktree.mkdir(parents=True)
    (worktree / "notes.txt").write_text("work done in the wrong place\n")
    out = stub.runner("up", "--once", "--no-wait").stdout
    assert "repaired gt/polecats/nux" in out and "started gt/polecats/nux" in out
    assert git(worktree, "rev-parse", "--abbrev-ref", "HEAD") == f"polecat/nux/{bead_id}"
    leftovers = list((worktree.parent / ".leftovers").iterdir())
    assert [(p / "notes.txt").read_text() for p in leftovers] == ["work done in the wrong place\n"]
    # Its new session needs a GUPP nudge (up ran --no-wait): `started`, for the patrol.
    assert [p.state for p in polecat.list_polecats(stub.town)] == [PolecatState.STARTED]
    assert stub.sessions.alive(NUX)


# --- 3. nuke from any partial state ------------------------------------------------------------


def partial(stub: StubTown, kind: str) -> tuple[str, polecat.PolecatInfo]:
    """A polecat slot (state working) whose sandbox is in the given partial state."""
    bead_id = stub.bead()
    info = polecat.allocate(stub.town, MAYOR, bead_id, "gt")
    polecat.set_state(stub.town, "gt", "nux", PolecatState.WORKING)
    path, branch = Path(str(info.worktree)), str(info.branch)
    if kind in ("registered-no-branch", "unfinished", "good", "dirty", "branch-unmerged"):
        git(stub.clone, "worktree", "add", "-q", "-b", branch, str(path), "main")
    if kind == "no-worktree":
        pass
    elif kind == "plain":
        path.mkdir(parents=True)
        (path / "stray.txt").write_text("stray\n")
    elif kind == "empty":
        path.mkdir(parents=True)
    elif kind == "registered-no-branch":
        git(stub.clone, "update-ref", "-d", f"refs/heads/{branch}")
    elif kind == "unfinished":  # what a SIGKILL inside `git worktree add` leaves
        admin = Path(git(path, "rev-parse", "--absolute-git-dir"))
        (admin / "locked").write_text("initializing")
        (admin / "index").unlink()
        (path / "README.md").unlink()
    elif kind == "dirty":
        (path / "README.md").write_text("uncommitted\n")
    elif kind in ("branch-merged", "branch-unmerged"):
        if kind == "branch-merged":
            git(stub.clone, "branch", branch, "main")
        else:
            git(path, "-c", "user.email=t@vermas.invalid", "-c", "user.name=t", "commit", "-q", "--allow-empty",
                "-m", "work")
            git(stub.clone, "worktree", "remove", "--force", str(path))
    return bead_id, info


PARTIAL = ["no-worktree", "plain", "empty", "registered-no-branch", "unfinished", "good", "dirty",
           "branch-merged", "branch-unmerged"]


@pytest.mark.tmux
@pytest.mark.parametrize("kind", PARTIAL)
def test_nuke_copes_with_any_partial_state(stub: StubTown, kind: str) -> None:
    bead_id, info = partial(stub, kind)
    path, branch = Path(str(info.worktree)), str(info.branch)
    if kind == "branch-unmerged":
        refused = stub.runner("polecat", "nuke", "gt/polecats/nux", check=False)
        assert refused.returncode == 2 and "not merged" in refused.stderr
        assert [p.name for p in polecat.list_polecats(stub.town)] == ["nux"]
    out = stub.runner("polecat", "nuke", "gt/polecats/nux", "--force").stdout
    assert "nuked gt/polecats/nux" in out
    assert polecat.list_polecats(stub.town) == []
    assert stub.bead_row(bead_id) == ("open", None)
    assert not path.exists() and str(path) not in stub.worktrees()
    if kind == "branch-unmerged":  # never deleted: the commits stay reachable, and nuke says so
        assert branch in stub.branches() and f"kept branch {branch} (1 commit(s) not in main)" in out
    else:
        assert stub.branches() == ["main"]
    leftovers = path.parent / ".leftovers"
    kept = sorted(p.name for d in (leftovers.iterdir() if leftovers.is_dir() else []) for p in d.iterdir())
    # Moved aside, not deleted: a plain folder, and a worktree whose files git cannot vouch for
    # (changed, or all "new" on a branch that no longer exists).
    moved = {"plain": ["stray.txt"], "dirty": [".git", "README.md"], "registered-no-branch": [".git", "README.md"]}
    assert kept == moved.get(kind, [])
    # The slot is usable again.
    stub.runner("sling", bead_id, "gt", "--no-wait")
    assert git(path, "status", "--porcelain") == ""


def test_launch_never_makes_a_plain_folder_for_a_polecat(tmp_path: Path) -> None:
    """Whatever starts a polecat's session, a missing worktree is an error, not a new empty folder."""
    town, _ = Town.init(tmp_path / "town")
    address = parse_address("gt/polecats/nux")
    with pytest.raises(Conflict, match="not a git worktree"):
        launch_spec(town, address)
    assert not workdir(town, address).exists()
    town.close()
