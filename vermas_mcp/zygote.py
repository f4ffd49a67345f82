"""The town's MCP zygote: a process with the MCP SDK and vermas imported and each role's
server prepared, which forks one child per `vermas-mcp` launch.

Importing the SDK costs about a second per process; a town of 20 agents would pay it on
every session start. Forking a prepared process costs milliseconds. The zygote holds no
database connection and no threads, so each child opens its own store connection after
the fork. `vermas-runner up` starts it and `down` stops it; `python -m vermas_mcp.zygote
--town DIR` runs one by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Any

import anyio  # noqa: F401  (imported before any fork, so children start warm)
import mcp.server.stdio  # noqa: F401

import vermas.export  # noqa: F401
import vermas_mcp.stdio  # noqa: F401
from vermas.layout import TownLayout
from vermas_mcp.cli import parse
from vermas_mcp.launcher import socket_address
from vermas_mcp.profiles import PROFILES
from vermas_mcp.run import flush_exports
from vermas_mcp.run import run as run_server
from vermas_mcp.server import build_template

IDLE_EXIT_SECONDS = 6 * 3600


def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])  # struct ucred: pid, uid, gid


def _child(conn: socket.socket, request: dict[str, Any], fds: list[int], listener: socket.socket) -> None:
    """In the forked child: take over the launcher's stdio and serve MCP on it. Never
    returns: whatever happens, the child ends here (falling back into the zygote's loop
    would run its cleanup and delete the zygote's pid file)."""
    code = 1
    try:
        listener.close()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        for target, fd in zip((0, 1, 2), fds):
            os.dup2(fd, target)
            os.close(fd)
        sys.stdout = os.fdopen(1, "w", closefd=False, buffering=1)
        sys.stderr = os.fdopen(2, "w", closefd=False, buffering=1)
        if not isinstance(request, dict):
            raise ValueError("malformed launch request")
        os.environ.clear()
        os.environ.update(request.get("env", {}))
        os.chdir(request.get("cwd", "/"))
        threading.Thread(target=_exit_when_launcher_dies, args=(conn,), daemon=True).start()
        code = _serve(request.get("argv", []))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException as exc:  # noqa: BLE001 - report and exit non-zero like a crash would
        try:
            print(f"vermas-mcp: {type(exc).__name__}: {exc}", file=sys.stderr)
        except Exception:  # noqa: BLE001
            pass
        code = 1
    finally:
        try:
            sys.stderr.flush()
            conn.sendall(json.dumps({"exit": code}).encode() + b"\n")
        except Exception:  # noqa: BLE001 - the launcher may be gone already
            pass
        os._exit(code)


def _exit_when_launcher_dies(conn: socket.socket) -> None:
    """The launcher never writes after its request; EOF means it is gone, and so are we."""
    try:
        while conn.recv(1024):
            pass
    except OSError:
        pass
    flush_exports()  # Claude Code stopped us: leave the exports current before going
    os._exit(0)


def _stop(*_: object) -> None:
    raise SystemExit(0)


def _serve(argv: list[str]) -> int:
    args = parse(argv)
    return run_server(args.town, args.actor, args.profile, TEMPLATES)


TEMPLATES: dict[str, tuple[Any, Any]] = {}


def _warm_up() -> None:
    """Build each role's server once, before any fork (what a child imports is imported at the top)."""
    for profile in PROFILES:
        TEMPLATES[profile] = build_template(profile)


def run(town_root: str) -> None:
    root = os.path.realpath(town_root)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(socket_address(root))
    except OSError:
        print(f"vermas-mcp zygote: one is already running for {root}", file=sys.stderr)
        raise SystemExit(0) from None
    listener.listen(64)
    _warm_up()
    pid_file = TownLayout(Path(root)).zygote_pid
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    with pid_file.open("w") as fh:
        fh.write(str(os.getpid()))
    signal.signal(signal.SIGTERM, _stop)
    listener.settimeout(1.0)
    children: set[int] = set()
    last_busy = time.monotonic()
    try:
        while True:
            _reap(children)
            if not os.path.isfile(os.path.join(root, "town.toml")):
                return  # the town was removed (a finished test, a deleted demo): nothing to serve
            if children:
                last_busy = time.monotonic()
            elif time.monotonic() - last_busy > IDLE_EXIT_SECONDS:
                return
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            _handle(conn, listener, children)
    finally:
        listener.close()
        if os.path.exists(pid_file):
            os.unlink(pid_file)


def _reap(children: set[int]) -> None:
    for pid in list(children):
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done:
            children.discard(pid)


def _handle(conn: socket.socket, listener: socket.socket, children: set[int]) -> None:
    conn.settimeout(5.0)
    fds: list[int] = []
    try:
        if _peer_uid(conn) != os.getuid():
            return  # only our own user's launchers may borrow a child
        data, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
        while not data.endswith(b"\n"):
            more = conn.recv(1 << 20)
            if not more:
                break
            data += more
        if len(fds) != 3:
            return
        request = json.loads(data)
        conn.settimeout(None)
        pid = os.fork()
        if pid == 0:
            _child(conn, request, fds, listener)  # never returns
        children.add(pid)
    except (OSError, ValueError):
        pass
    finally:
        for fd in fds:  # the child has its own copies; the zygote keeps none of a launcher's stdio
            os.close(fd)
        conn.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vermas_mcp.zygote")
    parser.add_argument("--town", required=True)
    run(parse_town(parser.parse_args(argv).town))


def parse_town(value: str) -> str:
    return os.path.realpath(os.path.expanduser(value))


if __name__ == "__main__":
    main()
