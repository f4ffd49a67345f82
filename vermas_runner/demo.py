"""`vermas-runner demo`: a throwaway town with a small sample rig, a few beads slung to
polecats and worked to polecat_done, shown as it happens.

With the default stand-in model no account is needed: a scripted local model plays each
agent through the real Claude Code CLI (it calls hook_check, does the bead's work with
Claude Code's own Bash tool, commits, calls polecat_done). With `--model claude` the
sessions use your own Claude Code login instead.

The same stand-in boots any town: `vermas-runner up --model standin` starts it as a process
of its own (`python -m vermas_runner.demo --serve-standin TOWN`, pid and URL in
`.runtime/standin.json`), points the town's `[agent]` and `[inspector]` at it (so the
sessions AND the merge queue's verification run offline; the town's own settings are kept in
`.runtime/standin-agent.json` and `standin-inspector.json`), and `vermas-runner down` stops
it and puts both back.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from vermas import beads, polecat, rig, up
from vermas.addresses import parse_address
from vermas.atomic import write_atomic
from vermas.errors import Conflict, InvalidInput
from vermas.layout import TownLayout
from vermas.proc import pid_alive
from vermas.progress import ProgressEvent, Reporter
from vermas.protocol import PolecatState
from vermas.town import AgentCommand, InspectorConfig, Town

POLECAT_MARKER = "You are a vermas polecat"
SERVE_FLAG = "--serve-standin"


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


def idle_script() -> list[Any]:
    return [{"tool": "hook_check", "wait_for_tool": True}, "Hook checked; waiting for mail."]


def standin_policy() -> Any:
    """The inspector's `claude -p` calls: the stand-in inspector (vermas.testing.standin.inspector:
    a spec, shell tests and verdicts derived from the prompt). Polecats: the stand-in polecat
    (vermas.testing.standin.polecat: hook_check, the bead's work with Claude Code's Bash tool, a
    commit, polecat_done; rework when the refinery sends it back); every other agent checks its
    hook and waits."""
    from vermas.testing.standin import (  # deferred: stand-in server (test machinery), only for the demo
        PerSessionPolicy,
        RoutingPolicy,
        ScriptedPolicy,
        polecat_policy,
        system_contains,
    )
    from vermas.testing.standin.inspector import inspector_policy, is_inspector

    return RoutingPolicy(
        [(is_inspector, inspector_policy), (system_contains(POLECAT_MARKER), PerSessionPolicy(polecat_policy))],
        default=PerSessionPolicy(lambda: ScriptedPolicy(idle_script())),
    )


def use_standin(town: Town, base_url: str, home: Path) -> None:
    """Point every model call of the town at the stand-in: the agent sessions (`[agent]`) and the
    inspector's `claude -p` calls (`[inspector]`), each with a private Claude home under `home`."""
    from vermas.testing.standin import (  # deferred: stand-in server (test machinery), only for the demo
        DUMMY_API_KEY,
        claude_env,
        find_claude_binary,
        write_claude_home,
    )

    binary = find_claude_binary()
    if binary is None:
        raise InvalidInput(CLI_MISSING)
    if not (home / ".claude.json").is_file():  # keep the trust entries of a running town
        write_claude_home(home)
    env = claude_env(base_url, home, base={})
    env["PATH"] = os.environ.get("PATH", "/usr/bin:/bin")
    env["ANTHROPIC_API_KEY"] = DUMMY_API_KEY
    town.config.agent.command = str(binary)
    town.config.agent.env = env
    use_standin_inspector(town, base_url, home / INSPECTOR_HOME)
    town.save_config()


INSPECTOR_HOME = "inspector"  # the inspector's `claude -p` home, inside the sessions' stand-in home
INSPECTOR_KEYS = ("command", "args", "env")  # what the stand-in sets; a rig's own values would win, so they go


def use_standin_inspector(town: Town, base_url: str, home: Path) -> None:
    """Point the inspector's `claude -p` (Designer, Strategist, Auditor, panel) at the stand-in:
    `[inspector]` command = the installed CLI, env = the stand-in's URL, a dummy key and a private
    HOME; a rig's own command/args/env are taken out (they would override it). The caller saves
    the config (boot_on_standin keeps the town's own settings for `down` first)."""
    from vermas.testing.standin import claude_env, find_claude_binary  # deferred: stand-in machinery

    binary = find_claude_binary()
    if binary is None:
        raise InvalidInput(CLI_MISSING)
    home.mkdir(parents=True, exist_ok=True)
    town.config.inspector.command = str(binary)
    town.config.inspector.args = []
    town.config.inspector.env = claude_env(base_url, home, base={})
    for rig_config in town.config.rigs.values():
        for key in INSPECTOR_KEYS:
            rig_config.inspector.pop(key, None)


