"""The molecule tools over the real MCP protocol (SDK client, in-memory transport): preview,
pour, walk, squash, burn, a wisp; a shell twin; the polecat profile gains only mol_status and
mol_step_done and stays under 8 KB."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import call, fail
from vermas.town import Town
from vermas_mcp.profiles import PROFILES

NUX = "gt/polecats/nux"
POLECAT_TOOLS_LIMIT = 8192


async def test_preview_pour_walk_squash(client_for: Any) -> None:
    async with client_for("mayor") as mayor, client_for(NUX) as nux:
        listed = await call(mayor, "formula_list")
        assert {"polecat-work", "test-first", "review"} <= {x["name"] for x in listed["formulas"]}
        preview = await call(mayor, "formula_show", formula="polecat-work", vars=["bead=gt-1"])
        assert preview["steps"][0]["title"] == "Implement gt-1"
        assert "var 'bead': required var is missing" in await fail(mayor, "formula_show", formula="polecat-work")
        assert "not name=value" in await fail(mayor, "formula_show", formula="polecat-work", vars=["bead"])
        poured = await call(mayor, "mol_pour", formula="polecat-work", vars=["bead=gt-1"], hook=NUX)
        root = poured["root"]
        assert "only the holder" in await fail(mayor, "mol_step_done", step_id=f"{root}.1")
        status = await call(mayor, "mol_status", root=root)
        assert status["root"] == root and status["current"]["step"] == "implement"
        done = await call(nux, "mol_step_done", step_id="implement", summary="made it")
        assert done["next"]["step"] == "test"
        await call(nux, "mol_step_done", step_id="test")
        last = await call(nux, "mol_step_done", step_id="commit")
        assert last["next"] is None
        digest = await call(mayor, "mol_squash", root=root, summary="shipped")
        assert digest["status"] == "closed" and "made it" in digest["notes"]
        other = await call(mayor, "mol_pour", formula="review", vars=["target=x"])
        assert len((await call(mayor, "mol_burn", root=other["root"]))["beads"]) == 4


async def test_wisp_and_sling_formula_over_mcp(client_for: Any, town: Town) -> None:
    async with client_for("mayor") as mayor, client_for(NUX) as nux:
        wisp = await call(mayor, "mol_pour", formula="review", vars=["target=x"], wisp=True)
        assert wisp["wisp"] is True and "-wisp-" in wisp["root"]
        assert len((await call(mayor, "mol_burn", root=wisp["root"]))["beads"]) == 4
        assert "vars are for a formula" in await fail(mayor, "sling", bead_id="hq-abcd", target=NUX, vars=["a=b"])
        root = await call(mayor, "sling", bead_id="formula:polecat-work", target=NUX, vars=["bead=gt-9"])
        assert root["status"] == "hooked" and root["assignee"] == NUX and root["issue_type"] == "molecule"
        hooked = await call(nux, "hook_check")
        assert hooked["molecule"]["root"] == root["id"] and hooked["molecule"]["current"]["step"] == "implement"
        assert "mol_step_done" in hooked["instructions"]
        mine = await call(nux, "mol_status")  # default: the molecule on the caller's hook
        assert [s["marker"] for s in mine["steps"]] == ["current", "blocked", "blocked"]
        assert mine["current"]["acceptance"]


async def test_polecat_profile_gains_only_status_and_step_done(client_for: Any) -> None:
    async with client_for(NUX) as nux:
        tools = (await nux.list_tools()).tools
    names = {t.name for t in tools}
    assert {n for n in names if n.startswith(("mol_", "formula_"))} == {"mol_status", "mol_step_done"}
    assert names == set(PROFILES["polecat"])
    size = len(json.dumps([t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in tools],
                          separators=(",", ":")).encode())
    assert size < POLECAT_TOOLS_LIMIT, f"polecat tools/list is {size} bytes"


def test_shell_twin_pours_and_shows(town: Town, tmp_path: Path) -> None:
    runner = Path(sys.executable).parent / "vermas-runner"
    env = {"VERMAS_TOWN": str(town.root), "BD_ACTOR": "mayor", "PATH": str(Path(sys.executable).parent)}
    out = subprocess.run([str(runner), "formula", "list", "--json"], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "test-first" in out.stdout
    poured = subprocess.run([str(runner), "mol", "pour", "test-first", "--vars", "bead=gt-9", "--json"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert poured.returncode == 0, poured.stderr
    root = json.loads(poured.stdout)["root"]
    assert [s["step"] for s in json.loads(poured.stdout)["steps"]] == ["red", "green", "refactor"]
    burned = subprocess.run([str(runner), "mol", "burn", root, "--json"], env=env, capture_output=True, text=True,
                            timeout=120)
    assert burned.returncode == 0, burned.stderr
    assert root in json.loads(burned.stdout)["beads"]
