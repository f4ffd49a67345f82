"""Mail protocol messages: format and parse round-trip, and the wire text agents are told."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from vermas import protocol
from vermas.protocol import MODELS, ProtocolKind

line = st.text(st.characters(blacklist_characters="\n\r", blacklist_categories=("Cs",)), min_size=1,
               max_size=40).filter(lambda s: not s[0].isspace())
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=200)


def message_of(model: type[protocol.ProtocolMessage]) -> st.SearchStrategy[protocol.ProtocolMessage]:
    fields: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        if name == "text":
            fields[name] = text
        else:
            fields[name] = line if info.is_required() else st.none() | line
    return st.builds(model, **fields)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(list(MODELS.values())).flatmap(message_of))
def test_format_parse_round_trip(msg: protocol.ProtocolMessage) -> None:
    subject, body = protocol.format(msg)
    assert "\n" not in subject and subject.split()[0] == msg.KIND.value
    assert protocol.parse(subject, body) == msg


def test_polecat_done_wire_text_unchanged() -> None:
    msg = protocol.PolecatDone(bead="gt-a1", status="COMPLETED", polecat="gt/polecats/nux", branch="b",
                               commit="c0ffee", merge_request="gt-mr1", text="did it")
    assert protocol.format(msg) == (
        "POLECAT_DONE nux gt-a1",
        "bead: gt-a1\nstatus: COMPLETED\npolecat: gt/polecats/nux\nbranch: b\ncommit: c0ffee\n"
        "merge_request: gt-mr1\n\ndid it",
    )


def test_hand_written_mail() -> None:
    assert protocol.parse("re: lunch", "x") is None
    assert protocol.parse("MERGE_READY gt-a1", "please merge") is None  # lacks bead and branch headers
    help_ = protocol.parse("HELP: tests hang", "bead: gt-a1\n\nthey hang")
    assert help_ == protocol.Help(bead="gt-a1", text="they hang")
    assert protocol.parse("NUDGE check", "bead: not a header for NUDGE") == protocol.Nudge(
        text="bead: not a header for NUDGE")
    assert {k.value for k in ProtocolKind} >= {"POLECAT_DONE", "MERGE_READY", "MERGED", "REWORK_REQUEST",
                                                "ESCALATION", "HELP", "HANDOFF", "NUDGE"}
