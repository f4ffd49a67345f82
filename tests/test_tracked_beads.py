"""Repositories that track `.beads/issues.jsonl` (bd users, Gas Town's layout) do not wedge
(issue 19, item 5): real git (a bare upstream, a person's clone pushing bd commits), the real
store, `rig add`, the spawn's sync, the real refinery (`worker.drain`) and `rig sync`.

Before the fix vermas rewrote the tracked file in the canonical clone, so a person's bd commit
upstream made every sync fail: "could not fast-forward main ... would be overwritten:
.beads/issues.jsonl", and `rig add` imported none of the repository's beads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import call, git, make_repo
from tests.refinery_rig import MAYOR, TEST_COMMAND, MergeRig
from vermas import beads, beadsync, export, patrol, rig, sling
from vermas.errors import Conflict, InvalidInput
from vermas.refinery import worker
from vermas.sessions import TownSessions
from vermas.town import Town

OWNER = "runner:test:1"
BEADS = ".beads/issues.jsonl"


class TrackedRig(MergeRig):
    """MergeRig's rig, whose upstream holds `seed_files` (a bd user's .beads/issues.jsonl)
    committed before `rig add`; `added` is what `rig add` returned."""

    def __init__(self, town: Town, tmp_path: Path, seed_files: dict[str, str] | None = None, name: str = "gt",
                 prefix: str | None = "gt") -> None:
        self.town, self.name = town, name
        seed = make_repo(tmp_path / "seed")
        for path, content in (seed_files or {}).items():
            (seed / path).parent.mkdir(parents=True, exist_ok=True)
            (seed / path).write_text(content)
            git(seed, "add", path)
            git(seed, "commit", "-q", "-m", f"add {path}")
        self.bare = tmp_path / "upstream.git"
        git(seed, "clone", "-q", "--bare", ".", str(self.bare))
        self.pusher = tmp_path / "pusher"
        git(tmp_path, "clone", "-q", str(self.bare), str(self.pusher))
        self.added = rig.add(town, name, str(self.bare), prefix=prefix, max_polecats=8, test_command=TEST_COMMAND)
        config = town.config.rigs[name]
        town.config.rigs[name] = config.model_copy(update={"verify_level": "off"})
        town.save_config()
        town.reload_config()
        self.clone = rig.canonical_clone(town, name)


def bd_line(bead_id: str, title: str, updated_at: str, status: str = "open", **extra: Any) -> str:
    """One line as bd writes it (its export's fields and order)."""
    rec = {"id": bead_id, "title": title, "status": status, "priority": 2, "issue_type": "task",
           "created_at": "2026-01-01T00:00:00Z", "created_by": "person", "updated_at": updated_at,
           **extra, "dependency_count": 0, "dependent_count": 0, "comment_count": 0}
    return json.dumps(rec, separators=(",", ":"))


SEED = [bd_line("gt-a1", "first", "2026-01-01T00:00:00Z"), bd_line("gt-b2", "second", "2026-01-01T00:00:00Z"),
        bd_line("gt-d4", "fourth", "2026-01-01T00:00:00Z"), bd_line("gt-e5", "fifth", "2026-01-01T00:00:00Z")]


def text(lines: list[str]) -> str:
    return "".join(line + "\n" for line in lines)


@pytest.fixture
def tracked(town: Town, tmp_path: Path) -> TrackedRig:
    """A rig whose upstream tracks its bd file; the runner's export has run since `rig add`."""
    mr = TrackedRig(town, tmp_path, seed_files={BEADS: text(SEED)})
    export.export_town(town)
    return mr


def person_commit(mr: MergeRig, lines: list[str]) -> str:
    """A person's bd commit upstream: the file as `lines`."""
    return mr.push_upstream(BEADS, text(lines))


def main_file(mr: MergeRig) -> str:
    return git(mr.bare, "show", f"main:{BEADS}")


def title_of(town: Town, bead_id: str) -> str:
    return beads.show(town, bead_id).title


# ---- pure parts -------------------------------------------------------------------------------


def test_changed_lines_blanks_what_was_there_and_keeps_line_numbers() -> None:
    old = b'{"id":"gt-a1"}\n{"id":"gt-b2"}\n'
    new = b'{"id":"gt-a1"}\n{"id":"gt-b2","title":"x"}\n{"id":"gt-c3"}\n'
    assert beadsync.changed_lines(old, new) == ["", '{"id":"gt-b2","title":"x"}', '{"id":"gt-c3"}', ""]
    assert beadsync.changed_lines(None, new)[0] == '{"id":"gt-a1"}'


def test_changed_lines_after_a_damaged_version_takes_every_line() -> None:
    assert beadsync.changed_lines(b'{"id":"gt-a1"}\n{"id": "gt-b2",\n', b'{"id":"gt-a1"}\n') == ['{"id":"gt-a1"}', ""]


def test_choose_prefix() -> None:
    assert rig.choose_prefix("myproj", None, "bd") == "bd"  # the file's prefix, so its beads route here
    assert rig.choose_prefix("myproj", None, None) == "myproj"
    assert rig.choose_prefix("myproj", "mp", None) == "mp"
    assert rig.choose_prefix("myproj", None, "my-proj") == "myproj"  # not a usable prefix: as before
    with pytest.raises(InvalidInput, match="--prefix bd"):
        rig.choose_prefix("myproj", "mp", "bd")


def test_file_prefix_counts_route_prefixes() -> None:
    data = text([bd_line("sy-a1", "x", "2026-01-01T00:00:00Z"), bd_line("sy-main-3gz", "y", "2026-01-01T00:00:00Z"),
                 bd_line("zz-a1", "z", "2026-01-01T00:00:00Z"), "not json"]).encode()
    assert beadsync.file_prefix(data) == "sy"


# ---- rig add ----------------------------------------------------------------------------------


def test_rig_add_imports_the_repositorys_beads_under_their_prefix(town: Town, tmp_path: Path) -> None:
    mr = TrackedRig(town, tmp_path, name="myproj", prefix=None, seed_files={BEADS: text(SEED)})
    assert town.config.rigs["myproj"].prefix == "gt"  # not "myproj": the beads' ids route by gt-
    assert mr.added.beads is not None and mr.added.beads.created == 4 and mr.added.beads.refused == []
    assert title_of(town, "gt-b2") == "second"
    with town.db.read() as conn:
        assert conn.execute("SELECT rig FROM routes WHERE prefix = 'gt-'").fetchone()[0] == "myproj"


def test_rig_add_with_another_prefix_is_refused_and_writes_nothing(town: Town, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="holds beads with prefix 'gt'.*--prefix gt"):
        TrackedRig(town, tmp_path, name="myproj", prefix="mp", seed_files={BEADS: text(SEED)})
    town.reload_config()
    assert "myproj" not in town.config.rigs
    assert not town.layout.rig_dir("myproj").exists()
    with town.db.read() as conn:
        assert conn.execute("SELECT COUNT(*) FROM issues").fetchone()[0] == 0


def test_rig_add_whose_beads_prefix_is_taken_is_refused(town: Town, tmp_path: Path) -> None:
    TrackedRig(town, tmp_path / "one", name="other", prefix="gt")
    with pytest.raises(Conflict, match="prefix 'gt' is used already; the repository's .beads/issues.jsonl"):
        TrackedRig(town, tmp_path / "two", name="myproj", prefix=None, seed_files={BEADS: text(SEED)})
    assert not town.layout.rig_dir("myproj").exists()


# ---- the wedge --------------------------------------------------------------------------------


async def test_person_bd_commit_then_sling_merge_and_sync_keep_working(
        tracked: TrackedRig, town: Town, client_for: Any) -> None:
    clone = tracked.clone
    person = [bd_line("gt-a1", "first, edited by a person", "2026-03-01T00:00:00Z"), *SEED[1:3],
              bd_line("gt-c3", "a person's new bead", "2026-03-01T00:00:00Z"), SEED[3]]
    person.sort()
    person_commit(tracked, person)

    work = tracked.work("change a.txt", {"a.txt": "polecat\n"})  # the spawn syncs first: this was the wedge
    export.export_town(town)
    assert git(clone, "status", "--porcelain", "--", BEADS) == ""  # the export leaves the tracked file alone
    # vermas writes no bd file into a polecat's worktree, so even `git add -A` there cannot carry one
    assert git(work.worktree, "status", "--porcelain", "--untracked-files=all") == ""
    assert BEADS not in git(clone, "diff-tree", "--no-commit-id", "--name-only", "-r", work.commit).split()
    async with client_for("mayor") as mayor:
        shown = await call(mayor, "bead_show", bead_id="gt-c3")
    assert shown["title"] == "a person's new bead"
    assert title_of(town, "gt-a1") == "first, edited by a person"

    reports = worker.drain(town, "gt", OWNER)
    assert not any(r.error for r in reports), [r.error for r in reports]
    assert tracked.bead_row(work.bead)["status"] == "closed"
    assert "polecat\n" == git(tracked.bare, "show", "main:a.txt") + "\n"
    assert bd_line("gt-c3", "a person's new bead", "2026-03-01T00:00:00Z") in main_file(tracked).splitlines()

    person_commit(tracked, [*person, bd_line("gt-f6", "another person's bead", "2026-03-02T00:00:00Z")])
    synced = rig.sync(town, "gt")
    assert synced.state is rig.SyncState.FAST_FORWARDED
    assert [b.created for b in synced.beads] == [1]
    assert title_of(town, "gt-f6") == "another person's bead"
    export.export_town(town)
    assert git(clone, "status", "--porcelain", "--", BEADS) == ""
    second = tracked.work("change b.txt", {"b.txt": "again\n"})  # and the next sling too
    assert second.commit


@pytest.mark.tmux
def test_real_sling_after_a_persons_bd_commit(tracked: TrackedRig, town: Town) -> None:
    """`sling` itself (sessions in the town's own tmux, a stand-in agent: bash sleeping): today
    it fails with "no polecat spawned: ... would be overwritten: .beads/issues.jsonl"."""
    town.config.agent.command, town.config.agent.args = "bash", ["-c", "sleep 600", "--"]
    town.save_config()
    tmux = TownSessions(town.root)
    try:
        new_bead = bd_line("gt-c3", "a person's new bead", "2026-03-01T00:00:00Z")
        pushed = person_commit(tracked, sorted([*SEED, new_bead]))
        first = beads.create(town, MAYOR, "work made in the town", rig="gt")
        slung = sling.sling(town, MAYOR, first.id, "gt", sessions=tmux, kick="none")
        worktree = town.root / "gt" / "polecats" / str(slung.assignee).rsplit("/", 1)[1]
        assert git(worktree, "rev-parse", "HEAD") == pushed
        again = sling.sling(town, MAYOR, "gt-c3", "gt", sessions=tmux, kick="none")  # the person's bead
        assert again.status == "hooked" and again.assignee != slung.assignee
    finally:
        tmux.kill_server()


def test_merged_polecat_commit_carrying_the_file_keeps_the_persons_line(tracked: TrackedRig, town: Town) -> None:
    """A polecat that ran bd itself commits the file; the refinery replays it onto a main that
    has a person's new line since: both land, and the next sync imports the polecat's edit."""
    work = tracked.work("close gt-a1 the bd way", {
        BEADS: text([bd_line("gt-a1", "first", "2026-04-01T00:00:00Z", status="closed",
                             closed_at="2026-04-01T00:00:00Z"), *SEED[1:]])})
    person_commit(tracked, [*SEED, bd_line("gt-g7", "a person's late bead", "2026-03-01T00:00:00Z")])
    reports = worker.drain(town, "gt", OWNER)
    assert not any(r.error for r in reports), [r.error for r in reports]
    assert tracked.bead_row(work.bead)["status"] == "closed"
    lines = main_file(tracked).splitlines()
    assert bd_line("gt-g7", "a person's late bead", "2026-03-01T00:00:00Z") in lines
    assert any('"id":"gt-a1"' in line and '"status":"closed"' in line for line in lines)
    # The refinery fetched and merged on its own (no `rig sync`): the runner's patrol imports it.
    sessions = TownSessions(town.root)
    try:
        seen = patrol.observe(town, sessions)
        assert seen.beads_behind == ("gt",)
        patrol.act(town, sessions, patrol.decide(seen))
        assert beads.show(town, "gt-a1").status == "closed"
        assert title_of(town, "gt-g7") == "a person's late bead"
        assert patrol.observe(town, sessions).beads_behind == ()
    finally:
        sessions.kill_server()
    assert rig.sync(town, "gt").beads == []  # imported once


def test_patrol_decides_a_beads_import_per_rig_behind() -> None:
    seen = patrol.Observed(stale_exports=(), beads_behind=("gt", "web"))
    assert patrol.decide(seen) == [patrol.Action("beads", "gt"), patrol.Action("beads", "web")]


# ---- bd's rule, and refusals ------------------------------------------------------------------


def test_newer_updated_at_wins_both_ways(tracked: TrackedRig, town: Town) -> None:
    beads.update(town, MAYOR, "gt-a1", title="first, edited in the town")  # the store's edit is newest
    person_commit(tracked, [bd_line("gt-a1", "first, an older edit", "2026-02-01T00:00:00Z"),
                            bd_line("gt-b2", "second, a newer edit", "2099-01-01T00:00:00Z"), *SEED[2:]])
    [result] = rig.sync(town, "gt").beads
    assert (result.updated, result.kept_newer, result.refused) == (1, 1, [])
    assert title_of(town, "gt-a1") == "first, edited in the town"  # store newer: kept
    assert title_of(town, "gt-b2") == "second, a newer edit"  # upstream newer: wins


def test_an_invalid_record_is_refused_once_with_its_reason(tracked: TrackedRig, town: Town) -> None:
    person_commit(tracked, [*SEED, bd_line("gt-h8", "bad status", "2026-03-01T00:00:00Z", status="bogus"),
                            bd_line("hq-x9", "not this rig's", "2026-03-01T00:00:00Z"),
                            bd_line("gt-i9", "fine", "2026-03-01T00:00:00Z")])
    synced = rig.sync(town, "gt")
    assert synced.state is rig.SyncState.FAST_FORWARDED  # never a wedge
    [result] = synced.beads
    assert result.created == 1 and len(result.refused) == 2
    assert "line 5: status:" in result.refused[0] and "bogus" in result.refused[0]
    assert "line 6: id:" in result.refused[1] and "'gt-'" in result.refused[1]
    assert title_of(town, "gt-i9") == "fine"
    tracked.push_upstream("other.txt")
    assert rig.sync(town, "gt").beads == []  # reported once, not on every sync


def test_a_damaged_file_is_refused_whole_and_the_sync_goes_on(tracked: TrackedRig, town: Town) -> None:
    tracked.push_upstream(BEADS, text([*SEED, bd_line("gt-j1", "ok", "2026-03-01T00:00:00Z"), '{"id": "gt-k2",']))
    synced = rig.sync(town, "gt")
    assert synced.state is rig.SyncState.FAST_FORWARDED
    [result] = synced.beads
    assert result.created == 0 and len(result.refused) == 1 and "damaged" in result.refused[0]
    assert git(tracked.clone, "status", "--porcelain", "--", BEADS) == ""
    tracked.push_upstream(BEADS, text([*SEED, bd_line("gt-j1", "ok", "2026-03-01T00:00:00Z")]))  # repaired
    [result] = rig.sync(town, "gt").beads
    assert result.created == 1 and title_of(town, "gt-j1") == "ok"  # its unchanged line is news: never imported


# ---- clones an older vermas wrote into, and repositories that do not track the file -----------


def test_a_leftover_rewrite_of_the_tracked_file_is_imported_then_given_back(tracked: TrackedRig, town: Town) -> None:
    local = tracked.clone / BEADS  # what an older vermas (or a hand edit) left in the work tree
    local.write_text(text([*SEED, bd_line("gt-l1", "only in the work tree", "2026-03-01T00:00:00Z")]))
    person_commit(tracked, [*SEED, bd_line("gt-m2", "upstream", "2026-03-01T00:00:00Z")])
    synced = rig.sync(town, "gt")
    assert synced.state is rig.SyncState.FAST_FORWARDED
    assert title_of(town, "gt-l1") == "only in the work tree"
    assert title_of(town, "gt-m2") == "upstream"
    assert git(tracked.clone, "status", "--porcelain", "--", BEADS) == ""


def test_untracked_export_keeps_working_and_gives_way_when_upstream_starts_tracking(
        town: Town, tmp_path: Path) -> None:
    mr = TrackedRig(town, tmp_path)
    assert mr.added.beads is None
    bead = beads.create(town, MAYOR, "a rig bead", rig="gt").id
    export.export_town(town)
    exported = (mr.clone / BEADS).read_text()
    assert f'"id":"{bead}"' in exported
    assert git(mr.clone, "status", "--porcelain") == ""  # excluded: the clone stays clean
    person_commit(mr, SEED)  # the repository starts tracking the file
    synced = rig.sync(town, "gt")
    assert synced.state is rig.SyncState.FAST_FORWARDED
    assert [b.created for b in synced.beads] == [4]
    export.export_town(town, force=True)
    assert (mr.clone / BEADS).read_text() == text(SEED)  # git's now: vermas no longer writes it
    assert beads.show(town, bead).title == "a rig bead"
