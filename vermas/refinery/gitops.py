"""The refinery's git effects, thin: each function does one thing to a real repository and
reports what it saw. Decisions are made elsewhere (decide.py, bisect.py, the worker).

Where things happen:
- the canonical clone (`<rig>/mayor/rig`) owns the target branch; it only ever moves by
  compare-and-set (`git update-ref refs/heads/T NEW OLD`), so a concurrent move is seen, never
  overwritten. When that clone has T checked out, its index and files follow the ref (the
  two-tree `read-tree -m -u OLD NEW`, git's own fast-forward), so it never looks dirty.
- the refinery worktree (`<rig>/refinery/rig`) is where candidates are rebased (detached HEAD:
  no branch is created or moved, the polecat's branch is untouched) and tested.
- the upstream (`origin`), when the rig has one: fetched before each batch; a merge is pushed
  without force (the remote refuses a non-fast-forward: its own compare-and-set) and confirmed
  with ls-remote before anyone is told. A local upstream may be a person's own non-bare
  repository with the target checked out: the push then runs receive-pack with
  receive.denyCurrentBranch=updateInstead, so a clean checkout follows and a dirty one refuses.

Every user-supplied value (paths, branch names, shas) goes after `--` or as a refspec we built;
repository hooks are disabled for the rebase (a polecat can write the shared .git/hooks).
"""

from __future__ import annotations

import fcntl
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from vermas import git
from vermas.errors import Conflict
from vermas.inspector.verifier import run_command
from vermas.refinery.decide import Presence
from vermas.refinery.types import RunKind, RunOutcome, RunStatus, tail

REMOTE = "origin"
NO_HOOKS = ("-c", "core.hooksPath=/dev/null")
FALLBACK_IDENTITY = ("-c", "user.name=vermas refinery", "-c", "user.email=refinery@vermas.invalid")


def _git(cwd: Path, *args: str, timeout: float = 120, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """git without raising: the caller reads the exit status (a refused CAS or push is an answer)."""
    if stdin is not None:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                              env=git._environment(), input=stdin)
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=git._environment(), stdin=subprocess.DEVNULL)


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """The rig's sync lock (the one `rig sync` takes): one process moves the clone's refs at a time."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# ---- the target ------------------------------------------------------------------------------------


def has_upstream(clone: Path) -> bool:
    return bool(git.remote_url(clone, REMOTE))


def tip(clone: Path, branch: str) -> str | None:
    return git.resolve(clone, f"refs/heads/{branch}")


@dataclass(frozen=True)
class TargetTip:
    """The target's tip after a fetch: `sha` is what candidates are rebased onto."""

    sha: str
    upstream: str | None  # the upstream's tip, None without an upstream
    fetched: bool
    moved_from: str | None = None  # the local tip before it fast-forwarded to the upstream's


def sync_target(clone: Path, branch: str, fetch: bool) -> TargetTip:
    """Fetch (when asked and there is an upstream) and bring the local target forward to the
    upstream's tip by compare-and-set. A local target ahead of the upstream stays (its commits
    are pushed with the next merge); diverged is refused: merging onto either side would lose
    the other's commits."""
    local = tip(clone, branch)
    if local is None:
        raise Conflict(f"the canonical clone {clone} has no branch {branch} (the merge target)")
    if not fetch or not has_upstream(clone):
        return TargetTip(sha=local, upstream=None, fetched=False)
    git.fetch(clone, REMOTE)
    upstream = git.resolve(clone, f"refs/remotes/{REMOTE}/{branch}")
    if upstream is None:
        raise Conflict(f"the upstream {git.remote_url(clone)} has no branch {branch} (the merge target)")
    if upstream == local or git.is_ancestor(clone, upstream, local):
        return TargetTip(sha=local, upstream=upstream, fetched=True)
    if git.is_ancestor(clone, local, upstream):
        if not advance(clone, branch, upstream, local):
            blocked = checkout_blocked(clone, branch, local, upstream)
            raise Conflict(f"{branch} in {clone} could not be fast-forwarded to the upstream's {upstream[:12]}: "
                           + (blocked or "it moved meanwhile; try again"))
        return TargetTip(sha=upstream, upstream=upstream, fetched=True, moved_from=local)
    raise Conflict(f"{branch} in {clone} ({local[:12]}) and the upstream's ({upstream[:12]}) have diverged; "
                   "nothing is merged until a person reconciles them")


