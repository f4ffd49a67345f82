"""Containment for untrusted shell commands (the Verifier's tests, the refinery's merge test runs).

`run(command, cwd=..., timeout=..., env=..., writable=..., hidden=...)` runs `bash -c COMMAND`
so that it cannot reach the process that asked for it, and returns a `Contained` result.

Two layers; the second only where the kernel allows it (detected once, cached):

- always ("process" mode): the command is the child of a separate helper process (`python -m
  vermas.contain`, a new session, a child subreaper), never of the caller; the environment is an
  allow-list (no API keys, tokens or agent identity) plus a per-run marker variable; after the
  shell exits, everything left in its process group, every orphan reparented to the helper
  (setsid + double-fork included) and every process carrying the marker is SIGKILLed. The caller
  makes itself non-dumpable, so a same-user process cannot read its /proc/PID/environ or ptrace it
  (root can).
- where unprivileged user namespaces work ("namespace" mode): the helper runs as PID 1 of a new
  PID namespace (unshare --user --pid --mount --mount-proc), so /proc shows only the test's own
  processes and nothing outside can be named, let alone signalled or read; in a private mount
  namespace every mount is read-only except `writable` (the work tree and a private tmp), and
  `hidden` directories (the town's store and runtime) are covered by an empty read-only tmpfs.
  The test itself runs in a further nested user namespace, which locks those mounts: being
  "root" in it, it still cannot remount them writable or unmount the covers. When PID 1 exits,
  the kernel kills every process left in the namespace.
  The home folders (the user's from the password database and $HOME, and /root for root) and
  the folders where programs keep files and sockets (/tmp, /var/tmp, the temp folder,
  /run/user/UID, $XDG_RUNTIME_DIR, $TMUX_TMPDIR) are covered by an empty tmpfs too, so
  ~/.claude.json, ~/.gitconfig, ~/.ssh cannot be read and the town's tmux socket or an
  ssh-agent cannot be connected to; only what the run needs is shown again at its own path
  (`home_view`): the writable paths (rw), the directories on the run's PATH with the prefixes
  they depend on (a venv and its base interpreter, a version manager's root for its shims) and
  the git directories of the work tree (read-only).
- where a network namespace can be made as well (probed once): the run gets a network of its own
  with only a loopback (up), so it can listen on and connect to 127.0.0.1 but reaches nothing
  outside, unless the caller allows the network (a rig's `test_network = true`).

Set VERMAS_CONTAIN=process (or namespace) to force a mode; "namespace" fails when unavailable.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import json
import os
import fcntl
import pwd
import secrets
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from vermas.errors import InvalidInput, VermasError

Mode = Literal["namespace", "process"]
MARKER_VAR = "VERMAS_CONTAIN_RUN"
HEAD_BYTES = 32 * 1024
TAIL_BYTES = 32 * 1024
FLOOD_BYTES = 64 * 1024 * 1024
EXIT_GRACE_S = 1.0
READ_CHUNK = 64 * 1024
UNSHARE = ("unshare", "--user", "--map-root-user", "--pid", "--fork", "--kill-child", "--mount-proc",
           "--propagation", "private")
UNSHARE_NET = "--net"
MAX_PATH_ENTRIES = 4096  # entries of one PATH directory looked at for symlinks into a home

# mount(2) and unshare(2) flags (linux/mount.h, linux/sched.h)
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC = 32, 1024, 2048, 4096, 16384
MS_PRIVATE, MS_RELATIME = 1 << 18, 1 << 21
CLONE_NEWNS, CLONE_NEWUSER = 0x00020000, 0x10000000
PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER = 4, 36
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
O_PATH = getattr(os, "O_PATH", 0o10000000)
ST_FLAGS = {os.ST_NOSUID: MS_NOSUID, os.ST_NODEV: MS_NODEV, os.ST_NOEXEC: MS_NOEXEC,
            os.ST_NOATIME: MS_NOATIME, os.ST_NODIRATIME: MS_NODIRATIME, os.ST_RELATIME: MS_RELATIME}


class ContainmentError(VermasError):
    """The sandbox could not be set up as asked; nothing was run."""


class Contained(BaseModel):
    """What one contained command did."""

    output: str = Field(description="stdout and stderr interleaved; head and tail kept past the cap")
    output_bytes: int
    truncated: bool = False
    exit_code: int | None = Field(description="None when it did not exit by itself")
    signal: str | None = None
    duration_s: float
    timed_out: bool = False
    flooded: bool = False
    escapees_killed: int = Field(0, description="processes it left behind (setsid, double fork) killed after it")
    mode: Mode
    network_isolated: bool = Field(False, description="the run had a network of its own (loopback only)")
    error: str | None = Field(default=None, description="why the command could not be started")


class Reveal(BaseModel):
    """A path shown again inside a covered home: `source` (a real directory) mounted at `target`."""

    source: str
    target: str
    writable: bool = False


class HomeView(BaseModel):
    """What the run sees of the home and runtime folders: `covers` are emptied, then `reveals`
    shown again."""

    covers: list[str] = Field(default_factory=list)
    reveals: list[Reveal] = Field(default_factory=list)


class HelperSpec(BaseModel):
    """What the helper process is told (one JSON argument)."""

    command: str
    cwd: str
    shell: str
    namespace: bool
    writable: list[str]
    hidden: list[str]
    status_fd: int
    home: HomeView = Field(default_factory=HomeView)
    loopback: bool = False


# ---------------------------------------------------------------------------------------------
# Output capture
# ---------------------------------------------------------------------------------------------


class OutputCap:
    """Keeps the first `head` and the last `tail` bytes of a stream, and counts the rest."""

    def __init__(self, head: int = HEAD_BYTES, tail: int = TAIL_BYTES) -> None:
        self.head_limit = head
        self.tail_limit = tail
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.head_limit - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if chunk and self.tail_limit:
            self.tail += chunk
            if len(self.tail) > 2 * self.tail_limit:  # trim in batches: amortised O(1) per byte
                del self.tail[: len(self.tail) - self.tail_limit]

    @property
    def truncated(self) -> bool:
        return self.total > len(self.head) + min(len(self.tail), self.tail_limit)

    def text(self) -> str:
        tail = bytes(self.tail[-self.tail_limit :]) if self.tail_limit else b""
        head = self.head.decode("utf-8", "replace")
        if not self.truncated:
            return head + tail.decode("utf-8", "replace")
        omitted = self.total - len(self.head) - len(tail)
        return f"{head}\n[... {omitted} bytes omitted by the Verifier ...]\n{tail.decode('utf-8', 'replace')}"


# ---------------------------------------------------------------------------------------------
# Mode detection
# ---------------------------------------------------------------------------------------------


def requested_mode() -> Mode | None:
    """VERMAS_CONTAIN: auto (default), namespace or process."""
    value = os.environ.get("VERMAS_CONTAIN", "auto").strip().lower()
    if value in ("", "auto"):
        return None
    if value not in ("namespace", "process"):
        raise InvalidInput(f"VERMAS_CONTAIN={value[:20]!r}; allowed: auto, namespace, process")
    return value  # type: ignore[return-value]


@functools.cache
def namespaces_available() -> bool:
    """Whether the full namespace sandbox works here: probed once per process by running it."""
    if shutil.which("unshare") is None or not sys.platform.startswith("linux"):
        return False
    probe = Path(tempfile.mkdtemp(prefix="vermas-contain-probe-"))
    try:
        command = f"touch {probe}/ok && ! touch {probe.parent}/vermas-contain-probe-escape-$$ 2>/dev/null"
        result = _run(command, probe, 20.0, {"PATH": os.environ.get("PATH", os.defpath)},
                      writable=[probe], hidden=[], namespace=True)
        return result.exit_code == 0 and (probe / "ok").exists()
    except (OSError, VermasError):
        return False
    finally:
        shutil.rmtree(probe, ignore_errors=True)


@functools.cache
def network_isolation_available() -> bool:
    """Whether a contained run can get a network of its own (loopback only): probed once, by
    running the namespace sandbox with --net and a loopback check."""
    if not namespaces_available():
        return False
    probe = Path(tempfile.mkdtemp(prefix="vermas-contain-probe-"))
    try:
        result = _run("test -d /proc/sys/net && touch ok", probe, 20.0,
                      {"PATH": os.environ.get("PATH", os.defpath)}, writable=[probe], hidden=[],
                      namespace=True, isolate_network=True)
        return result.exit_code == 0 and result.network_isolated and (probe / "ok").exists()
    except (OSError, VermasError):
        return False
    finally:
        shutil.rmtree(probe, ignore_errors=True)


def mode() -> Mode:
    """The mode run() uses: the forced one, else namespace where it works, else process."""
    forced = requested_mode()
    if forced == "namespace" and not namespaces_available():
        raise ContainmentError("VERMAS_CONTAIN=namespace but user/PID/mount namespaces do not work here "
                               "(unshare missing or unprivileged user namespaces disabled)")
    if forced is not None:
        return forced
    return "namespace" if namespaces_available() else "process"


# ---------------------------------------------------------------------------------------------
# The home view (namespace mode): which home folders are covered, what is shown again
# ---------------------------------------------------------------------------------------------


def home_dirs(environ: Mapping[str, str] | None = None, uid: int | None = None) -> list[Path]:
    """The real home folders of whoever runs us: the password database's, $HOME, and /root for
    root; real paths of existing directories, never `/`, nested ones folded into the outer one."""
    environ = os.environ if environ is None else environ
    uid = os.getuid() if uid is None else uid
    found: list[str] = []
    try:
        found.append(pwd.getpwuid(uid).pw_dir)
    except KeyError:
        pass
    found.append(environ.get("HOME", ""))
    if uid == 0:
        found.append("/root")
    return _outermost(found)


def runtime_dirs(environ: Mapping[str, str] | None = None, uid: int | None = None) -> list[Path]:
    """Where other programs of the user keep files and sockets a test must not reach: the temp
    folders (/tmp, /var/tmp, ours), the user's runtime folder and tmux's socket folder. Why: a
    unix socket stays connectable on a read-only mount and in a network namespace of its own, so
    the town's tmux server (send-keys into an agent) or an ssh-agent would be one connect away."""
    environ = os.environ if environ is None else environ
    uid = os.getuid() if uid is None else uid
    found = ["/tmp", "/var/tmp", tempfile.gettempdir(), f"/run/user/{uid}",
             environ.get("XDG_RUNTIME_DIR", ""), environ.get("TMUX_TMPDIR", "")]
    return _outermost(found)


