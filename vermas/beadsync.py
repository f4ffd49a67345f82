"""A rig's beads in its repository's own `.beads/issues.jsonl` (bd's file, Gas Town's layout).

A repository that does NOT track that file gets vermas's export of the rig's beads there
(vermas.export), listed in the clone's `.git/info/exclude`.

A repository that tracks it (every bd user's) owns the file through its history: a person's
bd commit, a merged commit that carries it. Vermas never writes it (export.repo_tracks says
why: a rewritten tracked file wedges every fast-forward of the canonical clone) and never
commits it. Instead the file is read:

- `rig add` imports every bead the file holds at the cloned commit;
- every `rig sync` (so every sling) first lands a leftover local rewrite of the file in the
  store and gives the path back to git (`clear_the_way`, for clones that older versions of
  vermas wrote into), fast-forwards, then imports the lines that changed since the commit
  imported last (`catch_up`), whichever way they reached the branch (this sync, or the
  refinery's own fast-forward and merges).

Import follows bd's rule through vermas.bdimport: a bead whose `updated_at` is newer than the
store's replaces it, an older or equal one is skipped (the store keeps its newer edit); every
record passes the tools' checks and must carry the rig's prefix (ids are routed by prefix). A
record that fails is refused with its one-line reason and the rest still lands; a damaged
file (not JSON, not UTF-8) is refused whole with its reason. Neither stops the sync: the
commit is recorded as imported, so each reason is reported once, not on every sync.

Why import-only instead of import, checkout, re-export: a re-export would leave the tracked
file modified after every sync, so the refinery's fast-forward of the canonical clone (which
does not go through `rig sync`) would hit the same wedge, and the clone's files would never
equal its HEAD. The store is the record; the town's `.beads/issues.jsonl` holds every bead.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from pydantic import BaseModel

from vermas import bdimport, git, ids
from vermas.errors import InvalidInput
from vermas.export import RIG_FILE, exclude_untracked_export
from vermas.town import Town

META_KEY = "beads-import:{rig}"  # meta row: the commit whose file was imported last


class BeadsImport(BaseModel):
    """What one import of a rig's tracked `.beads/issues.jsonl` did."""

    source: str  # the commit the lines were read from, or "work tree"
    lines: int = 0  # lines read (changed since the last import)
    created: int = 0
    updated: int = 0  # the file's bead was newer than the store's
    kept_newer: int = 0  # the store's bead was newer: kept
    unchanged: int = 0
    refused: list[str] = []  # one reason per refused record, or one for a damaged file

    @property
    def changed(self) -> bool:
        return bool(self.created or self.updated)


# ---- pure -----------------------------------------------------------------------------------


def changed_lines(old: bytes | None, new: bytes) -> list[str]:
    """The new file's lines, each line that the old file already held blanked: import skips
    blank lines, and the others keep their line numbers for the reasons it reports. A bead
    line present in both was imported already (or refused already)."""
    lines = bdimport.split_lines(new)
    if old is None:
        return lines
    try:
        seen = set(bdimport.split_lines(old))
    except InvalidInput:  # the old version was damaged: everything of the new one is news
        return lines
    if any(line.strip() and not _is_json_object(line) for line in seen):
        return lines  # refused whole then, so none of its lines was imported: all are news
    return ["" if line in seen else line for line in lines]


def _is_json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except (ValueError, RecursionError):
        return False


# ---- git ------------------------------------------------------------------------------------


def file_at(clone: Path, commit: str) -> bytes | None:
    """`.beads/issues.jsonl` as `commit` holds it, as bytes (it may not be UTF-8), or None."""
    done = subprocess.run(["git", "cat-file", "blob", f"{commit}:{RIG_FILE}"], cwd=clone, capture_output=True,
                          env=git._environment(), stdin=subprocess.DEVNULL, timeout=60)
    return done.stdout if done.returncode == 0 else None


# ---- effects --------------------------------------------------------------------------------


def _import(town: Town, rig: str, lines: list[str], source: str) -> BeadsImport:
    result = BeadsImport(source=source)
    if not any(line.strip() for line in lines):
        return result
    try:
        report = bdimport.import_lines(town, lines, skip_bad=True, prefix=town.config.rigs[rig].prefix)
    except InvalidInput as exc:  # a damaged file: nothing of it can be attributed to a bead
        result.refused = [f"{RIG_FILE} at {source}: {exc}"]
        _say(rig, result)
        return result
    result.lines, result.created, result.updated = report.lines, report.created, report.updated
    result.kept_newer, result.unchanged = report.skipped_older, report.unchanged
    result.refused = [f"{RIG_FILE} at {source}: {p}" for p in report.problems]
    _say(rig, result)
    return result


def _say(rig: str, result: BeadsImport) -> None:
    """Refusals go to stderr too (the runner's log, the MCP server's log): a sling's sync
    returns no result to anyone, and each refusal is met only once (see the module doc)."""
    for reason in result.refused:
        print(f"vermas: rig {rig}: bead not imported: {reason}", file=sys.stderr, flush=True)


