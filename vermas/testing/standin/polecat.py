"""The stand-in polecat: what the scripted "model" does in a polecat's session, driven by its
bead's text so each test can script the work (and its rework) without a real model.

Every prompt (the GUPP nudge, a re-nudge after the refinery sent work back) is one round:
``hook_check``; if the bead came back with unread mail, ``mail_inbox`` and ``mail_read`` of the
newest REWORK_REQUEST for it; then one Bash call in the worktree and ``polecat_done``.

What the Bash call does, from the bead's description (``standin:`` lines; anything else is prose):

    standin: write <path> = <text>   first attempt: the file's whole content is <text> (``\\n`` for
                                     a line break), committed
    standin: fix <path> = <text>     after a REWORK_REQUEST for tests or verification: the same, as
                                     a fix commit
A REWORK_REQUEST for a conflict needs no line: the polecat fetches, rebases its branch onto the
request's ``target_sha`` and resolves every conflict by keeping both sides (ours, then its own).
A bead with no ``write`` line gets the demo's note (``notes/<rig>-polecats-<name>.md``), as before.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from vermas.testing.standin.policies import PlannedPolicy, Step
from vermas.testing.standin.request import ModelRequest

POLECAT_TOOLS = ("hook_check", "mail_inbox", "mail_read", "polecat_done")
REWORK_KIND = "REWORK_REQUEST"
NOTE_COMMAND = (
    'mkdir -p notes && note="notes/$(echo "$BD_ACTOR" | tr / -).md" && '
    'printf "work by %s\\n" "$BD_ACTOR" > "$note" && '
    'git add notes && git commit -q -m "polecat work by $BD_ACTOR" && git log --oneline -1'
)
_DIRECTIVE = re.compile(r"^\s*standin:\s*(write|fix)\s+(\S+)\s*=\s?(.*)$")
_HEADER = re.compile(r"^([a-z_]+): (.*)$")


@dataclass(frozen=True)
class BeadScript:
    """The ``standin:`` lines of a bead: files to write first, and as the fix after a rework."""

    writes: dict[str, str] = field(default_factory=dict)
    fixes: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, description: str) -> BeadScript:
        writes: dict[str, str] = {}
        fixes: dict[str, str] = {}
        for line in description.splitlines():
            m = _DIRECTIVE.match(line)
            if not m:
                continue
            path = PurePosixPath(m.group(2))
            if path.is_absolute() or ".." in path.parts:
                raise ValueError(f"standin bead line {line.strip()!r}: the path must stay inside the worktree")
            (writes if m.group(1) == "write" else fixes)[str(path)] = m.group(3).replace("\\n", "\n")
        return cls(writes=writes, fixes=fixes)


@dataclass(frozen=True)
class Rework:
    """The fields of a REWORK_REQUEST that the polecat acts on."""

    reason: str
    target_sha: str | None
    files: str | None
    merge_request: str | None


def write_command(files: dict[str, str], message: str) -> str:
    """Write each file (whole content) and commit them: one shell command for the Bash tool."""
    parts: list[str] = []
    for path, text in files.items():
        parent = str(PurePosixPath(path).parent)
        if parent != ".":
            parts.append(f"mkdir -p {shlex.quote(parent)}")
        parts.append(f"printf '%s\\n' {shlex.quote(text)} > {shlex.quote(path)}")
    paths = " ".join(shlex.quote(p) for p in files)
    parts += [f"git add -- {paths}", f"git commit -q -m {shlex.quote(message)}", "git log --oneline -1"]
    return " && ".join(parts)


def rebase_command(target: str) -> str:
    """Fetch, rebase onto ``target`` and resolve each conflict by keeping both sides; fails (non-zero)
    if the rebase is still unfinished. Markers are plain (``merge.conflictStyle=merge``)."""
    onto = shlex.quote(target)
    return "\n".join([
        "git fetch -q origin || true",
        f"if ! git -c merge.conflictStyle=merge rebase {onto}; then",
        "  for round in 1 2 3 4 5 6 7 8; do",
        "    files=$(git diff --name-only --diff-filter=U)",
        '    [ -n "$files" ] || break',
        "    for f in $files; do",
        "      sed -i -e '/^<<<<<<< /d' -e '/^=======$/d' -e '/^>>>>>>> /d' \"$f\" && git add -- \"$f\"",
        "    done",
        "    GIT_EDITOR=true git -c merge.conflictStyle=merge rebase --continue && break",
        "  done",
        "fi",
        'test ! -d "$(git rev-parse --git-path rebase-merge)" && test ! -d "$(git rev-parse --git-path rebase-apply)" '
        "&& git log --oneline -3",
    ])


def headers(body: str) -> dict[str, str]:
    """The ``name: value`` lines at the top of a protocol mail's body."""
    out: dict[str, str] = {}
    for line in body.splitlines():
        m = _HEADER.match(line)
        if not m:
            break
        out[m.group(1)] = m.group(2)
    return out


