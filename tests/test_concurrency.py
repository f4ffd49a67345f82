"""Many `vermas-mcp` processes (one per agent, as Claude Code runs them) writing one town at
once over real stdio. Each server is its own OS process with its own SQLite connection, so
this is real multi-process concurrency, driven from one test process with anyio tasks.

Afterwards the store is opened directly and checked: nothing lost, nothing duplicated,
per-recipient read state intact; sling's compare-and-set lets exactly one racer win.
"""

from __future__ import annotations

import random
import shutil
import sys
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, StdioServerParameters

from vermas import beads
from vermas.addresses import parse_address
from vermas.town import Town

VERMAS_MCP = shutil.which("vermas-mcp", path=str(Path(sys.executable).parent))
WORKERS = [f"rig1/crew/w{i}" for i in range(8)]
AGENTS = WORKERS + ["overseer"]
OPS = 200  # mail sends per agent; with creates, updates, retries, reads, comments ~480 calls each

Work = Callable[[Client, int, str], Awaitable[Any]]


def params(town_dir: Path, actor: str) -> StdioServerParameters:
    assert VERMAS_MCP, f"vermas-mcp console script not found next to {sys.executable}"
    return StdioServerParameters(command=VERMAS_MCP, env={"VERMAS_TOWN": str(town_dir), "BD_ACTOR": actor})


async def run_agents(town_dir: Path, actors: list[str], work: Work, mode: str = "auto") -> list[Any]:
    """Start one server per actor concurrently; once all are connected, release them at
    the same moment and return each one's work result, in actor order."""
    results: list[Any] = [None] * len(actors)
    connected = 0
    all_connected = anyio.Event()
    go = anyio.Event()

    async def agent(index: int, actor: str) -> None:
        nonlocal connected
        async with Client(params(town_dir, actor), mode=mode, read_timeout_seconds=120) as client:
            connected += 1
            if connected == len(actors):
                all_connected.set()
            await go.wait()
            results[index] = await work(client, index, actor)

    with anyio.fail_after(240):
        async with anyio.create_task_group() as tg:
            for i, actor in enumerate(actors):
                tg.start_soon(agent, i, actor)
            await all_connected.wait()
            go.set()
    return results


async def ok(client: Client, name: str, **args: Any) -> dict[str, Any]:
    result = await client.call_tool(name, args)
    assert not result.is_error, f"{name}({args}) failed: {result.content}"
    return result.structured_content


def error_text(result: Any) -> str:
    return " ".join(getattr(c, "text", "") for c in result.content)


@pytest.fixture
def town_dir(tmp_path: Path) -> Path:
    town, _ = Town.init(tmp_path / "town")
    town.close()
    return tmp_path / "town"