def behind(town: Town, tips: dict[str, str | None]) -> list[str]:
    """The rigs (of `tips`: rig -> its branch's commit) whose branch moved since its last import."""
    with town.db.read() as conn:
        done = {str(k).split(":", 1)[1]: str(v) for k, v in
                conn.execute("SELECT key, value FROM meta WHERE key GLOB 'beads-import:*'")}
    return [rig for rig, tip in tips.items() if tip is not None and done.get(rig) != tip]


def last_imported(town: Town, rig: str) -> str | None:
    with town.db.read() as conn:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (META_KEY.format(rig=rig),)).fetchone()
    return str(row[0]) if row else None


def _record(town: Town, rig: str, commit: str) -> None:
    with town.db.write() as conn:
        conn.execute("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                     (META_KEY.format(rig=rig), commit))


def forget(town: Town, rig: str) -> None:
    """Drop the rig's record (a rig removed, or `rig add` undone)."""
    with town.db.write() as conn:
        conn.execute("DELETE FROM meta WHERE key = ?", (META_KEY.format(rig=rig),))


def file_prefix(data: bytes) -> str | None:
    """The prefix most beads of a bd file start with (a bd repository has one), or None if the file
    holds no readable bead id. `rig add` gives the rig this prefix, so the beads route to it."""
    counts: dict[str, int] = {}
    try:
        lines = bdimport.split_lines(data)
    except InvalidInput:
        return None
    for line in lines:
        try:
            rec = json.loads(line) if line.strip() else None
        except ValueError:
            continue
        bead_id = rec.get("id") if isinstance(rec, dict) and rec.get("_type", "issue") == "issue" else None
        if isinstance(bead_id, str) and ids.is_bead_id(bead_id):
            prefix = bead_id.split("-", 1)[0]  # `sy-main-3gz` routes by `sy-`, as bd routes it
            counts[prefix] = counts.get(prefix, 0) + 1
    return max(counts, key=lambda p: counts[p]) if counts else None


def import_at(town: Town, rig: str, clone: Path, commit: str, since: str | None) -> BeadsImport | None:
    """Import what `commit`'s file holds that `since`'s did not (all of it without `since`),
    then record `commit` as imported. None when `commit` has no such file or it brings no
    line that `since`'s lacked."""
    new = file_at(clone, commit)
    if new is None:
        _record(town, rig, commit)
        return None
    old = file_at(clone, since) if since is not None and git.resolve(clone, since) is not None else None
    result: BeadsImport | None
    try:
        lines = changed_lines(old, new)
    except InvalidInput as exc:
        result = BeadsImport(source=commit[:12], refused=[f"{RIG_FILE} at {commit[:12]}: {exc}"])
        _say(rig, result)
    else:
        result = _import(town, rig, lines, commit[:12]) if any(line.strip() for line in lines) else None
    _record(town, rig, commit)
    return result


def catch_up(town: Town, rig: str, clone: Path, branch: str) -> BeadsImport | None:
    """Import what reached the rig's branch in `.beads/issues.jsonl` since the last import
    (None: nothing new, or the repository does not track the file)."""
    tip = git.resolve(clone, f"refs/heads/{branch}")
    since = last_imported(town, rig)
    if tip is None or tip == since:
        return None
    return import_at(town, rig, clone, tip, since)


def clear_the_way(town: Town, rig: str, clone: Path, target: str) -> BeadsImport | None:
    """Before fast-forwarding the clone to `target`: a work-tree `.beads/issues.jsonl` that
    differs from HEAD's and is not git's to replace (a tracked file rewritten by an older
    vermas' export, or an untracked one that `target` starts tracking) is imported (newer
    `updated_at` wins, so the store loses nothing it had) and then handed back to git: restored
    to HEAD's version, or removed. Without this the fast-forward is refused ("would be
    overwritten"). None when the path was already clear. Safe at any state of the branch."""
    path = clone / RIG_FILE
    if not path.is_file() or git.current_branch(clone) is None:
        return None
    head = file_at(clone, "HEAD")
    if head is None:  # untracked: vermas's export, listed in .git/info/exclude (a clone of an older
        exclude_untracked_export(clone)  # vermas may lack it), so git may replace it itself
    try:
        local = path.read_bytes()
    except OSError:
        return None
    if head is not None and local == head:
        return None
    if head is None and (file_at(clone, target) is None or _ignored(clone)):
        return None  # untracked and staying so, or ignored (git replaces it itself)
    try:
        result = _import(town, rig, bdimport.split_lines(local), "work tree")
    except InvalidInput as exc:
        result = BeadsImport(source="work tree", refused=[f"{RIG_FILE} in the work tree: {exc}"])
        _say(rig, result)
    if head is not None:
        git.run(clone, "checkout", "--quiet", "HEAD", "--", RIG_FILE)
    else:
        path.unlink()
    return result


def _ignored(clone: Path) -> bool:
    return subprocess.run(["git", "check-ignore", "--quiet", "--", RIG_FILE], cwd=clone, capture_output=True,
                          env=git._environment(), stdin=subprocess.DEVNULL, timeout=60).returncode == 0
