#!/usr/bin/env python
"""Benchmark of the vermas MCP server over stdio, against real `vermas-mcp` subprocesses.

Measures, on towns seeded through the core library's real schema, with the town's MCP
zygote running (as in a town booted by `vermas-runner up`; started before, stopped after):
  1. per-call latency (p50/p99) of hook_check, mail_send, mail_inbox, bead_ready, bead_create
     over stdio, driven by the Python SDK client (the judged figures) and by a minimal raw
     JSON-RPC client (`raw_*`: server and pipe only, no client-side validation, like Claude
     Code's node client), plus the same calls made directly on the core and through an
     in-process MCP server (to split the per-call cost between our code, the SDK and the pipe);
  2. bead_ready on a 100,000-bead town, core call and stdio round trip;
  3. cold start: process launch to the first tools/list answer (launches cycle through the six
     role profiles), served by the zygote (the judged figure) and in-process with
     VERMAS_ZYGOTE=off (a first launch with no town running), and each profile's tools/list size;
  4. mail throughput from 16 concurrent server processes driven by raw clients (the judged
     figure) and by SDK clients, each with a lost/duplicated check against the store.

Prints the figures as JSON (stdout, and --json-out FILE), then a short table with targets.

    python bench/bench_mcp.py                 # full run (a few minutes on 2 cores)
    python bench/bench_mcp.py --quick         # small run for the smoke test (< 60 s)
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
from mcp import Client, StdioServerParameters

from vermas import bdimport, beads, hooks, ids, mail, up
from vermas.addresses import parse_address
from vermas.export import export_town
from vermas.town import Town
from common import evaluate as judge, pct  # bench/common.py (this script's folder)

TOOLS = ("hook_check", "mail_send", "mail_inbox", "bead_ready", "bead_create")
PROFILES = (("polecat", "rig/polecats/p1"), ("witness", "rig/witness"), ("refinery", "rig/refinery"),
            ("crew", "rig/crew/c1"), ("mayor", "mayor"), ("overseer", "overseer"))
BENCH_ACTOR = "rig/crew/bench"  # the crew profile has all five measured tools
BENCH_PROFILE = "crew"
PREFIX = "hq"

# (figure key, target, comparison, unit, label)
TARGETS: list[tuple[str, float, str, str, str]] = [
    *[(f"{t}_p50_ms", 2.0, "<=", "ms", f"{t} p50") for t in TOOLS],
    *[(f"{t}_p99_ms", 10.0, "<=", "ms", f"{t} p99") for t in TOOLS],
    ("ready_big_core_p50_ms", 20.0, "<=", "ms", "bead_ready @big, core p50"),
    ("ready_big_stdio_p50_ms", 20.0, "<=", "ms", "bead_ready @big, stdio p50"),
    ("cold_start_zygote_median_ms", 400.0, "<=", "ms", "cold start median (zygote)"),
    ("tools_list_bytes_polecat", 8192.0, "<=", "B", "tools/list polecat"),
    ("tools_list_zygote_mismatches", 0.0, "<=", "", "tools/list zygote != in-process"),
    ("mail_throughput_msgs_per_s", 1000.0, ">=", "msg/s", "mail throughput (raw clients)"),
    ("mail_lost", 0.0, "<=", "", "mail lost (raw clients)"),
    ("mail_duplicated", 0.0, "<=", "", "mail duplicated (raw clients)"),
    ("mail_sdk_client_lost", 0.0, "<=", "", "mail lost (SDK clients)"),
    ("mail_sdk_client_duplicated", 0.0, "<=", "", "mail duplicated (SDK clients)"),
]


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)




def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def server_command() -> str:
    here = Path(sys.executable).parent / "vermas-mcp"
    found = str(here) if here.exists() else shutil.which("vermas-mcp")
    if not found:
        raise SystemExit("vermas-mcp not found next to this python nor on PATH (pip install -e .)")
    return found


def server_args(town: Path, actor: str, profile: str) -> list[str]:
    return ["--town", str(town), "--actor", actor, "--profile", profile]


def params(town: Path, actor: str, profile: str, env: dict[str, str] | None = None) -> StdioServerParameters:
    # The SDK merges env over its short list of inherited variables (PATH, HOME, ...).
    return StdioServerParameters(command=server_command(), args=server_args(town, actor, profile), env=env)


# --------------------------------------------------------------------------- raw client

PROTOCOL_VERSION = "2025-11-25"


class RawClientError(RuntimeError):
    pass


class RawClient:
    """A minimal MCP client over stdio: newline-delimited JSON-RPC on the subprocess's pipes,
    the legacy handshake (initialize, its result, notifications/initialized), then one
    request at a time, each awaiting its response. No schema validation and no SDK, so the
    driver's CPU per call is a json.dumps and a json.loads: what is timed is the server and
    the pipe, as a node client like Claude Code sees them."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self._next_id = 0
        self.server_info: dict[str, Any] = {}

    @classmethod
    async def launch(cls, town: Path, actor: str, profile: str, env: dict[str, str] | None = None) -> RawClient:
        proc = await asyncio.create_subprocess_exec(
            server_command(), *server_args(town, actor, profile),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,  # stderr: ours
            env={**os.environ, **(env or {})}, limit=64 * 1024 * 1024,
        )
        client = cls(proc)
        try:
            await client.initialize()
        except BaseException:
            await client.close()
            raise
        return client

    def _send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")

    async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._next_id += 1
        rid = self._next_id
        self._send({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
        await self.proc.stdin.drain()
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                raise RawClientError(f"server closed its stdout while we waited for {method} "
                                     f"(exit code {self.proc.returncode})")
            msg = json.loads(line)
            if "method" in msg:
                if "id" in msg:  # a request from the server: we declared no capabilities
                    if msg["method"] == "ping":
                        self._send({"jsonrpc": "2.0", "id": msg["id"], "result": {}})
                    else:
                        self._send({"jsonrpc": "2.0", "id": msg["id"],
                                    "error": {"code": -32601, "message": "Method not found"}})
                    await self.proc.stdin.drain()
                continue  # notifications (logging, list_changed, progress) are not ours to act on
            if msg.get("id") != rid:
                raise RawClientError(f"response to an unknown request id: {line[:200]!r}")
            if "error" in msg:
                raise RawClientError(f"{method}: {msg['error']}")
            return msg["result"]

    async def initialize(self) -> None:
        result = await self.request("initialize", {
            "protocolVersion": PROTOCOL_VERSION, "capabilities": {},
            "clientInfo": {"name": "vermas-bench-raw", "version": "1.0"}})
        if result.get("protocolVersion") != PROTOCOL_VERSION:
            raise RawClientError(f"server answered protocol {result.get('protocolVersion')!r}, "
                                 f"we speak only {PROTOCOL_VERSION}")
        if "tools" not in result.get("capabilities", {}):
            raise RawClientError(f"server declares no tools capability: {result}")
        self.server_info = result.get("serverInfo", {})
        self._send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        assert self.proc.stdin is not None
        await self.proc.stdin.drain()

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """The tools/call result (content, structuredContent, isError)."""
        return await self.request("tools/call", {"name": name, "arguments": arguments})

    async def close(self) -> None:
        """Close stdin (the server exits on EOF), then wait; terminate, then kill, if it lingers."""
        proc = self.proc
        if proc.stdin is not None and not proc.stdin.is_closing():
            proc.stdin.close()
        for action in (None, proc.terminate, proc.kill):
            if proc.returncode is not None:
                break
            if action is not None:
                try:
                    action()
                except ProcessLookupError:
                    pass
            try:
                await asyncio.wait_for(proc.wait(), 5.0)
            except TimeoutError:
                continue


def raw_failed(result: dict[str, Any]) -> bool:
    return result.get("isError", False) is not False


# --------------------------------------------------------------------------- zygote

@contextmanager
def zygote_running(town: Town) -> Iterator[int]:
    """The town's MCP zygote, as `vermas-runner up` starts it; stopped on the way out,
    whatever happened inside."""
    t0 = time.perf_counter()
    pid = up.start_zygote(town)
    if pid is None:
        log_file = town.root / ".runtime" / "mcp-zygote.log"
        tail = log_file.read_text()[-2000:] if log_file.exists() else "(no log)"
        up.stop_zygote(town)
        raise RuntimeError(f"the MCP zygote did not come up for {town.root}:\n{tail}")
    log(f"zygote {pid} up for {town.root} in {ms(time.perf_counter() - t0)} ms")
    try:
        yield pid
    finally:
        up.stop_zygote(town)
        log(f"zygote {pid} stopped")


def live_children(pid: int | None) -> int:
    """Live (non-zombie) children of pid, from /proc; -1 when that cannot be read."""
    if pid is None:
        return -1
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return -1
    alive = 0
    for kid in kids:
        try:
            state = Path(f"/proc/{kid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        alive += state != "Z"
    return alive


# --------------------------------------------------------------------------- seeding

BASE_TIME = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
STATUSES = ["open"] * 50 + ["in_progress"] * 10 + ["closed"] * 25 + ["blocked"] * 5 + \
    ["deferred"] * 5 + ["hooked"] * 5
TYPES = ["task"] * 4 + ["bug"] * 2 + ["feature", "chore", "epic"]


def _stamp(i: int) -> str:
    return (BASE_TIME + dt.timedelta(seconds=17 * i)).strftime("%Y-%m-%dT%H:%M:%SZ")


def bead_lines(n: int, seed: int = 7) -> list[str]:
    """bd JSONL for n beads: mixed statuses, priorities and types; ~10% blocked by an
    earlier bead (some blockers closed, so not blocking), ~12% children of an epic via
    parent-child, a few `related` links; hooked beads each on their own polecat."""
    rng = random.Random(seed)
    lines: list[str] = []
    used: set[str] = set()
    epics: list[str] = []
    children: dict[str, int] = {}
    roots: list[str] = []
    for i in range(n):
        status = rng.choice(STATUSES)
        issue_type = rng.choice(TYPES)
        if epics and rng.random() < 0.12:
            parent = rng.choice(epics[-300:])
            children[parent] = children.get(parent, 0) + 1
            bead_id = f"{parent}.{children[parent]}"
            deps = [{"depends_on_id": parent, "type": "parent-child"}]
        else:
            length = ids.hash_length(len(used))
            nonce = 0
            while (bead_id := ids.candidate(PREFIX, f"bench{seed}:{i}", nonce, length)) in used:
                nonce += 1
            deps = []
            roots.append(bead_id)
            if issue_type == "epic":
                epics.append(bead_id)
        used.add(bead_id)
        if len(roots) > 10 and rng.random() < 0.10:
            deps.append({"depends_on_id": rng.choice(roots[:-1]), "type": "blocks"})
        if len(roots) > 10 and rng.random() < 0.03:
            deps.append({"depends_on_id": rng.choice(roots[:-1]), "type": "related"})
        rec: dict[str, Any] = {
            "_type": "issue", "id": bead_id, "title": f"bench bead {i}: do the thing {i % 97}",
            "description": "Benchmark bead. " * rng.randint(0, 8), "status": status,
            "priority": rng.randint(0, 4), "issue_type": issue_type,
            "created_at": _stamp(i), "updated_at": _stamp(i + rng.randint(0, 50)),
        }
        if status == "hooked":
            rec["assignee"] = f"rig/polecats/s{i}"
        elif status == "in_progress":
            rec["assignee"] = f"rig/crew/c{i % 7}"
        if rng.random() < 0.2:
            rec["labels"] = rng.sample(["ui", "api", "db", "perf", "docs", "infra"], k=rng.randint(1, 2))
        if deps:
            # one link per target (the store keys dependencies by (issue, target))
            rec["dependencies"] = list({d["depends_on_id"]: d for d in deps}.values())
        lines.append(json.dumps(rec))
    # the bench actor's hooked bead, so hook_check takes its full path (show + GUPP text)
    lines.append(json.dumps({
        "_type": "issue", "id": f"{PREFIX}-benchhook", "title": "the bench actor's hooked work",
        "description": "Hooked for the benchmark.", "status": "hooked", "priority": 1,
        "issue_type": "task", "assignee": BENCH_ACTOR, "created_at": _stamp(n), "updated_at": _stamp(n),
    }))
    return lines


MAIL_ADDRESSES = (["mayor", "overseer", "deacon", "rig/witness", "rig/refinery", BENCH_ACTOR]
                  + [f"rig/polecats/p{i}" for i in range(30)] + [f"rig/crew/c{i}" for i in range(10)])
SUBJECTS = ("POLECAT_DONE nux", "MERGE_READY gt-1", "MERGED gt-2", "REWORK_REQUEST gt-3",
            "ESCALATION stuck", "HELP please", "HANDOFF notes", "NUDGE wake up", "status update")


def seed_messages(town: Town, n: int, seed: int = 11) -> None:
    """n messages through mail.send_in_txn in one write transaction; ~60% marked read."""
    rng = random.Random(seed)
    weights = [8 if a == BENCH_ACTOR else 1 for a in MAIL_ADDRESSES]  # ~15% to the bench actor
    with town.db.write() as conn:
        for i in range(n):
            sender = rng.choice(MAIL_ADDRESSES)
            to = rng.choices(MAIL_ADDRESSES, weights)[0]
            msg = mail.send_in_txn(conn, town.db, sender, to, f"{rng.choice(SUBJECTS)} #{i}",
                                   "body text " * rng.randint(1, 40))
            if rng.random() < 0.6:
                conn.execute("UPDATE messages SET read_at = created_at WHERE id = ?", (msg.id,))


def make_town(root: Path, n_beads: int, n_messages: int) -> tuple[Town, dict[str, float]]:
    if root.exists():
        shutil.rmtree(root)
    town, _ = Town.init(root, prefix=PREFIX)
    t0 = time.perf_counter()
    lines = bead_lines(n_beads)
    report = bdimport.import_lines(town, lines)
    assert report.created == len(lines), report
    t1 = time.perf_counter()
    seed_messages(town, n_messages)
    t2 = time.perf_counter()
    # A live town's exports are current; without this the first server would export on start.
    export_town(town)
    t3 = time.perf_counter()
    return town, {"beads_s": t1 - t0, "messages_s": t2 - t1, "export_s": t3 - t2}


# --------------------------------------------------------------------------- latency

def call_args(tool: str, i: int) -> dict[str, Any]:
    if tool == "mail_send":
        return {"to": "mayor", "subject": f"NUDGE latency {i}", "body": "bench body " * 10}
    if tool == "mail_inbox":
        return {"limit": 20}
    if tool == "bead_ready":
        return {"limit": 20}
    if tool == "bead_create":
        return {"title": f"bench create {i}", "description": "created by the benchmark",
                "priority": i % 5}
    return {}


def sdk_failed(result: Any) -> bool:
    return bool(getattr(result, "is_error", False))


async def time_calls(call: Callable[[int], Awaitable[Any]], warmup: int, n: int,
                     failed: Callable[[Any], bool] = sdk_failed) -> tuple[list[float], int]:
    for i in range(warmup):
        await call(-1 - i)
    lat: list[float] = []
    errors = 0
    for i in range(n):
        t0 = time.perf_counter()
        res = await call(i)
        lat.append(time.perf_counter() - t0)
        if failed(res):
            errors += 1
    return lat, errors


async def _no_validation(name: str, result: Any) -> None:
    """Stands in for ClientSession.validate_tool_result (jsonschema on every structured result)."""
    return None


async def stdio_latency(town_dir: Path, warmup: int, n: int, mode: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with Client(params(town_dir, BENCH_ACTOR, BENCH_PROFILE), mode=mode) as client:
        for tool in TOOLS:
            async def call(i: int, tool: str = tool) -> Any:
                return await client.call_tool(tool, call_args(tool, i))
            lat, errors = await time_calls(call, warmup, n)
            out[tool] = {"p50": ms(pct(lat, 50)), "p99": ms(pct(lat, 99)), "max": ms(max(lat)),
                         "errors": errors}
            log(f"stdio {tool}: p50 {out[tool]['p50']} ms p99 {out[tool]['p99']} ms errors {errors}")
            if tool in ("mail_send", "bead_create"):
                await anyio.sleep(0.5)  # let the server's coalesced export of a write block finish
        # The Python SDK client re-validates every structured result against the tool's output
        # schema with jsonschema; measure once more without it to show the client's share.
        client.session.validate_tool_result = _no_validation  # type: ignore[method-assign]
        for tool in TOOLS:
            async def call2(i: int, tool: str = tool) -> Any:
                return await client.call_tool(tool, call_args(tool, 100_000 + i))
            lat, _ = await time_calls(call2, min(warmup, 10), max(30, n // 2))
            out[tool]["novalidate_p50"] = ms(pct(lat, 50))
            out[tool]["novalidate_p99"] = ms(pct(lat, 99))
            log(f"stdio {tool} without client validation: p50 {out[tool]['novalidate_p50']} ms")
            if tool in ("mail_send", "bead_create"):
                await anyio.sleep(0.5)
    return out


async def raw_latency(town_dir: Path, warmup: int, n: int) -> dict[str, Any]:
    """The same calls through the raw JSON-RPC client: server and pipe, no client validation."""
    out: dict[str, Any] = {}
    client = await RawClient.launch(town_dir, BENCH_ACTOR, BENCH_PROFILE)
    try:
        for tool in TOOLS:
            async def call(i: int, tool: str = tool) -> Any:
                return await client.call_tool(tool, call_args(tool, 200_000 + i))
            lat, errors = await time_calls(call, warmup, n, failed=raw_failed)
            out[tool] = {"p50": ms(pct(lat, 50)), "p99": ms(pct(lat, 99)), "max": ms(max(lat)),
                         "errors": errors}
            log(f"raw {tool}: p50 {out[tool]['p50']} ms p99 {out[tool]['p99']} ms errors {errors}")
            if tool in ("mail_send", "bead_create"):
                await asyncio.sleep(0.5)
    finally:
        await client.close()
    return out


def core_call(town: Town, tool: str) -> Callable[[int], Any]:
    actor = parse_address(BENCH_ACTOR)
    if tool == "hook_check":
        return lambda i: hooks.check(town, actor)
    if tool == "mail_send":
        return lambda i: mail.send(town, actor, **call_args(tool, i))
    if tool == "mail_inbox":
        return lambda i: mail.inbox(town, actor, limit=20)
    if tool == "bead_ready":
        return lambda i: beads.ready(town, 20)
    return lambda i: beads.create(town, actor, **call_args(tool, i))


async def split_latency(town: Town, warmup: int, n: int) -> dict[str, Any]:
    """The same calls on the core directly, and through an in-process MCP server (SDK client
    and server over memory streams: no pipe, no JSON framing, no exporter, and no client-side
    result validation). With the two stdio figures this gives a ladder, each step adding one
    cost: core -> SDK dispatch -> pipe and process -> client validation."""
    from vermas_mcp.server import build_server

    out: dict[str, Any] = {}
    for tool in TOOLS:
        fn = core_call(town, tool)

        async def direct(i: int, fn: Callable[[int], Any] = fn) -> Any:
            return fn(i)
        lat, _ = await time_calls(direct, warmup, n)
        out.setdefault(tool, {})["core_p50"] = ms(pct(lat, 50))
    server = build_server(town, parse_address(BENCH_ACTOR), BENCH_PROFILE)
    async with Client(server, mode="legacy") as client:
        client.session.validate_tool_result = _no_validation  # type: ignore[method-assign]
        for tool in TOOLS:
            async def call(i: int, tool: str = tool) -> Any:
                return await client.call_tool(tool, call_args(tool, i))
            lat, _ = await time_calls(call, warmup, n)
            out[tool]["inproc_p50"] = ms(pct(lat, 50))
    for tool in TOOLS:
        log(f"split {tool}: core {out[tool]['core_p50']} ms, in-process MCP (no client validation) "
            f"{out[tool]['inproc_p50']} ms")
    return out


# --------------------------------------------------------------------------- big ready

async def ready_big(town: Town, town_dir: Path, warmup: int, n: int, mode: str) -> dict[str, float]:
    for _ in range(warmup):
        beads.ready(town, 20)
    lat = []
    for _ in range(n):
        t0 = time.perf_counter()
        beads.ready(town, 20)
        lat.append(time.perf_counter() - t0)
    out = {"core_p50": ms(pct(lat, 50)), "core_p99": ms(pct(lat, 99))}
    async with Client(params(town_dir, "mayor", "mayor"), mode=mode) as client:
        async def call(i: int) -> Any:
            return await client.call_tool("bead_ready", {"limit": 20})
        slat, errors = await time_calls(call, warmup, n)
    out.update(stdio_p50=ms(pct(slat, 50)), stdio_p99=ms(pct(slat, 99)), stdio_errors=errors)
    log(f"ready@big: core p50 {out['core_p50']} p99 {out['core_p99']}; "
        f"stdio p50 {out['stdio_p50']} p99 {out['stdio_p99']} ms")
    return out


# --------------------------------------------------------------------------- cold start

def tools_json(tools: list[Any]) -> str:
    return json.dumps([t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in tools],
                      separators=(",", ":"))


async def launch_to_tools_list(town_dir: Path, actor: str, profile: str, mode: str,
                               env: dict[str, str] | None) -> tuple[float, str]:
    t0 = time.perf_counter()
    async with Client(params(town_dir, actor, profile, env), mode=mode) as client:
        res = await client.list_tools()
        elapsed = time.perf_counter() - t0
        tools = list(res.tools)
        while res.next_cursor:
            res = await client.list_tools(cursor=res.next_cursor)
            tools += res.tools
    return elapsed, tools_json(tools)


async def cold_start(town_dir: Path, runs: int, mode: str) -> dict[str, Any]:
    """Launch to first tools/list answer (spawn, initialize handshake, tools/list), for `runs`
    launches cycling through the six role profiles, each launch twice: served by the running
    zygote (a forked, pre-warmed child) and in-process with VERMAS_ZYGOTE=off (the launcher
    imports the SDK itself, as on a first launch with no town running). The two are
    interleaved so both see the same machine load. Each launch's tools/list also gives that
    profile's schema size, and the two paths must list the same tools."""
    times: dict[str, list[float]] = {"zygote": [], "inprocess": []}
    lists: dict[str, dict[str, str]] = {"zygote": {}, "inprocess": {}}
    envs: dict[str, dict[str, str] | None] = {"zygote": None, "inprocess": {"VERMAS_ZYGOTE": "off"}}
    for run_no in range(max(runs, len(PROFILES))):
        profile, actor = PROFILES[run_no % len(PROFILES)]
        for path in ("zygote", "inprocess"):
            elapsed, listing = await launch_to_tools_list(town_dir, actor, profile, mode, envs[path])
            times[path].append(elapsed)
            lists[path][profile] = listing
    sizes = {profile: len(listing.encode()) for profile, listing in lists["zygote"].items()}
    mismatches = [p for p in lists["zygote"] if lists["zygote"][p] != lists["inprocess"][p]]
    for path, samples in times.items():
        log(f"cold start {path} runs (ms): {[ms(t) for t in samples]}")
    log(f"tools/list bytes: {sizes}; zygote and in-process listings differ for: {mismatches or 'none'}")
    return {"times": times, "sizes": sizes, "mismatches": len(mismatches)}


def startup_parts(runs: int) -> dict[str, float]:
    """Wall time of a bare interpreter, and of importing the server stack, each median of runs."""
    def wall(code: str) -> float:
        samples = []
        for _ in range(runs):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True)
            samples.append(time.perf_counter() - t0)
        return ms(statistics.median(samples))
    return {
        "startup_python_ms": wall("pass"),
        "startup_import_mcp_ms": wall("import mcp.server.mcpserver, mcp.server.stdio"),
        "startup_import_vermas_mcp_ms": wall("import vermas_mcp.cli, vermas_mcp.server, vermas.export"),
    }


# --------------------------------------------------------------------------- throughput

# A connected mail sender: mail_send arguments -> the stored message's id, None on a tool error.
Sender = Callable[[dict[str, Any]], Awaitable[str | None]]
Connect = Callable[[int], AbstractAsyncContextManager[Sender]]


def raw_connect(town_dir: Path) -> Connect:
    @asynccontextmanager
    async def connect(w: int) -> AsyncIterator[Sender]:
        client = await RawClient.launch(town_dir, f"rig/crew/w{w}", "crew")
        try:
            async def send(args: dict[str, Any]) -> str | None:
                res = await client.call_tool("mail_send", args)
                if raw_failed(res) or not res.get("structuredContent"):
                    return None
                return res["structuredContent"]["id"]
            yield send
        finally:
            await client.close()
    return connect


def sdk_connect(town_dir: Path, mode: str) -> Connect:
    @asynccontextmanager
    async def connect(w: int) -> AsyncIterator[Sender]:
        async with Client(params(town_dir, f"rig/crew/w{w}", "crew"), mode=mode) as client:
            async def send(args: dict[str, Any]) -> str | None:
                res = await client.call_tool("mail_send", args)
                if res.is_error or not res.structured_content:
                    return None
                return res.structured_content["id"]
            yield send
    return connect


async def mail_throughput(town: Town, connect: Connect, label: str, workers: int, sends: int,
                          zygote: int | None) -> dict[str, Any]:
    """`workers` server processes, each with its own client, all connected before the clock
    starts; then every client sends its share of `sends` mails, one call at a time, all at
    once. Acknowledged ids are checked against the store afterwards."""
    run_tag = f"tput-{label}-{os.getpid()}x{int(time.time())}"
    per_worker = [sends // workers + (1 if w < sends % workers else 0) for w in range(workers)]
    connected = 0
    all_connected = anyio.Event()
    start = anyio.Event()
    finished = 0
    all_finished = anyio.Event()
    sent_ids: list[str] = []
    errors = 0
    t_end = 0.0

    async def worker(w: int) -> None:
        nonlocal connected, finished, errors, t_end
        async with connect(w) as send:
            connected += 1
            if connected == workers:
                all_connected.set()
            await start.wait()
            for i in range(per_worker[w]):
                msg_id = await send({"to": "mayor", "subject": f"NUDGE {run_tag} w{w} {i}", "body": "throughput"})
                if msg_id is None:
                    errors += 1
                else:
                    sent_ids.append(msg_id)
            finished += 1
            if finished == workers:
                t_end = time.perf_counter()
                all_finished.set()
            await all_finished.wait()  # keep every server up until the last send is done

    t_spawn = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for w in range(workers):
            tg.start_soon(worker, w)
        await all_connected.wait()
        spawn_s = time.perf_counter() - t_spawn
        # how many of the servers are the zygote's children (all of them, when it serves)
        zygote_children = live_children(zygote)
        t0 = time.perf_counter()
        cpu0 = time.process_time()
        start.set()
        await all_finished.wait()
        driver_cpu = time.process_time() - cpu0
    elapsed = t_end - t0
    with sqlite3.connect(town.db.path) as conn:
        total, distinct = conn.execute(
            "SELECT COUNT(*), COUNT(DISTINCT subject) FROM messages WHERE subject LIKE ?",
            (f"NUDGE {run_tag} %",)).fetchone()
        found = 0
        for chunk in range(0, len(sent_ids), 500):
            part = sent_ids[chunk:chunk + 500]
            found += conn.execute(
                f"SELECT COUNT(*) FROM messages WHERE id IN ({','.join('?' * len(part))})", part
            ).fetchone()[0]
    ok = len(sent_ids)
    out = {
        "workers": workers, "attempted": sends, "sent": ok, "errors": errors, "stored": total,
        # lost: acknowledged sends missing from the store; duplicated: a send stored twice
        "lost": max(ok - found, ok - distinct), "duplicated": total - distinct, "elapsed_s": round(elapsed, 3),
        "msgs_per_s": round(ok / elapsed, 1) if elapsed > 0 else 0.0, "spawn_s": round(spawn_s, 3),
        "driver_cpu_s": round(driver_cpu, 3), "zygote_children": zygote_children,
    }
    log(f"mail throughput ({label} clients): {out}")
    return out


# --------------------------------------------------------------------------- main

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small run for the smoke test")
    ap.add_argument("--beads", type=int, help="beads in the main town (default 10000; quick 1000)")
    ap.add_argument("--messages", type=int, help="messages in the main town (default 10000; quick 1000)")
    ap.add_argument("--calls", type=int, help="timed calls per tool (default 500; quick 30)")
    ap.add_argument("--big-beads", type=int, help="beads in the bead_ready town (default 100000; quick 3000)")
    ap.add_argument("--workers", type=int, help="concurrent vermas-mcp senders (default 16; quick 4)")
    ap.add_argument("--sends", type=int, help="total mail_send calls in the throughput run (default 3000; quick 200)")
    ap.add_argument("--cold-runs", type=int,
                    help="cold start launches, cycling through the 6 profiles (default 12; quick 6)")
    ap.add_argument("--mode", default="legacy", choices=("legacy", "auto"),
                    help="MCP connect mode (legacy = the 2025-11-25 handshake Claude Code speaks)")
    ap.add_argument("--json-out", type=Path, help="also write the JSON here")
    ap.add_argument("--workdir", type=Path, help="where to build the towns (default: a temp dir, removed)")
    args = ap.parse_args(argv)
    q = args.quick
    defaults = {"beads": (10_000, 1_000), "messages": (10_000, 1_000), "calls": (500, 30),
                "big_beads": (100_000, 3_000), "workers": (16, 4), "sends": (3_000, 200),
                "cold_runs": (12, 6)}
    for key, (full, quick) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, quick if q else full)
    args.warmup = 10 if q else 50
    return args



def evaluate(figures: dict[str, float]) -> list[dict[str, Any]]:
    return judge(figures, TARGETS)


def beside(fig: dict[str, float], key: str) -> str:
    """What a reader should see next to a judged figure: the raw-client latency beside the
    SDK-client one, the in-process cold start beside the zygote one, and so on."""
    for tool in TOOLS:
        for stat in ("p50", "p99"):
            if key == f"{tool}_{stat}_ms":
                return f"raw client {fig[f'raw_{tool}_{stat}_ms']:g} ms"
    if key == "cold_start_zygote_median_ms":
        return f"in-process {fig['cold_start_inprocess_median_ms']:g} ms (VERMAS_ZYGOTE=off)"
    if key == "mail_throughput_msgs_per_s":
        return f"SDK clients {fig['mail_throughput_sdk_client_msgs_per_s']:g} msg/s"
    if key == "ready_big_core_p50_ms":
        return f"p99 {fig['ready_big_core_p99_ms']:g} ms"
    if key == "ready_big_stdio_p50_ms":
        return f"p99 {fig['ready_big_stdio_p99_ms']:g} ms"
    return ""


def print_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    fig = result["figures"]
    cfg = result["config"]
    table = Table(title=f"vermas-mcp benchmark ({cfg['beads']} beads, {cfg['messages']} msgs, "
                  f"{cfg['calls']} calls/tool, big town {cfg['big_beads']} beads, mode {cfg['mode']}, "
                  f"zygote running; load {cfg['loadavg_1m_start']}->{cfg['loadavg_1m_end']} on "
                  f"{cfg['cpus']} CPUs)")
    for col in ("figure", "value", "target", "", "beside it"):
        table.add_column(col)
    for row in result["targets"]:
        table.add_row(row["label"], f"{row['value']:g}", row["target"],
                      "[green]PASS[/]" if row["pass"] else "[red]FAIL[/]", beside(fig, row["key"]))
    table.add_section()
    table.add_row("p50 ladder (ms)", "", "", "", "core -> +SDK in-proc -> +pipe (raw client) -> "
                  "+SDK client -> +its validation")
    for tool in TOOLS:
        table.add_row(f"  {tool}", "", "", "", " -> ".join(f"{fig[k]:g}" for k in (
            f"{tool}_core_p50_ms", f"{tool}_inproc_p50_ms", f"raw_{tool}_p50_ms",
            f"{tool}_novalidate_p50_ms", f"{tool}_p50_ms")))
    table.add_row("startup (python -c wall)", "", "", "", f"bare {fig['startup_python_ms']:g} / import mcp "
                  f"server {fig['startup_import_mcp_ms']:g} / import vermas_mcp "
                  f"{fig['startup_import_vermas_mcp_ms']:g} ms")
    table.add_row("tools/list bytes", "", "", "", " ".join(f"{p}={fig[f'tools_list_bytes_{p}']}"
                                                           for p, _ in PROFILES))
    for label, pre in (("mail run, raw clients", "mail_"), ("mail run, SDK clients", "mail_sdk_client_")):
        table.add_row(label, "", "", "", f"{fig[pre + 'sent']:g} sent by {cfg['workers']} procs "
                      f"({fig[pre + 'zygote_children']:g} zygote children), {fig[pre + 'stored']:g} stored, "
                      f"{fig[pre + 'errors']:g} errors in {fig[pre + 'elapsed_s']:g} s, driver CPU "
                      f"{fig[pre + 'driver_cpu_s']:g} s")
    Console(width=150).print(table)


async def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    figures: dict[str, float] = {}
    stages: dict[str, float] = {}
    t_start = time.perf_counter()
    load_start = os.getloadavg()
    t_stage = time.perf_counter()

    def stage(name: str) -> None:
        nonlocal t_stage
        now = time.perf_counter()
        stages[name] = round(now - t_stage, 2)
        t_stage = now

    log(f"seeding main town: {args.beads} beads, {args.messages} messages")
    town_dir = work / "town"
    town, seed_t = make_town(town_dir, args.beads, args.messages)
    try:
        figures.update(seed_beads_s=round(seed_t["beads_s"], 3), seed_messages_s=round(seed_t["messages_s"], 3),
                       seed_export_s=round(seed_t["export_s"], 3))
        log(f"seeded in {seed_t}")

        for kind in ("issues", "messages"):
            t0 = time.perf_counter()
            export_town(town, [kind], force=True)
            figures[f"export_{kind}_ms"] = ms(time.perf_counter() - t0)
        stage("seed_main")

        # Everything below runs as in a town booted by `vermas-runner up`: its zygote serves
        # each vermas-mcp launch (except the in-process cold starts, VERMAS_ZYGOTE=off).
        with zygote_running(town) as zygote:
            stage("zygote_start")
            figures["zygote_start_s"] = stages["zygote_start"]
            await main_town_stages(args, town, town_dir, zygote, figures, stage)
    finally:
        town.close()

    log(f"seeding big town: {args.big_beads} beads")
    big_dir = work / "big"
    big, big_t = make_town(big_dir, args.big_beads, 0)
    try:
        figures.update(seed_big_beads_s=round(big_t["beads_s"], 3), seed_big_export_s=round(big_t["export_s"], 3))
        stage("seed_big")
        with zygote_running(big):
            rb = await ready_big(big, big_dir, min(args.warmup, 20), max(50, args.calls // 2) if not args.quick
                                 else args.calls, args.mode)
    finally:
        big.close()
    figures.update(ready_big_core_p50_ms=rb["core_p50"], ready_big_core_p99_ms=rb["core_p99"],
                   ready_big_stdio_p50_ms=rb["stdio_p50"], ready_big_stdio_p99_ms=rb["stdio_p99"],
                   ready_big_stdio_errors=rb["stdio_errors"])
    stage("ready_big")
    log(f"stage seconds: {stages}")

    figures["total_s"] = round(time.perf_counter() - t_start, 1)
    config = {k: getattr(args, k) for k in ("quick", "beads", "messages", "calls", "big_beads", "workers",
                                             "sends", "cold_runs", "warmup", "mode")}
    # Other work on the machine skews every figure: record the load around the run.
    config.update(cpus=os.cpu_count(), python=sys.version.split()[0], sqlite=sqlite3.sqlite_version,
                  zygote="running (started by the bench; in-process cold starts use VERMAS_ZYGOTE=off)",
                  loadavg_1m_start=round(load_start[0], 2), loadavg_1m_end=round(os.getloadavg()[0], 2))
    targets = evaluate(figures)
    return {"config": config, "figures": figures, "stages_s": stages, "targets": targets,
            "all_pass": all(r["pass"] for r in targets)}


async def main_town_stages(args: argparse.Namespace, town: Town, town_dir: Path, zygote: int,
                           figures: dict[str, float], stage: Callable[[str], None]) -> None:
    lat = await stdio_latency(town_dir, args.warmup, args.calls, args.mode)
    for tool, v in lat.items():
        figures[f"{tool}_p50_ms"] = v["p50"]
        figures[f"{tool}_p99_ms"] = v["p99"]
        figures[f"{tool}_max_ms"] = v["max"]
        figures[f"{tool}_errors"] = v["errors"]
        figures[f"{tool}_novalidate_p50_ms"] = v["novalidate_p50"]
        figures[f"{tool}_novalidate_p99_ms"] = v["novalidate_p99"]
    stage("stdio_latency")
    raw = await raw_latency(town_dir, args.warmup, args.calls)
    for tool, v in raw.items():
        figures[f"raw_{tool}_p50_ms"] = v["p50"]
        figures[f"raw_{tool}_p99_ms"] = v["p99"]
        figures[f"raw_{tool}_max_ms"] = v["max"]
        figures[f"raw_{tool}_errors"] = v["errors"]
    stage("raw_latency")
    split = await split_latency(town, args.warmup, args.calls)
    for tool, v in split.items():
        figures[f"{tool}_core_p50_ms"] = v["core_p50"]
        figures[f"{tool}_inproc_p50_ms"] = v["inproc_p50"]
    stage("split_latency")

    cold = await cold_start(town_dir, args.cold_runs, args.mode)
    for path, times in cold["times"].items():
        figures.update({f"cold_start_{path}_median_ms": ms(statistics.median(times)),
                        f"cold_start_{path}_min_ms": ms(min(times)),
                        f"cold_start_{path}_max_ms": ms(max(times))})
    for profile, size in cold["sizes"].items():
        figures[f"tools_list_bytes_{profile}"] = size
    figures["tools_list_zygote_mismatches"] = cold["mismatches"]
    figures.update(startup_parts(1 if args.quick else 3))
    stage("cold_start")

    runs = (("mail_", "raw", raw_connect(town_dir)),
            ("mail_sdk_client_", "sdk", sdk_connect(town_dir, args.mode)))
    for pre, label, connect in runs:
        tp = await mail_throughput(town, connect, label, args.workers, args.sends, zygote)
        figures["mail_throughput_msgs_per_s" if label == "raw" else
                "mail_throughput_sdk_client_msgs_per_s"] = tp["msgs_per_s"]
        for key in ("sent", "stored", "lost", "duplicated", "errors", "elapsed_s", "spawn_s",
                    "driver_cpu_s", "zygote_children"):
            figures[pre + key] = tp[key]
        stage(f"mail_throughput_{label}")


def stop_leftover_zygotes(work: Path) -> None:
    """Backstop for an exit that skipped the finally blocks: a zygote of one of our towns
    that is still running (its pid file names it, its command line names the town)."""
    for pid_file in work.glob("*/.runtime/mcp-zygote.pid"):
        town_root = pid_file.parent.parent
        try:
            pid = int(pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if b"vermas_mcp.zygote" in cmdline and str(town_root.resolve()).encode() in cmdline:
            log(f"stopping leftover zygote {pid} of {town_root}")
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


def _terminated(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwind, so the zygotes are stopped and the towns removed


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="vermas-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        result = anyio.run(run, args, work)
    finally:
        signal.signal(signal.SIGTERM, previous)
        stop_leftover_zygotes(work)
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(result, indent=2)
    print(text, flush=True)
    if args.json_out:
        args.json_out.write_text(text + "\n")
    print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
