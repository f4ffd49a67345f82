"""A real rig for the refinery's tests: a bare upstream in a temp dir, `rig add` (the canonical
clone and the refinery worktree), polecats with real worktrees and commits that finish with the
real `polecat_done`, and a real test command."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tests.conftest import git, make_repo
from vermas import beads, polecat, protocol, rig
from vermas.addresses import Address, Role, parse_address
from vermas.town import Town

MAYOR = parse_address("mayor")
# Red when any tracked-looking .txt file says BROKEN: a bad request is one that writes it.
TEST_COMMAND = "! grep -rqs BROKEN --include='*.txt' ."


@dataclass
class Work:
    bead: str
    address: Address
    worktree: Path
    branch: str
    commit: str
    mr: str


class MergeRig:
    def __init__(self, town: Town, tmp_path: Path, test_command: str = TEST_COMMAND, batch_size: int = 4,
                 name: str = "gt", prefix: str = "gt", strategy: str = "squash", upstream: str = "bare") -> None:
        """`upstream`: "bare" (a bare repository by path), "file-url" (the same by file:// URL) or
        "checkout" (a person's own NON-bare repository with main checked out, like ~/src/myproj)."""
        self.town, self.name = town, name
        if upstream == "checkout":
            self.bare = make_repo(tmp_path / "myproj")  # `bare` is the upstream repository, whatever its kind
        else:
            self.bare = tmp_path / "upstream.git"
            git(make_repo(tmp_path / "seed"), "clone", "-q", "--bare", ".", str(self.bare))
        url = self.bare.as_uri() if upstream == "file-url" else str(self.bare)
        self.pusher = tmp_path / "pusher"
        git(tmp_path, "clone", "-q", url, str(self.pusher))
        rig.add(town, name, url, prefix=prefix, max_polecats=8, test_command=test_command)
        config = town.config.rigs[name]
        town.config.rigs[name] = config.model_copy(update={
            "verify_level": "off",
            "merge": config.merge.model_copy(update={"batch_size": batch_size, "strategy": strategy})})
        town.save_config()
        town.reload_config()
        self.clone = rig.canonical_clone(town, name)

    def upstream_main(self) -> str:
        return git(self.bare, "rev-parse", "refs/heads/main")

    def upstream_files(self) -> set[str]:
        return set(git(self.bare, "ls-tree", "--name-only", "main").split())

    def push_upstream(self, name: str, text: str = "external\n") -> str:
        git(self.pusher, "pull", "-q", "--ff-only")
        (self.pusher / name).parent.mkdir(parents=True, exist_ok=True)
        (self.pusher / name).write_text(text)
        git(self.pusher, "add", name)
        git(self.pusher, "-c", "user.email=p@vermas.invalid", "-c", "user.name=p", "commit", "-q", "-m", f"add {name}")
        git(self.pusher, "push", "-q", "origin", "main")
        return git(self.pusher, "rev-parse", "HEAD")

    def work(self, title: str, files: dict[str, str], summary: str = "done") -> Work:
        """A bead slung to a new polecat, its files committed in the polecat's worktree, polecat_done."""
        bead = beads.create(self.town, MAYOR, title=title).id
        info = polecat.allocate(self.town, MAYOR, bead, self.name)
        polecat.create_worktree(self.town, info)
        address = Address(role=Role.POLECAT, rig=self.name, name=info.name)
        worktree = Path(str(info.worktree))
        return self.commit(bead, address, worktree, files, title, summary)

    def commit(self, bead: str, address: Address, worktree: Path, files: dict[str, str], message: str,
               summary: str = "done") -> Work:
        for name, text in files.items():
            (worktree / name).write_text(text)
            git(worktree, "add", name)
        git(worktree, "-c", "user.email=pc@vermas.invalid", "-c", "user.name=polecat", "commit", "-q", "-m", message)
        done = polecat.done(self.town, address, "COMPLETED", summary)
        assert done.id is not None
        branch, commit = git(worktree, "rev-parse", "--abbrev-ref", "HEAD"), git(worktree, "rev-parse", "HEAD")
        return Work(bead=bead, address=address, worktree=worktree, branch=branch, commit=commit, mr=done.id)

    def mail_to(self, address: str, kind: protocol.ProtocolKind) -> list[protocol.ProtocolMessage]:
        with self.town.db.read() as conn:
            rows = conn.execute("SELECT subject, body FROM messages WHERE recipient = ? ORDER BY created_ts",
                                (address,)).fetchall()
        parsed = [protocol.parse(r[0], r[1]) for r in rows]
        return [m for m in parsed if m is not None and m.KIND is kind]

    def bead_row(self, bead: str) -> dict[str, object]:
        with self.town.db.read() as conn:
            return dict(conn.execute("SELECT * FROM issues WHERE id = ?", (bead,)).fetchone())

    def slots(self) -> list[str]:
        with self.town.db.read() as conn:
            return [r[0] for r in conn.execute("SELECT name FROM polecats WHERE rig = ?", (self.name,))]

    def branch_exists(self, branch: str) -> bool:
        return bool(git(self.clone, "branch", "--list", branch))