async def test_many_writers_lose_and_duplicate_nothing(town_dir: Path) -> None:
    town = Town.open(town_dir)
    shared = beads.create(town, parse_address("overseer"), "shared bead everyone comments on")
    town.close()

    async def work(c: Client, index: int, me: str) -> dict[str, Any]:
        rng = random.Random(index)
        others = [a for a in AGENTS if a != me]
        sent: dict[str, dict[str, Any]] = {}  # idempotency key -> message
        created: list[str] = []
        last_update: dict[str, tuple[int, str]] = {}
        read_ids: list[str] = []
        comments = 0
        for i in range(OPS):
            key = f"{me}#{i}"
            to = others[(index + i) % len(others)]
            msg = await ok(c, "mail_send", to=to, subject=f"HANDOFF {i} from {me}", body=f"body {key}",
                           idempotency_key=key)
            assert (msg["sender"], msg["to"]) == (me, to)
            sent[key] = msg
            if i % 7 == 0:  # a retry after a lost reply: same key, same message
                again = await ok(c, "mail_send", to=to, subject=f"HANDOFF {i} from {me}",
                                 body=f"body {key}", idempotency_key=key)
                assert again["id"] == msg["id"]
            if i % 40 == 3:  # two concurrent sends with one new key from one session
                dkey = f"{me}#dup{i}"
                got: list[str] = []

                async def send_dup() -> None:
                    got.append((await ok(c, "mail_send", to=to, subject=f"NUDGE dup {i}",  # noqa: B023
                                         idempotency_key=dkey))["id"])  # noqa: B023

                async with anyio.create_task_group() as tg:
                    tg.start_soon(send_dup)
                    tg.start_soon(send_dup)
                assert got[0] == got[1], f"concurrent retries of {dkey} made two messages: {got}"
                sent[dkey] = {"id": got[0], "to": to}
            if i % 2 == 0:
                bead = await ok(c, "bead_create", title=f"{me} bead {i}", priority=i % 5)
                assert bead["created_by"] == me
                created.append(bead["id"])
            elif created:
                target = rng.choice(created)
                prio, notes = rng.randrange(5), f"{me} update {i}"
                updated = await ok(c, "bead_update", bead_id=target, priority=prio, notes=notes)
                assert updated["priority"] == prio and updated["notes"] == notes
                last_update[target] = (prio, notes)
            if i % 10 == 5:
                await ok(c, "bead_update", bead_id=shared.id, comment=f"{me} comment {i}")
                comments += 1
            if i % 4 == 2:
                inbox = await ok(c, "mail_inbox", unread_only=True, limit=3)
                for m in inbox["messages"]:
                    assert m["to"] == me and m["read_at"] is None
                if inbox["messages"]:
                    mid = inbox["messages"][rng.randrange(len(inbox["messages"]))]["id"]
                    read = await ok(c, "mail_read", message_id=mid)
                    assert read["to"] == me and read["read_at"] is not None
                    read_ids.append(mid)
        return {"sent": sent, "created": created, "updates": last_update, "read": read_ids,
                "comments": comments}

    results = await run_agents(town_dir, AGENTS, work)

    town = Town.open(town_dir)
    try:
        assert town.db.integrity_check() == "ok"
        with town.db.read() as conn:
            messages = {r["id"]: dict(r) for r in conn.execute("SELECT * FROM messages")}
            issues = {r["id"]: dict(r) for r in conn.execute("SELECT * FROM issues")}
            shared_comments = conn.execute(
                "SELECT id, author FROM comments WHERE issue_id = ?", (shared.id,)).fetchall()

        # Mail: every acknowledged id present, one message per (sender, key), exact count.
        expected_keys = {(AGENTS[i], k): m for i, r in enumerate(results) for k, m in r["sent"].items()}
        assert len(messages) == len(expected_keys), (len(messages), len(expected_keys))
        by_key = Counter((m["sender"], m["idempotency_key"]) for m in messages.values())
        assert max(by_key.values()) == 1, [k for k, n in by_key.items() if n > 1][:5]
        for (sender, key), acked in expected_keys.items():
            row = messages.get(acked["id"])
            assert row is not None, f"acknowledged message {acked['id']} ({sender} {key}) lost"
            assert (row["sender"], row["idempotency_key"], row["recipient"]) == (sender, key, acked["to"])

        # Read state: exactly the messages each recipient read are marked read, no others.
        read_by = {mid: AGENTS[i] for i, r in enumerate(results) for mid in r["read"]}
        assert len(read_by) == sum(len(r["read"]) for r in results), "a message was read twice as unread"
        for mid, row in messages.items():
            if mid in read_by:
                assert row["read_at"] is not None and row["recipient"] == read_by[mid]
            else:
                assert row["read_at"] is None, f"{mid} marked read but nobody read it"
            assert row["acked_at"] is None

        # Beads: every acknowledged id present, unique, exact count; updates kept.
        created = [b for r in results for b in r["created"]]
        assert len(created) == len(set(created)) == 9 * (OPS // 2)
        assert set(issues) == set(created) | {shared.id}
        for i, r in enumerate(results):
            for bead_id in r["created"]:
                assert issues[bead_id]["created_by"] == AGENTS[i]
            for bead_id, (prio, notes) in r["updates"].items():
                assert (issues[bead_id]["priority"], issues[bead_id]["notes"]) == (prio, notes)
        total_comments = sum(r["comments"] for r in results)
        assert len(shared_comments) == total_comments
        assert sorted(int(c["id"]) for c in shared_comments) == list(range(1, total_comments + 1))
        assert Counter(c["author"] for c in shared_comments) == {
            AGENTS[i]: r["comments"] for i, r in enumerate(results)}

        # Cross-check one inbox through a fresh server against the store.
        unread = defaultdict(int)
        for row in messages.values():
            unread[row["recipient"]] += row["read_at"] is None

        async def check(c: Client, index: int, me: str) -> None:
            status = await ok(c, "town_status")
            assert status["unread_mail"] == {k: v for k, v in unread.items() if v}
            hook = await ok(c, "hook_check")
            assert hook["unread_mail"] == unread[me]

        await run_agents(town_dir, ["overseer"], check, mode="legacy")
    finally:
        town.close()


async def test_sling_races_have_exactly_one_winner(town_dir: Path) -> None:
    rounds = 4
    town = Town.open(town_dir)
    boss = parse_address("overseer")
    same_bead = [beads.create(town, boss, f"contested {r}").id for r in range(rounds)]
    many = [[beads.create(town, boss, f"round {r} bead {i}").id for i in range(len(WORKERS))]
            for r in range(rounds)]
    town.close()

    async def work(c: Client, index: int, me: str) -> list[tuple[str, Any]]:
        out = []
        for r in range(rounds):
            # Race 1: everyone slings the same bead to a different agent.
            res = await c.call_tool("sling", {"bead_id": same_bead[r], "target": f"rig1/crew/t{r}x{index}"})
            out.append(("same-bead", res))
            # Race 2: everyone slings a different bead onto the same agent.
            res = await c.call_tool("sling", {"bead_id": many[r][index], "target": f"rig1/crew/hot{r}"})
            out.append(("same-agent", res))
        return out

    results = await run_agents(town_dir, WORKERS, work)

    town = Town.open(town_dir)
    try:
        for r in range(rounds):
            calls = [res[2 * r][1] for res in results]
            winners = [(i, c) for i, c in enumerate(calls) if not c.is_error]
            assert len(winners) == 1, f"round {r}: {len(winners)} slings of one bead succeeded"
            wi, win = winners[0]
            holder = f"rig1/crew/t{r}x{wi}"
            assert win.structured_content["assignee"] == holder
            assert win.structured_content["status"] == "hooked"
            for i, c in enumerate(calls):
                if i != wi:
                    assert f"already hooked by {holder}" in error_text(c), error_text(c)
            with town.db.read() as conn:
                row = conn.execute("SELECT status, assignee FROM issues WHERE id = ?",
                                   (same_bead[r],)).fetchone()
                assert tuple(row) == ("hooked", holder)
                for i in range(len(WORKERS)):
                    hooked = conn.execute(
                        "SELECT COUNT(*) FROM issues WHERE status = 'hooked' AND assignee = ?",
                        (f"rig1/crew/t{r}x{i}",)).fetchone()[0]
                    assert hooked == (1 if i == wi else 0)

            calls = [res[2 * r + 1][1] for res in results]
            winners = [(i, c) for i, c in enumerate(calls) if not c.is_error]
            assert len(winners) == 1, f"round {r}: {len(winners)} beads hooked onto one agent"
            wi, win = winners[0]
            assert win.structured_content["id"] == many[r][wi]
            for i, c in enumerate(calls):
                if i != wi:
                    assert f"rig1/crew/hot{r}'s hook is occupied by {many[r][wi]}" in error_text(c), \
                        error_text(c)
            with town.db.read() as conn:
                rows = conn.execute(
                    f"SELECT id, status, assignee FROM issues WHERE id IN ({','.join('?' * len(WORKERS))})",
                    many[r]).fetchall()
            state = {row["id"]: (row["status"], row["assignee"]) for row in rows}
            assert state[many[r][wi]] == ("hooked", f"rig1/crew/hot{r}")
            assert all(v == ("open", None) for k, v in state.items() if k != many[r][wi]), state
        assert town.db.integrity_check() == "ok"
    finally:
        town.close()
