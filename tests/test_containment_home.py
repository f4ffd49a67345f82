"""Contained runs see an empty home and no network (issue 20, item 11), through the real path
(vermas.inspector.verifier.run_command, the Verifier's pipeline and the refinery's merge test runs)
and real namespaces; skipped with the reason where the kernel does not allow them.

A home here is a temp folder made the home by $HOME (what the run must not read is planted in it),
and once the real one from the password database; what the run needs from a home (a PATH tool, a
venv and its base interpreter, a git worktree's common dir) must keep working."""

from __future__ import annotations

import os
import pwd
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import git, make_repo
from tests.refinery_rig import MergeRig
from tests.test_inspector_tools import sm  # noqa: F401 - the stand-in model fixture
from vermas import beads, contain
from vermas.addresses import parse_address
from vermas.inspector.pipeline import settings_for
from vermas.inspector.verifier import run_command, town_private_paths
from vermas.refinery import ledger, worker
from vermas.refinery.types import MRState
from vermas.town import RigConfig, Town
# The interpreter for scripts run INSIDE a contained test: the venv's python is a link to it, and
# the venv itself may sit under /tmp (a checkout there), which containment covers.
PYTHON = os.path.realpath(sys.executable)

SECRET = "s3cr3t-" + secrets.token_hex(8)


@pytest.fixture
def namespace_only(monkeypatch: pytest.MonkeyPatch) -> None:
    if not contain.namespaces_available():
        pytest.skip("user/PID/mount namespaces are not available here (unshare missing or "
                    "unprivileged user namespaces disabled): the home cover needs them")
    monkeypatch.setenv("VERMAS_CONTAIN", "namespace")


@pytest.fixture
def netns_only(namespace_only: None) -> None:
    if not contain.network_isolation_available():
        pytest.skip("network namespaces cannot be made here (unshare --net refused): no network isolation")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A home holding secrets, made the home by $HOME."""
    h = tmp_path / "home"
    (h / ".ssh").mkdir(parents=True)
    (h / ".claude.json").write_text(f'{{"primaryApiKey": "{SECRET}"}}\n')
    (h / ".gitconfig").write_text(f"[credential]\n\thelper = store {SECRET}\n")
    (h / ".ssh" / "id_ed25519").write_text(f"{SECRET}\n")
    monkeypatch.setenv("HOME", str(h))
    return h


def worktree(town: Town, name: str = "dev") -> Path:
    if "app" not in town.config.rigs:
        town.config.rigs["app"] = RigConfig(name="app", git_url="file:///dev/null", prefix="app")
        town.save_config()
    return make_repo(town.root / "app" / "crew" / name)


def path_with_python(*first: Path) -> dict[str, str]:
    """A PATH with `first`, then this interpreter's folder, then ours."""
    return {"PATH": os.pathsep.join([*map(str, first), str(Path(sys.executable).parent), os.environ["PATH"]])}


def run(cwd: Path, command: str, town: Town | None = None, **kw: Any):  # type: ignore[no-untyped-def]
    hidden = town_private_paths(town.root) if town is not None else ()
    kw.setdefault("base_env", path_with_python())
    return run_command(command, cwd, 60, hidden=hidden, **kw)


# ---- the home ------------------------------------------------------------------------------------


UNMOUNT = """import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
for flags in (0, 2):  # plain, MNT_DETACH
    print("umount2", flags, libc.umount2(sys.argv[1].encode(), flags), ctypes.get_errno())
"""


def test_secrets_in_home_cannot_be_read(town: Town, home: Path, namespace_only: None) -> None:
    """Not by path, not after trying to unmount or remount the cover, not through /proc/1/root."""
    wt = worktree(town)
    (wt / "unmount.py").write_text(UNMOUNT)
    ev = run(wt, f"{PYTHON} unmount.py {home}; mount -o remount,rw {home}; "
                 f"cat /proc/1/root{home}/.claude.json; "
                 f"cat {home}/.claude.json {home}/.gitconfig {home}/.ssh/id_ed25519; "
                 f"grep -rs {SECRET} {home}; echo LS:; ls -A {home}; echo :LS", town)
    assert ev.error is None and ":LS" in ev.output, ev.output
    assert "umount2 0 -1" in ev.output and "umount2 2 -1" in ev.output, ev.output  # the cover is locked
    assert SECRET not in ev.output.replace(f"grep -rs {SECRET}", "")
    listed = ev.output.split("LS:\n")[1]
    assert ".claude.json" not in listed and ".ssh" not in listed  # the home is covered (here inside /tmp's cover)


