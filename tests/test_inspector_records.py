"""Storage and settings of the inspector, without any model: real stores, real town.toml files."""

from __future__ import annotations

from pathlib import Path

import pytest

from vermas import beads
from vermas.addresses import parse_address
from vermas.errors import InvalidInput
from vermas.inspector import records
from vermas.inspector.models import ModelCall, Specification, TestPlan
from vermas.inspector.pipeline import settings_for
from vermas.store import Database
from vermas.town import RigConfig, Town


def test_latest_report_is_none_on_a_store_the_inspector_never_touched(town: Town) -> None:
    with town.db.read() as conn:
        assert records.latest_report(conn, "hq-a1b2") is None
        assert records.report_history(conn, "hq-a1b2") == []
        assert records.load_spec_row(conn, "hq-a1b2") is None
    records.ensure_schema(town.db)
    records.ensure_schema(town.db)  # idempotent
    other = Database(town.db.path)  # another process's connection sees the tables too
    try:
        records.ensure_schema(other)
        with other.read() as conn:
            assert records.latest_report(conn, "hq-a1b2") is None
    finally:
        other.close()


def test_spec_is_stale_when_the_bead_text_or_its_criteria_change(town: Town) -> None:
    overseer = parse_address("overseer")
    bead = beads.create(town, overseer, "Add", "add numbers", acceptance_criteria="human text")
    spec = Specification(title="Add", acceptance_criteria=[{"id": "AC-1", "description": "adds", "kind": "objective"}])
    records.ensure_schema(town.db)
    with town.db.write() as conn:
        row = beads.fetch_row(conn, bead.id)
        records.store_spec(conn, town.db, row, spec, [ModelCall(role="designer", model="m", ok=True)], "overseer")
        records.store_plan(conn, bead.id, spec, TestPlan(tests=[{"criterion_id": "AC-1", "command": "true"}]), [],
                           "overseer")
    with town.db.read() as conn:
        row, stored = beads.fetch_row(conn, bead.id), records.load_spec_row(conn, bead.id)
        assert records.spec_is_current(stored, row)
        assert records.source_acceptance_criteria(conn, row) == "human text"  # not our rendering
        assert records.plan_record(records.load_plan_row(conn, bead.id), reused=True).tests[0].command == "true"
    assert beads.show(town, bead.id).acceptance_criteria == "- [ ] AC-1 (objective): adds"

    beads.update(town, overseer, bead.id, acceptance_criteria="- [ ] AC-1 (objective): adds, and subtracts")
    with town.db.read() as conn:
        row, stored = beads.fetch_row(conn, bead.id), records.load_spec_row(conn, bead.id)
        assert not records.spec_is_current(stored, row)
        assert records.source_acceptance_criteria(conn, row) == "- [ ] AC-1 (objective): adds, and subtracts"


def test_fingerprint_changes_with_the_tests() -> None:
    spec = Specification(title="t", acceptance_criteria=[{"id": "AC-1", "description": "d", "kind": "objective"}])
    crit = spec.acceptance_criteria[0]
    a = TestPlan(tests=[{"criterion_id": "AC-1", "command": "true"}]).tests
    b = TestPlan(tests=[{"criterion_id": "AC-1", "command": "true", "timeout": 5}]).tests
    assert records.fingerprint(crit, a) == records.fingerprint(crit, list(a)) != records.fingerprint(crit, b)


def test_inspector_settings_round_trip_through_town_toml(tmp_path: Path) -> None:
    town, _ = Town.init(tmp_path / "t")
    try:
        town.config.inspector.budget_usd = 0.25
        town.config.inspector.model = "opus"
        town.config.rigs["gastown"] = RigConfig(name="gastown", git_url="x", prefix="gt", verify_level="full",
                                                inspector={"timeout": 60, "pass_env": ["JAVA_HOME"]})
        town.save_config()
        text = (town.root / "town.toml").read_text()
        assert "[inspector]" in text and "budget_usd = 0.25" in text
        town.reload_config()
        assert town.config.inspector.budget_usd == 0.25
        rig = settings_for(town, "gt-a1b2")
        assert (rig.level, rig.claude.model, rig.claude.budget_usd) == ("full", "opus", 0.25)
        assert rig.claude.timeout_s == 60.0
        assert rig.pass_env == ("JAVA_HOME",) and rig.rig == "gastown"
        town_level = settings_for(town, "hq-a1b2")
        assert (town_level.level, town_level.claude.timeout_s, town_level.rig) == ("shell", 300.0, None)
        assert settings_for(town, "hq-a1b2", "audit").level == "audit"
        with pytest.raises(InvalidInput, match="invalid level 'everything'"):
            settings_for(town, "hq-a1b2", "everything")
        town.config.rigs["gastown"].inspector = {"level": "full"}
        with pytest.raises(InvalidInput, match="set the rig's level with verify_level"):
            settings_for(town, "gt-a1b2")
    finally:
        town.close()
