"""`vermas-runner demo`: a throwaway town with a small sample rig (a normal repository with
main checked out, as a user's own is), a few beads slung to polecats, worked, and merged onto
that repository's main by the refinery (tests and verification run), shown as it happens.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from vermas import beads, convoy, patrol, polecat, rig, up
from vermas.addresses import parse_address
from vermas.atomic import write_atomic
from vermas.errors import Conflict, InvalidInput
from vermas.layout import TownLayout
from vermas.proc import pid_alive
from vermas.progress import ProgressEvent, Reporter
from vermas.refinery import ledger
from vermas.refinery.types import MRState
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
    (path / "check.sh").write_text(CHECK_SCRIPT)
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
    from vermas.testing.standin.inspector import (  # deferred: stand-in machinery, only for the demo
        inspector_policy,
        is_inspector,
    )

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


DEMO_TEST = "sh check.sh"  # the sample rig's test command: every note is a non-empty file
CHECK_SCRIPT = """#!/bin/sh
# The sample project's tests: every note under notes/ must be a non-empty file.
set -e
for f in notes/*.md; do
    [ -e "$f" ] || continue
    [ -s "$f" ] || { echo "empty note: $f"; exit 1; }
done
echo "notes ok"
"""


@dataclass
class DemoBead:
    """One sample bead as the demo follows it: slung at `slung`, merged at `merged`."""

    id: str
    slung: float
    polecat: str = ""
    done: bool = False
    merged_sha: str | None = None
    merged: float | None = None


def demo_beads(count: int) -> list[tuple[str, str, str]]:
    """(title, description, acceptance) of the sample beads: prose a real model follows, and
    the `standin:` line the scripted model follows (it ignores the prose)."""
    out = []
    for i in range(1, count + 1):
        path = f"notes/demo-{i}.md"
        out.append((f"Write demo note {i}",
                    f"Add the file {path} with one line, 'demo note {i}', and commit it.\n"
                    f"standin: write {path} = demo note {i}\\n",
                    f"{path} exists in the work tree and is not empty"))
    return out


def run_demo(model: str = "standin", keep: bool = False, beads_count: int = 3, timeout: float = 600.0,
             **_: Any) -> int:
    """A throwaway town whose sample beads end MERGED on the sample repository's main by the
    refinery (its tests and verification run), the beads closed and their convoy landed; 0 only
    when git shows the merged commits on that main and its checkout equals them."""
    from rich.console import Console  # deferred: rich (~40 ms) only when the demo prints

    from vermas.sessions import TownSessions  # deferred: libtmux (~70 ms) only when the demo runs

    console = Console(soft_wrap=True)  # one line per fact, never wrapped at 80 columns in a pipe or log
    root = Path(tempfile.mkdtemp(prefix="vermas-demo-"))
    town, _created = Town.init(root / "town")
    console.print(f"[bold]vermas demo[/]: town at {town.root}")
    repo = sample_repo(root / "sample")
    server = None
    if model == "standin":
        from vermas.testing.standin import StandinModelServer  # deferred: test machinery, only for the demo

        server = StandinModelServer(standin_policy()).start()
        use_standin(town, server.base_url, root / "claude-home")
        console.print(f"stand-in model on {server.base_url} (no account, scripted agents and inspector)")
    else:  # your own Claude Code login: the sessions use your normal config and credentials
        from vermas.testing.standin import find_claude_binary  # deferred: test machinery, only for the demo

        binary = find_claude_binary()
        if binary is not None:  # the sessions and the inspector's `claude -p` both use it
            town.config.agent.command = str(binary)
            town.config.inspector.command = str(binary)
            town.save_config()
        console.print(f"using your Claude Code login ({town.config.agent.command})")
    rig.add(town, "sample", str(repo), prefix="sp", max_polecats=max(1, beads_count), test_command=DEMO_TEST)
    console.print(f"rig [bold]sample[/] added (prefix sp): upstream {repo} (main checked out), "
                  f"tests `{DEMO_TEST}`, verification at level {town.config.rigs['sample'].verify_level}")
    sessions = TownSessions(town.root)
    overseer = parse_address("overseer")
    lock = up.RunnerLock(town)
    lock.acquire()
    stop = threading.Event()
    _stop_on_sigterm()  # a killed demo still runs its `finally`: down, stand-in stopped, folder removed
    patrol_thread: threading.Thread | None = None
    try:
        with Reporter() as show:
            report = up.up(town, sessions, wait=False, progress=show)
        console.print(f"started {', '.join(report.started)}")
        made = [beads.create(town, overseer, title, rig="sample", description=text, acceptance_criteria=accept)
                for title, text, accept in demo_beads(beads_count)]
        batch = convoy.create(town, overseer, "demo notes", [b.id for b in made])
        console.print(f"convoy {batch.id} tracks {', '.join(b.id for b in made)}")
        followed: list[DemoBead] = []
        for bead in made:
            slung = time.monotonic()
            info = polecat.spawn(town, overseer, bead.id, "sample", sessions, kick="background")
            followed.append(DemoBead(id=bead.id, slung=slung, polecat=str(info.address)))
            console.print(f"slung {bead.id} -> {info.address} on branch {info.branch}")
        log = town.layout.runner_log
        log.parent.mkdir(exist_ok=True)
        with log.open("a") as fh:
            def say(line: str) -> None:
                fh.write(line + "\n")
                fh.flush()

            patrol_thread = threading.Thread(target=patrol.run_until, args=(town, sessions, stop), kwargs={"out": say},
                                             name="demo-patrol", daemon=True)
            patrol_thread.start()
            console.print(f"the runner's patrol is on (witness, refinery merge queue, deacon); log: {log}")
            console.print(f"watch live: tmux -L {sessions.socket} attach -t vermas-sample-polecats-nux"
                          + ("" if keep else " (add --keep to keep the town afterwards)"))
            landed = _follow(town, followed, batch.id, console, timeout)
        ok = landed and _on_main(repo, followed, console)
        _summary(repo, followed, console)
        console.print(("[bold green]demo done: every bead merged on main[/]" if ok else
                       "[bold red]demo did not finish[/]")
                      + f" ({sum(1 for b in followed if b.merged_sha)}/{len(followed)} merged)")
        return 0 if ok else 1
    finally:
        stop.set()
        if patrol_thread is not None:
            patrol_thread.join(60)
        lock.release()
        if not keep:
            up.down(town, sessions)
            if server is not None:
                server.stop()
            remove_tree(root)
        else:
            console.print(f"kept: {town.root} (vermas-runner down --town {town.root} stops it)")


def _stop_on_sigterm() -> None:
    """SIGTERM (a `kill`, a CI timeout) ends the demo the way Ctrl-C does, through its cleanup."""
    def interrupted(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupted)


def _follow(town: Town, followed: list[DemoBead], convoy_id: str, console: Any, timeout: float) -> bool:
    """Print each POLECAT_DONE, MERGED and the convoy's landing as they happen; True once every
    bead is merged and closed and CONVOY_LANDED was sent, False at the timeout."""
    deadline = time.monotonic() + timeout
    by_id = {b.id: b for b in followed}
    landed_mail = False
    with Reporter() as show:  # bars on a terminal, `task: status (done/total)` lines in a pipe
        while time.monotonic() < deadline:
            for bead_id in _done_beads(town):
                b = by_id.get(bead_id)
                if b is not None and not b.done:
                    b.done = True
                    console.print(f"[green]POLECAT_DONE[/] {b.polecat} on {b.id} "
                                  f"({time.monotonic() - b.slung:.1f} s after sling)")
            for b in followed:
                if b.merged_sha is None:
                    merged = [r for r in ledger.list_requests(town, bead=b.id, states=[MRState.MERGED])]
                    if merged and beads.show(town, b.id).status == "closed":
                        b.merged_sha, b.merged = merged[-1].merged_sha, time.monotonic()
                        console.print(f"[green]MERGED[/] {b.id} in {str(b.merged_sha)[:12]} "
                                      f"({b.merged - b.slung:.1f} s after sling)")
                show(ProgressEvent(b.id, "merged" if b.merged_sha else "polecat done" if b.done else "working",
                                   finished=b.merged_sha is not None))
            merged_count = sum(1 for b in followed if b.merged_sha)
            show(ProgressEvent("demo", "beads merged on main", merged_count, len(followed),
                               finished=merged_count == len(followed)))
            if merged_count == len(followed) and not landed_mail:
                landed_mail = _convoy_landed(town, convoy_id)
                if landed_mail:
                    console.print(f"[green]CONVOY_LANDED[/] {convoy_id}: {merged_count}/{len(followed)} beads")
            if landed_mail:
                return True
            time.sleep(0.5)
    return False


def _done_beads(town: Town) -> list[str]:
    """Beads whose polecat called polecat_done (it queued their merge request)."""
    return [r.bead for r in ledger.list_requests(town, rig="sample")]


def _convoy_landed(town: Town, convoy_id: str) -> bool:
    if not convoy.status(town, convoy_id).landed:
        return False
    with town.db.read() as conn:
        return conn.execute("SELECT 1 FROM messages WHERE kind = 'CONVOY_LANDED' AND body LIKE ?",
                            (f"%{convoy_id}%",)).fetchone() is not None


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True).stdout.strip()


def _on_main(repo: Path, followed: list[DemoBead], console: Any) -> bool:
    """What git says, not what the store says: every merged sha is on the sample repository's
    main, and its checked-out files equal that main (nothing staged, changed or missing)."""
    ok = True
    for b in followed:
        sha = b.merged_sha or ""
        if not sha or subprocess.run(["git", "merge-base", "--is-ancestor", sha, "main"], cwd=repo,
                                     capture_output=True).returncode != 0:
            console.print(f"[red]{b.id}: its merged commit {sha[:12] or '-'} is not on {repo} main[/]")
            ok = False
    dirty = _git(repo, "status", "--porcelain")
    if dirty:
        console.print(f"[red]{repo}: the checkout differs from main:[/] {' '.join(dirty.split())[:200]}")
        ok = False
    return ok


def _summary(repo: Path, followed: list[DemoBead], console: Any) -> None:
    log = _git(repo, "log", "--oneline", "main")
    console.print(f"main of the sample repository ({repo}), {len(log.splitlines())} commits:")
    for line in log.splitlines():
        console.print(f"  {line}")
    times = sorted(b.merged - b.slung for b in followed if b.merged is not None)
    if times:
        console.print(f"sling to merged: p50 {times[len(times) // 2]:.1f} s, max {times[-1]:.1f} s "
                      f"({len(times)} beads)")


def remove_tree(root: Path, within: float = 10.0) -> None:
    """Remove the demo's folder, retrying while the Claude Code processes that `down` ended are
    still writing their config on the way out (one rmtree then left `claude-home/` behind)."""
    deadline = time.monotonic() + within
    while True:
        shutil.rmtree(root, ignore_errors=True)
        if not root.exists() or time.monotonic() > deadline:
            return
        time.sleep(0.2)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == SERVE_FLAG:
        sys.exit(serve_standin(sys.argv[2]))
    sys.exit(f"usage: python -m vermas_runner.demo {SERVE_FLAG} TOWN")
