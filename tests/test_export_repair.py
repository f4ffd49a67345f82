"""A damaged or missing bd export is detected and rewritten from the store (issue 8,
item 11): the generation counter alone said "current" for a truncated file, so it
stayed corrupt through restarts and patrols."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests.conftest import make_repo
from vermas import beads, export, patrol, rig
from vermas.addresses import parse_address
from vermas.town import Town

OVERSEER = parse_address("overseer")


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _town_with_beads(tmp_path: Path) -> tuple[Town, list[str]]:
    town, _ = Town.init(tmp_path / "town")
    rig.add(town, "proj", str(make_repo(tmp_path / "upstream")), prefix="pj")
    ids = [beads.create(town, OVERSEER, f"bead {i}", rig="proj").id for i in range(5)]
    export.export_town(town)
    assert export.stale_kinds(town) == []
    return town, ids


def test_truncated_town_export_is_rewritten(tmp_path: Path) -> None:
    town, ids = _town_with_beads(tmp_path)
    target = town.beads_dir / "issues.jsonl"
    good = target.read_bytes()
    with target.open("r+b") as fh:  # cut the file mid-line, as a crash or a bad copy would
        fh.truncate(len(good) // 2)

    assert "issues" in export.stale_kinds(town)
    assert export.export_town(town)["issues"] == len(ids)
    assert target.read_bytes() == good
    assert export.stale_kinds(town) == []


def test_missing_and_edited_rig_exports_are_rewritten(tmp_path: Path) -> None:
    town, ids = _town_with_beads(tmp_path)
    rig_export = town.root / "proj" / "mayor" / "rig" / ".beads" / "issues.jsonl"
    assert sorted(str(row["id"]) for row in _lines(rig_export)) == sorted(ids)

    rig_export.unlink()
    assert export.stale_kinds(town) == ["issues"]
    export.export_town(town)
    assert sorted(str(row["id"]) for row in _lines(rig_export)) == sorted(ids)

    # Same size, different bytes, older mtime: still noticed (inode and mtime differ).
    text = rig_export.read_text()
    rig_export.write_text(text.replace("bead 1", "bead X"))
    os.utime(rig_export, ns=(1, 1))
    assert export.stale_kinds(town) == ["issues"]
    export.export_town(town)
    assert "bead X" not in rig_export.read_text()


def test_patrol_repairs_a_damaged_export(tmp_path: Path) -> None:
    """The runner's patrol decides an export from the damage alone (no new commit)."""
    town, _ = _town_with_beads(tmp_path)
    target = town.beads_dir / "routes.jsonl"
    target.write_text("{not json\n")
    seen = patrol.Observed(stale_exports=tuple(export.stale_kinds(town)), started_polecats=())
    assert seen.stale_exports == ("routes",)
    assert [a.kind for a in patrol.decide(seen)] == ["export"]
    export.export_town(town)
    assert all(isinstance(row, dict) for row in _lines(target))


def test_background_export_failure_is_logged_once_and_its_recovery_too(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """The server's export scheduler retries a failed export forever; it used to do so in
    silence (a full disk left issues.jsonl behind with nothing in any log)."""
    town, _ = Town.init(tmp_path / "town")
    scheduler = export.ExportScheduler(town)
    scheduler.DELAYS = {"issues": 0.05, "routes": 0.05, "messages": 0.05}
    target = town.beads_dir / "issues.jsonl"
    target.unlink()
    target.mkdir()  # the export's atomic rename onto a directory fails, on every retry
    try:
        for i in range(3):
            beads.create(town, OVERSEER, f"bead {i}")
            time.sleep(0.3)
        failed = capfd.readouterr().err
        assert failed.count("failed, will retry") == 1, failed
        assert str(town.beads_dir) in failed and "IsADirectoryError" in failed
        target.rmdir()
        beads.create(town, OVERSEER, "after the fix")
        deadline = time.monotonic() + 5
        while export.stale_kinds(town) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert export.stale_kinds(town) == []
        assert capfd.readouterr().err.count("exports are written again") == 1
    finally:
        scheduler.close()
        town.close()