def _outermost(paths: Sequence[str]) -> list[Path]:
    """Real paths of the existing absolute directories among `paths`, never `/`, nested ones
    folded into the outer one."""
    real = {os.path.realpath(p) for p in paths if p and os.path.isabs(p) and os.path.isdir(p)}
    real.discard("/")
    return [Path(p) for p in sorted(real) if not any(o != p and _under(p, o) for o in real)]


def path_dirs(path_var: str, cwd: Path) -> list[Path]:
    """The directories a run's PATH names (absolute, normalised, not resolved; relative entries
    are taken from cwd, as the shell would)."""
    out: list[Path] = []
    for entry in path_var.split(os.pathsep):
        if entry:
            out.append(Path(os.path.normpath(os.path.join(cwd, entry))))
    return list(dict.fromkeys(out))


def git_dirs(worktree: Path) -> list[Path]:
    """The git directories a work tree uses besides its own: for a linked worktree (`.git` is a
    file `gitdir: ...`), its private git dir and the common dir it points to (objects, refs,
    config of the canonical clone). Read from the files, git itself is not run. Only the work
    tree's own `.git` counts, never a parent's: a home kept in git (dotfiles) stays covered."""
    dot = worktree / ".git"
    if dot.is_dir():
        return [dot.resolve()]
    try:
        line = dot.read_text(errors="replace").strip() if dot.is_file() else ""
    except OSError:
        return []
    if not line.startswith("gitdir:"):
        return []
    private = (worktree / line.removeprefix("gitdir:").strip()).resolve()
    dirs = [private]
    try:
        dirs.append((private / (private / "commondir").read_text(errors="replace").strip()).resolve())
    except OSError:
        pass
    return dirs


