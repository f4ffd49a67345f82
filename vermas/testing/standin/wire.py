"""The wire format: a turn's blocks as one Messages API JSON message or as the Server-Sent Events
Claude Code reads when it streams."""

from __future__ import annotations

import json
import uuid
from typing import Any

from vermas.testing.standin.request import Block, ModelRequest

# --------------------------------------------------------------------------------------------
# Responses
# --------------------------------------------------------------------------------------------


TURN_USAGE: dict[str, int] = {
    "input_tokens": 1201, "cache_creation_input_tokens": 307, "cache_read_input_tokens": 4003,
    "output_tokens": 83,
}
"""What every conversation turn reports it used: fixed and known, so a test can check that what
vermas reads back from Claude Code's transcripts adds up to exactly what was served (distinct
primes, so a field read into the wrong column or counted twice shows). Small next to any
auto-compaction threshold."""

AUXILIARY_USAGE: dict[str, int] = {
    "input_tokens": 31, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 7,
}
"""What a side request (title, probe, fork) reports: different from a turn's, so one counted as a
turn shows."""


def served_usage(req: ModelRequest) -> dict[str, int]:
    """The usage the stand-in reports for this request (final figures, as in message_delta)."""
    return dict(AUXILIARY_USAGE if req.is_auxiliary() else TURN_USAGE)


def _usage(req: ModelRequest, output_tokens: int | None = None) -> dict[str, Any]:
    usage: dict[str, Any] = served_usage(req)
    if output_tokens is not None:
        usage["output_tokens"] = output_tokens
    return usage


def _stop_reason(blocks: list[Block]) -> str:
    return "tool_use" if any(b.get("type") == "tool_use" for b in blocks) else "end_turn"


def message_json(req: ModelRequest, blocks: list[Block]) -> dict[str, Any]:
    """A complete (non-streaming) Messages API response."""
    return {
        "id": "msg_" + uuid.uuid4().hex[:24],
        "type": "message",
        "role": "assistant",
        "model": req.model,
        "content": blocks,
        "stop_reason": _stop_reason(blocks),
        "stop_sequence": None,
        "usage": _usage(req),
    }


def _chunks(text: str, size: int = 40) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def sse_events(req: ModelRequest, blocks: list[Block]) -> list[tuple[str, dict[str, Any]]]:
    """The Server-Sent Events a streaming Messages API response consists of, in order."""
    message = message_json(req, [])
    message["stop_reason"] = None
    message["usage"] = _usage(req, 1)  # as the API does: input counts first, output in message_delta
    events: list[tuple[str, dict[str, Any]]] = [("message_start", {"type": "message_start", "message": message})]
    for index, block in enumerate(blocks):
        if block.get("type") == "tool_use":
            start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
            deltas = [{"type": "input_json_delta", "partial_json": c} for c in _chunks(json.dumps(block.get("input") or {}))]
        else:
            start = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": c} for c in _chunks(str(block.get("text", "")))]
        events.append(("content_block_start", {"type": "content_block_start", "index": index, "content_block": start}))
        events.extend(("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d}) for d in deltas)
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    events.append(
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": _stop_reason(blocks), "stop_sequence": None},
                "usage": {"output_tokens": served_usage(req)["output_tokens"]},
            },
        )
    )
    events.append(("message_stop", {"type": "message_stop"}))
    return events