def checkout_blocked(clone: Path, branch: str, old: str, new: str) -> str | None:
    """Why the clone's checkout of `branch` could not follow it from OLD to NEW (a local change
    in a file the move touches, which must not be overwritten), or None when it can (or the
    clone has another branch checked out). The index is refreshed first: a file only touched
    (same content, new mtime) is not a change, and without the refresh git's two-tree
    read-tree refuses it as "not uptodate" - which left HEAD moved and the files behind."""
    if git.current_branch(clone) != branch:
        return None
    _git(clone, "update-index", "-q", "--refresh")
    done = _git(clone, "read-tree", "-m", "-u", "-n", old, new)
    if done.returncode == 0:
        return None
    return "the canonical clone's work tree has local changes the move would overwrite: " + \
        " ".join((done.stderr + done.stdout).split())[:400]


def advance(clone: Path, branch: str, new: str, old: str) -> bool:
    """Compare-and-set the target: `update-ref refs/heads/T NEW OLD` applies only while T is
    still OLD. Where the clone has T checked out, its index and files follow (git's own two-tree
    fast-forward), so after every move its files equal its HEAD; a local change the move would
    overwrite refuses it before the ref moves (checkout_blocked says why)."""
    if checkout_blocked(clone, branch, old, new) is not None:
        return False
    done = _git(clone, "update-ref", "-m", f"vermas refinery: {old[:12]} -> {new[:12]}", f"refs/heads/{branch}",
                new, old)
    if done.returncode != 0:
        return False
    if git.current_branch(clone) == branch:
        # HEAD already names NEW; move index and work tree from OLD to NEW as a fast-forward would.
        follow = _git(clone, "read-tree", "-m", "-u", old, new)
        if follow.returncode != 0:  # changed between the check and now: a person's edit wins, said loudly
            raise Conflict(f"{branch} in {clone} moved to {new[:12]} but its files could not follow: "
                           + " ".join(follow.stderr.split())[:400])
    return True


# A push into a local repository runs receive-pack with this: a non-bare repository with the
# target checked out (the user's own ~/src/myproj) gets its clean work tree brought to the
# pushed commit, and refuses the push when the work tree or index has changes (git's
# receive.denyCurrentBranch=updateInstead: a person's uncommitted change is never overwritten).
UPDATE_INSTEAD_RECEIVE_PACK = "git -c receive.denyCurrentBranch=updateInstead receive-pack"


def local_upstream(clone: Path) -> Path | None:
    """The upstream as a local path when `origin` is one (not a URL, file:// included, nor
    scp-like host:path); None otherwise."""
    url = git.remote_url(clone, REMOTE)
    if not url or "://" in url or (":" in url.split("/", 1)[0] and not url.startswith("/")):
        return None
    path = Path(url).expanduser()
    return path if path.is_absolute() else (clone / path).resolve()


def upstream_checkout(clone: Path, branch: str) -> Path | None:
    """The upstream's work tree when the upstream is a local NON-bare repository that has
    `branch` checked out (a push there moves what a person is looking at); None otherwise."""
    path = local_upstream(clone)
    if path is None or not path.is_dir():
        return None
    bare = _git(path, "rev-parse", "--is-bare-repository")
    if bare.returncode != 0 or bare.stdout.strip() != "false":
        return None
    head = _git(path, "symbolic-ref", "--quiet", "HEAD")
    if head.stdout.strip() != f"refs/heads/{branch}":
        return None
    top = _git(path, "rev-parse", "--show-toplevel")
    return Path(top.stdout.strip()) if top.returncode == 0 and top.stdout.strip() else None


def checkout_changes(worktree: Path, untracked: bool = False) -> str:
    """`git status --porcelain` of a work tree (tracked changes; untracked files too when asked):
    empty when it is clean. Read-only: the index is not refreshed in a person's repository."""
    done = _git(worktree, "--no-optional-locks", "status", "--porcelain",
                "--untracked-files=" + ("normal" if untracked else "no"))
    return done.stdout if done.returncode == 0 else f"git status failed: {done.stderr.strip()[:200]}"


def push(clone: Path, branch: str, new: str) -> tuple[bool, str]:
    """Push NEW to the upstream's T, never forcing (the remote refuses a non-fast-forward).
    Into a local repository the push runs with updateInstead (see UPDATE_INSTEAD_RECEIVE_PACK).
    Returns (pushed, what git said: the refusal's reason when it was refused)."""
    receive = ("--receive-pack", UPDATE_INSTEAD_RECEIVE_PACK) if local_upstream(clone) is not None else ()
    done = _git(clone, "push", "--quiet", "--porcelain", *receive, REMOTE, f"{new}:refs/heads/{branch}",
                timeout=300)
    return done.returncode == 0, " ".join((done.stderr + done.stdout).split())[:500]