def _prefix_of(bin_dir: Path, home: Path) -> Path | None:
    """The installation a `bin` (or `shims`) directory belongs to, when it is one: a venv
    (pyvenv.cfg), a version manager's root (shims: pyenv, rbenv, asdf), or an interpreter prefix
    (bin beside lib, not a direct child of the home: ~/.local and ~/.cargo hold more than tools)."""
    parent = bin_dir.parent
    if parent == home or not _under(str(parent), str(home)):
        return None
    if (parent / "pyvenv.cfg").is_file() or bin_dir.name == "shims":
        return parent
    if bin_dir.name == "bin" and (parent / "lib").is_dir() and parent.parent != home:
        return parent
    return None


def _venv_base(prefix: Path) -> Path | None:
    """A venv's base interpreter prefix (pyvenv.cfg `home = <prefix>/bin`), where it has one."""
    try:
        for line in (prefix / "pyvenv.cfg").read_text(errors="replace").splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "home" and value.strip():
                base = Path(os.path.realpath(value.strip()))
                return base.parent if base.name == "bin" else base
    except OSError:
        pass
    return None


def home_view(homes: Sequence[Path], writable: Sequence[Path], path: Sequence[Path],
              git: Sequence[Path] = ()) -> HomeView:
    """Decide what a run sees of the home folders: each home covered, then shown again at its
    own path only what the run needs: the writable paths (rw), the git directories of the work
    tree (read-only) and the PATH directories (read-only) with what they depend on: a venv's
    root and base interpreter, a version manager's root, the prefix of a symlinked tool.
    Why not more: a home holds the user's secrets (~/.claude.json, ~/.gitconfig, ~/.ssh)."""
    # a home that is (or lies inside) a writable path is the run's own to see: not covered
    tops = [str(h) for h in homes if not any(_under(str(h), str(w)) for w in writable)]

    def covered(p: Path | str) -> bool:
        return any(_under(str(p), h) for h in tops)

    def home_of(p: Path) -> Path:
        return next(Path(h) for h in tops if _under(str(p), h))

    reveals: dict[tuple[str, str], bool] = {}

    def show(source: Path, target: Path, rw: bool = False) -> None:
        if covered(target) and source.is_dir() and str(target) not in tops:
            key = (str(source), str(target))
            reveals[key] = reveals.get(key, False) or rw

    for w in writable:
        show(w, w, rw=True)
    for g in git:
        show(g, g)
    prefixes: list[Path] = []
    for d in path:
        if not covered(d) and not covered(os.path.realpath(d)):
            continue
        real = Path(os.path.realpath(d))
        show(real, d)
        show(real, real)
        for candidate in (d, real):
            if covered(candidate) and (prefix := _prefix_of(candidate, home_of(candidate))) is not None:
                prefixes.append(prefix)
        prefixes.extend(_symlinked_prefixes(real, covered, home_of))
    seen: set[Path] = set()
    while prefixes:
        prefix = prefixes.pop()
        if prefix in seen:
            continue
        seen.add(prefix)
        show(Path(os.path.realpath(prefix)), prefix)
        base = _venv_base(prefix)
        if base is not None and covered(base):
            prefixes.append(base)
    ordered = sorted(reveals.items(), key=lambda kv: (kv[0][1].count("/"), kv[0][1]))
    kept: list[Reveal] = []
    for (source, target), rw in ordered:
        # a read-only path already shown by an outer same-path reveal needs no mount of its own
        if not rw and source == target and any(r.source == r.target and _under(target, r.target) for r in kept):
            continue
        kept.append(Reveal(source=source, target=target, writable=rw))
    return HomeView(covers=tops, reveals=kept)


