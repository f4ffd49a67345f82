"""The README's molecules block, run by bash exactly as written in a temp HOME with `.venv/bin`
first on PATH: the formula previewed, poured onto the mayor's hook, one step walked, the
checklist shown with its markers, and the molecule squashed into one digest bead."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import readme_block
from vermas.town import Town

HEADING = "## Molecules: workflows walked step by step"


def test_readme_molecules_block_as_written(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("VERMAS_TOWN", "BD_ACTOR")}
    env.update(HOME=str(tmp_path), PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', os.defpath)}")
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", readme_block(HEADING)], env=env, capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "Read the change in parser" in out  # the preview, vars substituted
    assert "- [x] done `read` Read the change in parser: read every file" in out
    assert "- [>] current `run`" in out and "- [-] blocked `report`" in out
    town = Town.open(tmp_path / "town")
    try:
        with town.db.read() as conn:
            rows = conn.execute("SELECT id, status, notes FROM issues").fetchall()
    finally:
        town.close()
    assert len(rows) == 1, [r["id"] for r in rows]  # the digest alone: the steps are gone
    digest = rows[0]
    assert digest["status"] == "closed" and digest["notes"].startswith("reviewed: no findings")
    assert "- read: Read the change in parser: read every file" in digest["notes"]
