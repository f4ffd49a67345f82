"""Repository hooks never run in the refinery's git commands, and nothing git starts sees the
runner's secrets (issue 20, item 8), on real git with a real refinery merge.

A polecat's worktree shares the canonical clone's .git, so a polecat can write `.git/hooks/*`
there; before, post-checkout, reference-transaction and pre-push (and post-merge on `rig sync`)
ran with the runner's environment, API key included. Here every such hook writes its `env` to
a file: after a worktree made by vermas, a `rig sync`, and a whole merge (fetch, rebase or
squash, the target's compare-and-set, the push into the user's own non-bare repository), no
file is there. The user's own upstream repository's receive hooks do run (they are the user's;
gitops.push says why), and what they see holds none of the secrets."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import git
from tests.refinery_rig import MergeRig
from vermas import beads, git as vgit, polecat, rig
from vermas.addresses import Address, Role, parse_address
from vermas.refinery import ledger, worker
from vermas.refinery.types import MRState
from vermas.town import Town

OWNER = "runner-1"
SECRETS = {"ANTHROPIC_API_KEY": "sk-ant-hooktest-0001", "CLAUDE_CODE_OAUTH_TOKEN": "oauth-hooktest-0002",
           "MY_DEPLOY_TOKEN": "deploy-hooktest-0003"}
# Every client-side hook git can run in what the refinery, sync and spawn do.
CLONE_HOOKS = ("post-checkout", "reference-transaction", "pre-push", "post-merge", "post-rewrite", "pre-commit",
               "commit-msg", "post-commit", "prepare-commit-msg", "pre-rebase", "pre-auto-gc", "pre-merge-commit",
               "post-index-change")
UPSTREAM_HOOKS = ("pre-receive", "update", "post-receive", "post-update")  # the user's own repository's


def install(hooks_dir: Path, names: tuple[str, ...], log: Path) -> None:
    """Each hook writes its environment to <log>/<hook>.<pid>, reads its input, and succeeds."""
    hooks_dir.mkdir(parents=True, exist_ok=True)
    log.mkdir(parents=True, exist_ok=True)
    for name in names:
        script = hooks_dir / name
        script.write_text(f'#!/bin/sh\nenv > "{log}/{name}.$$"\ncat > /dev/null 2>&1 || true\nexit 0\n')
        script.chmod(0o755)


def ran(log: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(log.iterdir())}


def quiet_git(cwd: Path, *args: str) -> str:
    """The test's own git commands (as a polecat's commits): hooks off, so only vermas's could write."""
    return git(cwd, "-c", "core.hooksPath=/dev/null", *args)


def work_without_hooks(mr: MergeRig, town: Town, title: str, name: str) -> str:
    """A polecat's worktree made by vermas (post-checkout would run there), a commit, polecat_done."""
    bead = beads.create(town, parse_address("mayor"), title=title).id
    info = polecat.allocate(town, parse_address("mayor"), bead, mr.name)
    polecat.create_worktree(town, info)
    worktree = Path(str(info.worktree))
    (worktree / name).write_text(f"{title}\n")
    quiet_git(worktree, "add", name)
    quiet_git(worktree, "-c", "user.email=pc@vermas.invalid", "-c", "user.name=polecat", "commit", "-q", "-m", title)
    done = polecat.done(town, Address(role=Role.POLECAT, rig=mr.name, name=info.name), "COMPLETED", "done")
    assert done.id is not None
    return done.id


