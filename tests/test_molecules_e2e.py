"""Molecules end to end: a three-step formula slung to a rig is walked step by step by a polecat
(the real Claude Code CLI in tmux, played by the stand-in polecat of
vermas/testing/standin/polecat.py), merged by the refinery onto the bare upstream, and the
molecule ends closed. The town runs as a person runs it (`vermas-runner up --detach --model
standin`, the `up` fixture of tests/conftest.py); only the model is a double.

The first tests need neither tmux nor Claude Code: the stand-in polecat's walk, played against
the real core (a real store, real `mol_step_done`, its Bash calls on real git), so what the
policy reads is what the tools return.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from mcp import Client

from tests.conftest import git, make_repo
from tests.test_refinery_e2e import RIG, QueueTown, assert_cleaned_up, bash, e2e, process_queue_until, request
from vermas import hooks
from vermas.addresses import parse_address
from vermas.molecules import formula as f
from vermas.molecules import molecule as m
from vermas.molecules.molecule import Marker
from vermas.refinery.types import MRState
from vermas.testing.standin import polecat_policy
from vermas.town import Town
from vermas_mcp.server import build_server

MAYOR = parse_address("mayor")
NUX = parse_address("gt/polecats/nux")
# Three steps chained by `needs`; two write the files their description names, the last one has
# no `standin:` line (the stand-in then commits a note named after the step).
SHIP = """formula = "ship"
description = "Ship {{name}}: implement, test, commit."
version = 1
type = "workflow"

[vars.name]
description = "what to ship"
required = true

[[steps]]
id = "implement"
title = "Implement {{name}}"
description = "Write {{name}}.txt.\\nstandin: write {{name}}.txt = {{name}} implemented"
acceptance = "{{name}}.txt says it is implemented."

[[steps]]
id = "test"
title = "Test {{name}}"
description = "Add its test.\\nstandin: write tests/{{name}}.txt = {{name}} tested"
needs = ["implement"]
acceptance = "tests/{{name}}.txt exists."

[[steps]]
id = "commit"
title = "Commit {{name}}"
description = "Commit the work and report."
needs = ["test"]
acceptance = "The worktree is clean."
"""
STEPS = ["implement", "test", "commit"]
SUMMARIES = {"implement": "step implement: committed widget.txt",
             "test": "step test: committed tests/widget.txt",
             "commit": "step commit: committed steps/commit.md"}


def name(block: dict[str, Any]) -> str:
    return str(block["name"]).rsplit("__", 1)[-1]


def pour_ship(town: Town) -> str:
    """The three-step formula poured onto a polecat's hook, as sling does; its root."""
    return m.pour(town, MAYOR, f.cook(f.parse(SHIP, "ship.formula.toml"), {"name": "widget"}), hook=str(NUX)).root


def walk_against_the_core(town: Town, worktree: Path) -> list[dict[str, Any]]:
    """Play one stand-in polecat round against the real core: hook_check and mol_step_done are the
    core's on a real store, Bash runs in a real git worktree; only polecat_done is answered with a
    made-up merge request (it needs a polecat's sandbox). Returns the tool calls."""
    policy = polecat_policy()
    messages: list[dict[str, Any]] = [{"role": "user", "content": "GUPP"}]
    calls: list[dict[str, Any]] = []
    for _ in range(20):
        blocks = policy(request(messages))
        messages.append({"role": "assistant", "content": blocks})
        uses = [b for b in blocks if b["type"] == "tool_use"]
        if not uses:
            return calls
        use = uses[0]
        calls.append(use)
        error = False
        if name(use) == "hook_check":
            result: Any = hooks.check(town, NUX).model_dump(mode="json")
        elif name(use) == "Bash":
            done = bash(worktree, use["input"]["command"])
            assert done.returncode == 0, done.stderr
            result = done.stdout
        elif name(use) == "mol_step_done":
            try:
                result = m.step_done(town, NUX, **use["input"]).model_dump(mode="json")
            except Exception as exc:  # noqa: BLE001 - an MCP tool error, as the CLI would see it
                result, error = str(exc), True
        else:
            result = {"id": "gt-mr1"}
        text = result if isinstance(result, str) else json.dumps(result)
        messages.append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": use["id"],
                                                       "content": text, "is_error": error}]})
    raise AssertionError(f"the round did not end: {[name(c) for c in calls]}")


def test_the_stand_in_polecat_walks_a_molecule_from_what_the_tools_return(town: Town, tmp_path: Path) -> None:
    root = pour_ship(town)
    worktree = make_repo(tmp_path / "wt")
    calls = walk_against_the_core(town, worktree)
    assert [name(c) for c in calls] == ["hook_check", *["Bash", "mol_step_done"] * 3, "polecat_done"]
    assert [c["input"] for c in calls if name(c) == "mol_step_done"] == [
        {"step_id": s, "summary": SUMMARIES[s]} for s in STEPS]
    assert calls[-1]["input"] == {"status": "COMPLETED",
                                  "summary": f"walked molecule {root}: implement, test, commit done"}
    status = m.status(town, NUX, root)
    assert [(s.step, s.marker, s.outcome) for s in status.steps] == [(s, Marker.DONE, SUMMARIES[s]) for s in STEPS]
    # One commit per step, in the molecule's order, each with its own files.
    log = git(worktree, "log", "--format=%s", "-3").splitlines()
    assert log == [f"{root}: step {s}: {t} widget" for s, t in
                   (("commit", "Commit"), ("test", "Test"), ("implement", "Implement"))]
    assert (worktree / "widget.txt").read_text() == "widget implemented\n"
    assert (worktree / "tests" / "widget.txt").read_text() == "widget tested\n"
    assert (worktree / "steps" / "commit.md").read_text() == "Commit widget\n"
    assert not git(worktree, "status", "--porcelain")


