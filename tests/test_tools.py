"""Every MCP tool through the SDK's in-memory Client against a real town store."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import call, fail, git, make_repo
from vermas.town import Town
from vermas_mcp.profiles import ALL_TOOLS, PROFILES


def snapshot(town: Town) -> tuple[Any, ...]:
    """Everything a tool could write, to prove a refused call wrote nothing."""
    with town.db.read() as conn:
        return tuple(
            conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
            for table in ("issues", "labels", "dependencies", "comments", "messages", "merge_requests", "meta")
        )


async def test_bead_lifecycle(client_for: Any, town: Town) -> None:
    async with client_for("mayor") as c:
        epic = await call(c, "bead_create", title="Epic", issue_type="epic", priority=1, labels=["ui", "v2"])
        assert epic["id"].startswith("hq-") and len(epic["id"]) == len("hq-") + 4
        assert epic["labels"] == ["ui", "v2"] and epic["created_by"] == "mayor"
        child = await call(c, "bead_create", title="Child", parent=epic["id"])
        child2 = await call(c, "bead_create", title="Child 2", parent=epic["id"])
        assert (child["id"], child2["id"]) == (f"{epic['id']}.1", f"{epic['id']}.2")
        shown = await call(c, "bead_show", bead_id=epic["id"])
        assert [d["issue_id"] for d in shown["dependents"]] == [child["id"], child2["id"]]
        assert all(d["type"] == "parent-child" for d in shown["dependents"])

        updated = await call(c, "bead_update", bead_id=child["id"], status="in_progress", notes="n1",
                             comment="started")
        assert updated["status"] == "in_progress" and updated["notes"] == "n1" and updated["started_at"]
        shown = await call(c, "bead_show", bead_id=child["id"])
        assert [cm["text"] for cm in shown["comments"]] == ["started"]

        listed = await call(c, "bead_list", status="in_progress")
        assert [b["id"] for b in listed["beads"]] == [child["id"]]
        assert set(listed["beads"][0]) == {"id", "title", "status", "priority", "issue_type", "assignee"}
        assert [b["id"] for b in (await call(c, "bead_list", label="ui"))["beads"]] == [epic["id"]]

        closed = await call(c, "bead_close", bead_id=child["id"], reason="done")
        assert closed["status"] == "closed" and closed["closed_at"] and closed["close_reason"] == "done"
        assert "already closed" in await fail(c, "bead_close", bead_id=child["id"])
        reopened = await call(c, "bead_update", bead_id=child["id"], status="open")
        assert reopened["closed_at"] is None and reopened["close_reason"] is None


async def test_ready_follows_bd_rules(client_for: Any) -> None:
    async with client_for("mayor") as c:
        blocker = await call(c, "bead_create", title="blocker", priority=3)
        blocked = await call(c, "bead_create", title="blocked", priority=0)
        low = await call(c, "bead_create", title="low", priority=4)
        await call(c, "bead_dep_add", bead_id=blocked["id"], depends_on_id=blocker["id"])
        related = await call(c, "bead_create", title="related only", priority=1)
        await call(c, "bead_dep_add", bead_id=related["id"], depends_on_id=blocker["id"], dep_type="related")
        ready = [b["id"] for b in (await call(c, "bead_ready"))["beads"]]
        assert ready == [related["id"], blocker["id"], low["id"]]
        await call(c, "bead_close", bead_id=blocker["id"])
        ready = [b["id"] for b in (await call(c, "bead_ready", limit=2))["beads"]]
        assert ready == [blocked["id"], related["id"]]  # a closed blocker never blocks
        assert "cycle" in await fail(c, "bead_dep_add", bead_id=blocker["id"], depends_on_id=blocked["id"])


async def test_sling_hook_and_unsling(client_for: Any) -> None:
    async with client_for("mayor") as mayor, client_for("gt/crew/ann") as ann:
        a = await call(mayor, "bead_create", title="A", description="do A")
        b = await call(mayor, "bead_create", title="B")
        assert (await call(ann, "hook_check"))["bead"] is None
        hooked = await call(mayor, "sling", bead_id=a["id"], target="gt/crew/ann")
        assert hooked["status"] == "hooked" and hooked["assignee"] == "gt/crew/ann"
        hook = await call(ann, "hook_check")
        assert hook["bead"]["id"] == a["id"] and hook["bead"]["description"] == "do A"
        assert "GUPP" in hook["instructions"]

        message = await fail(mayor, "sling", bead_id=b["id"], target="gt/crew/ann")
        assert "occupied by " + a["id"] in message
        message = await fail(mayor, "sling", bead_id=a["id"], target="gt/crew/bob")
        assert "already hooked by gt/crew/ann" in message
        assert "status and assignee change only" in await fail(ann, "bead_update", bead_id=a["id"], status="open")
        assert "unknown rig 'gt'" in await fail(mayor, "sling", bead_id=b["id"], target="gt")

        back = await call(ann, "unsling", bead_id=a["id"])
        assert back["status"] == "open" and back["assignee"] is None
        assert (await call(ann, "hook_check"))["bead"] is None
    async with client_for("gt/polecats/nux", profile="all") as nux:
        assert "polecats do not sling" in await fail(nux, "sling", bead_id=b["id"], target="gt/crew/ann")


async def test_unsling_permissions(client_for: Any) -> None:
    async with client_for("mayor") as mayor, client_for("gt/crew/bob") as bob, \
            client_for("gt/witness") as witness, client_for("other/witness") as other:
        a = await call(mayor, "bead_create", title="A")
        await call(mayor, "sling", bead_id=a["id"], target="gt/crew/ann")
        assert "may not unsling" in await fail(bob, "unsling", bead_id=a["id"])
        assert "may not unsling" in await fail(other, "unsling", bead_id=a["id"])
        assert (await call(witness, "unsling", bead_id=a["id"]))["status"] == "open"
        assert "not hooked" in await fail(witness, "unsling", bead_id=a["id"])


async def test_mail_semantics(client_for: Any) -> None:
    async with client_for("mayor") as mayor, client_for("gt/witness") as witness, \
            client_for("gt/crew/ann") as ann, client_for("overseer") as overseer:
        sent = await call(mayor, "mail_send", to="gt/witness", subject="HELP stuck polecat", body="b" * 3000)
        assert sent["kind"] == "HELP" and sent["thread_id"] == sent["id"]
        for _ in range(2):  # reading the inbox never consumes
            inbox = (await call(witness, "mail_inbox"))["messages"]
            assert [m["id"] for m in inbox] == [sent["id"]]
            assert inbox[0]["body_truncated"] and len(inbox[0]["body"]) == 2000
        assert (await call(witness, "hook_check"))["unread_mail"] == 1
        full = await call(witness, "mail_read", message_id=sent["id"])
        assert len(full["body"]) == 3000 and full["read_at"] and full["acked_at"] is None
        assert (await call(witness, "mail_inbox"))["messages"] == []
        assert len((await call(witness, "mail_inbox", unread_only=False))["messages"]) == 1
        acked = await call(witness, "mail_ack", message_id=sent["id"])
        assert acked["acked"] and acked["acked_at"]
        again = await call(witness, "mail_ack", message_id=sent["id"])
        assert again["acked_at"] == acked["acked_at"]

        reply = await call(witness, "mail_send", to="mayor", subject="re: HELP", reply_to=sent["id"])
        assert reply["thread_id"] == sent["id"] and reply["reply_to"] == sent["id"]

        first = await call(ann, "mail_send", to="mayor", subject="HANDOFF", idempotency_key="k1")
        retry = await call(ann, "mail_send", to="mayor", subject="HANDOFF", idempotency_key="k1")
        assert first["id"] == retry["id"]
        assert len((await call(mayor, "mail_inbox"))["messages"]) == 2

        assert "only its own mailbox" in await fail(ann, "mail_inbox", address="mayor")
        assert "addressed to mayor" in await fail(ann, "mail_read", message_id=first["id"])
        peek = await call(overseer, "mail_inbox", address="mayor")
        assert {m["id"] for m in peek["messages"]} == {first["id"], reply["id"]}
        assert (await call(overseer, "mail_read", message_id=first["id"]))["read_at"] is None  # not the recipient
        assert "no message" in await fail(mayor, "mail_read", message_id="msg-doesnotexist")


async def test_polecat_done_records_merge_request(client_for: Any, town: Town) -> None:
    rig = make_repo(town.root / "gt" / "mayor" / "rig")
    worktree = town.root / "gt" / "polecats" / "nux"
    git(rig, "worktree", "add", "-q", "-b", "polecat/nux/work", str(worktree))
    async with client_for("mayor") as mayor, client_for("gt/polecats/nux") as nux, \
            client_for("gt/witness") as witness:
        assert "no hooked work" in await fail(nux, "polecat_done")
        bead = await call(mayor, "bead_create", title="Add feature")
        await call(mayor, "sling", bead_id=bead["id"], target="gt/polecats/nux")
        before = snapshot(town)
        assert "no commits" in await fail(nux, "polecat_done", summary="nothing yet")
        (worktree / "README.md").write_text("changed\n")
        assert "uncommitted changes" in await fail(nux, "polecat_done")
        assert snapshot(town) == before
        git(worktree, "commit", "-q", "-am", "feature")
        head = git(worktree, "rev-parse", "HEAD")

        mr = await call(nux, "polecat_done", summary="added it")
        assert (mr["branch"], mr["commit"], mr["commits_ahead"], mr["state"]) == (
            "polecat/nux/work", head, 1, "queued")
        source = await call(mayor, "bead_show", bead_id=bead["id"])
        assert source["status"] == "in_progress" and source["assignee"] == "gt/polecats/nux"
        mr_bead = await call(mayor, "bead_show", bead_id=mr["id"])
        assert mr_bead["issue_type"] == "merge-request" and f"commit: {head}" in mr_bead["description"]
        assert (await call(nux, "hook_check"))["bead"] is None
        inbox = (await call(witness, "mail_inbox"))["messages"]
        assert len(inbox) == 1 and inbox[0]["kind"] == "POLECAT_DONE"
        assert "branch: polecat/nux/work" in inbox[0]["body"] and f"commit: {head}" in inbox[0]["body"]
        assert "no hooked work" in await fail(nux, "polecat_done")

        other = await call(mayor, "bead_create", title="Too hard")
        await call(mayor, "sling", bead_id=other["id"], target="gt/polecats/nux")
        escalated = await call(nux, "polecat_done", status="ESCALATED", summary="need help")
        assert escalated["id"] is None and escalated["state"] == "none"
        assert (await call(mayor, "bead_show", bead_id=other["id"]))["status"] == "blocked"
    async with client_for("gt/crew/ann", profile="all") as ann:
        assert "for polecats" in await fail(ann, "polecat_done")


async def test_polecat_done_without_worktree(client_for: Any) -> None:
    async with client_for("mayor") as mayor, client_for("gt/polecats/slit") as slit:
        bead = await call(mayor, "bead_create", title="Think")
        await call(mayor, "sling", bead_id=bead["id"], target="gt/polecats/slit")
        assert "no git worktree" in await fail(slit, "polecat_done")
        deferred = await call(slit, "polecat_done", status="DEFERRED")
        assert deferred["state"] == "none"
        shown = await call(mayor, "bead_show", bead_id=bead["id"])
        assert shown["status"] == "deferred" and shown["assignee"] is None
        assert "allowed: COMPLETED, ESCALATED, DEFERRED" in await fail(slit, "polecat_done", status="DONE")


async def test_convoys_land(client_for: Any) -> None:
    async with client_for("mayor") as c:
        a = await call(c, "bead_create", title="a")
        b = await call(c, "bead_create", title="b")
        convoy = await call(c, "convoy_create", title="Release 1", bead_ids=[a["id"], b["id"]])
        assert (convoy["closed"], convoy["total"], convoy["landed"]) == (0, 2, False)
        ready = [x["id"] for x in (await call(c, "bead_ready"))["beads"]]
        assert set(ready) == {a["id"], b["id"]}  # tracks never blocks, convoys are not work
        await call(c, "bead_close", bead_id=a["id"])
        assert (await call(c, "convoy_status", convoy_id=convoy["id"]))["closed"] == 1
        assert [x["id"] for x in (await call(c, "convoy_list"))["convoys"]] == [convoy["id"]]
        await call(c, "bead_update", bead_id=b["id"], status="closed")
        landed = await call(c, "convoy_status", convoy_id=convoy["id"])
        assert landed["landed"] and landed["status"] == "closed"
        assert (await call(c, "convoy_list"))["convoys"] == []
        assert len((await call(c, "convoy_list", include_landed=True))["convoys"]) == 1
        assert "no bead" in await fail(c, "convoy_create", title="x", bead_ids=["hq-zzzz"])
        assert "no convoy" in await fail(c, "convoy_status", convoy_id=a["id"])


async def test_town_status(client_for: Any) -> None:
    async with client_for("mayor") as c:
        a = await call(c, "bead_create", title="a")
        await call(c, "bead_create", title="b")
        await call(c, "sling", bead_id=a["id"], target="gt/crew/ann")
        await call(c, "mail_send", to="gt/witness", subject="NUDGE wake up")
        status = await call(c, "town_status")
        assert status["beads_by_status"] == {"hooked": 1, "open": 1}
        assert status["hooked"] == [{"agent": "gt/crew/ann", "bead_id": a["id"], "title": "a"}]
        assert status["unread_mail"] == {"gt/witness": 1}


BAD_CALLS = [
    ("bead_show", {"bead_id": "hq-nope"}, "no bead 'hq-nope'"),
    ("bead_show", {"bead_id": "../x"}, "invalid bead_id"),
    ("bead_show", {"bead_id": "hq-a/b"}, "invalid bead_id"),
    ("bead_create", {"title": ""}, "title must be non-empty"),
    ("bead_create", {"title": "   "}, "title must be non-empty"),
    ("bead_create", {"title": "x" * 70_000}, "at most 500"),
    ("bead_create", {"title": "x", "description": "y" * (1024 * 1024 + 1)}, "1 MiB"),
    ("bead_create", {"title": "x", "priority": 5}, "0 (critical) to 4"),
    ("bead_create", {"title": "x", "priority": -1}, "0 (critical) to 4"),
    ("bead_create", {"title": "x", "issue_type": "story"}, "allowed: task, bug"),
    ("bead_create", {"title": "x", "labels": ["bad label!"]}, "invalid label"),
    ("bead_create", {"title": "x", "parent": "hq-missing"}, "no bead 'hq-missing'"),
    ("bead_update", {"bead_id": "BEAD", "status": "done"}, "allowed: open, in_progress"),
    ("bead_update", {"bead_id": "BEAD", "status": "hooked"}, "only by sling"),
    ("bead_update", {"bead_id": "BEAD", "assignee": "../../etc"}, "invalid address"),
    ("bead_update", {"bead_id": "BEAD"}, "nothing to update"),
    ("bead_dep_add", {"bead_id": "BEAD", "depends_on_id": "BEAD"}, "itself"),
    ("bead_dep_add", {"bead_id": "BEAD", "depends_on_id": "hq-zz", "dep_type": "blocks"}, "no bead"),
    ("bead_dep_add", {"bead_id": "BEAD", "depends_on_id": "BEAD", "dep_type": "needs"}, "allowed: blocks"),
    ("bead_ready", {"limit": 0}, "1 to 10000"),
    ("bead_ready", {"limit": 10_001}, "1 to 10000"),
    ("bead_list", {"status": "tombstone"}, "allowed: open"),
    ("sling", {"bead_id": "BEAD", "target": "gt/polecats/"}, "invalid address"),
    ("sling", {"bead_id": "BEAD", "target": "gt/polecats/../x"}, "invalid address"),
    ("mail_send", {"to": "nobody here", "subject": "x"}, "invalid address"),
    ("mail_send", {"to": "mayor", "subject": ""}, "subject must be non-empty"),
    ("mail_send", {"to": "mayor", "subject": "x", "body": "y" * (1024 * 1024 + 1)}, "1 MiB"),
    ("mail_send", {"to": "mayor", "subject": "x", "reply_to": "msg-missing"}, "no message"),
    ("mail_read", {"message_id": "../etc/passwd"}, "invalid message_id"),
    ("mail_send", {"to": "gt/polecats/nux\n", "subject": "x"}, "to must be a single line"),
    ("bead_show", {"bead_id": "hq-abcd\n"}, "bead_id must be a single line"),
    ("convoy_create", {"title": "c", "bead_ids": []}, "1 to 1000"),
]


@pytest.mark.parametrize(("tool", "args", "expected"), BAD_CALLS, ids=[f"{t}-{e[:20]}" for t, _, e in BAD_CALLS])
async def test_bad_input_is_refused_and_writes_nothing(
    client_for: Any, town: Town, tool: str, args: dict[str, Any], expected: str
) -> None:
    async with client_for("overseer") as c:
        bead = await call(c, "bead_create", title="existing")
        args = {k: (bead["id"] if v == "BEAD" else v) for k, v in args.items()}
        before = snapshot(town)
        message = await fail(c, tool, **args)
        assert expected in message
        assert snapshot(town) == before


async def test_profiles_are_small_and_role_scoped(client_for: Any) -> None:
    async with client_for("gt/polecats/nux") as c:
        names = {t.name for t in (await c.list_tools()).tools}
    assert names == set(PROFILES["polecat"]) and len(names) <= 11  # 11 since mol_status, mol_step_done
    async with client_for("overseer") as c:
        tools = (await c.list_tools()).tools
    assert {t.name for t in tools} >= set(ALL_TOOLS)
    by_name = {t.name: t for t in tools}
    assert by_name["bead_show"].annotations.read_only_hint is True
    assert by_name["bead_close"].annotations.destructive_hint is not False  # MCP's default is True
    assert by_name["bead_create"].annotations.destructive_hint is False
    assert by_name["bead_show"].output_schema is not None


async def test_legacy_handshake(client_for: Any) -> None:
    async with client_for("mayor", mode="legacy") as c:
        bead = await call(c, "bead_create", title="legacy")
        assert (await call(c, "bead_show", bead_id=bead["id"]))["title"] == "legacy"


async def test_export_follows_writes(client_for: Any, town: Town) -> None:
    from vermas.export import export_town

    async with client_for("mayor") as c:
        bead = await call(c, "bead_create", title="exported")
        await call(c, "bead_close", bead_id=bead["id"])
    export_town(town)
    lines = [json.loads(line) for line in (town.beads_dir / "issues.jsonl").read_text().splitlines()]
    assert [(x["_type"], x["id"], x["status"]) for x in lines] == [("issue", bead["id"], "closed")]
    assert lines[0]["closed_at"]


async def test_nudge_without_session_is_queued_as_mail(client_for: Any) -> None:
    async with client_for("gt/witness") as witness, client_for("gt/polecats/nux") as nux:
        result = await call(witness, "nudge", target="gt/polecats/nux", message="check\nyour hook")
        assert result["submitted"] is False and result["queued_message_id"]
        inbox = (await call(nux, "mail_inbox"))["messages"]
        assert [(m["kind"], m["sender"], m["body"]) for m in inbox] == [("NUDGE", "gt/witness", "check your hook")]
        assert (await call(nux, "hook_check"))["unread_mail"] == 1
        assert "invalid address" in await fail(witness, "nudge", target="nobody", message="x")
        assert "1 to 4000" in await fail(witness, "nudge", target="mayor", message="  ")


async def test_a_nudge_repeated_while_unread_is_one_message(client_for: Any) -> None:
    async with client_for("gt/witness") as witness, client_for("gt/polecats/nux") as nux:
        first = await call(witness, "nudge", target="gt/polecats/nux", message="check your hook")
        again = await call(witness, "nudge", target="gt/polecats/nux", message="check your hook")
        assert again["queued_message_id"] == first["queued_message_id"] and "already waits unread" in again["reason"]
        other = await call(witness, "nudge", target="gt/polecats/nux", message="something else")
        assert other["queued_message_id"] != first["queued_message_id"]
        await call(nux, "mail_read", message_id=first["queued_message_id"])
        later = await call(witness, "nudge", target="gt/polecats/nux", message="check your hook")
        assert later["queued_message_id"] not in (first["queued_message_id"], other["queued_message_id"])
        inbox = (await call(nux, "mail_inbox", unread_only=False))["messages"]
        assert len(inbox) == 3


async def test_fixes_from_review(client_for: Any, town: Town) -> None:
    """Comment-only updates bump updated_at; only the holder or a coordinator closes a
    hooked bead; a re-slung polecat's second report is mailed; a spawn never reuses a
    polecat name that holds work slung to it directly."""
    from vermas import polecat
    from vermas.addresses import parse_address
    from vermas.town import RigConfig

    async with client_for("mayor") as mayor, client_for("gt/crew/bob") as bob, \
            client_for("gt/polecats/nux") as nux, client_for("gt/witness") as witness:
        bead = await call(mayor, "bead_create", title="commented")
        after = await call(mayor, "bead_update", bead_id=bead["id"], comment="a note")
        assert after["updated_at"] > bead["updated_at"]

        await call(mayor, "sling", bead_id=bead["id"], target="gt/crew/ann")
        assert "only its holder" in await fail(bob, "bead_close", bead_id=bead["id"])
        assert (await call(mayor, "bead_close", bead_id=bead["id"]))["status"] == "closed"

        work = await call(mayor, "bead_create", title="hard")
        for _ in range(2):
            await call(mayor, "sling", bead_id=work["id"], target="gt/polecats/nux")
            await call(nux, "polecat_done", status="ESCALATED", summary="stuck")
        reports = [m for m in (await call(witness, "mail_inbox"))["messages"] if m["kind"] == "POLECAT_DONE"]
        assert len(reports) == 2

        direct = await call(mayor, "bead_create", title="direct")
        await call(mayor, "sling", bead_id=direct["id"], target="gt/polecats/nux")
    town.config.rigs["gt"] = RigConfig(name="gt", git_url="unused", prefix="gt", max_polecats=2)
    town.save_config()
    spawned = await call_allocate(town, polecat, parse_address("mayor"))
    assert spawned.name == "slit"  # nux holds directly slung work


async def call_allocate(town: Town, polecat: Any, actor: Any) -> Any:
    from vermas import beads

    bead = beads.create(town, actor, "via rig")
    return polecat.allocate(town, actor, bead.id, "gt")