@pytest.mark.parametrize("strategy", ["squash", "rebase"])
def test_no_repository_hook_runs_and_the_users_upstream_hooks_see_no_secret(
        town: Town, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, strategy: str) -> None:
    mr = MergeRig(town, tmp_path, upstream="checkout", strategy=strategy)
    myproj = mr.bare
    clone_log, upstream_log = tmp_path / "clone-hooks", tmp_path / "upstream-hooks"
    install(mr.clone / ".git" / "hooks", CLONE_HOOKS, clone_log)  # the .git every polecat worktree shares
    install(myproj / ".git" / "hooks", UPSTREAM_HOOKS, upstream_log)
    for key, value in SECRETS.items():
        monkeypatch.setenv(key, value)
    # Something upstream to sync (fetch, fast-forward of the clone's checkout: post-merge).
    (myproj / "up.txt").write_text("from the person\n")
    quiet_git(myproj, "add", "up.txt")
    quiet_git(myproj, "-c", "user.email=me@vermas.invalid", "-c", "user.name=me", "commit", "-q", "-m", "up")
    assert rig.sync(town, mr.name).new_commits == 1
    first = work_without_hooks(mr, town, "add a", "a.txt")
    second = work_without_hooks(mr, town, "add b", "b.txt")

    reports = worker.drain(town, mr.name, OWNER)

    assert all(r.error is None for r in reports), [r.error for r in reports]
    for mr_id in (first, second):
        assert ledger.get(town, mr_id).state is MRState.MERGED
    assert (myproj / "a.txt").read_text() == "add a\n" and (myproj / "b.txt").read_text() == "add b\n"
    # The user's own repository's receive hooks ran for the push, without the runner's secrets.
    seen = ran(upstream_log)
    assert {name.split(".")[0] for name in seen} >= {"pre-receive", "post-receive", "post-update"}
    for name, env in seen.items():
        for key, value in SECRETS.items():
            assert value not in env and f"{key}=" not in env, f"{name} saw {key}"
    assert ran(clone_log) == {}, f"hooks ran in the canonical clone: {sorted(ran(clone_log))}"


def test_the_git_environment_keeps_what_git_needs_and_drops_the_secrets() -> None:
    base = {"PATH": "/usr/bin", "HOME": "/home/u", "SSH_AUTH_SOCK": "/tmp/agent", "GIT_SSH_COMMAND": "ssh -v",
            "GH_TOKEN": "forge", "DBUS_SESSION_BUS_ADDRESS": "unix:path=/run/bus", "LANG": "C.UTF-8",
            "ANTHROPIC_API_KEY": "k", "ANTHROPIC_BASE_URL": "http://x", "CLAUDE_CODE_OAUTH_TOKEN": "t",
            "CLAUDECODE": "1", "AWS_SECRET_ACCESS_KEY": "s", "DB_PASSWORD": "p", "NPM_TOKEN": "n"}
    env = vgit._environment(base)
    assert set(env) == {"PATH", "HOME", "SSH_AUTH_SOCK", "GIT_SSH_COMMAND", "GH_TOKEN", "DBUS_SESSION_BUS_ADDRESS",
                        "LANG", "GIT_TERMINAL_PROMPT"}


@pytest.mark.parametrize("args", [("status",), ("fetch", "--quiet", "origin"), ("checkout", "--quiet", "-b", "x"),
                                  ("commit", "--quiet", "--allow-empty", "-m", "c"), ("rebase", "--quiet", "main"),
                                  ("merge", "--quiet", "--ff-only", "main"), ("update-ref", "refs/x", "HEAD"),
                                  ("worktree", "add", "--quiet", "--detach", "../wt2"), ("gc", "--auto", "--quiet")])
def test_git_2_39_accepts_dev_null_as_the_hooks_path_for_every_command(tmp_path: Path, args: tuple[str, ...]) -> None:
    """core.hooksPath=/dev/null: every command runs (no error for a hooks path that is not a
    folder) and no hook runs, whatever .git/config and .git/hooks say."""
    origin = tmp_path / "origin"
    git(tmp_path, "init", "-q", "-b", "main", str(origin))
    git(origin, "-c", "user.email=o@vermas.invalid", "-c", "user.name=o", "commit", "-q", "--allow-empty", "-m", "o")
    repo = tmp_path / "repo"
    git(tmp_path, "clone", "-q", str(origin), str(repo))
    log = tmp_path / "log"
    install(repo / ".git" / "hooks", CLONE_HOOKS, log)
    git(repo, "config", "core.hooksPath", str(repo / ".git" / "hooks"))  # a polecat may write .git/config too
    env = {**os.environ, "GIT_AUTHOR_NAME": "a", "GIT_AUTHOR_EMAIL": "a@vermas.invalid", "GIT_COMMITTER_NAME": "a",
           "GIT_COMMITTER_EMAIL": "a@vermas.invalid"}
    done = subprocess.run(vgit.argv(*args), cwd=repo, capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert ran(log) == {}
