"""The light half of the zygote protocol, run by `vermas-mcp` before any heavy import.

Protocol over the town's abstract unix socket: the launcher sends one JSON line (argv,
environment, working directory) with its stdin, stdout and stderr attached (SCM_RIGHTS);
the zygote forks a child that serves MCP on those descriptors and, when it ends, sends
back one JSON line `{"exit": code}`. The launcher stays alive meanwhile, so Claude Code
sees an ordinary child process, and closing the launcher makes the child exit too.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import struct

CONFIG_NAME = "town.toml"


def town_root(town_arg: str | None) -> str | None:
    """The town directory the way vermas.town.find_town resolves it, without importing it."""
    candidate = town_arg or os.environ.get("VERMAS_TOWN")
    if candidate:
        return os.path.realpath(os.path.expanduser(candidate))
    here = os.path.realpath(os.getcwd())
    while True:
        if os.path.isfile(os.path.join(here, CONFIG_NAME)):
            return here
        parent = os.path.dirname(here)
        if parent == here:
            return None
        here = parent


def socket_address(root: str) -> str:
    """An abstract socket (no file, no path-length limit) named after the town."""
    return "\0vermas-mcp-" + hashlib.sha256(root.encode()).hexdigest()[:20]


def try_zygote(argv: list[str], town_arg: str | None) -> int | None:
    """Serve through the town's zygote; None when there is none (serve in-process)."""
    root = town_root(town_arg)
    if root is None or not os.path.isfile(os.path.join(root, CONFIG_NAME)):
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(socket_address(root))
        # Abstract sockets have no file permissions: only hand our stdio and environment to
        # a zygote run by our own user, never to whoever took the name first.
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        if struct.unpack("3i", creds)[1] != os.getuid():
            sock.close()
            return None
    except OSError:
        sock.close()
        return None
    request = {"argv": argv, "env": dict(os.environ), "cwd": os.getcwd()}
    try:
        socket.send_fds(sock, [json.dumps(request).encode() + b"\n"], [0, 1, 2])
    except OSError:
        sock.close()
        return None
    # The child owns our stdio now; we only wait for its exit code.
    reply = b""
    while not reply.endswith(b"\n"):
        chunk = sock.recv(4096)
        if not chunk:
            return 1  # the zygote or its child died without a word
        reply += chunk
    return int(json.loads(reply).get("exit", 1))
