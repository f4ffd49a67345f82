"""A guard against tests that leave processes or tmux servers behind (issue 20, item 13).

Every process the test run starts inherits `VERMAS_TEST_RUN=<token>` (set once in
`pytest_configure`), and a tmux server keeps the environment of the client that started it. So
"of its own" is exact: a live process whose environment carries this run's token was started by
this run, whatever it was (a tmux server, a Claude Code session, a detached runner, a stand-in
model server), even after it re-parented to init. Processes started by other test runs on the
machine, or by a person, carry another token or none and are never counted nor touched.

The run gets a tmux folder of its own (TMUX_TMPDIR, removed at the end), so a socket file there
is always this run's.

Per module (so module-scoped fixtures, which may keep a town up across a module's tests, are
judged once they are torn down): a process of this run that is alive after the module and was not
alive before it, given a few seconds to exit, fails the module with each process's pid and
command line; so does a tmux socket file left in the run's tmux folder that was not there
before. The guard reports; it never kills anything.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ENV = "VERMAS_TEST_RUN"
# Python's own per-interpreter helpers (started on first use, ended with the interpreter): not a test's
INTERPRETER_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")
GRACE_S = 8.0  # processes ended by a fixture's teardown may take a moment to exit (claude, node)


def token() -> str:
    return os.environ[ENV]


def install() -> None:
    """Mark this run (children inherit it), and give it a tmux folder of its own
    (TMUX_TMPDIR), so the tests' tmux servers never share the user's folder and every socket
    in it is this run's. Called from pytest_configure."""
    if ENV in os.environ:
        return
    os.environ[ENV] = secrets.token_hex(8)
    os.environ["TMUX_TMPDIR"] = tempfile.mkdtemp(prefix="vtr-")  # short: unix socket paths are limited
    os.environ.pop("TMUX", None)  # a run started inside tmux must not talk to that server


def uninstall() -> None:
    """Remove the run's tmux folder (called from pytest_unconfigure)."""
    folder = os.environ.get("TMUX_TMPDIR", "")
    if Path(folder).name.startswith("vtr-"):
        shutil.rmtree(folder, ignore_errors=True)


def processes_of_run(marker: str, temp_root: str | None = None) -> dict[int, str]:
    """pid -> command line of every live process (not this one) whose environment has our
    marker, or whose command line names the run's temp folder (`temp_root`, pytest's basetemp:
    a process started with a scrubbed environment, as the MCP SDK's stdio client starts its
    server, loses the marker, but a tmux server it starts for a test town names that town)."""
    needle = f"{ENV}={marker}".encode()
    folder = temp_root.encode() if temp_root else None
    me = os.getpid()
    out: dict[int, str] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            raw = Path(entry.path, "cmdline").read_bytes()
            if needle not in Path(entry.path, "environ").read_bytes().split(b"\0") and (
                    folder is None or folder not in raw):
                continue
            stat = Path(entry.path, "stat").read_text()
            if stat.rpartition(")")[2].split()[0] == "Z":  # a zombie is gone, only not yet reaped
                continue
        except (OSError, IndexError):
            continue
        cmd = raw.replace(b"\0", b" ").decode(errors="replace").strip()
        if any(helper in cmd for helper in INTERPRETER_HELPERS):
            continue
        out[int(entry.name)] = cmd[:200] or f"[{entry.name}]"
    return out


def tmux_sockets() -> set[str]:
    folder = Path(os.environ.get("TMUX_TMPDIR") or "/tmp") / f"tmux-{os.getuid()}"
    try:
        return {p.name for p in folder.iterdir() if p.is_socket()}
    except OSError:
        return set()


def leaks(before_pids: set[int], before_sockets: set[str], grace: float = GRACE_S,
          temp_root: str | None = None) -> list[str]:
    """What is left that was not there before: processes (after up to `grace` seconds) and sockets."""
    deadline = time.monotonic() + grace
    while True:
        left = {pid: cmd for pid, cmd in processes_of_run(token(), temp_root).items() if pid not in before_pids}
        if not left or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    found = [f"process {pid} still running: {cmd}" for pid, cmd in sorted(left.items())]
    found += [f"tmux socket left: {name}" for name in sorted(tmux_sockets() - before_sockets)]
    return found


@pytest.fixture(scope="module", autouse=True)
def _leak_guard(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    temp_root = str(tmp_path_factory.getbasetemp())
    before_pids = set(processes_of_run(token(), temp_root))
    before_sockets = tmux_sockets()
    yield
    found = leaks(before_pids, before_sockets, temp_root=temp_root)
    if found:
        pytest.fail(f"{request.module.__name__} left behind:\n  " + "\n  ".join(found), pytrace=False)