def test_the_real_home_from_the_password_database_is_covered(town: Town, tmp_path: Path, namespace_only: None,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """$HOME pointing elsewhere does not uncover the user's real home (pwd's home dir)."""
    real = Path(pwd.getpwuid(os.getuid()).pw_dir)
    if not real.is_dir() or not os.access(real, os.W_OK) or real == Path("/"):
        pytest.skip(f"the password database's home {real} is not a writable folder here")
    assert real in contain.home_dirs()
    monkeypatch.setenv("HOME", str(tmp_path))
    planted = real / f".vermas-contain-test-{secrets.token_hex(6)}"
    planted.write_text(SECRET)
    try:
        ev = run(worktree(town), f"cat {planted}; echo LS:; ls -A {real}; echo :LS", town)
    finally:
        planted.unlink()
    assert ":LS" in ev.output and SECRET not in ev.output, ev.output
    assert planted.name not in ev.output.split("LS:\n")[1], ev.output


def test_a_home_folder_that_is_the_work_tree_is_not_covered(home: Path, namespace_only: None) -> None:
    ev = run(home, "cat .claude.json; touch made-here; echo END")
    assert SECRET in ev.output and (home / "made-here").exists()  # the run's own tree, rw as before


def test_tools_on_path_under_home_still_run(town: Town, home: Path, namespace_only: None) -> None:
    """A script in ~/tools/bin, a tool symlinked into ~/.local/bin from its prefix, and python
    from a venv in the home (its site-packages and base interpreter shown too)."""
    tools = home / "tools" / "bin"
    tools.mkdir(parents=True)
    (tools / "mytool").write_text("#!/bin/sh\necho TOOL-OK\n")
    (tools / "mytool").chmod(0o755)
    prefix = home / "opt" / "linked"
    (prefix / "bin").mkdir(parents=True)
    (prefix / "lib").mkdir()
    (prefix / "lib" / "data.txt").write_text("LINKED-DATA\n")
    (prefix / "bin" / "linked").write_text('#!/bin/sh\ncat "$(dirname "$(readlink -f "$0")")/../lib/data.txt"\n')
    (prefix / "bin" / "linked").chmod(0o755)
    local = home / ".local" / "bin"
    local.mkdir(parents=True)
    (local / "linked").symlink_to(prefix / "bin" / "linked")
    (home / ".local" / "share").mkdir()
    (home / ".local" / "share" / "keyring").write_text(SECRET)
    venv = home / "project" / ".venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = next((venv / "lib").glob("python*/site-packages"))
    (site / "homemod.py").write_text("print('VENV-IMPORT-OK')\n")
    ev = run(worktree(town), "mytool; linked; python -c 'import sys, homemod; print(sys.prefix)'; "
                             f"cat {home}/.local/share/keyring {home}/.claude.json; echo END", town,
             base_env={"PATH": f"{tools}:{local}:{venv / 'bin'}:/usr/bin:/bin"})
    assert "TOOL-OK" in ev.output and "LINKED-DATA" in ev.output, ev.output
    assert "VENV-IMPORT-OK" in ev.output and str(venv) in ev.output, ev.output
    assert "END" in ev.output and SECRET not in ev.output


def test_git_works_in_a_linked_worktree_under_home(home: Path, namespace_only: None) -> None:
    clone = make_repo(home / "src" / "clone")
    wt = home / "src" / "wt"
    git(clone, "worktree", "add", "-q", "-b", "feature", str(wt))
    (wt / "new.txt").write_text("x\n")
    head = git(wt, "rev-parse", "HEAD")
    ev = run(wt, f"git status --porcelain; git log -1 --format=%H; git rev-parse --abbrev-ref HEAD; "
                 f"git diff --stat HEAD; cat {home}/.gitconfig; echo END")
    assert ev.exit_code == 0, ev.output
    assert "?? new.txt" in ev.output and head in ev.output and "feature" in ev.output, ev.output
    assert contain.git_dirs(wt) == [(clone / ".git" / "worktrees" / "wt").resolve(), (clone / ".git").resolve()]
    assert SECRET not in ev.output


def test_the_home_view_reveals_only_what_the_run_needs(tmp_path: Path) -> None:
    """The decision, without namespaces: the home is covered, the work tree shown rw, a venv on
    PATH shown ro with its root, a PATH folder beside secrets shown alone."""
    h = tmp_path / "h"
    (h / "proj" / ".venv" / "bin").mkdir(parents=True)
    (h / "proj" / ".venv" / "pyvenv.cfg").write_text(f"home = {h / 'py' / 'bin'}\n")
    (h / "py" / "bin").mkdir(parents=True)
    (h / "py" / "lib").mkdir()
    (h / ".local" / "bin").mkdir(parents=True)
    (h / "work").mkdir()
    view = contain.home_view([h], [h / "work"], [h / "proj" / ".venv" / "bin", h / ".local" / "bin", Path("/usr/bin")])
    shown = {(r.target, r.writable) for r in view.reveals}
    assert view.covers == [str(h)]
    assert shown == {(str(h / "work"), True), (str(h / "proj" / ".venv"), False), (str(h / "py"), False),
                     (str(h / ".local" / "bin"), False)}
    assert contain.home_view([h], [h], []).covers == []  # the work tree is the home: nothing to cover
    (h / ".git").mkdir()  # a home kept in git (dotfiles): a work tree inside it does not show it
    assert contain.git_dirs(h / "work") == []


# ---- the network ---------------------------------------------------------------------------------


@contextmanager
def tcp_server() -> Iterator[tuple[int, list[str]]]:
    """A TCP server on every host address; yields its port and the peers it accepted."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", 0))
    srv.listen(16)
    srv.settimeout(0.2)
    accepted: list[str] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, peer = srv.accept()
            except OSError:
                continue
            accepted.append(peer[0])
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield srv.getsockname()[1], accepted
    finally:
        stop.set()
        thread.join(timeout=5)
        srv.close()


def host_addresses() -> list[str]:
    """127.0.0.1 and this machine's first non-loopback IPv4 address, where it has one."""
    found = ["127.0.0.1"]
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: picks the source address, sends nothing
            addr = probe.getsockname()[0]
        if not addr.startswith("127."):
            found.append(addr)
    except OSError:
        pass
    return found


CLIENT = """import socket, sys
for host in sys.argv[2:]:
    try:
        socket.create_connection((host, int(sys.argv[1])), timeout=3).close()
        print("CONNECTED", host)
    except OSError as exc:
        print("FAILED", host, type(exc).__name__)
"""


def client_command(wt: Path, port: int) -> str:
    (wt / "client.py").write_text(CLIENT)
    return f"{PYTHON} client.py {port} {' '.join(host_addresses())}; echo END"


def test_no_network_by_default(town: Town, netns_only: None) -> None:
    wt = worktree(town)
    with tcp_server() as (port, accepted):
        ev = run(wt, client_command(wt, port), town)
    assert "END" in ev.output and "CONNECTED" not in ev.output, ev.output
    assert ev.output.count("FAILED") == len(host_addresses()) and accepted == []


def test_test_network_lets_the_run_reach_the_host(town: Town, netns_only: None) -> None:
    wt = worktree(town)
    with tcp_server() as (port, accepted):
        ev = run(wt, client_command(wt, port), town, network=True)
    assert all(f"CONNECTED {a}" in ev.output for a in host_addresses()), ev.output
    assert len(accepted) == len(host_addresses())


LOOPBACK = """import socket
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen()
cli = socket.create_connection(srv.getsockname(), timeout=3)
conn, _ = srv.accept(); cli.sendall(b"ping"); print("LOOPBACK", conn.recv(4).decode())
"""


def test_a_run_can_listen_and_connect_on_its_own_loopback(town: Town, netns_only: None) -> None:
    wt = worktree(town)
    (wt / "loop.py").write_text(LOOPBACK)
    ev = run(wt, f"{PYTHON} loop.py", town)
    assert ev.exit_code == 0 and "LOOPBACK ping" in ev.output, ev.output


def test_the_rig_setting_reaches_the_verifier_settings(town: Town) -> None:
    town.config.rigs["app"] = RigConfig(name="app", git_url="file:///dev/null", prefix="app", test_network=True)
    town.config.rigs["web"] = RigConfig(name="web", git_url="file:///dev/null", prefix="web")
    town.save_config()
    town.reload_config()
    mayor = parse_address("mayor")
    assert settings_for(town, beads.create(town, mayor, "a", rig="app").id).test_network is True
    assert settings_for(town, beads.create(town, mayor, "w", rig="web").id).test_network is False
    assert RigConfig.model_fields["test_network"].description


async def test_verify_run_follows_the_rigs_test_network(client_for: Any, town: Town, sm: Any,  # noqa: F811
                                                        netns_only: None) -> None:
    """End to end through the MCP verify_run: the stand-in Strategist plans a connect to a host
    server; refused in a rig without test_network, reached once the rig sets it."""
    from tests.conftest import call
    from tests.inspector_standin import criterion, spec, tspec

    wt = worktree(town)
    bead = beads.create(town, parse_address("overseer"), "reach the server", "net", rig="app").id
    with tcp_server() as (port, accepted):
        command = client_command(wt, port)
        for allowed in (False, True):
            town.config.rigs["app"] = town.config.rigs["app"].model_copy(update={"test_network": allowed})
            town.save_config()
            town.reload_config()
            sm.script(designer=[spec(criterion("AC-1", "reach"))], strategist=[{"tests": [tspec("AC-1", command)]}])
            async with client_for("overseer") as c:
                await call(c, "verify_spec", bead_id=bead)
                await call(c, "verify_plan", bead_id=bead, worktree=str(wt))
                result = (await call(c, "verify_run", bead_id=bead, worktree=str(wt)))["results"][0]
            output = result["evidence"]["output"]
            assert ("CONNECTED 127.0.0.1" in output) is allowed, output
    assert accepted.count("127.0.0.1") == 1


@pytest.mark.slow
@pytest.mark.parametrize("allowed", [False, True])
def test_the_refinery_test_run_follows_the_rigs_test_network(town: Town, tmp_path: Path, netns_only: None,
                                                             allowed: bool) -> None:
    with tcp_server() as (port, accepted):
        command = (f"{PYTHON} -c \"import socket; socket.create_connection(('127.0.0.1', {port}), 3)\"")
        mr = MergeRig(town, tmp_path, test_command=command)
        town.config.rigs["gt"] = town.config.rigs["gt"].model_copy(update={"test_network": allowed})
        town.save_config()
        town.reload_config()
        w = mr.work("add a", {"a.txt": "a\n"})
        reports = worker.drain(town, "gt", "runner-1")
    assert all(r.error is None for r in reports), [r.error for r in reports]
    assert (ledger.get(town, w.mr).state is MRState.MERGED) is allowed
    assert bool(accepted) is allowed


@pytest.mark.tmux
def test_a_tmux_server_of_the_user_cannot_be_driven(town: Town, tmp_path: Path, namespace_only: None,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A unix socket stays connectable on a read-only mount and from a network of its own: the
    tmux folder (TMUX_TMPDIR, else /tmp) is covered, so no send-keys into an agent's session."""
    tmux_dir = tmp_path / "tmux"
    tmux_dir.mkdir(mode=0o700)
    monkeypatch.setenv("TMUX_TMPDIR", str(tmux_dir))
    sock, pwned = tmux_dir / "vermas-test-contain", tmp_path / "pwned"
    subprocess.run(["tmux", "-S", str(sock), "new-session", "-d", "-s", "victim", "sh"], check=True, timeout=30)
    try:
        ev = run(worktree(town), f"tmux -S {sock} send-keys -t victim 'touch {pwned}' Enter; "
                                 f"tmux -S {sock} list-sessions; echo END", town)
        time.sleep(0.5)
        assert "END" in ev.output and "victim" not in ev.output.replace("-t victim", ""), ev.output
        assert not pwned.exists()
    finally:
        subprocess.run(["tmux", "-S", str(sock), "kill-server"], capture_output=True, timeout=30)
