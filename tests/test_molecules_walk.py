"""Walking a molecule: `sling formula:NAME` pours and hooks it (to an agent, or to a rig where a
polecat is spawned for it, in the hooking's transaction); hook_check and prime show the checklist
with markers and the current step in full; polecat_done(COMPLETED) is refused while steps are
open; the steps' acceptance becomes the root's criteria (what the inspector's Designer reads);
steps are never ready work. Wisps: ephemeral, never exported, and nothing left once squashed,
burned or swept by the deacon after `wisp_max_age`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import git
from vermas import beads, hooks, polecat, prime, sling
from vermas.addresses import parse_address
from vermas.deacon import patrol as deacon_patrol
from vermas.errors import Conflict, InvalidInput, NotFound, VermasError
from vermas.export import export_town
from vermas.inspector import designer, records
from vermas.molecules import formula as f
from vermas.molecules import molecule as m
from vermas.patrol_types import PatrolConfig
from vermas.town import Town

MAYOR = parse_address("mayor")
CREW = parse_address("gt/crew/ann")
NUX = parse_address("gt/polecats/nux")
AUTHOR = ("-c", "user.email=t@vermas.invalid", "-c", "user.name=t")

CHAIN = """formula = "chain"
description = "three steps for {{thing}}"
[vars.thing]
required = true
[[steps]]
id = "implement"
title = "implement {{thing}}"
description = "write {{thing}}.txt"
acceptance = "{{thing}}.txt exists"
[[steps]]
id = "test"
title = "test {{thing}}"
needs = ["implement"]
acceptance = "the tests pass"
[[steps]]
id = "commit"
title = "commit {{thing}}"
needs = ["test"]
"""
WISP_TABLES = ("issues", "labels", "dependencies", "comments", "wisps", "hook_log")


def chain(thing: str = "widget") -> f.Proto:
    return f.cook(f.parse(CHAIN, "chain.formula.toml"), {"thing": thing})


def place_formula(root: Path) -> None:
    (root / ".beads" / "formulas").mkdir(parents=True, exist_ok=True)
    (root / ".beads" / "formulas" / "chain.formula.toml").write_text(CHAIN)


def rows_of(town: Town, root: str) -> dict[str, int]:
    """Rows in every table a molecule touches that belong to it (root or its steps)."""
    like = (root, root + ".%")
    out = {}
    with town.db.read() as conn:
        for table, column in (("issues", "id"), ("labels", "issue_id"), ("dependencies", "issue_id"),
                              ("comments", "issue_id"), ("wisps", "root"), ("hook_log", "bead_id")):
            out[table] = conn.execute(f"SELECT count(*) FROM {table} WHERE {column} = ? OR {column} LIKE ?",
                                      like).fetchone()[0]
    return out


def exported_ids(town: Town, rig: str | None = None) -> set[str]:
    export_town(town, force=True)
    path = town.layout.rig_export_file(rig) if rig else town.beads_dir / "issues.jsonl"
    return {row["id"] for row in map(json.loads, path.read_text().splitlines()) if row.get("_type") == "issue"}


# --- slung to an agent: hook_check, prime, the step acceptance as criteria ----------------------------


def test_sling_formula_to_an_agent_shows_the_checklist(town: Town) -> None:
    place_formula(town.root)
    root = sling.sling(town, MAYOR, "formula:chain", str(CREW), vars=["thing=widget"])
    assert root.status == "hooked" and root.assignee == str(CREW) and root.issue_type == "molecule"

    seen = hooks.check(town, CREW)
    assert seen.bead is not None and seen.bead.id == root.id
    assert seen.molecule is not None and seen.molecule.root == root.id
    assert [(s.step, s.marker.value) for s in seen.molecule.steps] == [
        ("implement", "current"), ("test", "blocked"), ("commit", "blocked")]
    assert seen.molecule.current is not None and seen.molecule.current.acceptance == "widget.txt exists"
    assert "mol_step_done" in seen.instructions

    m.step_done(town, CREW, "implement", "wrote widget.txt")
    text = prime.prime(town, CREW)
    assert "### Checklist" in text
    assert "- [x] done `implement` implement widget: wrote widget.txt" in text
    assert "- [>] current `test` test widget" in text
    assert "- [-] blocked `commit` commit widget (needs test)" in text
    assert "Current step `test`" in text and "Acceptance: the tests pass" in text
    assert "mol_step_done(step_id='test'" in text


def test_sling_formula_refusals_write_nothing(town: Town) -> None:
    place_formula(town.root)
    before = exported_ids(town)
    with pytest.raises(InvalidInput, match="thing"):  # a required var missing
        sling.sling(town, MAYOR, "formula:chain", str(CREW))
    with pytest.raises(NotFound, match="no formula 'ghost'"):
        sling.sling(town, MAYOR, "formula:ghost", str(CREW))
    with pytest.raises(InvalidInput, match="vars are for a formula"):
        sling.sling(town, MAYOR, "gt-abcd", str(CREW), vars=["thing=x"])
    sling.sling(town, MAYOR, "formula:chain", str(CREW), vars=["thing=one"])
    with pytest.raises(Conflict, match="hook is occupied"):
        sling.sling(town, MAYOR, "formula:chain", str(CREW), vars=["thing=two"])
    with town.db.read() as conn:
        assert conn.execute("SELECT count(*) FROM issues WHERE issue_type = 'molecule'").fetchone()[0] == 1
    assert len(exported_ids(town) - before) == 4  # the one molecule: root + 3 steps


def test_step_acceptance_is_the_roots_criteria_for_the_designer(town: Town) -> None:
    state = m.pour(town, MAYOR, chain())
    with town.db.read() as conn:
        row = beads.fetch_row(conn, state.root)
        source = records.source_acceptance_criteria(conn, row)
    assert "implement (implement widget): widget.txt exists" in source
    assert "test (test widget): the tests pass" in source
    text = designer.prompt(dict(row), source)
    assert "## Acceptance criteria (as written)" in text and "widget.txt exists" in text
    assert "the tests pass" in text


def test_steps_are_never_ready_work(town: Town) -> None:
    other = beads.create(town, MAYOR, "ordinary work")
    state = m.pour(town, MAYOR, chain())
    ready = {b.id for b in beads.ready(town, limit=100)}
    assert other.id in ready
    assert not ready & {s.bead_id for s in state.steps} and state.root not in ready


# --- slung to a rig: one polecat, the walk, polecat_done refused until every step is done ---------------


def test_sling_formula_to_a_rig_spawns_a_polecat_on_the_root(rigged: Any) -> None:
    town = rigged.town
    place_formula(town.layout.canonical_clone("gt"))  # the rig's formulas are looked at first
    root = sling.sling(town, MAYOR, "formula:chain", "gt", vars=["thing=gear"], sessions=rigged.sessions,
                       kick="none")
    assert root.assignee == str(NUX) and root.status == "hooked" and root.id.startswith("gt-")
    info = next(p for p in polecat.list_polecats(town, "gt") if p.name == "nux")
    assert info.bead_id == root.id
    worktree = Path(str(info.worktree))
    assert worktree.is_dir()

    (worktree / "gear.txt").write_text("gear\n")
    git(worktree, "add", "gear.txt")
    git(worktree, *AUTHOR, "commit", "-q", "-m", "gear")
    done = m.step_done(town, NUX, "implement", "wrote gear.txt")
    assert done.next is not None and done.next.step == "test"
    with pytest.raises(Conflict, match=r"2 step\(s\) not done \(test, commit\)"):
        polecat.done(town, NUX, "COMPLETED", "too early")
    assert beads.show(town, root.id).status == "hooked"  # refused: nothing changed
    m.step_done(town, NUX, "test", "tests pass")
    last = m.step_done(town, NUX, "commit", "committed")
    assert last.next is None
    mr = polecat.done(town, NUX, "COMPLETED", "gear built")
    assert mr.id is not None and mr.bead_id == root.id and mr.commits_ahead == 1
    assert beads.show(town, root.id).status == "in_progress"


def test_deferred_and_escalated_are_allowed_with_open_steps(rigged: Any) -> None:
    town = rigged.town
    place_formula(town.root)
    root = sling.sling(town, MAYOR, "formula:chain", "gt", vars=["thing=cog"], sessions=rigged.sessions,
                       kick="none")
    polecat.done(town, NUX, "ESCALATED", "stuck on implement")
    assert beads.show(town, root.id).status != "closed"
    assert [s.marker.value for s in m.status(town, MAYOR, root.id).steps] == ["current", "blocked", "blocked"]


def test_sling_formula_to_a_rig_whose_bring_up_fails_leaves_nothing(rigged: Any) -> None:
    town = rigged.town
    place_formula(town.root)
    shutil.rmtree(town.config.rigs["gt"].git_url)  # the upstream is gone: the sync before the worktree fails
    before = exported_ids(town)
    with pytest.raises(VermasError):
        sling.sling(town, MAYOR, "formula:chain", "gt", vars=["thing=x"], sessions=rigged.sessions, kick="none")
    with town.db.read() as conn:
        assert conn.execute("SELECT count(*) FROM issues WHERE issue_type = 'molecule'").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM polecats").fetchone()[0] == 0
    assert exported_ids(town) == before


# --- wisps ------------------------------------------------------------------------------------------------


def test_wisp_is_never_exported_and_keeps_its_progress(town: Town) -> None:
    bd_wisp = beads.create(town, MAYOR, "an imported-style ephemeral bead")
    with town.db.write() as conn:  # bd's own ephemeral beads (not this town's wisps) still export
        conn.execute("UPDATE issues SET ephemeral = 1 WHERE id = ?", (bd_wisp.id,))
        town.db.touch("issues")
    before = exported_ids(town)
    assert bd_wisp.id in before
    state = m.pour(town, MAYOR, chain(), hook=str(CREW), wisp=True)
    assert state.wisp and "-wisp-" in state.root
    assert exported_ids(town) == before  # no row for the root nor for any step
    with town.db.read() as conn:
        assert {r[0] for r in conn.execute("SELECT ephemeral FROM issues WHERE id LIKE ?", (state.root + "%",))} == {1}
    m.step_done(town, CREW, "implement", "done one")
    again = m.status(town, CREW)
    assert again.wisp and [s.marker.value for s in again.steps] == ["done", "current", "blocked"]
    assert again.steps[0].outcome == "done one"
    assert not {b.id for b in beads.ready(town, limit=100)} & {s.bead_id for s in again.steps}


def test_wisp_squash_leaves_one_permanent_digest(town: Town) -> None:
    state = m.pour(town, MAYOR, chain(), hook=str(CREW), wisp=True)
    for step in ("implement", "test"):
        m.step_done(town, CREW, step, f"{step} ok")
    digest = m.squash(town, MAYOR, state.root, "half the widget")
    assert digest.status == "closed" and "-wisp-" not in digest.id and digest.id.startswith("hq-")
    assert rows_of(town, state.root) == dict.fromkeys(WISP_TABLES, 0)
    export_town(town, force=True)
    lines = (town.beads_dir / "issues.jsonl").read_text().splitlines()
    row = next(r for r in map(json.loads, lines) if r["id"] == digest.id)
    assert "digest" in row["labels"] and row["status"] == "closed"
    assert "implement: implement widget: implement ok" in row["notes"]
    assert "commit: commit widget: not done (current)" in row["notes"]
    assert not beads.show(town, digest.id).dependencies  # no step left to point at


def test_wisp_burn_needs_no_force_and_leaves_nothing(town: Town) -> None:
    state = m.pour(town, MAYOR, chain(), hook=str(CREW), wisp=True)
    m.step_done(town, CREW, "implement", "x")
    removed = m.burn(town, MAYOR, state.root)
    assert removed.root == state.root and len(removed.beads) == 4
    assert rows_of(town, state.root) == dict.fromkeys(WISP_TABLES, 0)
    assert hooks.check(town, CREW).bead is None  # the hook is free again


@pytest.mark.parametrize(("closed", "age", "now", "gone"), [
    ({"a": None}, 10, 1000, []),  # open: its walker's, however old
    ({"a": 989.0}, 10, 1000, ["a"]),
    ({"a": 990.0}, 10, 1000, []),  # exactly the age: one more round
    ({"a": 995.0, "b": 100.0, "c": None}, 10, 1000, ["b"]),
    ({"b": 1.0, "a": 2.0}, 0, 1000, ["a", "b"]),
])
def test_expired_wisps_pure(closed: dict[str, float | None], age: float, now: float, gone: list[str]) -> None:
    assert m.expired_wisps(closed, age, now) == gone


def test_deacon_sweeps_closed_wisps_once_after_max_age(town: Town) -> None:
    walked = m.pour(town, MAYOR, chain("a"), hook=str(CREW), wisp=True)
    for step in ("implement", "test", "commit"):
        m.step_done(town, CREW, step, "ok")
    open_one = m.pour(town, MAYOR, chain("b"), wisp=True)
    merged = m.pour(town, MAYOR, chain("c"), wisp=True)
    beads.close(town, MAYOR, merged.root, "merged")  # the root closed (by the refinery, say)
    with town.db.read() as conn:
        closed_at = conn.execute("SELECT closed_ts FROM wisps WHERE root = ?", (walked.root,)).fetchone()[0]
    assert closed_at is not None
    age = town.config.patrol.wisp_max_age
    assert deacon_patrol.sweep(town, closed_at + age - 1) == []  # not old enough
    events = deacon_patrol.sweep(town, closed_at + age + 5)
    assert len(events) == 1 and events[0].action == "sweep_wisps"
    assert sorted(events[0].evidence["wisps"]) == sorted([walked.root, merged.root])
    assert rows_of(town, walked.root) == dict.fromkeys(WISP_TABLES, 0)
    assert rows_of(town, merged.root) == dict.fromkeys(WISP_TABLES, 0)
    assert rows_of(town, open_one.root)["issues"] == 4  # open: kept
    assert deacon_patrol.sweep(town, closed_at + age + 10) == []  # once per change: nothing more


def test_wisp_max_age_is_bounded() -> None:
    with pytest.raises(ValueError, match="wisp_max_age"):
        PatrolConfig(wisp_max_age=-1)
    assert PatrolConfig(wisp_max_age=0).wisp_max_age == 0


def test_poured_molecule_on_a_rig_exports_to_the_rig_file_and_a_wisp_does_not(rigged: Any) -> None:
    town = rigged.town
    kept = m.pour(town, MAYOR, chain("k"), rig="gt")
    wisp = m.pour(town, MAYOR, chain("w"), rig="gt", wisp=True)
    assert wisp.root.startswith("gt-wisp-")
    ids = exported_ids(town, "gt")
    assert kept.root in ids and all(s.bead_id in ids for s in kept.steps)
    assert not {i for i in ids if i.startswith(wisp.root)}


def test_status_views_show_a_hooked_molecules_walk(town: Town) -> None:
    from vermas.dashboard import view

    state = m.pour(town, MAYOR, chain(), hook="mayor")
    ordinary = beads.create(town, MAYOR, "plain work")
    with town.db.read() as conn:
        assert m.progress(conn, state.root) == "0/3 steps, at implement"
        assert m.progress(conn, ordinary.id) is None and m.progress(conn, "hq-none") is None
    m.step_done(town, MAYOR, "implement", "ok")
    mayor = next(a for a in view.snapshot(town, panes={}).agents if a.address == "mayor")
    assert mayor.hooked == state.root and mayor.molecule == "1/3 steps, at test"
    for step in ("test", "commit"):
        m.step_done(town, MAYOR, step, "ok")
    with town.db.read() as conn:
        assert m.progress(conn, state.root) == "3/3 steps"


def test_wisp_writes_leave_the_export_alone_and_never_reuse_an_id(town: Town) -> None:
    def generation() -> int:
        with town.db.read() as conn:
            return town.db.generation(conn, "issues")

    before = generation()
    roots = []
    for _ in range(3):
        state = m.pour(town, MAYOR, chain(), hook=str(CREW), wisp=True)
        m.step_done(town, CREW, "implement", "x")
        roots.append(state.root)
        m.burn(town, MAYOR, state.root)
    assert generation() == before  # nothing exported changed: no rewrite due
    # sequential ids: a burned wisp's id is never handed out again, and they stay short
    assert len(set(roots)) == 3 and roots == ["hq-wisp-1", "hq-wisp-5", "hq-wisp-9"]
    walked = m.pour(town, MAYOR, chain(), hook=str(CREW), wisp=True)
    for step in ("implement", "test", "commit"):
        m.step_done(town, CREW, step, "ok")
    m.squash(town, MAYOR, walked.root, "kept")
    assert generation() == before + 1  # the squash's digest is exported: one change
    plain = m.pour(town, MAYOR, chain())
    assert generation() == before + 2 and plain.root.startswith("hq-") and "wisp" not in plain.root


def test_sequential_ids_step_over_taken_ones(town: Town) -> None:
    from vermas import ids

    with town.db.write() as conn:
        assert ids.new_sequential_id(conn, "hq-wisp") == "hq-wisp-1"
        beads.insert(conn, town.db, bead_id="hq-wisp-1", title="imported", actor="overseer")
        beads.insert(conn, town.db, bead_id="hq-wisp-2", title="imported", actor="overseer")
        conn.execute("UPDATE prefixes SET count = 0 WHERE prefix = 'hq-wisp'")  # as after an import
        assert ids.new_sequential_id(conn, "hq-wisp") == "hq-wisp-3"