def _symlinked_prefixes(bin_dir: Path, covered: Callable[[Path], bool],
                        home_of: Callable[[Path], Path]) -> list[Path]:
    """Where the symlinks of a PATH directory lead inside a home (a tool installed elsewhere and
    linked into ~/.local/bin, a venv's python pointing at its base): the target's prefix, or its
    directory when it has none."""
    found: list[Path] = []
    try:
        entries = list(os.scandir(bin_dir))[:MAX_PATH_ENTRIES]
    except OSError:
        return found
    for entry in entries:
        if not entry.is_symlink():
            continue
        target = Path(os.path.realpath(entry.path))
        if not covered(target) or _under(str(target), str(bin_dir)):
            continue
        prefix = _prefix_of(target.parent, home_of(target)) if target.parent.name in ("bin", "shims") else None
        if prefix is not None:
            found.append(prefix)
        elif target.parent != home_of(target):
            found.append(target.parent)
    return found


# ---------------------------------------------------------------------------------------------
# The caller's side
# ---------------------------------------------------------------------------------------------


def protect_self() -> None:
    """Make this process non-dumpable: same-user processes can no longer read its /proc/PID/environ,
    mem or fds, nor ptrace it. Why: without namespaces a test runs as the same user as the server."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def run(
    command: str,
    *,
    cwd: Path,
    timeout: float,
    env: Mapping[str, str],
    writable: Sequence[Path] = (),
    hidden: Sequence[Path] = (),
    network: bool = False,
    head: int = HEAD_BYTES,
    tail: int = TAIL_BYTES,
    flood: int = FLOOD_BYTES,
) -> Contained:
    """Run `bash -c command` in cwd, contained (see the module docstring); blocks until it is over.

    cwd is always writable; `writable` adds paths; a private HOME and TMPDIR are made for the run
    and removed after it. `env` is the whole environment it gets (plus HOME, TMPDIR, the marker).
    `network=True` keeps the host's network (a rig's `test_network`); otherwise, where network
    namespaces work, the run has only a loopback of its own.
    """
    if timeout <= 0:
        raise InvalidInput(f"timeout must be > 0 seconds, got {timeout}")
    chosen = mode()
    if chosen == "process":
        protect_self()
    home = Path(tempfile.mkdtemp(prefix="vermas-contain-"))
    try:
        (home / "tmp").mkdir()
        full_env = {**env, "HOME": str(home), "TMPDIR": str(home / "tmp")}
        paths = [Path(cwd).resolve(), home.resolve(), *(Path(p).resolve() for p in writable)]
        namespace = chosen == "namespace"
        shell_dir = Path(shutil.which("bash") or "/bin/sh").parent  # the shell itself may live in a home
        covers = _outermost([str(p) for p in (*home_dirs(), *runtime_dirs())])
        view = (home_view(covers, paths, [*path_dirs(env.get("PATH", ""), Path(cwd)), shell_dir],
                          git_dirs(Path(cwd).resolve())) if namespace else HomeView())
        isolate = namespace and not network and network_isolation_available()
        return _run(command, Path(cwd).resolve() if namespace else Path(cwd), timeout, full_env,
                    writable=paths, hidden=[Path(p).resolve() for p in hidden], namespace=namespace,
                    view=view, isolate_network=isolate, head=head, tail=tail, flood=flood)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _run(command: str, cwd: Path, timeout: float, env: Mapping[str, str], *, writable: Sequence[Path],
         hidden: Sequence[Path], namespace: bool, view: HomeView | None = None, isolate_network: bool = False,
         head: int = HEAD_BYTES, tail: int = TAIL_BYTES, flood: int = FLOOD_BYTES) -> Contained:
    start = time.monotonic()
    marker = secrets.token_hex(12)
    run_env = {**env, MARKER_VAR: marker}
    isolate_network = isolate_network and namespace
    status_r, status_w = os.pipe()
    spec = HelperSpec(command=command, cwd=str(cwd), shell=shutil.which("bash") or "/bin/sh",
                      namespace=namespace, writable=[str(p) for p in writable],
                      hidden=[str(p) for p in hidden], status_fd=status_w,
                      home=view if view is not None else HomeView(), loopback=isolate_network)
    argv = [sys.executable, "-I", "-m", "vermas.contain", spec.model_dump_json()]
    if namespace:
        argv = [*UNSHARE, *((UNSHARE_NET,) if isolate_network else ()), *argv]
    cap = OutputCap(head, tail)
    mode_name: Mode = "namespace" if namespace else "process"
    try:
        proc = subprocess.Popen(argv, cwd=cwd, env=run_env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True, pass_fds=(status_w,))
    except OSError as exc:
        os.close(status_r)
        os.close(status_w)
        return Contained(output="", output_bytes=0, exit_code=None, duration_s=time.monotonic() - start,
                         mode=mode_name, error=f"{type(exc).__name__}: {exc}")
    os.close(status_w)
    timed_out = flooded = False
    deadline = start + timeout
    try:
        timed_out, flooded = _pump(proc, cap, deadline, flood)
        if proc.poll() is None:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                timed_out = True
    finally:
        _killpg(proc.pid)  # nothing of this run outlives it, whatever happened above
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
        escapees = kill_marked(marker)
        status = _read_status(status_r)
    exit_code, sig = _outcome(status, proc.returncode)
    if timed_out or flooded:
        exit_code, sig = None, "SIGKILL"
    return Contained(output=cap.text(), output_bytes=cap.total, truncated=cap.truncated,
                     exit_code=exit_code, signal=sig, duration_s=round(time.monotonic() - start, 3),
                     timed_out=timed_out, flooded=flooded, escapees_killed=escapees, mode=mode_name,
                     network_isolated=isolate_network and status.get("loopback") is True,
                     error=status.get("error") if isinstance(status.get("error"), str) else None)


def _read_status(fd: int) -> dict[str, object]:
    try:
        data = b""
        os.set_blocking(fd, False)
        while True:
            try:
                chunk = os.read(fd, 4096)
            except BlockingIOError:
                break
            if not chunk:
                break
            data += chunk
        parsed = json.loads(data.decode() or "{}")
        return parsed if isinstance(parsed, dict) else {}
    except (OSError, ValueError):
        return {}
    finally:
        os.close(fd)


def _outcome(status: Mapping[str, object], helper_rc: int | None) -> tuple[int | None, str | None]:
    """(exit code, signal name) of the test shell, from the helper's report, else from the helper."""
    if isinstance(status.get("exit"), int):
        return int(status["exit"]), None  # type: ignore[call-overload]
    if isinstance(status.get("signal"), int):
        return None, _signal_name(int(status["signal"]))  # type: ignore[call-overload]
    if helper_rc is not None and helper_rc < 0:
        return None, _signal_name(-helper_rc)
    return helper_rc, None


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def marked_pids(marker: str) -> list[int]:
    """Processes whose environment carries this run's marker (those we are allowed to read)."""
    needle = f"{MARKER_VAR}={marker}".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as fh:
                if needle in fh.read().split(b"\0"):
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def kill_marked(marker: str, rounds: int = 5) -> int:
    """SIGKILL every process carrying the marker, repeating while new ones appear (a fork race)."""
    killed: set[int] = set()
    for _ in range(rounds):
        pids = [p for p in marked_pids(marker) if p != os.getpid()]
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.02)
    return len(killed)


