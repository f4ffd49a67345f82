"""`vermas-runner demo`: a throwaway town with a small sample rig, a few beads slung to
polecats and worked to polecat_done, shown as it happens.

With the default stand-in model no account is needed: a scripted local model plays each
agent through the real Claude Code CLI (it calls hook_check, does the bead's work with
Claude Code's own Bash tool, commits, calls polecat_done). With `--model claude` the
sessions use your own Claude Code login instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from vermas import beads, polecat, rig, up
from vermas.addresses import parse_address
from vermas.town import Town

POLECAT_MARKER = "You are a vermas polecat"


def sample_repo(path: Path) -> Path:
    """A tiny git project for the demo rig."""
    path.mkdir(parents=True)
    env = {**os.environ, "GIT_AUTHOR_NAME": "demo", "GIT_COMMITTER_NAME": "demo",
           "GIT_AUTHOR_EMAIL": "demo@vermas.local", "GIT_COMMITTER_EMAIL": "demo@vermas.local"}

    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=path, check=True, capture_output=True, env=env)

    git("init", "-q", "-b", "main")
    (path / "README.md").write_text("# sample\n\nA sample project for the vermas demo.\n")
    (path / "notes").mkdir()
    (path / "notes" / ".keep").write_text("")
    git("add", "-A")
    git("commit", "-q", "-m", "initial commit")
    return path


def polecat_script(bead_file_cmd: str | None = None) -> list[Any]:
    """What the stand-in model does as a polecat: check the hook, write a note named after
    itself with Claude Code's Bash tool, commit it, and report done."""
    command = bead_file_cmd or (
        'note="notes/$(echo "$BD_ACTOR" | tr / -).md" && printf "work by %s\\n" "$BD_ACTOR" > "$note" && '
        'git add notes && git commit -q -m "polecat work by $BD_ACTOR" && git log --oneline -1'
    )
    return [
        {"tool": "hook_check", "wait_for_tool": True},
        {"tool": "Bash", "input": {"command": command, "description": "do the hooked work and commit"}},
        {"tool": "polecat_done", "input": {"status": "COMPLETED", "summary": "wrote a note and committed it"}},
        "Done: work committed and polecat_done called.",
    ]


def idle_script() -> list[Any]:
    return [{"tool": "hook_check", "wait_for_tool": True}, "Hook checked; waiting for mail."]


def standin_policy() -> Any:
    from vermas.testing.standin import (  # deferred: stand-in server (test machinery), only for the demo
        PerSessionPolicy,
        RoutingPolicy,
        ScriptedPolicy,
        system_contains,
    )

    return RoutingPolicy(
        [(system_contains(POLECAT_MARKER), PerSessionPolicy(lambda: ScriptedPolicy(polecat_script())))],
        default=PerSessionPolicy(lambda: ScriptedPolicy(idle_script())),
    )


def use_standin(town: Town, base_url: str, home: Path) -> None:
    """Point the town's agent sessions at the stand-in model with a private Claude home."""
    from vermas.testing.standin import (  # deferred: stand-in server (test machinery), only for the demo
        DUMMY_API_KEY,
        claude_env,
        find_claude_binary,
        write_claude_home,
    )

    binary = find_claude_binary()
    if binary is None:
        raise RuntimeError("Claude Code CLI not found: run scripts/setup.sh (installs it into .tools/claude)")
    write_claude_home(home)
    env = claude_env(base_url, home, base={})
    env["PATH"] = os.environ.get("PATH", "/usr/bin:/bin")
    env["ANTHROPIC_API_KEY"] = DUMMY_API_KEY
    town.config.agent.command = str(binary)
    town.config.agent.env = env
    town.save_config()


def run_demo(model: str = "standin", keep: bool = False, beads_count: int = 3, **_: Any) -> int:
    from rich.console import Console  # deferred: rich (~40 ms) only when the demo prints

    from vermas.sessions import TownSessions  # deferred: libtmux (~70 ms) only when the demo runs

    console = Console()
    root = Path(tempfile.mkdtemp(prefix="vermas-demo-"))
    town, _ = Town.init(root / "town")
    console.print(f"[bold]vermas demo[/]: town at {town.root}")
    repo = sample_repo(root / "sample.git.src")
    server = None
    if model == "standin":
        from vermas.testing.standin import StandinModelServer  # deferred: test machinery, only for the demo

        server = StandinModelServer(standin_policy()).start()
        use_standin(town, server.base_url, root / "claude-home")
        console.print(f"stand-in model on {server.base_url} (no account, scripted agents)")
    else:  # your own Claude Code login: the sessions use your normal config and credentials
        from vermas.testing.standin import find_claude_binary  # deferred: test machinery, only for the demo

        binary = find_claude_binary()
        if binary is not None:
            town.config.agent.command = str(binary)
            town.save_config()
        console.print(f"using your Claude Code login ({town.config.agent.command})")
    rig.add(town, "sample", str(repo), prefix="sp", max_polecats=max(1, beads_count))
    console.print("rig [bold]sample[/] added (prefix sp)")
    sessions = TownSessions(town.root)
    overseer = parse_address("overseer")
    try:
        report = up.up(town, sessions, wait=False)
        console.print(f"started {', '.join(report.started)}")
        made = [beads.create(town, overseer, f"Write demo note {i + 1}", rig="sample",
                             description="Add a note file under notes/ and commit it.")
                for i in range(beads_count)]
        for bead in made:
            info = polecat.spawn(town, overseer, bead.id, "sample", sessions, kick="background")
            console.print(f"slung {bead.id} -> {info.address} on branch {info.branch}")
        console.print(f"watch live: tmux -L {sessions.socket} attach -t vermas-sample-polecats-nux"
                      + ("" if keep else " (add --keep to keep the town afterwards)"))
        deadline = time.monotonic() + 300
        done: set[str] = set()
        while time.monotonic() < deadline and len(done) < len(made):
            for msg in _witness_mail(town):
                if msg not in done:
                    done.add(msg)
                    console.print(f"[green]POLECAT_DONE[/] {msg}")
            time.sleep(1)
        ok = len(done) == len(made)
        console.print(("[bold green]all polecats finished[/]" if ok else "[bold red]timed out[/]")
                      + f" ({len(done)}/{len(made)})")
        return 0 if ok else 1
    finally:
        if not keep:
            up.down(town, sessions)
            if server is not None:
                server.stop()
            shutil.rmtree(root, ignore_errors=True)
        else:
            console.print(f"kept: {town.root} (vermas-runner down --town {town.root} stops it)")


def _witness_mail(town: Town) -> list[str]:
    with town.db.read() as conn:
        return [f"{r[0]}: {r[1]}" for r in conn.execute(
            "SELECT recipient, subject FROM messages WHERE kind = 'POLECAT_DONE' ORDER BY created_ts")]
