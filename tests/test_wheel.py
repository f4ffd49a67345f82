"""A wheel carries vermas's role prompts as package data: build one, install it into a fresh
venv outside the repository, and launch-spec a polecat from a folder outside the repository.

The wheel is built by pip (setuptools in an isolated build env, from pip's cache or PyPI)
from a copy of the source, so no build/ folder is left in the checkout.
The fresh venv gets vermas from the wheel only; its dependencies (mcp, pydantic, ...) are made
visible through a `.pth` line naming this venv's site-packages, so the test needs no network.
A `.pth` line only appends a folder to sys.path (the `.pth` files inside it, such as the
editable-install finder that points back at this checkout, are not run), so `vermas` can only
come from the wheel; the test checks that it did.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PROBE = """
import json, subprocess, sys, tempfile
from pathlib import Path
import vermas
from vermas import agents
from vermas.addresses import parse_address
from vermas.inspector import prompts
from vermas.molecules import formula
from vermas.town import Town

town, _ = Town.init(Path(tempfile.mkdtemp()) / "town")
nux = parse_address("myproj/polecats/nux")
subprocess.run(["git", "init", "-q", str(agents.workdir(town, nux))], check=True)  # a polecat needs a worktree
spec = agents.launch_spec(town, nux)
i = spec.argv.index("--append-system-prompt")
print(json.dumps({"vermas": vermas.__file__, "prompt": spec.argv[i + 1],
                  "judge": prompts.role_template("judge"),
                  "formulas": [i.name for i in formula.list_formulas(town.root)]}))
"""


def run(*argv: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(argv)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_wheel_install_has_role_templates(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    source = tmp_path / "src"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".tools", "build", "*.egg-info", "__pycache__", ".pytest_cache"))
    wheels = tmp_path / "wheels"
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(source), cwd=outside)
    (wheel,) = wheels.glob("vermas-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "vermas/templates/polecat.md" in names and "vermas/templates/inspector/judge.md" in names
    assert "vermas/molecules/formulas/polecat-work.formula.toml" in names

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", str(venv), cwd=outside)
    py = venv / "bin" / "python"
    run(sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", "--no-index",
        str(wheel), cwd=outside)
    purelib = Path(run(str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))",
                       cwd=outside).stdout.strip())
    (purelib / "zz-deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VERMAS_TOWN", "BD_ACTOR")}
    probe = json.loads(run(str(py), "-c", PROBE, cwd=outside, env=env).stdout)
    assert Path(probe["vermas"]).is_relative_to(venv), probe["vermas"]  # the wheel, not this checkout
    template = (REPO / "vermas" / "templates" / "polecat.md").read_text(encoding="utf-8")
    assert probe["prompt"] == template
    assert probe["prompt"].startswith("# You are a vermas polecat")
    assert probe["judge"].startswith("# VerMAS inspector role: JUDGE")
    assert probe["formulas"] == ["polecat-work", "review", "test-first"]  # built-ins read from the wheel


@pytest.mark.parametrize("role", ["mayor", "witness", "refinery", "polecat", "crew"])
def test_every_session_role_has_a_packaged_template(role: str) -> None:
    from vermas import agents
    from vermas.addresses import Role

    assert agents.role_prompt(Role(role)).startswith("# ")
