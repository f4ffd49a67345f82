"""The stand-in inspector: the built-in scripted "model" that answers every VerMAS inspector role
(Designer, Strategist, Auditor, Advocate, Critic, Judge) of a town on the stand-in model, so the
real `claude -p` calls of a verification get valid structured answers offline.

Why derived and not canned: verification must still mean something on the stand-in. Each answer
is a pure function of the request, read from the prompt the inspector wrote:

- Designer: one criterion per shell command the bead names in backticks (a backticked span with a
  space in it, e.g. "feature.txt says working: `grep -qx working feature.txt`"), one per file the
  stand-in polecat's script writes (`standin: write PATH = TEXT`: the file exists, and is not
  empty when TEXT is not), and, for a bead
  that asks for a note under notes/ (the demo's beads), a non-empty note file besides notes/.keep.
  A bead that names none of these gets one criterion: the candidate has a commit.
- Strategist: the criterion's test_hint is its command (the Designer above puts the command there);
  a criterion without one is checked with `git log` (there is a commit).
- Auditor, Advocate, Critic, Judge: from the evidence in the prompt: PASS when it shows tests and
  every one passed (`[PASS: ...]`), FAIL otherwise; no quotes (so none can be invented).

Every answer is a function of the request, so a retried request gets the same answer and several
`claude -p` processes can ask at once.
"""

from __future__ import annotations

import json
import re
import shlex
from typing import Any

from vermas.testing.standin.policies import structured_blocks
from vermas.testing.standin.request import STRUCTURED_OUTPUT_TOOL, Block, ModelRequest, text_block

ROLE_MARKER = "VerMAS inspector role: "
ROLES = ("DESIGNER", "STRATEGIST", "AUDITOR", "ADVOCATE", "CRITIC", "JUDGE")
COMMAND_RE = re.compile(r"`([^`\n]*\s[^`\n]*)`")  # a backticked span with a space: a command
WRITE_RE = re.compile(r"^\s*standin:\s*write\s+(\S+)\s*=(.*)$", re.M)
NOTES_RE = re.compile(r"\bnotes/|\bnote file\b", re.I)
SECTION_RE = re.compile(r"^## (.+)$", re.M)
HAS_COMMIT = 'test -n "$(git log --oneline -1)"'
NOTE_TEST = "find notes -type f ! -name .keep -size +0c | grep -q ."


def is_inspector(req: ModelRequest) -> bool:
    """Route predicate: the request is one of the inspector's `claude -p` calls."""
    return ROLE_MARKER in req.system_text


def role_of(req: ModelRequest) -> str:
    """The role named by the template's first line (`# VerMAS inspector role: DESIGNER`)."""
    for role in ROLES:
        if ROLE_MARKER + role in req.system_text:
            return role
    raise LookupError(f"no inspector role marker in the system prompt: {req.system_text[:200]!r}")


def prompt_of(req: ModelRequest) -> str:
    """The inspector's prompt: the first user message's text (a retry note is appended to it)."""
    for msg in req.messages:
        if msg.get("role") != "user":
            continue
        content = msg.get("content")
        if isinstance(content, str):
            return content
        return "\n".join(str(b.get("text", "")) for b in content or []
                         if isinstance(b, dict) and b.get("type") == "text")
    return ""


def sections(prompt: str) -> dict[str, str]:
    """`## Heading` -> its text, and "" -> what comes before the first heading."""
    out: dict[str, str] = {}
    marks = list(SECTION_RE.finditer(prompt))
    out[""] = prompt[:marks[0].start()] if marks else prompt
    for i, mark in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(prompt)
        out[mark.group(1).strip()] = prompt[mark.end():end].strip()
    return out


# ---- the roles ----------------------------------------------------------------------------------------


def criterion(n: int, description: str, command: str) -> dict[str, Any]:
    return {"id": f"AC-{n}", "description": description[:2000], "test_hint": command[:2000], "kind": "objective"}


