"""Molecules in the store (vermas.molecules.molecule): pour writes root and steps in one
transaction and they export as bd-format beads; the checklist's markers; step_done by the
holder only, once, even with two processes racing; squash and burn; every built-in walked."""

from __future__ import annotations

import json
import multiprocessing
from typing import Any

import pytest

from vermas.addresses import parse_address
from vermas.errors import Conflict, Forbidden, InvalidInput
from vermas.export import export_town
from vermas.molecules import formula as f
from vermas.molecules import molecule as m
from vermas.molecules.molecule import Marker
from vermas.town import Town

MAYOR = parse_address("mayor")
NUX = parse_address("gt/polecats/nux")
SLIT = parse_address("gt/polecats/slit")

DIAMOND = """formula = "diamond"
description = "a diamond for {{who}}"
[vars.who]
required = true
[[steps]]
id = "start"
title = "start {{who}}"
acceptance = "started"
[[steps]]
id = "left"
title = "left"
needs = ["start"]
[[steps]]
id = "right"
title = "right"
needs = ["start"]
[[steps]]
id = "join"
title = "join"
needs = ["left", "right"]
"""


def proto(text: str = DIAMOND, **given: str) -> f.Proto:
    return f.cook(f.parse(text, "diamond.formula.toml"), given or {"who": "nux"})


def exported(town: Town) -> dict[str, dict[str, Any]]:
    export_town(town, force=True)
    lines = (town.beads_dir / "issues.jsonl").read_text().splitlines()
    return {row["id"]: row for row in map(json.loads, lines) if row.get("_type") == "issue"}


def count_issues(town: Town) -> int:
    with town.db.read() as conn:
        return int(conn.execute("SELECT count(*) FROM issues").fetchone()[0])


def marks(status: m.MoleculeStatus) -> dict[str, str]:
    return {s.step: s.marker.value for s in status.steps}


def test_markers_pure() -> None:
    needs = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}
    order = ["a", "b", "c", "d"]
    assert m.markers(dict.fromkeys(order, "open"), needs, order) == {
        "a": Marker.CURRENT, "b": Marker.BLOCKED, "c": Marker.BLOCKED, "d": Marker.BLOCKED}
    got = m.markers({"a": "closed", "b": "open", "c": "open", "d": "open"}, needs, order)
    assert got == {"a": Marker.DONE, "b": Marker.CURRENT, "c": Marker.READY, "d": Marker.BLOCKED}


def test_pour_writes_bd_format_beads(town: Town) -> None:
    status = m.pour(town, MAYOR, proto(), hook=str(NUX))
    root = status.root
    assert status.holder == str(NUX) and status.formula == "diamond"
    assert marks(status) == {"start": "current", "left": "blocked", "right": "blocked", "join": "blocked"}
    assert status.current is not None and status.current.acceptance == "started"
    assert status.current.title == "start nux"
    rows = exported(town)
    assert rows[root]["issue_type"] == "molecule" and rows[root]["status"] == "hooked"
    assert rows[root]["labels"] == ["formula:diamond"]
    steps = {rows[b]["labels"][0]: rows[b] for b in rows if b.startswith(root + ".")}
    assert set(steps) == {"step:start", "step:left", "step:right", "step:join"}
    join_deps = {(d["depends_on_id"], d["type"]) for d in steps["step:join"]["dependencies"]}
    left, right = steps["step:left"]["id"], steps["step:right"]["id"]
    assert join_deps == {(root, "parent-child"), (left, "blocks"), (right, "blocks")}
    assert steps["step:start"]["acceptance_criteria"] == "started"


def test_pour_is_one_transaction(town: Town) -> None:
    """A failure mid-pour (the hook is occupied) leaves nothing behind."""
    m.pour(town, MAYOR, proto(), hook=str(NUX))
    before = count_issues(town)
    with pytest.raises(Conflict, match="hook is occupied"):
        m.pour(town, MAYOR, proto(), hook=str(NUX))
    assert count_issues(town) == before
    with pytest.raises(Forbidden, match="polecats do not pour"):
        m.pour(town, SLIT, proto())
    with pytest.raises(InvalidInput, match="unknown rig"):
        m.pour(town, MAYOR, proto(), rig="nowhere")
    assert count_issues(town) == before


