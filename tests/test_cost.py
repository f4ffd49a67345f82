"""Cost per agent and per bead: transcripts read once per message and incrementally, usage
attributed to the bead hooked at the time (hook_log, kept by the store's triggers), the
inspector's claude -p costs, the price table and its town.toml overrides. The real CLI's
numbers are checked end to end in tests/test_town_e2e.py."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from vermas import beads, cost, prices, sling
from vermas.addresses import parse_address
from vermas.errors import ConfigError
from vermas.inspector import backend
from vermas.inspector.models import ModelCall
from vermas.town import Town, load_config

from tests.test_hook_events import fire

POLECAT = "sample/polecats/nux"
MAYOR = parse_address("mayor")


@pytest.fixture(autouse=True)
def claude_config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The agents' Claude config folder is tmp_path: transcripts are read only under it."""
    monkeypatch.setenv("CLAUDE_CONFIG_DIR", str(tmp_path))
    return tmp_path


def stamp(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + f".{int(at * 1000) % 1000:03d}Z"


def assistant(msg_id: str, at: float, usage: dict[str, int], block: str = "text", model: str = "claude-opus-4-5",
              **extra: Any) -> dict[str, Any]:
    """One transcript entry as Claude Code 2.1.332 writes it (one per content block)."""
    return {"type": "assistant", "sessionId": "s-1", "timestamp": stamp(at), **extra,
            "message": {"id": msg_id, "model": model, "role": "assistant", "content": [{"type": block}],
                        "usage": {**usage, "service_tier": "standard", "cache_creation": {}}}}


USAGE = {"input_tokens": 1201, "cache_creation_input_tokens": 307, "cache_read_input_tokens": 4003, "output_tokens": 83}


def lines(*records: dict[str, Any]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


# --------------------------------------------------------------------------- pure: parsing


def test_one_message_written_per_block_counts_once() -> None:
    data = lines({"type": "user", "message": {"content": "go"}},
                 assistant("msg_a", 100.0, USAGE, "text"), assistant("msg_a", 100.1, USAGE, "tool_use"),
                 assistant("msg_b", 101.0, USAGE))
    chunk = cost.parse_chunk(data)
    assert [e.message_id for e in chunk.entries] == ["msg_a", "msg_b"]
    assert chunk.entries[0].tokens == cost.Tokens(input_tokens=1201, output_tokens=83, cache_read_tokens=4003,
                                                  cache_creation_tokens=307)
    assert chunk.entries[0].at == pytest.approx(100.0) and chunk.consumed == len(data)


def test_partial_last_line_is_left_for_the_next_read() -> None:
    whole = lines(assistant("msg_a", 100.0, USAGE))
    tail = json.dumps(assistant("msg_b", 101.0, USAGE)).encode()[:50]
    chunk = cost.parse_chunk(whole + tail)
    assert [e.message_id for e in chunk.entries] == ["msg_a"] and chunk.consumed == len(whole)
    assert cost.parse_chunk(tail).consumed == 0


def test_damaged_and_foreign_lines_are_skipped_and_cost_state_is_kept() -> None:
    data = (b'{"type": "assistant", "usage" broken\n' + lines(
        {"type": "assistant", "message": {"id": "x", "usage": "odd"}, "timestamp": stamp(1)},
        {"type": "assistant", "message": {"usage": USAGE}, "timestamp": stamp(1)},  # no id
        {"type": "cost-state", "totalCostUSD": 0.25}, assistant("msg_c", 5.0, {"input_tokens": -3, "output_tokens": 9}),
        {"type": "cost-state", "totalCostUSD": 0.5}))
    chunk = cost.parse_chunk(data)
    assert [(e.message_id, e.tokens.input_tokens, e.tokens.output_tokens) for e in chunk.entries] == [("msg_c", 0, 9)]
    assert chunk.claude_cost_usd == 0.5


def test_partial_output_count_is_merged_to_the_larger_and_cost_usd_is_read() -> None:
    early = assistant("msg_a", 10.0, {**USAGE, "output_tokens": 1}, costUSD=0.01)
    late = assistant("msg_a", 11.0, USAGE)
    entry = cost.parse_chunk(lines(early, late)).entries[0]
    assert entry.tokens.output_tokens == 83 and entry.at == pytest.approx(10.0) and entry.reported_cost_usd == 0.01


# --------------------------------------------------------------------------- pure: attribution, pricing


def spans(*rows: tuple[str, float, bool]) -> list[cost.HookSpan]:
    return [cost.HookSpan(bead_id=b, at=a, held=h) for b, a, h in rows]


@pytest.mark.parametrize(("at", "bead"), [(5, None), (10, "gt-a"), (15, "gt-a"), (20, None), (25, None),
                                          (30, "gt-b"), (99, "gt-b")])
def test_bead_at_follows_holds_and_releases(at: float, bead: str | None) -> None:
    log = spans(("gt-a", 10, True), ("gt-a", 20, False), ("gt-b", 30, True))
    assert cost.bead_at(log, at) == bead


def test_release_of_another_bead_keeps_the_current_hold() -> None:
    log = spans(("gt-a", 10, True), ("gt-b", 12, True), ("gt-a", 14, False))
    assert cost.bead_at(log, 15) == "gt-b"


def test_family_and_estimate() -> None:
    assert prices.family("claude-opus-4-5-20251101") == "opus"
    assert prices.family("claude-3-5-haiku") == "haiku"
    assert prices.family("mystery-model") == prices.DEFAULT_FAMILY
    usd = prices.estimate_usd("claude-opus-4-5", 1_000_000, 1_000_000, 1_000_000, 1_000_000)
    assert usd == pytest.approx(5 + 25 + 0.5 + 6.25)
    custom = {**prices.PRICES, "opus-fast": prices.ModelPrice(input=1, output=1, cache_read=1, cache_creation=1)}
    assert prices.family("claude-opus-fast", custom) == "opus-fast"


def test_summarize_by_agent_and_bead_prefers_reported_cost() -> None:
    t = cost.Tokens(input_tokens=1_000_000)
    rows = [cost.UsageRow(agent="a", bead_id="gt-1", model="claude-haiku", tokens=t, reported_cost_usd=None),
            cost.UsageRow(agent="a", bead_id=None, model="claude-haiku", tokens=t, reported_cost_usd=None),
            cost.UsageRow(agent="b", bead_id="gt-1", model="sonnet", tokens=t, reported_cost_usd=0.5, model_call=True)]
    report = cost.summarize(rows, {"a": 0.9}, prices.PRICES)
    by_agent = {line.key: line for line in report.by_agent}
    by_bead = {line.key: line for line in report.by_bead}
    assert by_agent["a"].cost_usd == pytest.approx(2.0) and by_agent["a"].messages == 2
    assert by_agent["a"].claude_cost_usd == 0.9 and by_agent["b"].model_calls == 1
    assert by_agent["b"].estimated_usd == 0 and by_agent["b"].cost_usd == 0.5
    assert by_bead["gt-1"].cost_usd == pytest.approx(1.5) and by_bead[cost.UNATTRIBUTED].cost_usd == pytest.approx(1)
    assert report.total.tokens.input_tokens == 3_000_000 and report.total.cost_usd == pytest.approx(2.5)
    assert [line.key for line in report.by_agent] == ["a", "b"]  # most expensive first


# --------------------------------------------------------------------------- the store


def hook_log(town: Town) -> list[tuple[str, str, int]]:
    with town.db.read() as conn:
        return [tuple(r) for r in conn.execute("SELECT agent, bead_id, held FROM hook_log ORDER BY seq")]


def test_hook_log_is_kept_by_the_store_whoever_hooks(town: Town) -> None:
    bead = beads.create(town, MAYOR, "Cost me")
    sling.sling(town, MAYOR, bead.id, "mayor")
    sling.unsling(town, MAYOR, bead.id)
    sling.sling(town, MAYOR, bead.id, "mayor")
    with town.db.write() as conn:  # polecat_done's move: hooked -> in_progress keeps the hold
        conn.execute("UPDATE issues SET status = 'in_progress' WHERE id = ?", (bead.id,))
    beads.close(town, MAYOR, bead.id, "done")
    assert hook_log(town) == [("mayor", bead.id, 1), ("mayor", bead.id, 0), ("mayor", bead.id, 1),
                              ("mayor", bead.id, 0)]


def note_transcript(town: Town, path: Path, kind: str = "SessionStart") -> None:
    proc = fire(town, kind, {"session_id": "s-1", "transcript_path": str(path), "source": "startup"})
    assert proc.returncode == 0 and proc.stdout == b""


def test_hook_notes_the_transcript_once(town: Town, tmp_path: Path) -> None:
    path = tmp_path / "s-1.jsonl"
    note_transcript(town, path)
    note_transcript(town, path, "Stop")
    other = str(tmp_path / "other.jsonl")
    fire(town, "PreToolUse", {"session_id": "s-2", "transcript_path": other, "tool_name": "Bash"})
    with town.db.read() as conn:
        rows = [tuple(r) for r in conn.execute("SELECT path, agent, session_id, read_offset FROM agent_transcripts")]
    assert rows == [(str(path), POLECAT, "s-1", 0)]


def test_refresh_reads_only_what_was_appended_and_attributes_beads(town: Town, tmp_path: Path) -> None:
    path = tmp_path / "s-1.jsonl"
    note_transcript(town, path)
    path.write_bytes(lines(assistant("msg_a", time.time() - 60, USAGE)))
    assert cost.refresh(town) == 1
    bead = beads.create(town, MAYOR, "Polecat work")
    sling.sling(town, MAYOR, bead.id, POLECAT)
    later = time.time() + 1
    with path.open("ab") as fh:  # one message across two refreshes: its second block arrives later
        fh.write(lines(assistant("msg_b", later, USAGE, "text")))
    assert cost.refresh(town) == 1
    assert cost.refresh(town) == 0  # nothing new: nothing read
    with path.open("ab") as fh:
        fh.write(lines(assistant("msg_b", later, USAGE, "tool_use"), {"type": "cost-state", "totalCostUSD": 0.042}))
    cost.refresh(town)
    report = cost.cost_report(town)
    line = cost.agent_cost(report, POLECAT)
    assert line is not None and line.messages == 2 and line.tokens.input_tokens == 2 * 1201
    assert line.claude_cost_usd == 0.042
    by_bead = {b.key: b.tokens.output_tokens for b in report.by_bead}
    assert by_bead == {bead.id: 83, cost.UNATTRIBUTED: 83}
    with town.db.read() as conn:
        assert conn.execute("SELECT read_offset FROM agent_transcripts").fetchone()[0] == path.stat().st_size


def test_a_stale_offset_never_counts_a_chunk_twice(town: Town, tmp_path: Path) -> None:
    path = tmp_path / "s-1.jsonl"
    note_transcript(town, path)
    path.write_bytes(lines(assistant("msg_a", 1.0, USAGE)))
    chunk = cost.parse_chunk(path.read_bytes())
    assert cost._store_chunk(town, str(path), POLECAT, 0, 0, chunk)
    assert not cost._store_chunk(town, str(path), POLECAT, 0, 0, chunk)  # a racing refresh from offset 0


def test_rewritten_transcript_is_read_again_without_doubling(town: Town, tmp_path: Path) -> None:
    path = tmp_path / "s-1.jsonl"
    note_transcript(town, path)
    path.write_bytes(lines(assistant("msg_a", 1.0, USAGE), assistant("msg_b", 2.0, USAGE)))
    cost.refresh(town)
    path.write_bytes(lines(assistant("msg_a", 1.0, USAGE)))  # shorter than what was read
    cost.refresh(town)
    assert cost.cost_report(town).total.messages == 2
    path.unlink()
    assert cost.cost_report(town).missing_transcripts == 1


def test_inspector_calls_are_costed_per_actor_and_bead(town: Town) -> None:
    call = ModelCall(role="auditor", model="sonnet", ok=True)
    backend._record_usage(call, {"total_cost_usd": 0.03, "usage": {"input_tokens": 10, "output_tokens": 4,
                                                                    "cache_read_input_tokens": 2},
                                 "modelUsage": {"claude-sonnet-4-5": {}}})
    got = (call.model, call.input_tokens, call.output_tokens, call.cache_read_tokens)
    assert got == ("sonnet", 10, 4, 2)  # the model as configured: an alias the price table knows
    from vermas.inspector.pipeline import cost_of

    call.cost_usd = 0.03
    cost.record_model_calls(town, "sample/refinery", "sp-abc", [cost_of(call), cost_of(call)])
    report = cost.cost_report(town)
    assert [(b.key, b.model_calls, b.cost_usd, b.tokens.input_tokens) for b in report.by_bead] == [
        ("sp-abc", 2, 0.06, 20)]
    assert report.by_agent[0].key == "sample/refinery" and report.by_agent[0].estimated_usd == 0


def test_town_toml_overrides_prices(town: Town) -> None:
    config = town.layout.config_file
    config.write_text(config.read_text() + "\n[cost.prices.opus]\ninput = 1.0\noutput = 2.0\ncache_read = 0\n"
                      "cache_creation = 0\n")
    table = load_config(config).cost.table()
    assert table["opus"].output == 2.0 and table["haiku"] == prices.PRICES["haiku"]
    config.write_text(config.read_text().replace("output = 2.0", "output = -2.0"))
    with pytest.raises(ConfigError, match="output"):
        load_config(config)
