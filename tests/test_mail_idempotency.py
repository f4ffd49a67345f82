"""Issue 8 item 12: an idempotency key retries one message; reused for another, it is refused."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import call, fail
from tests.test_tools import snapshot
from vermas.town import Town

DIFFERENT = [
    ({"to": "deacon"}, "to"),
    ({"subject": "HANDOFF other"}, "subject"),
    ({"body": "another body"}, "body"),
]


async def test_same_key_same_message_returns_the_first(client_for: Any) -> None:
    async with client_for("gt/crew/ann") as ann, client_for("mayor") as mayor:
        first = await call(ann, "mail_send", to="mayor", subject="HANDOFF", body="b", idempotency_key="k1")
        retry = await call(ann, "mail_send", to="mayor", subject="HANDOFF", body="b", idempotency_key="k1")
        assert retry["id"] == first["id"]
        assert len((await call(mayor, "mail_inbox"))["messages"]) == 1


@pytest.mark.parametrize(("change", "field"), DIFFERENT, ids=[f for _, f in DIFFERENT])
async def test_same_key_different_message_is_refused(
    client_for: Any, town: Town, change: dict[str, str], field: str
) -> None:
    async with client_for("gt/crew/ann") as ann:
        first = await call(ann, "mail_send", to="mayor", subject="HANDOFF", body="b", idempotency_key="k1")
        before = snapshot(town)
        args = {"to": "mayor", "subject": "HANDOFF", "body": "b", **change}
        message = await fail(ann, "mail_send", idempotency_key="k1", **args)
        assert "already used" in message and first["id"] in message and field in message
        assert snapshot(town) == before
