"""Store and runtime files are owner-only (issue 8, item 3)."""

from __future__ import annotations

import stat
from pathlib import Path

from vermas.town import Town


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_store_and_runtime_are_owner_only(tmp_path: Path) -> None:
    town, created = Town.init(tmp_path / "town")
    assert created
    with town.db.write() as conn:  # a write makes the -wal and -shm files exist
        conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('probe', '1')")
    beads = town.root / ".beads"
    assert mode(beads) == 0o700 and mode(town.root / ".runtime") == 0o700
    db = beads / "vermas.db"
    for suffix in ("", "-wal", "-shm", ".writelock"):
        companion = Path(str(db) + suffix)
        assert companion.exists(), companion
        assert mode(companion) == 0o600, (companion, oct(mode(companion)))
    town.close()


def test_an_old_world_readable_store_is_repaired_on_open(tmp_path: Path) -> None:
    town, _ = Town.init(tmp_path / "town")
    db = town.root / ".beads" / "vermas.db"
    town.close()
    db.chmod(0o644)
    again = Town.open(town.root)
    assert mode(db) == 0o600
    again.close()


def test_an_old_town_gets_private_folders_and_exports_on_open(tmp_path: Path) -> None:
    """Issue 20 item 1: a town made before the modes rule (0755 folders, 0644 exports under
    umask 022) is repaired when opened, and the mail export stays owner-only when rewritten."""
    from vermas import mail
    from vermas.addresses import parse_address
    from vermas.export import export_town

    town, _ = Town.init(tmp_path / "town")
    mail.send(town, parse_address("mayor"), "gt/witness", "secret", "every mail body is in this file")
    export_town(town)
    town.close()
    beads, runtime = town.root / ".beads", town.root / ".runtime"
    exports = [beads / f"{kind}.jsonl" for kind in ("issues", "messages", "routes")]
    assert "every mail body" in (beads / "messages.jsonl").read_text()
    for folder in (beads, runtime):
        folder.chmod(0o755)
    for path in (*exports, beads / ".export-state.json"):
        path.chmod(0o644)

    again = Town.open(town.root)
    assert (mode(beads), mode(runtime)) == (0o700, 0o700)
    for path in (*exports, beads / ".export-state.json"):
        assert mode(path) == 0o600, (path.name, oct(mode(path)))
    mail.send(again, parse_address("mayor"), "gt/witness", "again", "a rewrite keeps the mode")
    assert export_town(again).get("messages") == 2  # rewritten (temp file + rename) ...
    assert mode(beads / "messages.jsonl") == 0o600  # ... and still owner-only
    again.close()


def test_a_new_town_writes_owner_only_exports(tmp_path: Path) -> None:
    town, _ = Town.init(tmp_path / "town")
    for kind in ("issues", "messages", "routes"):
        assert mode(town.root / ".beads" / f"{kind}.jsonl") == 0o600, kind
    town.close()
