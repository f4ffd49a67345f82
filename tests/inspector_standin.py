"""Test support for the inspector: a scripted "model" per inspector role for the stand-in model
server (vermas.testing.standin), so the REAL `claude -p` answers every role offline.

Why an adapter on top of the stand-in's ScriptedPolicy: the inspector runs several `claude -p`
processes, some concurrently (one Auditor per criterion, Advocate and Critic together), so a
single ordered script would be racy. This policy routes by the role marker in the system prompt
(each template's first line) and, for per-criterion roles, by the criterion id in the prompt.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vermas.testing.standin import (
    ModelRequest,
    StandinModelServer,
    claude_env,
    find_claude_binary,
    structured_blocks,
    text_block,
)

ROLES = ("designer", "strategist", "auditor", "advocate", "critic", "judge")
CRITERION_RE = re.compile(r"^## Criterion (\S+)", re.M)


@dataclass
class Text:
    """A plain-text answer (no structured output): what a misbehaving model does."""

    text: str


Answer = dict[str, Any] | Text | Callable[[ModelRequest], Any]
Script = list[Answer] | dict[str, list[Answer]]


def role_of(req: ModelRequest) -> str:
    for role in ROLES:
        if f"VerMAS inspector role: {role.upper()}" in req.system_text:
            return role
    raise LookupError(f"no inspector role marker in the system prompt: {req.system_text[:200]!r}")


def first_user_text(req: ModelRequest) -> str:
    for msg in req.messages:
        if msg.get("role") == "user":
            content = msg.get("content")
            if isinstance(content, str):
                return content
            return "\n".join(str(b.get("text", "")) for b in content or [] if isinstance(b, dict)
                             and b.get("type") == "text")
    return ""


@dataclass
class InspectorModel:
    """The stand-in's policy: scripts[role] is a list of answers (consumed in order), or a dict
    criterion id -> list of answers. Every real turn is logged in `asked` as (role, criterion, prompt)."""

    scripts: dict[str, Script] = field(default_factory=dict)
    asked: list[tuple[str, str | None, str]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _last: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def __call__(self, req: ModelRequest) -> list[dict[str, Any]]:
        role = role_of(req)
        prompt = first_user_text(req)
        match = CRITERION_RE.search(prompt)
        criterion = match.group(1) if match else None
        with self._lock:
            fingerprint = req.conversation_fingerprint()
            if fingerprint in self._last:  # a client retry of the identical request
                return self._last[fingerprint]
            self.asked.append((role, criterion, prompt))
            script = self.scripts.get(role)
            if isinstance(script, dict):
                script = script.get(criterion or "")
            if not script:
                raise LookupError(f"no scripted answer left for {role} (criterion {criterion})")
            answer = script.pop(0)
        if callable(answer):
            answer = answer(req)
        blocks = [text_block(answer.text)] if isinstance(answer, Text) else structured_blocks(req, answer)
        with self._lock:
            self._last[fingerprint] = blocks
        return blocks

    def count(self, role: str | None = None) -> int:
        """Turns the model was asked (a retry of a role counts again)."""
        return sum(1 for r, _, _ in self.asked if role is None or r == role)

    def roles(self) -> list[str]:
        return [r for r, _, _ in self.asked]


@dataclass
class Standin:
    server: StandinModelServer
    model: InspectorModel
    env: dict[str, str]
    claude: Path

    def script(self, **scripts: Script) -> InspectorModel:
        self.model.scripts.update(scripts)
        return self.model


@contextmanager
def standin(home: Path) -> Iterator[Standin]:
    """A stand-in server on 127.0.0.1 and the environment that points the real CLI at it."""
    claude = find_claude_binary()
    if claude is None:  # pragma: no cover - the project installs it with scripts/install-claude.sh
        import pytest

        pytest.skip("Claude Code CLI not installed; run scripts/install-claude.sh")
    home.mkdir(parents=True, exist_ok=True)
    model = InspectorModel()
    with StandinModelServer(model) as server:
        yield Standin(server=server, model=model, env=claude_env(server.base_url, home), claude=claude)


def into_process_env(s: Standin, monkeypatch: Any) -> None:
    """Point this process's environment at the stand-in, the way a deployed town's runner has its
    model settings: for code that calls the inspector with the process env (MCP tools, the refinery)."""
    for key in list(os.environ):
        if key.startswith(("ANTHROPIC_", "CLAUDE")):
            monkeypatch.delenv(key)
    for key, value in s.env.items():
        if key.startswith(("ANTHROPIC_", "CLAUDE", "DISABLE_")) or key == "HOME":
            monkeypatch.setenv(key, value)


# ---------------------------------------------------------------------------------------------
# A small candidate project, and the scripted answers that fit it
# ---------------------------------------------------------------------------------------------


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


GOOD_CALC = "def add(a, b):\n    return a + b\n"
BAD_CALC = "def add(a, b):\n    return a - b\n"
README = "# calc\n\nUsage: `from calc import add; add(2, 3)` returns 5.\n"


def make_candidate(path: Path, calc: str = GOOD_CALC, readme: str = README) -> Path:
    """A real git repository: calc.py (the work) and README.md, committed on main."""
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.email", "test@vermas.invalid")
    git(path, "config", "user.name", "vermas test")
    (path / "calc.py").write_text(calc)
    (path / "README.md").write_text(readme)
    git(path, "add", ".")
    git(path, "commit", "-q", "-m", "candidate")
    return path


def commit_change(path: Path, name: str, text: str, message: str = "change") -> str:
    (path / name).write_text(text)
    git(path, "add", name)
    git(path, "commit", "-q", "-m", message)
    return git(path, "rev-parse", "HEAD")


ADD_TEST = ("python3 -c \"from calc import add; r = add(2, 3); print('add(2, 3) =', r); "
            "assert r == 5, f'expected 5, got {r}'\"")
README_TEST = "grep -n 'Usage' README.md"
DOCS_EVIDENCE = "cat README.md"


def spec(*criteria: dict[str, Any]) -> dict[str, Any]:
    return {"title": "Add numbers", "requirements": ["R1: add(a, b) returns a + b"],
            "acceptance_criteria": list(criteria)}


def criterion(cid: str, description: str, kind: str = "objective", hint: str = "") -> dict[str, Any]:
    return {"id": cid, "description": description, "test_hint": hint, "kind": kind}


def tspec(cid: str, command: str, timeout: float = 30, description: str = "") -> dict[str, Any]:
    return {"criterion_id": cid, "command": command, "description": description or command, "timeout": timeout}


AC_ADD = criterion("AC-1", "add(2, 3) returns 5", hint="python3 -c 'from calc import add'")
AC_README = criterion("AC-2", "README.md documents usage", hint="grep Usage README.md")
AC_DOCS = criterion("AC-3", "The README explains usage clearly to a newcomer", kind="subjective")


def objective_scripts() -> dict[str, Script]:
    return {
        "designer": [spec(AC_ADD, AC_README)],
        "strategist": [{"tests": [tspec("AC-1", ADD_TEST), tspec("AC-2", README_TEST)]}],
    }


def which(name: str) -> str:
    found = shutil.which(name)
    assert found, f"{name} not on PATH"
    return found


def town_candidate(town: Any, name: str = "dev") -> Path:
    """Where a candidate checkout may live so that the Verifier accepts it: a crew dir of one of the
    town's rigs (a rig `app` is registered if the town has none)."""
    if not town.config.rigs:
        from vermas.town import RigConfig

        town.config.rigs["app"] = RigConfig(name="app", git_url="file:///dev/null", prefix="app")
        town.save_config()
    rig = sorted(town.config.rigs)[0]
    return town.root / rig / "crew" / name