def upstream_tip(clone: Path, branch: str) -> str | None:
    """The upstream's T as the upstream itself says now (ls-remote), not a tracking ref."""
    done = _git(clone, "ls-remote", REMOTE, f"refs/heads/{branch}", timeout=120)
    if done.returncode != 0:
        return None
    first = done.stdout.split()
    return first[0] if first else None


# ---- the refinery worktree ----------------------------------------------------------------------------


def ensure_worktree(clone: Path, path: Path, at: str) -> Path:
    """The refinery worktree (`rig add` makes it); made again when it is missing."""
    if git.is_worktree(path):
        return path
    _git(clone, "worktree", "prune")
    path.parent.mkdir(parents=True, exist_ok=True)
    git.run(clone, "worktree", "add", "--quiet", "--detach", "--", str(path), at)
    return path


def reset_worktree(worktree: Path, sha: str) -> None:
    """A clean detached checkout of `sha`: whatever a crashed rebase or a test run left is gone
    (this worktree belongs to the refinery alone)."""
    _git(worktree, "rebase", "--abort")
    _git(worktree, "cherry-pick", "--abort")
    git.run(worktree, "checkout", "--quiet", "--detach", "--force", sha)
    git.run(worktree, "clean", "-ffdxq")


def _identity(repo: Path) -> tuple[str, ...]:
    """Rebased commits need a committer; the repository's own identity when it has one."""
    return () if git.run(repo, "config", "user.email", check=False) else FALLBACK_IDENTITY


@dataclass(frozen=True)
class Rebased:
    """One candidate rebased onto `onto`: its new tip, or the conflicting files."""

    onto: str
    sha: str | None
    conflict_files: tuple[str, ...] = ()
    error: str = ""

    @property
    def clean(self) -> bool:
        return self.sha is not None


def rebase(worktree: Path, onto: str, base: str, commit: str, squash_message: str | None = None) -> Rebased:
    """Replay the candidate's commits (`base..commit`, base being the target tip) onto `onto`
    in the refinery worktree, detached: the polecat's branch is not touched. Patches already on
    `onto` are dropped (git's rule), so a re-run never makes a no-op commit. A conflict is
    aborted and reported with its files.

    With `squash_message` (strategy "squash") the replayed commits are then folded into ONE
    commit on `onto` with that message (authored as the candidate's tip): what lands is one
    commit per bead, and a red commit followed by its fix never reaches the target."""
    reset_worktree(worktree, onto)
    done = _git(worktree, *NO_HOOKS, *_identity(worktree), "rebase", "--quiet", "--no-autostash", "--onto", onto,
                base, commit, timeout=600)
    if done.returncode == 0:
        head = git.resolve(worktree, "HEAD")
        if head is not None and git.current_branch(worktree) is None:
            if squash_message is not None and head != onto:
                head = _squash(worktree, onto, commit, squash_message)
            return Rebased(onto=onto, sha=head)
    files = tuple(f for f in git.run(worktree, "diff", "--name-only", "--diff-filter=U", check=False).splitlines()
                  if f.strip())
    _git(worktree, "rebase", "--abort")
    reset_worktree(worktree, onto)
    return Rebased(onto=onto, sha=None, conflict_files=files,
                   error=" ".join((done.stderr + done.stdout).split())[:500])


def _squash(worktree: Path, onto: str, commit: str, message: str) -> str:
    """Fold the detached HEAD's commits above `onto` into one commit with `message`."""
    author = git.run(worktree, "log", "-1", "--format=%an <%ae>", commit, "--")
    git.run(worktree, "reset", "--quiet", "--soft", onto)
    done = _git(worktree, *NO_HOOKS, *_identity(worktree), "commit", "--quiet", "--no-verify", "--allow-empty",
                f"--author={author}", "-F", "-", stdin=message)
    if done.returncode != 0:
        raise git.GitError(f"the squash commit in {worktree} failed: {' '.join(done.stderr.split())[:500]}")
    head = git.resolve(worktree, "HEAD")
    if head is None:
        raise git.GitError(f"the squash commit in {worktree} did not resolve")
    return head


def commit_subjects(clone: Path, base: str, commit: str) -> list[str]:
    """`<short sha> <subject>` of each commit in base..commit, oldest first (a squash's message lists them)."""
    out = git.run(clone, "log", "--reverse", "--format=%h %s", f"{base}..{commit}", "--")
    return [line for line in out.splitlines() if line.strip()]