def test_a_molecule_half_walked_in_an_earlier_session_goes_on_from_its_current_step(town: Town,
                                                                                     tmp_path: Path) -> None:
    root = pour_ship(town)
    m.step_done(town, NUX, "implement", "done before the crash")
    calls = walk_against_the_core(town, make_repo(tmp_path / "wt"))
    assert [c["input"]["step_id"] for c in calls if name(c) == "mol_step_done"] == ["test", "commit"]
    assert calls[-1]["input"]["summary"] == f"walked molecule {root}: test, commit done"


def test_a_refused_step_escalates_instead_of_reporting_done(town: Town) -> None:
    pour_ship(town)
    policy = polecat_policy()
    messages: list[dict[str, Any]] = [{"role": "user", "content": "GUPP"}]
    results = [(hooks.check(town, NUX).model_dump_json(), False),
               ("ok", False), ("Conflict: step implement (x.1) was closed by someone else meanwhile", True)]
    for text, error in results:
        blocks = policy(request(messages))
        use = next(b for b in blocks if b["type"] == "tool_use")
        messages += [{"role": "assistant", "content": blocks},
                     {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use["id"], "content": text,
                                                   "is_error": error}]}]
    last = next(b for b in policy(request(messages)) if b["type"] == "tool_use")
    assert name(last) == "polecat_done" and last["input"]["status"] == "ESCALATED"
    assert "closed by someone else" in last["input"]["summary"]


# ---- a real town under `vermas-runner up` ------------------------------------------------------------------


async def sling_formula(town: Town, formula: str, variables: list[str]) -> str:
    """As the mayor does it, over MCP: sling a formula with its vars to the rig; the molecule's root."""
    async with Client(build_server(town, MAYOR, "mayor")) as c:
        slung = await c.call_tool("sling", {"bead_id": f"formula:{formula}", "target": RIG, "vars": variables})
        assert not slung.is_error, slung.content
        root = slung.structured_content
        assert root["issue_type"] == "molecule" and root["status"] == "hooked", root
        return str(root["id"])


def step_rows(town: Town, root: str) -> list[dict[str, Any]]:
    with town.db.read() as conn:
        rows = conn.execute("SELECT i.id, i.status, i.close_reason, i.closed_at, i.assignee FROM dependencies d "
                            "JOIN issues i ON i.id = d.issue_id WHERE d.depends_on_id = ? AND d.type = 'parent-child' "
                            "ORDER BY i.id", (root,)).fetchall()
    return [dict(r) for r in rows]


@e2e
def test_a_three_step_formula_slung_to_a_rig_is_walked_merged_and_closed(up: QueueTown) -> None:
    formulas = up.rig.clone / ".beads" / "formulas"
    formulas.mkdir(parents=True, exist_ok=True)
    (formulas / "ship.formula.toml").write_text(SHIP)  # the rig's own formula, found first
    started = time.monotonic()
    root = asyncio.run(sling_formula(up.town, "ship", ["name=widget"]))
    process_queue_until(up, lambda: up.bead_status(root) == "closed", "the molecule's root to be merged and closed")
    [req] = up.requests(root)
    assert req.state is MRState.MERGED, up.diagnostics()
    assert up.rig.bead_row(root)["close_reason"] == f"merged in {req.merged_sha}"
    # The polecat walked the steps in order, each closed with its own summary, before it reported done.
    steps = step_rows(up.town, root)
    assert [s["id"] for s in steps] == [f"{root}.{n}" for n in (1, 2, 3)]
    assert [(s["status"], s["close_reason"]) for s in steps] == [("closed", SUMMARIES[s]) for s in STEPS], \
        up.diagnostics()
    closed_at = [str(s["closed_at"]) for s in steps]
    assert closed_at == sorted(closed_at) and len(set(closed_at)) == 3, closed_at
    # polecat_done(COMPLETED) came after the last step (while steps are open it is refused).
    assert req.summary == f"walked molecule {root}: implement, test, commit done", up.diagnostics()
    assert req.created_at > closed_at[-1], (req.created_at, closed_at)
    status = m.status(up.town, MAYOR, root)
    assert [(s.step, s.marker) for s in status.steps] == [(s, Marker.DONE) for s in STEPS]
    assert status.current is None and status.holder is None
    # The refinery merged the branch as ONE commit (strategy "squash", the default) that lists the
    # step commits it folds, in the molecule's order.
    assert git(up.rig.bare, "merge-base", "--is-ancestor", str(req.merged_sha), "main") == ""
    body = git(up.rig.bare, "log", "-1", "--format=%B", str(req.merged_sha)).splitlines()
    assert body[0].startswith(f"{root}: "), body
    folded = [line.split(" ", 3)[-1] for line in body if line.startswith("  ") and f"{root}: step " in line]
    assert folded == [f"{root}: step implement: Implement widget", f"{root}: step test: Test widget",
                      f"{root}: step commit: Commit widget"], body
    assert up.upstream_file("widget.txt") == "widget implemented\n"
    assert up.upstream_file("tests/widget.txt") == "widget tested\n"
    assert up.upstream_file("steps/commit.md") == "Commit widget\n"
    process_queue_until(up, lambda: up.rig.slots() == [], "the polecat's slot to be freed after the merge")
    assert_cleaned_up(up, [root])
    print(f"\nmolecule e2e: slung to cleaned up in {time.monotonic() - started:.1f}s")
