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