def newest_rework(inbox: Any, bead_id: str) -> str | None:
    """The id of the newest unread REWORK_REQUEST about ``bead_id`` in a mail_inbox result."""
    messages = inbox.get("messages") if isinstance(inbox, dict) else None
    found = [m for m in messages or [] if isinstance(m, dict) and str(m.get("subject", "")).split()[:2] == [REWORK_KIND, bead_id]]
    return str(found[-1]["id"]) if found else None  # unread mail comes oldest first


def _bash(command: str, description: str) -> Step:
    return {"tool": "Bash", "input": {"command": command, "description": description}}


def _done(summary: str) -> list[Step]:
    return [{"tool": "polecat_done", "input": {"status": "COMPLETED", "summary": summary}},
            "Done: work committed and polecat_done called."]


def polecat_round(req: ModelRequest) -> Generator[Sequence[Step], ModelRequest, None]:
    """One round of the stand-in polecat (see the module docstring)."""
    req = yield [{"tool": "hook_check", "wait_for_tool": True}]
    hook = req.last_tool_result_json()
    bead = hook.get("bead") if isinstance(hook, dict) else None
    if not isinstance(bead, dict):
        yield ["My hook is empty; waiting for work."]
        return
    bead_id, title = str(bead.get("id")), str(bead.get("title") or "")
    script = BeadScript.parse(str(bead.get("description") or ""))
    rework: Rework | None = None
    if isinstance(hook, dict) and hook.get("unread_mail"):
        req = yield [{"tool": "mail_inbox", "input": {"unread_only": True}}]
        message_id = newest_rework(req.last_tool_result_json(), bead_id)
        if message_id is not None:
            req = yield [{"tool": "mail_read", "input": {"message_id": message_id}}]
            read = req.last_tool_result_json()
            fields = headers(str(read.get("body") or "")) if isinstance(read, dict) else {}
            rework = Rework(reason=fields.get("reason", "tests"), target_sha=fields.get("target_sha"),
                            files=fields.get("files"), merge_request=fields.get("merge_request"))
    if rework is None:
        command = write_command(script.writes, f"{bead_id}: {title}") if script.writes else NOTE_COMMAND
        yield [_bash(command, "do the hooked work and commit")]
        yield _done("wrote the bead's files and committed them" if script.writes else "wrote a note and committed it")
    elif rework.reason == "conflict":
        yield [_bash(rebase_command(rework.target_sha or "origin/HEAD"),
                     f"rebase onto the target and resolve {rework.files or 'the conflicts'} by keeping both sides")]
        yield _done(f"rebased onto {rework.target_sha}; kept both sides in {rework.files}")
    elif script.fixes:
        yield [_bash(write_command(script.fixes, f"{bead_id}: fix after {rework.merge_request}"),
                     "fix what the refinery sent back and commit")]
        yield _done(f"fixed what {rework.merge_request} failed ({rework.reason})")
    else:
        yield [{"tool": "polecat_done", "input": {"status": "ESCALATED",
                                                  "summary": f"sent back ({rework.reason}); the bead says no fix"}},
               "Escalated: I do not know how to fix this."]


def polecat_policy() -> PlannedPolicy:
    """A fresh stand-in polecat for one session (wrap it in PerSessionPolicy)."""
    return PlannedPolicy(polecat_round, preload=POLECAT_TOOLS, final_text="(stand-in polecat: round finished)")