def _pump(proc: subprocess.Popen[bytes], cap: OutputCap, deadline: float, flood: int) -> tuple[bool, bool]:
    """Stream output into cap until EOF, the deadline, a flood, or the grace after exit."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    timed_out = flooded = False
    exited_at: float | None = None
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while True:
            now = time.monotonic()
            if exited_at is None and proc.poll() is not None:
                exited_at = now
                _killpg(proc.pid)  # leftovers of the group would hold the pipe open
            if exited_at is None and now >= deadline:
                timed_out = True
                _killpg(proc.pid)
                proc.wait()
                exited_at = time.monotonic()
            if exited_at is not None and time.monotonic() - exited_at > EXIT_GRACE_S:
                break  # something outside the group still holds the pipe; stop listening
            wait = 0.05 if exited_at is not None else max(0.0, min(0.05, deadline - now))
            if not sel.select(timeout=wait):
                continue
            try:
                chunk = os.read(fd, READ_CHUNK)
            except BlockingIOError:
                continue
            if not chunk:
                break
            cap.feed(chunk)
            if cap.total > flood and exited_at is None:
                flooded = True
                _killpg(proc.pid)
                proc.wait()
                exited_at = time.monotonic()
    return timed_out, flooded


# ---------------------------------------------------------------------------------------------
# The helper's side (python -m vermas.contain SPEC): PID 1 of the namespace, or a plain subreaper
# ---------------------------------------------------------------------------------------------


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _mount(libc: ctypes.CDLL, source: str | None, target: str, fstype: str | None, flags: int,
           data: str | None = None) -> None:
    def enc(s: str | None) -> bytes | None:
        return None if s is None else s.encode()

    if libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {target}: {os.strerror(err)}")


def _mount_points() -> list[str]:
    points = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            raw = line.split()[4]
            points.append(raw.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n")
                          .replace("\\134", "\\"))
    return points


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def setup_mounts(writable: Sequence[str], hidden: Sequence[str], home: HomeView | None = None) -> list[str]:
    """Everything read-only but `writable`; the home folders covered and what the run needs shown
    again (`home`); `hidden` covered; a private /dev/shm. Fails closed. Returns warnings (a
    read-only path of the home view that could not be shown: the run sees less, never more)."""
    libc = _libc()
    home = home or HomeView()
    _mount(libc, None, "/", None, MS_REC | MS_PRIVATE)
    for path in writable:
        _mount(libc, path, path, None, MS_BIND | MS_REC)
    if os.path.isdir("/dev/shm"):
        _mount(libc, "tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=256m")
    warnings = _cover_homes(libc, home, hidden)
    for path in hidden:
        if os.path.isdir(path) and not any(_under(w, path) for w in writable):
            _mount(libc, "tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY, "size=4k,mode=0500")
    keep = {*writable, "/dev/shm"}
    for point in dict.fromkeys(_mount_points()):
        if point in keep or _under(point, "/proc") or _under(point, "/dev"):
            continue
        try:
            flags = os.statvfs(point).f_flag
        except OSError:
            continue  # shadowed or gone: not reachable by path
        if flags & os.ST_RDONLY:
            continue
        extra = sum(ms for st, ms in ST_FLAGS.items() if flags & st)
        try:
            _mount(libc, None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | extra)
        except OSError as exc:
            if not os.statvfs(point).f_flag & os.ST_RDONLY:
                raise ContainmentError(f"could not make {point} read-only: {exc.strerror}") from None
    for path in writable:
        if os.statvfs(path).f_flag & os.ST_RDONLY:
            raise ContainmentError(f"{path} should be writable but is read-only")
    return warnings


def _cover_homes(libc: ctypes.CDLL, home: HomeView, hidden: Sequence[str] = ()) -> list[str]:
    """Cover each home with an empty tmpfs, then bind back each reveal at its target (sources are
    opened before the covers hide them), then make the covers read-only. Why fds: after the
    cover, the source path names the empty tmpfs, not the real directory. A hidden path inside
    a cover gets its folder back (empty, covered later), so it looks the same wherever it is."""
    if not home.covers:
        return []
    warnings: list[str] = []
    fds: list[int | None] = []
    try:
        for reveal in home.reveals:
            try:
                fds.append(os.open(reveal.source, O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
            except OSError as exc:
                if reveal.writable:
                    raise ContainmentError(f"cannot open {reveal.source}: {exc.strerror}") from None
                fds.append(None)
                warnings.append(f"{reveal.target} not shown: {exc.strerror}")
        for cover in home.covers:
            _mount(libc, "tmpfs", cover, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,nr_inodes=4096,mode=0755")
        for reveal, fd in zip(home.reveals, fds):
            if fd is None:
                continue
            try:
                os.makedirs(reveal.target, exist_ok=True)
                _mount(libc, f"/proc/self/fd/{fd}", reveal.target, None, MS_BIND | MS_REC)
            except OSError as exc:
                if reveal.writable:
                    raise ContainmentError(f"cannot show {reveal.target} in the covered home: {exc.strerror}") from None
                warnings.append(f"{reveal.target} not shown: {exc.strerror}")
        for path in hidden:
            if (any(_under(path, c) for c in home.covers)
                    and not any(_under(path, r.target) for r in home.reveals)):  # never in a real folder
                try:
                    os.makedirs(path, exist_ok=True)
                except OSError:
                    pass  # inside a read-only reveal where it does not exist: nothing to hide
        for cover in home.covers:
            _mount(libc, None, cover, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    finally:
        for fd in fds:
            if fd is not None:
                os.close(fd)
    return warnings


def _loopback_up() -> None:
    """Bring up `lo` in the run's own network namespace (it starts down), so tests can listen on
    and connect to 127.0.0.1 there."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sh22x", b"lo", 0)
        flags = struct.unpack("16sh22x", fcntl.ioctl(sock.fileno(), SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock.fileno(), SIOCSIFFLAGS, struct.pack("16sh22x", b"lo", flags | IFF_UP))


def _enter_locked_userns() -> None:
    """A nested user + mount namespace: our mounts become locked for the test (no remount rw,
    no unmounting the covers), whatever capabilities it has inside."""
    libc = _libc()
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare: {os.strerror(err)}")
    for name, text in (("setgroups", "deny"), ("uid_map", "0 0 1"), ("gid_map", "0 0 1")):
        with open(f"/proc/self/{name}", "w") as fh:
            fh.write(text)


def _report(fd: int, status: Mapping[str, object]) -> None:
    try:
        os.write(fd, json.dumps(status).encode())
    except OSError:
        pass


def _kill_descendants() -> None:
    """Process mode: SIGKILL our process group and every child we reaped as subreaper, until none."""
    me = os.getpid()
    for _ in range(50):
        children = []
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit() or int(entry.name) == me:
                continue
            try:
                with open(f"/proc/{entry.name}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == me or int(fields[2]) == os.getpgid(0):
                children.append(int(entry.name))
        if not children:
            return
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        _reap_all(block=False)
        time.sleep(0.01)


def _reap_all(block: bool) -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, 0 if block else os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def helper_main(spec: HelperSpec) -> int:
    os.set_inheritable(spec.status_fd, False)
    libc = _libc()
    if spec.namespace:
        try:
            for warning in setup_mounts(spec.writable, spec.hidden, spec.home):
                os.write(2, f"vermas.contain: {warning}\n".encode())
            if spec.loopback:
                _loopback_up()
        except (OSError, ContainmentError) as exc:
            _report(spec.status_fd, {"error": f"sandbox setup failed: {exc}"})
            return 125
    else:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    child = os.fork()
    if child == 0:
        try:
            if spec.namespace:
                _enter_locked_userns()
            os.chdir(spec.cwd)
            os.execve(spec.shell, [spec.shell, "-c", spec.command], dict(os.environ))
        except BaseException as exc:  # noqa: BLE001 - the child must never return into the helper
            try:
                os.write(2, f"vermas.contain: cannot start the command: {exc}\n".encode())
            finally:
                os._exit(126)
    status: dict[str, object] = {}
    while True:
        try:
            pid, raw = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        if pid == child:
            status = ({"exit": os.WEXITSTATUS(raw)} if os.WIFEXITED(raw)
                      else {"signal": os.WTERMSIG(raw)})
            break
    if spec.namespace:
        try:
            os.kill(-1, signal.SIGKILL)  # everything else in this PID namespace
        except OSError as exc:
            if exc.errno != errno.ESRCH:
                raise
        _reap_all(block=True)
    else:
        _kill_descendants()
    if spec.loopback:
        status["loopback"] = True
    _report(spec.status_fd, status)
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(helper_main(HelperSpec.model_validate_json(sys.argv[1])))
