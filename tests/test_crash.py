"""SIGKILL writers mid-stream, many times, and check the town survives every one.

Each round starts two writers against one town: a core-library writer (with the same
background JSONL exporter the server runs) and a real `vermas-mcp` server driven over
stdio with raw JSON-RPC (the 2025-11-25 handshake). Both report each acknowledged id;
each is killed with SIGKILL (by its own PID) after a random short delay. Meanwhile the
test keeps parsing `.beads/issues.jsonl` and `messages.jsonl` line by line: readers must
never see a torn file. Afterwards: integrity_check is ok, every acknowledged id is in
the store, and a new process start and `vermas-runner export` bring the JSONL up to it.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import anyio
from mcp import Client, StdioServerParameters

from vermas.town import Town

BIN = Path(sys.executable).parent
VERMAS_MCP = shutil.which("vermas-mcp", path=str(BIN))
VERMAS_RUNNER = shutil.which("vermas-runner", path=str(BIN))
ROUNDS = 15

WRITER = textwrap.dedent(
    """
    import sys
    from vermas import beads, mail
    from vermas.addresses import parse_address
    from vermas.export import ExportScheduler
    from vermas.town import Town

    town = Town.open(sys.argv[1])
    tag, actor = sys.argv[2], parse_address(sys.argv[3])
    ExportScheduler(town)
    out = sys.stdout
    out.write("READY\\n"); out.flush()
    i = 0
    while True:
        bead = beads.create(town, actor, f"{tag} bead {i}", description="d" * (i % 50) * 20)
        out.write(f"B {bead.id}\\n"); out.flush()
        msg = mail.send(town, actor, "overseer", f"HANDOFF {tag} {i}", body="b" * (i % 7) * 100,
                        idempotency_key=f"{tag}-{i}")
        out.write(f"M {msg.id} {tag}-{i}\\n"); out.flush()
        if i % 3 == 2:
            beads.update(town, actor, bead.id, notes=f"note {i}", comment=f"comment {i}")
            out.write(f"U {bead.id}\\n"); out.flush()
        i += 1
    """
)


class Acks:
    """Acknowledged ids, gathered from every writer."""

    def __init__(self) -> None:
        self.beads: set[str] = set()
        self.messages: dict[str, str] = {}  # message id -> "sender|key"
        self.lock = threading.Lock()


def read_lines(stream: Any, on_line: Any) -> None:
    for raw in stream:
        line = raw.decode() if isinstance(raw, bytes) else raw
        if not line.endswith("\n"):  # a torn last line is not an acknowledgement
            break
        on_line(line.rstrip("\n"))


def library_writer(
    town_dir: Path, tag: str, actor: str, script: Path, acks: Acks
) -> tuple[subprocess.Popen, threading.Thread, threading.Event]:
    proc = subprocess.Popen([sys.executable, str(script), str(town_dir), tag, actor],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    started = threading.Event()

    def on_line(line: str) -> None:
        kind, *rest = line.split()
        with acks.lock:
            if kind == "READY":
                return
            started.set()
            if kind == "B":
                acks.beads.add(rest[0])
            elif kind == "M":
                acks.messages[rest[0]] = f"{actor}|{rest[1]}"

    reader = threading.Thread(target=read_lines, args=(proc.stdout, on_line), daemon=True)
    reader.start()
    return proc, reader, started


def mcp_writer(
    town_dir: Path, tag: str, actor: str, acks: Acks, log: Path
) -> tuple[subprocess.Popen, threading.Thread, threading.Event]:
    """A real vermas-mcp, driven the way Claude Code drives it: newline-delimited JSON-RPC."""
    assert VERMAS_MCP
    env = {**os.environ, "VERMAS_TOWN": str(town_dir), "BD_ACTOR": actor}
    with log.open("ab") as errlog:
        proc = subprocess.Popen([VERMAS_MCP], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=errlog, text=True, bufsize=1)
    started = threading.Event()

    def send(obj: dict[str, Any]) -> None:
        proc.stdin.write(json.dumps(obj) + "\n")
        proc.stdin.flush()

    def recv(want_id: int) -> dict[str, Any] | None:
        while True:
            line = proc.stdout.readline()
            if not line.endswith("\n"):
                return None
            msg = json.loads(line)
            if msg.get("id") == want_id:
                return msg

    def drive() -> None:
        try:
            send({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                "protocolVersion": "2025-11-25", "capabilities": {},
                "clientInfo": {"name": "crash-test", "version": "0"}}})
            if recv(0) is None:
                return
            send({"jsonrpc": "2.0", "method": "notifications/initialized"})
            n = 1
            i = 0
            while True:
                send({"jsonrpc": "2.0", "id": n, "method": "tools/call", "params": {
                    "name": "bead_create", "arguments": {"title": f"{tag} bead {i}"}}})
                reply = recv(n)
                if reply is None:
                    return
                assert not reply["result"].get("isError"), reply
                with acks.lock:
                    acks.beads.add(reply["result"]["structuredContent"]["id"])
                started.set()
                n += 1
                key = f"{tag}-{i}"
                send({"jsonrpc": "2.0", "id": n, "method": "tools/call", "params": {
                    "name": "mail_send", "arguments": {"to": "overseer", "subject": f"HELP {tag} {i}",
                                                       "idempotency_key": key}}})
                reply = recv(n)
                if reply is None:
                    return
                with acks.lock:
                    acks.messages[reply["result"]["structuredContent"]["id"]] = f"{actor}|{key}"
                n += 1
                i += 1
        except (BrokenPipeError, OSError, ValueError):
            return  # killed under us

    driver = threading.Thread(target=drive, daemon=True)
    driver.start()
    return proc, driver, started


class Sampler(threading.Thread):
    """Parse the JSONL exports over and over while writers run and die."""

    def __init__(self, beads_dir: Path) -> None:
        super().__init__(daemon=True)
        self.beads_dir = beads_dir
        self.stop = threading.Event()
        self.samples = 0
        self.lines = 0
        self.failures: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            for name in ("issues.jsonl", "messages.jsonl"):
                try:
                    text = (self.beads_dir / name).read_text(encoding="utf-8")
                except FileNotFoundError:
                    self.failures.append(f"{name} missing")
                    continue
                if text and not text.endswith("\n"):
                    self.failures.append(f"{name}: last line not terminated")
                ids = []
                for n, line in enumerate(text.splitlines(), 1):
                    try:
                        rec = json.loads(line)
                        ids.append(rec["id"])
                    except (ValueError, KeyError, TypeError) as exc:
                        self.failures.append(f"{name} line {n}: {exc}: {line[:80]!r}")
                        break
                if name == "issues.jsonl" and ids != sorted(ids):
                    self.failures.append("issues.jsonl not sorted by id")
                self.lines += len(ids)
                self.samples += 1
            time.sleep(0.005)


def kill_after_start(proc: subprocess.Popen, started: threading.Event, delay: float) -> None:
    started.wait(timeout=30)
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)  # only the PID we started


def jsonl_ids(path: Path) -> list[str]:
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


def test_sigkill_writers_lose_nothing_acknowledged(tmp_path: Path) -> None:
    town, _ = Town.init(tmp_path / "town")
    town_dir = town.root
    town.close()
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    acks = Acks()
    rng = random.Random(1234)
    sampler = Sampler(town_dir / ".beads")
    sampler.start()
    procs: list[subprocess.Popen] = []
    try:
        for r in range(ROUNDS):
            lib, lib_reader, lib_started = library_writer(
                town_dir, f"lib{r}", f"rig1/polecats/p{r}", script, acks)
            srv, srv_driver, srv_started = mcp_writer(
                town_dir, f"mcp{r}", f"rig1/crew/c{r}", acks, tmp_path / "server.log")
            procs += [lib, srv]
            killers = [
                threading.Thread(target=kill_after_start, args=(lib, lib_started, rng.uniform(0.02, 0.4))),
                threading.Thread(target=kill_after_start, args=(srv, srv_started, rng.uniform(0.02, 0.4))),
            ]
            for k in killers:
                k.start()
            for k in killers:
                k.join(timeout=60)
            for p in (lib, srv):
                assert p.wait(timeout=30) == -signal.SIGKILL, f"writer {p.pid} was not killed mid-stream"
            lib_reader.join(timeout=10)
            srv_driver.join(timeout=10)
            assert lib_started.is_set() and srv_started.is_set(), "a writer never acknowledged anything"
    finally:
        for p in procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
                p.wait(timeout=10)
        sampler.stop.set()
        sampler.join(timeout=10)

    assert not sampler.failures, sampler.failures[:5]
    assert sampler.samples > 50, f"only {sampler.samples} samples of the JSONL were parsed"
    assert len(acks.beads) > ROUNDS * 4 and len(acks.messages) > ROUNDS * 2, (len(acks.beads), len(acks.messages))

    town = Town.open(town_dir)
    try:
        assert town.db.integrity_check() == "ok"
        with town.db.read() as conn:
            store_beads = {r[0] for r in conn.execute("SELECT id FROM issues")}
            store_msgs = {r[0]: f"{r[1]}|{r[2]}" for r in conn.execute(
                "SELECT id, sender, idempotency_key FROM messages")}
            assert conn.execute("PRAGMA quick_check").fetchone()[0] == "ok"
        lost_beads = acks.beads - store_beads
        assert not lost_beads, f"{len(lost_beads)} acknowledged beads lost: {sorted(lost_beads)[:5]}"
        lost_msgs = set(acks.messages) - set(store_msgs)
        assert not lost_msgs, f"{len(lost_msgs)} acknowledged messages lost: {sorted(lost_msgs)[:5]}"
        for mid, sender_key in acks.messages.items():
            assert store_msgs[mid] == sender_key
        assert len(set(store_msgs.values())) == len(store_msgs), "an idempotency key made two messages"
    finally:
        town.close()

    # A new process start catches the export up to everything the killed writers committed.
    issues_path = town_dir / ".beads" / "issues.jsonl"

    async def start_server() -> bool:
        params = StdioServerParameters(command=VERMAS_MCP, env={"VERMAS_TOWN": str(town_dir),
                                                                "BD_ACTOR": "overseer"})
        async with Client(params, mode="legacy", read_timeout_seconds=60) as c:
            assert not (await c.call_tool("town_status", {})).is_error
            with anyio.move_on_after(10):
                while not store_beads <= set(jsonl_ids(issues_path)):
                    await anyio.sleep(0.05)
                return True
        return False

    assert anyio.run(start_server), "a new vermas-mcp did not catch issues.jsonl up within 10 s"
    assert set(jsonl_ids(issues_path)) == store_beads

    # And an explicit export writes exactly the store, sorted, one parseable line per bead.
    assert VERMAS_RUNNER
    proc = subprocess.run([VERMAS_RUNNER, "export", "--town", str(town_dir)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    ids = jsonl_ids(issues_path)
    assert ids == sorted(store_beads)
    msg_ids = set(jsonl_ids(town_dir / ".beads" / "messages.jsonl"))
    assert msg_ids == set(store_msgs)
    assert acks.beads <= set(ids) and set(acks.messages) <= msg_ids
