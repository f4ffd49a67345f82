"""`up` after `down` starts no finished polecat: a polecat that called polecat_done (waiting only
for its merge), escalated or deferred has nothing to do in a session; starting one makes a model
turn for nothing before the witness stops it. Started and working polecats are started again.

The choice is pure (every state below); the effect runs once for real: `up` on a town with real
git worktrees and real tmux (the town's private socket; the agent is a sleeping shell)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.refinery_rig import MAYOR, MergeRig
from vermas import beads, polecat, up
from vermas.addresses import parse_address
from vermas.protocol import PolecatState
from vermas.sessions import TownSessions
from vermas.town import Town

RUN = {PolecatState.STARTED, PolecatState.WORKING}


@pytest.mark.parametrize("state", [s for s in PolecatState if s is not PolecatState.NUKED])
def test_only_started_and_working_polecats_have_a_session_to_run(state: PolecatState) -> None:
    nux = parse_address("gt/polecats/nux")
    assert up.polecats_to_run([(nux, state)]) == ([nux] if state in RUN else [])


def test_polecats_to_run_keeps_the_order_and_drops_only_the_finished() -> None:
    a, b, c = (parse_address(f"gt/polecats/{n}") for n in ("nux", "slit", "toast"))
    slots = [(a, PolecatState.DONE), (b, PolecatState.WORKING), (c, PolecatState.STARTED)]
    assert up.polecats_to_run(slots) == [b, c]


@pytest.mark.tmux
def test_up_after_down_starts_no_finished_polecat(tmp_path: Path) -> None:
    town, _ = Town.init(tmp_path / "town")
    rig = MergeRig(town, tmp_path)
    town.config.agent.command, town.config.agent.args = "sh", ["-c", "sleep 600", "agent"]
    town.save_config()
    sessions = TownSessions(town.root)
    try:
        finished = [rig.work(f"finished {i}", {f"f{i}.txt": f"{i}\n"}).address for i in range(3)]
        assert {p.state for p in polecat.list_polecats(town)} == {PolecatState.DONE}
        bead = beads.create(town, MAYOR, "still working", rig="gt").id
        busy = parse_address(polecat.spawn(town, MAYOR, bead, "gt", sessions=sessions, kick="none").address)
        polecat.set_state(town, "gt", str(busy.name), PolecatState.WORKING)
        up.down(town, sessions)
        assert not sessions.alive(busy)

        report = up.up(town, sessions, wait=False)
        assert str(busy) in report.started and sessions.alive(busy)
        for address in finished:
            assert str(address) not in report.started and not sessions.alive(address)
        # Their slots and worktrees are untouched: they wait for the refinery as before.
        states = {p.address: p.state for p in polecat.list_polecats(town)}
        assert [states[str(a)] for a in finished] == [PolecatState.DONE] * 3
        assert all(Path(str(p.worktree)).is_dir() for p in polecat.list_polecats(town))
    finally:
        up.down(town, sessions)
        sessions.kill_server()
        town.close()
