"""The runner's store commands, run as real subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from vermas import beads, mail, sling
from vermas.addresses import parse_address
from vermas.town import Town

RUNNER = str(Path(sys.executable).with_name("vermas-runner"))


def runner(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k not in ("VERMAS_TOWN", "BD_ACTOR")}
    full_env.update(env or {})
    return subprocess.run([RUNNER, *args], capture_output=True, text=True, env=full_env, timeout=60)


def test_init_is_idempotent(tmp_path: Path) -> None:
    target = tmp_path / "mytown"
    first = runner("init", str(target), "--prefix", "gt")
    assert first.returncode == 0 and "created town" in first.stdout
    files = {p: p.read_bytes() for p in target.rglob("*") if p.is_file() and p.suffix != ".db"}
    assert {p.name for p in files} >= {"town.toml", "issues.jsonl", "messages.jsonl", "routes.jsonl"}
    assert json.loads((target / ".beads" / "routes.jsonl").read_text()) == {"prefix": "gt-", "path": "."}
    second = runner("init", str(target))
    assert second.returncode == 0 and "nothing changed" in second.stdout
    assert {p: p.read_bytes() for p in files} == files
    bad = runner("init", str(tmp_path / "other"), "--prefix", "Bad-Prefix")
    assert bad.returncode != 0 and "invalid prefix" in bad.stderr and not (tmp_path / "other").exists()


def test_prime_shows_hook_and_mail(tmp_path: Path) -> None:
    town, _ = Town.init(tmp_path / "t")
    mayor = parse_address("mayor")
    bead = beads.create(town, mayor, "Fix the parser", description="It breaks on tabs.",
                        acceptance_criteria="tabs parse")
    sling.sling(town, mayor, bead.id, "gt/polecats/nux")
    mail.send(town, mayor, "gt/polecats/nux", "HANDOFF context", "see notes")
    out = runner("prime", "--town", str(town.root), env={"BD_ACTOR": "gt/polecats/nux"})
    assert out.returncode == 0, out.stderr
    assert "you are `gt/polecats/nux` (polecat)" in out.stdout
    assert f"Hooked work: {bead.id} — Fix the parser" in out.stdout
    assert "It breaks on tabs." in out.stdout and "tabs parse" in out.stdout
    assert "GUPP" in out.stdout and "polecat_done" in out.stdout
    assert "Unread mail (1)" in out.stdout and "HANDOFF context" in out.stdout
    empty = runner("prime", "--actor", "gt/witness", "--town", str(town.root))
    assert "Hook empty" in empty.stdout and "Unread mail" not in empty.stdout
    bad = runner("prime", "--actor", "gt/polecats/../x", "--town", str(town.root))
    assert bad.returncode != 0 and "invalid address" in bad.stderr


def test_import_and_export_commands(tmp_path: Path) -> None:
    town, _ = Town.init(tmp_path / "t")
    good = tmp_path / "good.jsonl"
    good.write_text(
        '{"id":"bd-a1","title":"one","status":"open","priority":1,"issue_type":"task",'
        '"created_at":"2026-01-01T00:00:00Z","updated_at":"2026-01-01T00:00:00Z","mystery":42}\n'
        '{"id":"bd-a2","title":"gone","status":"tombstone","priority":1,"issue_type":"task",'
        '"created_at":"2026-01-01T00:00:00Z","updated_at":"2026-01-01T00:00:00Z"}\n'
    )
    out = runner("import", str(good), "--town", str(town.root), "--json")
    assert out.returncode == 0 and json.loads(out.stdout) | {"created": 1, "tombstones": 1} == json.loads(out.stdout)
    again = runner("import", str(good), "--town", str(town.root))
    assert again.returncode == 0 and "unchanged" in again.stdout and "│ 1 " in again.stdout  # a table
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id":"bd-b1","title":"x","status":"open","priority":1,"issue_type":"task",'
                   '"created_at":"2026-01-01T00:00:00Z"}\nnot json\n')
    out = runner("import", str(bad), "--town", str(town.root))
    assert out.returncode == 2 and "line 2: not JSON" in out.stderr
    with town.db.read() as conn:
        assert [r[0] for r in conn.execute("SELECT id FROM issues")] == ["bd-a1"]
    out = runner("export", "--town", str(town.root))
    assert out.returncode == 0 and "issues.jsonl" in out.stdout and "│ 1 " in out.stdout  # a table
    out = runner("export", "--town", str(town.root), "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["issues.jsonl"] == 1
    line = json.loads((town.beads_dir / "issues.jsonl").read_text())
    assert line["_type"] == "issue" and line["id"] == "bd-a1" and "mystery" not in line
    missing = runner("export", "--town", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "no vermas town" in missing.stderr