def test_step_done_walks_and_refuses(town: Town) -> None:
    root = m.pour(town, MAYOR, proto(), hook=str(NUX)).root
    with pytest.raises(Forbidden, match="only the holder"):
        m.step_done(town, SLIT, "start", root=root)
    with pytest.raises(Forbidden, match="only the holder"):
        m.step_done(town, MAYOR, "start", root=root)
    with pytest.raises(Conflict, match="blocked: it needs start"):
        m.step_done(town, NUX, "left")
    with pytest.raises(Exception, match="no step 'ghost'"):
        m.step_done(town, NUX, "ghost")
    done = m.step_done(town, NUX, "start", "began")  # root from the hook
    assert done.molecule.steps[0].marker is Marker.DONE and done.molecule.steps[0].outcome == "began"
    assert done.next is not None and done.next.step == "left"
    assert marks(done.molecule) == {"start": "done", "left": "current", "right": "ready", "join": "blocked"}
    with pytest.raises(Conflict, match="already done"):
        m.step_done(town, NUX, "start")
    right = next(s.bead_id for s in done.molecule.steps if s.step == "right")
    assert m.step_done(town, NUX, right, "by bead id").next.step == "left"  # type: ignore[union-attr]
    assert m.step_done(town, NUX, "left").next.step == "join"  # type: ignore[union-attr]
    last = m.step_done(town, NUX, "join", "joined")
    assert last.next is None and set(marks(last.molecule).values()) == {"done"}
    assert m.status(town, NUX).root == root


def test_squash_leaves_one_digest_bead(town: Town) -> None:
    before = count_issues(town)
    root = m.pour(town, MAYOR, proto(), hook=str(NUX)).root
    m.step_done(town, NUX, "start", "began it")
    with pytest.raises(Forbidden):
        m.squash(town, SLIT, root, "no")
    bead = m.squash(town, NUX, root, "all went well")
    assert bead.status == "closed" and count_issues(town) == before + 1
    rows = exported(town)
    assert [b for b in rows if b.startswith(root)] == [root]
    notes = rows[root]["notes"]
    assert notes.startswith("all went well") and "- start: start nux: began it" in notes
    assert "- join: join: not done (blocked)" in notes
    with pytest.raises(Conflict, match="closed already"):
        m.squash(town, NUX, root)


def test_burn_removes_unstarted_and_refuses_started(town: Town) -> None:
    before = count_issues(town)
    root = m.pour(town, MAYOR, proto()).root
    removed = m.burn(town, MAYOR, root)
    assert root in removed.beads and len(removed.beads) == 5 and count_issues(town) == before
    assert not [b for b in exported(town) if b.startswith(root)]
    root = m.pour(town, MAYOR, proto(), hook=str(NUX)).root
    m.step_done(town, NUX, "start")
    with pytest.raises(Conflict, match=r"has done steps \(start\)"):
        m.burn(town, NUX, root)
    with pytest.raises(Forbidden):
        m.burn(town, SLIT, root, force=True)
    m.burn(town, NUX, root, force=True)
    assert count_issues(town) == before
    with pytest.raises(InvalidInput, match="not a molecule root"):
        created = m.pour(town, MAYOR, proto()).steps[0].bead_id
        m.burn(town, MAYOR, created)


@pytest.mark.parametrize("name,given", [("polecat-work", {"bead": "gt-abc"}), ("test-first", {"bead": "gt-abc"}),
                                        ("review", {"target": "polecat/nux"})])
def test_builtin_poured_and_walked(town: Town, name: str, given: dict[str, str]) -> None:
    cooked = f.cook(f.load(name, town.root), given)
    status = m.pour(town, MAYOR, cooked, hook=str(NUX))
    walked = []
    while status.current is not None:
        assert status.current.acceptance  # the current step comes in full
        walked.append(status.current.step)
        status = m.step_done(town, NUX, status.current.step, f"did {status.current.step}").molecule
    assert walked == [s.id for s in cooked.steps]
    digest = m.squash(town, NUX, status.root, "walked")
    assert all(f"did {sid}" in digest.notes for sid in walked)


def _race(town_dir: str, root: str, barrier: Any, results: Any) -> None:
    town = Town.open(town_dir)
    try:
        barrier.wait()
        m.step_done(town, NUX, "start", "mine", root=root)
        results.put("won")
    except Conflict as exc:
        results.put(f"lost: {exc}")
    finally:
        town.close()


def test_two_processes_race_one_wins(town: Town) -> None:
    root = m.pour(town, MAYOR, proto(), hook=str(NUX)).root
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(str(town.root), root, barrier, results)) for _ in range(2)]
    for p in procs:
        p.start()
    outcomes = sorted(results.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert outcomes[1] == "won" and outcomes[0].startswith("lost:") and "already done" in outcomes[0]
    with town.db.read() as conn:
        start = m._status(conn, root).steps[0]
    assert start.marker is Marker.DONE and start.outcome == "mine"



def test_step_ids_with_dots_and_other_molecules_steps(town: Town) -> None:
    text = 'formula = "dots"\n[[steps]]\nid = "v1.2"\ntitle = "dotted"\n'
    root = m.pour(town, MAYOR, f.cook(f.parse(text, "dots.formula.toml")), hook=str(NUX)).root
    other = m.pour(town, MAYOR, proto(), hook=str(SLIT))
    with pytest.raises(Forbidden, match="only the holder"):
        m.step_done(town, NUX, other.steps[0].bead_id)  # a step of slit's molecule, by bead id
    assert m.step_done(town, NUX, "v1.2").next is None
    assert m.status(town, NUX, root).steps[0].marker is Marker.DONE
