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


def _usage(req: ModelRequest, output_tokens: int) -> dict[str, Any]:
    # A rough, small input count: real sizes would only matter for auto-compaction thresholds.
    return {
        "input_tokens": max(1, req.raw_size // 4),
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def _stop_reason(blocks: list[Block]) -> str:
    return "tool_use" if any(b.get("type") == "tool_use" for b in blocks) else "end_turn"


def _output_tokens(blocks: list[Block]) -> int:
    return max(1, len(json.dumps(blocks)) // 4)


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
        "usage": _usage(req, _output_tokens(blocks)),
    }


def _chunks(text: str, size: int = 40) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def sse_events(req: ModelRequest, blocks: list[Block]) -> list[tuple[str, dict[str, Any]]]:
    """The Server-Sent Events a streaming Messages API response consists of, in order."""
    message = message_json(req, [])
    message["stop_reason"] = None
    message["usage"] = _usage(req, 1)
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
                "usage": {"output_tokens": _output_tokens(blocks)},
            },
        )
    )
    events.append(("message_stop", {"type": "message_stop"}))
    return events