def on_standin(town: Town, binary: Path, url: str) -> bool:
    """Every model call of the town already goes to the stand-in at `url`."""
    agent, inspector = town.config.agent, town.config.inspector
    return (agent.command == str(binary) and agent.env.get("ANTHROPIC_BASE_URL") == url
            and inspector.command == str(binary) and inspector.env.get("ANTHROPIC_BASE_URL") == url
            and not any(key in r.inspector for r in town.config.rigs.values() for key in INSPECTOR_KEYS))


class SavedInspector(BaseModel):
    """The town's own inspector settings while the stand-in replaces them (`down` puts them back)."""

    inspector: InspectorConfig
    rigs: dict[str, dict[str, Any]] = {}  # per rig: the keys of its inspector table the stand-in took out


def save_inspector(town: Town) -> None:
    saved = town.layout.standin_saved_inspector
    if saved.is_file():  # already on the stand-in: the file holds the town's own settings
        return
    town.layout.runtime_dir.mkdir(exist_ok=True)
    rigs = {name: {k: r.inspector[k] for k in INSPECTOR_KEYS if k in r.inspector}
            for name, r in town.config.rigs.items()}
    write_atomic(saved, SavedInspector(inspector=town.config.inspector,
                                       rigs={n: v for n, v in rigs.items() if v}).model_dump_json())


def restore_inspector(town: Town) -> bool:
    """Put back the town's own `[inspector]` (and rigs' inspector keys) the stand-in replaced."""
    saved = town.layout.standin_saved_inspector
    if not saved.is_file():
        return False
    town.reload_config()
    own = SavedInspector.model_validate_json(saved.read_text())
    town.config.inspector = own.inspector
    for name, values in own.rigs.items():
        if name in town.config.rigs:
            town.config.rigs[name].inspector.update(values)
    town.save_config()
    saved.unlink()
    return True


CLI_MISSING = ("the stand-in model drives the real Claude Code CLI, which is not installed: run scripts/setup.sh "
               "(it installs the CLI into .tools/claude) or set VERMAS_CLAUDE_BIN to its path")


# --- the stand-in model of `vermas-runner up --model standin` ---------------------------------

class StandinState(BaseModel):
    """What the stand-in server process writes once it listens."""

    pid: int
    url: str
    root: str


def standin_state(town: Town) -> StandinState | None:
    """The town's running stand-in server; None if there is none. A stale file (a killed
    server, a reboot) may name an unrelated process now, so its command line is checked."""
    try:
        state = StandinState.model_validate_json(town.layout.standin_state.read_text())
        cmdline = Path(f"/proc/{state.pid}/cmdline").read_bytes()
    except (OSError, ValueError, ValidationError):
        return None
    if not pid_alive(state.pid) or SERVE_FLAG.encode() not in cmdline or str(town.root).encode() not in cmdline:
        return None
    return state


def start_standin(town: Town, timeout: float = 30.0) -> StandinState:
    """Start the town's stand-in server (a process of its own, outliving this runner like
    the sessions do) unless it runs; wait until it listens."""
    state = standin_state(town)
    if state is not None:
        return state
    town.layout.runtime_dir.mkdir(exist_ok=True)
    town.layout.standin_state.unlink(missing_ok=True)
    with town.layout.standin_log.open("a") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vermas_runner.demo", SERVE_FLAG, str(town.root)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, cwd=town.root,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        state = standin_state(town)
        if state is not None:
            return state
        time.sleep(0.05)
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    raise Conflict(f"the stand-in model server did not start within {timeout:.0f}s; see {town.layout.standin_log}")