def design(prompt: str) -> dict[str, Any]:
    """The Specification for the bead in the Designer's prompt (see the module docstring)."""
    parts = sections(prompt)
    title_match = re.search(r"^Title: (.*)$", parts[""], re.M)
    title = (title_match.group(1).strip() if title_match else "") or "the bead's work"
    written = "\n".join(parts.get(k, "") for k in ("Acceptance criteria (as written)", "Description", "Design",
                                                   "Notes"))
    found: list[tuple[str, str]] = []
    for line in written.splitlines():
        for command in COMMAND_RE.findall(line):
            what = line.strip().lstrip("-*[] ").strip() or command
            found.append((what, command.strip()))
    for path, content in WRITE_RE.findall(written):
        if content.replace("\\n", "").strip():
            found.append((f"{path} exists in the work tree and is not empty", f"test -s {shlex.quote(path)}"))
        else:
            found.append((f"{path} exists in the work tree", f"test -e {shlex.quote(path)}"))
    if NOTES_RE.search(f"{title}\n{written}"):
        found.append(("a non-empty note file is committed under notes/", NOTE_TEST))
    if not found:
        found.append(("the work is committed: the candidate has a commit", HAS_COMMIT))
    unique = list(dict.fromkeys(found))[:40]
    return {"title": title[:500], "requirements": [f"R{i}: {what}" for i, (what, _) in enumerate(unique, 1)][:60],
            "acceptance_criteria": [criterion(i, what, command) for i, (what, command) in enumerate(unique, 1)]}


def plan(prompt: str) -> dict[str, Any]:
    """Tests for the Specification in the Strategist's prompt: each objective criterion's hint."""
    text = sections(prompt).get("Specification", "")
    try:
        spec, _ = json.JSONDecoder().raw_decode(text)
        criteria = [c for c in spec["acceptance_criteria"] if isinstance(c, dict)]
    except (ValueError, KeyError, TypeError):
        raise LookupError(f"no Specification JSON in the strategist's prompt: {prompt[:300]!r}") from None
    tests = []
    for c in criteria:
        if c.get("kind") != "objective":
            continue
        command = str(c.get("test_hint") or "").strip() or HAS_COMMIT
        tests.append({"criterion_id": c["id"], "command": command, "description": str(c.get("description", ""))[:1000],
                      "timeout": 60})
    if not tests:  # a plan needs one test; a spec of only subjective criteria gets the commit check
        tests.append({"criterion_id": criteria[0]["id"], "command": HAS_COMMIT, "description": "a commit exists",
                      "timeout": 60})
    return {"tests": tests}


def evidence_passed(prompt: str) -> bool:
    """The evidence section shows tests, and every one passed."""
    evidence = next((v for k, v in sections(prompt).items() if k.startswith("Evidence")), "")
    return "[PASS: " in evidence and "[FAIL: " not in evidence


def answer(role: str, prompt: str) -> dict[str, Any]:
    passed = evidence_passed(prompt)
    verdict = "the evidence shows every test passed" if passed else "the evidence does not show the tests passing"
    if role == "DESIGNER":
        return design(prompt)
    if role == "STRATEGIST":
        return plan(prompt)
    if role == "AUDITOR":
        return {"passed": passed, "reasoning": f"stand-in auditor: {verdict}", "quotes": [], "confidence": 0.9}
    if role == "ADVOCATE":
        return {"argument": f"stand-in advocate: {verdict}", "quotes": []}
    if role == "CRITIC":
        return {"argument": f"stand-in critic: {verdict}", "quotes": []}
    return {"passed": passed, "prevailing": "advocate" if passed else "critic",
            "reasoning": f"stand-in judge: {verdict}", "quotes": []}


def inspector_policy(req: ModelRequest) -> list[Block]:
    """The stand-in's policy for inspector requests (route them here with `is_inspector`)."""
    if _answered(req):  # the structured answer was given: end the turn
        return [text_block("Done.")]
    return structured_blocks(req, answer(role_of(req), prompt_of(req)))


def _answered(req: ModelRequest) -> bool:
    """The conversation already holds this turn's StructuredOutput call."""
    for msg in req.messages:
        if msg.get("role") == "assistant" and isinstance(msg.get("content"), list):
            if any(isinstance(b, dict) and b.get("type") == "tool_use" and b.get("name") == STRUCTURED_OUTPUT_TOOL
                   for b in msg["content"]):
                return True
    return False
