"""The tree's shape: no import cycles (top-level and in-function imports alike), every import
inside a function says why it is deferred, and the core never imports the MCP SDK."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _finder():
    spec = importlib.util.spec_from_file_location("import_cycles", ROOT / "scripts" / "import_cycles.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["import_cycles"] = module
    spec.loader.exec_module(module)
    return module


def test_the_module_graph_has_no_cycles() -> None:
    finder = _finder()
    graph = finder.scan(ROOT)
    assert "vermas.town" in graph.modules and len(graph.imports) > 100  # it did read the tree
    assert finder.cycles(graph) == []


def test_the_cycle_finder_sees_a_cycle_made_inside_a_function(tmp_path: Path) -> None:
    finder = _finder()
    pkg = tmp_path / "vermas"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from vermas import b\n")
    (pkg / "b.py").write_text("def f():\n    from vermas.a import x\n")
    assert finder.cycles(finder.scan(tmp_path)) == [["vermas.a", "vermas.b"]]


def test_every_in_function_import_says_why_it_is_deferred() -> None:
    finder = _finder()
    undocumented = [f"{i.module}:{i.line}" for i in finder.in_function_imports(finder.scan(ROOT))
                    if not i.comment.startswith("deferred:")]
    assert undocumented == []


def test_the_core_never_imports_mcp() -> None:
    finder = _finder()
    graph = finder.scan(ROOT)
    offenders = sorted({f"{i.module}:{i.line}" for i in graph.imports
                        if i.module.split(".")[0] == "vermas" and i.target.split(".")[0] == "mcp"})
    assert offenders == []


def test_the_layout_places_every_part_of_a_town(tmp_path: Path) -> None:
    from vermas.layout import TownLayout

    layout = TownLayout(tmp_path)
    assert layout.store_path == tmp_path / ".beads" / "vermas.db"
    assert layout.routes_file == tmp_path / ".beads" / "routes.jsonl"
    assert layout.runner_lock == tmp_path / ".runtime" / "runner.lock"
    marker = tmp_path / ".runtime/agents/vermas-gt-polecats-nux/mcp.ready"
    assert layout.ready_marker("vermas-gt-polecats-nux") == marker
    assert layout.canonical_clone("gt") == tmp_path / "gt" / "mayor" / "rig"
    assert layout.clone_route("gt") == "gt/mayor/rig"
    assert layout.refinery_worktree("gt") == tmp_path / "gt" / "refinery" / "rig"
    assert layout.polecat_worktree("gt", "nux") == tmp_path / "gt" / "polecats" / "nux"
    assert layout.crew_dir("gt", "zed") == tmp_path / "gt" / "crew" / "zed"
    assert not layout.is_town()


def test_the_layout_refuses_names_that_would_leave_their_folder(tmp_path: Path) -> None:
    import pytest

    from vermas.layout import TownLayout

    layout = TownLayout(tmp_path)
    for bad in ("..", "a/b", "../x", "", ".hidden"):
        with pytest.raises(ValueError, match="invalid polecat name"):
            layout.polecat_worktree("gt", bad)
    with pytest.raises(ValueError, match="invalid rig name"):
        layout.canonical_clone("../../etc")
