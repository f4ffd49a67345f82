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
    standin: leave <path> = <text>   written with the work but never committed (uncommitted work,
                                     what a patrol's rescue ref must keep)
    standin: sleep <seconds>         a Bash call of its own that runs `sleep`, before the work (a
                                     long-running tool the patrols must leave alone)
    standin: sleep-once <seconds>    the same, only in the first session that gets there (a marker in
                                     the worktree's git folder): a restarted session goes on at once
    standin: skip-done <n>           the first n rounds of a session do the work but end the turn
                                     without polecat_done; a later round (a nudge) finishes
    standin: never-done              no round ever calls polecat_done
A REWORK_REQUEST for a conflict needs no line: the polecat fetches, rebases its branch onto the
request's ``target_sha`` and resolves every conflict by keeping both sides (ours, then its own).
A bead with no ``write`` line gets the demo's note (``notes/<rig>-polecats-<name>.md``), as before.

A molecule on the hook (``hook_check`` answers with ``molecule``, its ``current`` step in full) is
walked step by step, from what the tools return and nothing else: the current step's work (its
description's ``write`` lines, else a note ``steps/<step>.md``) in one Bash call and commit, then
``mol_step_done(step_id, summary)``, whose ``next`` is the step to do now; when it is null, the
round ends with ``polecat_done(COMPLETED)``. A ``mol_step_done`` refused (an error) escalates.
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

POLECAT_TOOLS = ("hook_check", "mail_inbox", "mail_read", "mol_step_done", "polecat_done")
REWORK_KIND = "REWORK_REQUEST"
NOTE_COMMAND = (
    'mkdir -p notes && note="notes/$(echo "$BD_ACTOR" | tr / -).md" && '
    'printf "work by %s\\n" "$BD_ACTOR" > "$note" && '
    'git add notes && git commit -q -m "polecat work by $BD_ACTOR" && git log --oneline -1'
)
_DIRECTIVE = re.compile(r"^\s*standin:\s*(write|fix|leave)\s+(\S+)\s*=\s?(.*)$")
_FLAG = re.compile(r"^\s*standin:\s*(sleep|sleep-once|skip-done|never-done)\s*(\d*)\s*$")
_HEADER = re.compile(r"^([a-z_]+): (.*)$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class BeadScript:
    """The ``standin:`` lines of a bead: files to write first, and as the fix after a rework."""

    writes: dict[str, str] = field(default_factory=dict)
    fixes: dict[str, str] = field(default_factory=dict)
    leaves: dict[str, str] = field(default_factory=dict)
    sleep: int = 0
    sleep_once: bool = False
    skip_done: int = 0
    never_done: bool = False

    @classmethod
    def parse(cls, description: str) -> BeadScript:
        files: dict[str, dict[str, str]] = {"write": {}, "fix": {}, "leave": {}}
        flags: dict[str, Any] = {}
        for line in description.splitlines():
            flag = _FLAG.match(line)
            if flag:
                kind, number = flag.group(1), flag.group(2)
                if (kind == "never-done") != (not number):
                    raise ValueError(f"standin bead line {line.strip()!r}: sleep, sleep-once and skip-done take "
                                     "a number of seconds or rounds; never-done takes none")
                if kind == "never-done":
                    flags["never_done"] = True
                elif kind == "skip-done":
                    flags["skip_done"] = int(number)
                else:
                    flags.update(sleep=int(number), sleep_once=kind == "sleep-once")
                continue
            m = _DIRECTIVE.match(line)
            if not m:
                continue
            path = PurePosixPath(m.group(2))
            if path.is_absolute() or ".." in path.parts:
                raise ValueError(f"standin bead line {line.strip()!r}: the path must stay inside the worktree")
            files[m.group(1)][str(path)] = m.group(3).replace("\\n", "\n")
        return cls(writes=files["write"], fixes=files["fix"], leaves=files["leave"], **flags)


@dataclass(frozen=True)
class Rework:
    """The fields of a REWORK_REQUEST that the polecat acts on."""

    reason: str
    target_sha: str | None
    files: str | None
    merge_request: str | None


def _write_files(files: dict[str, str]) -> list[str]:
    """Shell commands writing each file's whole content (parents made)."""
    parts: list[str] = []
    for path, text in files.items():
        parent = str(PurePosixPath(path).parent)
        if parent != ".":
            parts.append(f"mkdir -p {shlex.quote(parent)}")
        parts.append(f"printf '%s\\n' {shlex.quote(text)} > {shlex.quote(path)}")
    return parts


def write_command(files: dict[str, str], message: str) -> str:
    """Write each file (whole content) and commit them: one shell command for the Bash tool."""
    paths = " ".join(shlex.quote(p) for p in files)
    return " && ".join([*_write_files(files), f"git add -- {paths}", f"git commit -q -m {shlex.quote(message)}",
                        "git log --oneline -1"])


def leave_command(files: dict[str, str]) -> str:
    """Write each file (whole content) and leave it uncommitted."""
    return " && ".join(_write_files(files))


SLEPT_MARKER = "standin-slept"  # in the worktree's git folder: never a file of the work


def sleep_command(seconds: int, once: bool) -> str:
    """`sleep` in a Bash call of its own; once: only where the marker is not there yet."""
    if not once:
        return f"sleep {seconds}"
    return (f'm="$(git rev-parse --git-path {SLEPT_MARKER})"; if [ ! -e "$m" ]; then touch "$m"; '
            f'sleep {seconds}; else echo "slept in an earlier session"; fi')


def prompts(req: ModelRequest) -> int:
    """How many prompts this session's conversation holds (user messages that are not only
    tool results): the number of the round this request belongs to."""
    count = 0
    for msg in req.messages:
        content = msg.get("content")
        if msg.get("role") != "user":
            continue
        if isinstance(content, list) and any(isinstance(b, dict) and b.get("type") == "tool_result" for b in content):
            continue
        count += 1
    return count


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


def _bash(command: str, description: str, timeout_s: int | None = None) -> Step:
    given: dict[str, Any] = {"command": command, "description": description}
    if timeout_s is not None:
        given["timeout"] = timeout_s * 1000  # Claude Code's Bash timeout is in milliseconds (default 2 min)
    return {"tool": "Bash", "input": given}


def _done(summary: str) -> list[Step]:
    return [{"tool": "polecat_done", "input": {"status": "COMPLETED", "summary": summary}},
            "Done: work committed and polecat_done called."]


def polecat_round(req: ModelRequest) -> Generator[Sequence[Step], ModelRequest, None]:
    """One round of the stand-in polecat (see the module docstring)."""
    round_no = prompts(req)
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
    molecule = hook.get("molecule") if isinstance(hook, dict) else None
    if rework is None and isinstance(molecule, dict):
        yield from walk_molecule(bead_id, molecule)
    elif rework is None:
        yield from _first_work(script, bead_id, title, round_no)
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


def _first_work(script: BeadScript, bead_id: str, title: str,
                round_no: int) -> Generator[Sequence[Step], ModelRequest, None]:
    """The work of a bead not sent back: the scripted sleep, the files (once; a later round of
    a skip-done session finds them committed), then polecat_done unless the script holds it."""
    if script.sleep:
        yield [_bash(sleep_command(script.sleep, script.sleep_once), "a long-running step of the work",
                     timeout_s=script.sleep + 300)]
    if script.skip_done and round_no > script.skip_done:
        yield [_bash("git status --short && git log --oneline -1", "check the work committed earlier")]
    else:
        command = write_command(script.writes, f"{bead_id}: {title}") if script.writes else NOTE_COMMAND
        if script.leaves:
            command = f"{leave_command(script.leaves)} && {command}"
        yield [_bash(command, "do the hooked work and commit")]
    if script.never_done or round_no <= script.skip_done:
        yield [f"Round {round_no}: the work is in my worktree; I end my turn here (no polecat_done yet)."]
        return
    yield _done("wrote the bead's files and committed them" if script.writes else "wrote a note and committed it")


def step_files(step: dict[str, Any]) -> dict[str, str]:
    """The files one molecule step writes: its description's ``write`` lines, else a note named
    after the step (pure)."""
    script = BeadScript.parse(str(step.get("description") or ""))
    if script.writes:
        return script.writes
    name = _UNSAFE.sub("-", str(step.get("step") or "step"))
    return {f"steps/{name}.md": f"{step.get('title') or name}"}


def step_summary(step: dict[str, Any], files: dict[str, str]) -> str:
    """What the polecat tells mol_step_done it did (becomes the step's close reason)."""
    return f"step {step.get('step')}: committed {', '.join(files)}"


def walk_molecule(root: str, molecule: dict[str, Any]) -> Generator[Sequence[Step], ModelRequest, None]:
    """Walk the molecule from its current step: each step's work and commit, then mol_step_done;
    the next step is the one mol_step_done answers with (null: all done, so polecat_done)."""
    step = molecule.get("current")
    walked: list[str] = []
    while isinstance(step, dict):
        files = step_files(step)
        yield [_bash(write_command(files, f"{root}: step {step.get('step')}: {step.get('title')}"),
                     f"do step {step.get('step')} of {root} and commit")]
        req = yield [{"tool": "mol_step_done", "input": {"step_id": str(step.get("step")),
                                                         "summary": step_summary(step, files)}}]
        answer = req.last_tool_result_json()
        if req.last_tool_result_is_error() or not isinstance(answer, dict) or "next" not in answer:
            yield [{"tool": "polecat_done", "input": {
                "status": "ESCALATED", "summary": f"mol_step_done refused step {step.get('step')}: "
                                                  f"{req.last_tool_result_text()[:300]}"}},
                   "Escalated: a step of my molecule was refused."]
            return
        walked.append(str(step.get("step")))
        step = answer["next"]
    yield _done(f"walked molecule {root}: " + (", ".join(walked) if walked else "no step was open") + " done")


def polecat_policy() -> PlannedPolicy:
    """A fresh stand-in polecat for one session (wrap it in PerSessionPolicy)."""
    return PlannedPolicy(polecat_round, preload=POLECAT_TOOLS, final_text="(stand-in polecat: round finished)")