def run_tests(worktree: Path, sha: str, command: str, timeout: float, target_sha: str,
              hidden: Sequence[Path] = (), keep_env: Sequence[str] = (),
              base_env: Mapping[str, str] | None = None, network: bool = False) -> RunOutcome:
    """The rig's test command at `sha`, contained as the Verifier runs tests (vermas.contain:
    scrubbed environment, the town's store hidden, killed at the timeout, nothing outlives it)."""
    reset_worktree(worktree, sha)
    evidence = run_command(command, worktree, timeout, base_env=base_env, keep_env=keep_env, hidden=hidden,
                           network=network)
    if evidence.error is not None and evidence.exit_code is None and not evidence.timed_out:
        status = RunStatus.COULD_NOT_RUN
    elif evidence.timed_out:
        status = RunStatus.TIMED_OUT
    elif evidence.exit_code == 0:
        status = RunStatus.PASSED
    else:
        status = RunStatus.FAILED
    output = evidence.output if evidence.error is None else f"{evidence.output}\n{evidence.error}".strip()
    reset_worktree(worktree, sha)  # what the test wrote does not reach the next run
    return RunOutcome(kind=RunKind.TEST, status=status, command=command, exit_status=evidence.exit_code,
                      duration_s=evidence.duration_s, output_tail=tail(output), target_sha=target_sha,
                      candidate_sha=sha)


# ---- sources and cleanup ----------------------------------------------------------------------------


def branch_exists(clone: Path, branch: str) -> bool:
    return bool(branch) and git.has_ref(clone, f"refs/heads/{branch}")


def commit_exists(clone: Path, sha: str) -> bool:
    return bool(sha) and git.resolve(clone, sha) is not None


def commits_between(clone: Path, older: str, newer: str) -> list[str]:
    """Commits reachable from `newer` but not from `older`, oldest first."""
    out = git.run(clone, "rev-list", "--reverse", f"{older}..{newer}", "--")
    return [line for line in out.splitlines() if line]


def _patch_id(clone: Path, old: str, new: str) -> str | None:
    """git's patch id of the change old..new (line numbers and whitespace ignored); None when empty."""
    diff = _git(clone, "diff", "--no-ext-diff", "--no-color", "--binary", old, new, "--", timeout=300)
    if diff.returncode != 0 or not diff.stdout.strip():
        return None
    done = _git(clone, "patch-id", "--stable", stdin=diff.stdout)
    first = done.stdout.split()
    return first[0] if done.returncode == 0 and first else None


def squash_landed(clone: Path, squash: str, target: str, since: str, head: str) -> bool:
    """Proof that a squashed merge carries the branch's whole work: the recorded squash commit
    is on the target (an ancestor) and its own change (squash^..squash) is the same patch as
    everything the branch did since it left the target (merge-base(since, head)..head). A
    branch that gained commits after the squash, or whose change landed only in part, fails."""
    if not (commit_exists(clone, squash) and commit_exists(clone, head) and git.is_ancestor(clone, squash, target)):
        return False
    parents = git.run(clone, "rev-list", "--parents", "-n", "1", squash, "--").split()
    base = git.run(clone, "merge-base", since, head, check=False)
    if len(parents) != 2 or not base:
        return False
    landed = _patch_id(clone, parents[1], squash)
    return landed is not None and landed == _patch_id(clone, base, head)


def presence(clone: Path, commits: Sequence[str], target: str, since: str,
             squash: str | None = None) -> dict[str, Presence]:
    """Where each polecat commit is, seen from the target: an ancestor, its patch there
    (`git cherry` '-': it was rebased), inside the bead's squash commit (`squash`, proven by
    squash_landed), or missing."""
    equivalent = set()
    if commits:
        tip_commit = commits[-1]
        for line in git.run(clone, "cherry", target, tip_commit, since, check=False).splitlines():
            sign, _, sha = line.partition(" ")
            if sign == "-":
                equivalent.add(sha.strip())
    out: dict[str, Presence] = {}
    for sha in commits:
        if git.is_ancestor(clone, sha, target):
            out[sha] = Presence.REACHABLE
        elif sha in equivalent:
            out[sha] = Presence.EQUIVALENT
        else:
            out[sha] = Presence.MISSING
    missing = [sha for sha, where in out.items() if where is Presence.MISSING]
    if missing and squash and squash_landed(clone, squash, target, since, commits[-1]):
        out.update({sha: Presence.SQUASHED for sha in missing})
    return out


def worktree_dirty(path: Path) -> list[str]:
    return git.dirty_files(path) if git.is_worktree(path) else []


def remove_worktree(clone: Path, path: Path) -> bool:
    """Remove a polecat's worktree (untracked build litter goes with it); True when it was there."""
    existed = path.exists()
    if existed:
        git.run(clone, "worktree", "remove", "--force", "--", str(path))
    _git(clone, "worktree", "prune")
    return existed


def delete_branch(clone: Path, branch: str) -> bool:
    if not branch_exists(clone, branch):
        return False
    git.run(clone, "branch", "-D", "--", branch)
    return True