def stop_standin(town: Town, timeout: float = 5.0) -> int | None:
    """Stop the town's stand-in server (by its recorded, checked pid); its pid, or None."""
    state = standin_state(town)
    if state is None:
        return None
    os.kill(state.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and standin_state(town) is not None:
        time.sleep(0.05)
    if standin_state(town) is not None:
        os.kill(state.pid, signal.SIGKILL)
    town.layout.standin_state.unlink(missing_ok=True)
    return state.pid


def restore_agent(town: Town) -> bool:
    """Put back the town's own `[agent]` that the stand-in replaced (True if it did)."""
    saved = town.layout.standin_saved_agent
    if not saved.is_file():
        return False
    town.reload_config()
    town.config.agent = AgentCommand.model_validate_json(saved.read_text())
    town.save_config()
    saved.unlink()
    return True


def boot_on_standin(town: Town) -> StandinState:
    """Start (or keep) the stand-in and point the town's `[agent]` and `[inspector]` at it (the
    town's own are kept in .runtime/standin-agent.json and standin-inspector.json for `down`)."""
    from vermas.testing.standin import find_claude_binary  # deferred: stand-in machinery, only for --model standin

    binary = find_claude_binary()
    if binary is None:
        raise InvalidInput(CLI_MISSING)
    saved = town.layout.standin_saved_agent
    if not saved.is_file():
        town.layout.runtime_dir.mkdir(exist_ok=True)
        write_atomic(saved, town.config.agent.model_dump_json())
    save_inspector(town)
    state = start_standin(town)
    if not on_standin(town, binary, state.url):
        use_standin(town, state.url, town.layout.standin_home)
    return state


def choose_model(town: Town, model: str) -> str:
    """Set the town up for `up --model MODEL`; the line the runner prints about it.

    `standin` boots the stand-in; `claude` (the default) uses the town's `[agent]`, after
    putting it back if a stand-in that is gone had replaced it. A town that runs on the
    stand-in stays on it until `down`, so `up` cannot mix the two in one town."""
    if model == "standin":
        state = boot_on_standin(town)
        return (f"agent: the scripted stand-in model at {state.url} (pid {state.pid}), via "
                f"{town.config.agent.command}, and so is the inspector's claude -p; `vermas-runner down` stops it")
    running = standin_state(town)
    if running is not None:
        raise Conflict(f"this town runs on the stand-in model (pid {running.pid}) until `vermas-runner down`; "
                       "pass --model standin to keep using it")
    restore_agent(town)
    restore_inspector(town)
    return f"agent: {town.config.agent.command} ([agent] command in {town.layout.config_file})"


def serve_standin(root: str) -> int:
    """The stand-in server process: serve the demo's policy until SIGTERM."""
    from vermas.testing.standin import StandinModelServer  # deferred: stand-in machinery, only in this process

    layout = TownLayout(Path(root))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with StandinModelServer(standin_policy()) as server:
        write_atomic(layout.standin_state,
                     StandinState(pid=os.getpid(), url=server.base_url, root=root).model_dump_json())
        print(f"stand-in model for {root} on {server.base_url}", flush=True)
        stop.wait()
    return 0


def run_demo(model: str = "standin", keep: bool = False, beads_count: int = 3, **_: Any) -> int:
    from rich.console import Console  # deferred: rich (~40 ms) only when the demo prints

    from vermas.sessions import TownSessions  # deferred: libtmux (~70 ms) only when the demo runs

    console = Console()
    root = Path(tempfile.mkdtemp(prefix="vermas-demo-"))
    town, _created = Town.init(root / "town")
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
        with Reporter() as show:
            report = up.up(town, sessions, wait=False, progress=show)
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
        with Reporter() as show:  # each polecat's state and the count done: bars on a terminal, else lines
            while time.monotonic() < deadline and len(done) < len(made):
                for msg in _witness_mail(town):
                    if msg not in done:
                        done.add(msg)
                        console.print(f"[green]POLECAT_DONE[/] {msg}")
                for p in polecat.list_polecats(town, "sample"):
                    show(ProgressEvent(p.address, f"{p.state} on {p.bead_id or '-'}",
                                       finished=p.state is PolecatState.DONE))
                show(ProgressEvent("demo", "polecats finished", len(done), len(made), finished=len(done) == len(made)))
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
            remove_tree(root)
        else:
            console.print(f"kept: {town.root} (vermas-runner down --town {town.root} stops it)")


def remove_tree(root: Path, within: float = 10.0) -> None:
    """Remove the demo's folder, retrying while the Claude Code processes that `down` ended are
    still writing their config on the way out (one rmtree then left `claude-home/` behind)."""
    deadline = time.monotonic() + within
    while True:
        shutil.rmtree(root, ignore_errors=True)
        if not root.exists() or time.monotonic() > deadline:
            return
        time.sleep(0.2)


def _witness_mail(town: Town) -> list[str]:
    with town.db.read() as conn:
        return [f"{r[0]}: {r[1]}" for r in conn.execute(
            "SELECT recipient, subject FROM messages WHERE kind = 'POLECAT_DONE' ORDER BY created_ts")]


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == SERVE_FLAG:
        sys.exit(serve_standin(sys.argv[2]))
    sys.exit(f"usage: python -m vermas_runner.demo {SERVE_FLAG} TOWN")
