"""The dashboard against a real running town, seen in a real browser.

The town is made and booted with the runner as a person would (`init`, `rig add` on a bare
upstream with test_command "true" and verification off, `up --model standin --detach`): the
real Claude Code CLI in tmux on the town's private socket, driven by the stand-in model. The
dashboard is `vermas-runner dashboard` in a subprocess (its URL read from its stdout), and the
page is driven live in headless Chromium over the DevTools protocol (tests/cdp.py): the page
renders from its server-sent-event stream, so it is read with Runtime.evaluate, not dumped once.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.cdp import Browser, chromium_binary
from tests.conftest import git, make_repo, stop_detached_town
from tests.test_dashboard import post
from vermas.addresses import parse_address
from vermas.sessions import socket_name
from vermas.testing.standin import find_claude_binary
from vermas.town import Town

pytestmark = pytest.mark.skipif(find_claude_binary() is None,
                                reason="Claude Code CLI not installed (scripts/setup.sh installs it)")
RUNNER = str(Path(sys.executable).with_name("vermas-runner"))
CORE = ("mayor", "sample/witness", "sample/refinery")


@dataclass
class LiveTown:
    root: Path
    env: dict[str, str]
    url: str
    key: str
    upstream: Path

    def run(self, *args: str, timeout: float = 240) -> str:
        proc = subprocess.run([RUNNER, *args, "--town", str(self.root)], capture_output=True, text=True,
                              timeout=timeout, env=self.env)
        assert proc.returncode == 0, f"vermas-runner {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout

    def pane(self, address: str) -> str:
        """capture-pane on the town's private socket (tmux itself, not our wrapper)."""
        session = parse_address(address).session_name
        return subprocess.run(["tmux", "-L", socket_name(self.root), "capture-pane", "-p", "-J", "-S", "-200",
                               "-t", session], capture_output=True, text=True, timeout=30, env=self.env).stdout

    def nudge_mail(self, text: str) -> list[str]:
        town = Town.open(self.root)
        try:
            with town.db.read() as conn:
                return [r[0] for r in conn.execute(
                    "SELECT recipient FROM messages WHERE kind = 'NUDGE' AND body LIKE ?", (f"%{text}%",))]
        finally:
            town.close()


def start_dashboard(root: Path, env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([RUNNER, "dashboard", "--town", str(root), "--port", "0"], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # printed once listening; connections queue from then on
    match = re.search(r"dashboard: (http://127\.0\.0\.1:\d+/\?key=(\S+))", line)
    if not match:
        proc.kill()
        raise AssertionError(f"no dashboard URL on stdout: {line!r}{proc.stdout.read()}")
    return proc, match.group(1)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveTown]:
    base = tmp_path_factory.mktemp("live")
    tmux_dir = Path(tempfile.mkdtemp(prefix="vt-"))  # short: a unix socket path is limited
    env = {k: v for k, v in os.environ.items() if k not in ("VERMAS_TOWN", "BD_ACTOR", "CLAUDECODE")}
    env.update(HOME=str(base / "home"), TMUX_TMPDIR=str(tmux_dir),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', os.defpath)}")
    (base / "home").mkdir()
    upstream = base / "upstream.git"  # bare: the refinery pushes its merges here
    git(make_repo(base / "seed"), "clone", "-q", "--bare", ".", str(upstream))
    root = base / "town"
    dashboard: subprocess.Popen[str] | None = None
    try:
        for args in (["init", str(root)],
                     ["rig", "add", "sample", str(upstream), "--prefix", "sp", "--test-command", "true",
                      "--town", str(root)]):
            subprocess.run([RUNNER, *args], env=env, capture_output=True, text=True, timeout=120, check=True)
        town = Town.open(root)
        town.config.rigs["sample"] = town.config.rigs["sample"].model_copy(update={"verify_level": "off"})
        town.save_config()
        town.close()
        handle = LiveTown(root, env, "", "", upstream)
        handle.run("up", "--detach", "--model", "standin", timeout=400)
        dashboard, handle.url = start_dashboard(root, env)
        handle.key = handle.url.split("key=", 1)[1]
        yield handle
    finally:
        if dashboard is not None:
            dashboard.terminate()  # by its PID
            try:
                dashboard.wait(15)
            except subprocess.TimeoutExpired:
                dashboard.kill()
                dashboard.wait(15)
        stop_detached_town(root, env, tmux_dir, RUNNER)


AGENTS_JS = "[...document.querySelectorAll('#agents tr[data-agent]')].map(r => r.dataset.agent)"
READY_JS = "[...document.querySelectorAll('#ready tr[data-bead]')].map(r => r.dataset.bead)"
REQUESTS_JS = ("[...document.querySelectorAll('#queues tr[data-mr]')]"
               ".map(r => [r.dataset.mr, r.cells[1].textContent, r.dataset.state])")


@pytest.mark.chromium
@pytest.mark.skipif(chromium_binary() is None, reason="chromium not installed (scripts/setup.sh installs it)")
def test_the_page_shows_the_town_live_in_a_real_browser(live: LiveTown, tmp_path: Path) -> None:
    with Browser(tmp_path / "chromium-profile") as browser:
        browser.navigate(live.url)
        browser.wait_for("document.body.dataset.updated", 60, "the first snapshot from the event stream")
        assert browser.evaluate("document.querySelector('#conn').textContent") == "live"
        agents = browser.wait_for(f"(a => {json.dumps(list(CORE))}.every(x => a.includes(x)) && a)({AGENTS_JS})",
                                  60, "the core agents")
        assert set(agents) >= set(CORE)
        # `up --detach` returns before the runner has booted them: live once their tmux sessions are up
        browser.wait_for(f"{json.dumps(list(CORE))}.every(a => "
                         "document.querySelector(`#agents tr[data-agent=\"${a}\"]`).cells[1].textContent !== 'dead')",
                         240, "the core agents alive")
        # The CSP is in force (an inline handler does not run) and the page's buttons still work
        # (one delegated listener in page.js): the pane button shows the mayor's pane.
        inline_ran = ("(() => { const b = document.createElement('button'); b.setAttribute('onclick', "
                      "'window.inlineRan = true'); document.body.append(b); b.click(); b.remove(); "
                      "return window.inlineRan === true; })()")
        assert browser.evaluate(inline_ran) is False
        browser.evaluate("document.querySelector('#agents tr[data-agent=\"mayor\"] button[data-do=\"pane\"]').click()")
        browser.wait_for("!document.querySelector('#pane').hidden && "
                         "document.querySelector('#pane').textContent.startsWith('mayor\\n')", 30, "the mayor's pane")
        # The page's own POST (Chromium sends Origin and Sec-Fetch-Site) passes the cross-origin check
        # and reaches the core, which answers for the unknown merge request.
        browser.evaluate("act('mq_retry', {mr_id: 'mr-none'})")
        answer = browser.wait_for("(t => t.startsWith('mq_retry: ') && t)(document.querySelector('#msg').textContent)",
                                  30, "the page's POST answered")
        assert "forbidden" not in answer and "mr-none" in answer, answer
        assert browser.evaluate("document.querySelector('#queues div h2').textContent").startswith("sample")
        assert browser.evaluate(REQUESTS_JS) == []  # nothing queued yet

        bead = live.run("bead", "create", "Write a note", "--rig", "sample", "--id").strip()
        browser.wait_for(f"{READY_JS}.includes({json.dumps(bead)})", 30, f"{bead} in the ready list")

        out = live.run("sling", bead, "sample")
        polecat = re.search(r"spawned (sample/polecats/\w+)", out).group(1)  # type: ignore[union-attr]
        browser.wait_for(f"{AGENTS_JS}.includes({json.dumps(polecat)}) && !{READY_JS}.includes({json.dumps(bead)})",
                         60, f"{polecat} shown and {bead} gone from the ready list")
        row = f"document.querySelector('#agents tr[data-agent=\"{polecat}\"]')"
        hooked = browser.evaluate(f"{row}.cells[3].textContent")
        assert hooked == bead

        merged = browser.wait_for(f"{REQUESTS_JS}.find(r => r[1] === {json.dumps(bead)} && r[2] === 'merged')",
                                  300, f"{bead}'s merge request shown merged")
        assert merged[1] == bead and merged[0] in live.run("mq", "list")  # the page's request is the ledger's
        files = git(live.upstream, "ls-tree", "-r", "--name-only", "main").split()
        assert any(f.startswith("notes/") for f in files), files  # the merge really landed upstream
        shot = browser.screenshot(tmp_path / "dashboard.png")
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
        pid = browser.proc.pid
    assert browser.proc.returncode is not None  # the browser (pid above) is gone
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def post_nudge(live: LiveTown, message: str, key: str | None) -> tuple[int, dict[str, object]]:
    return post(f"{live.url.split('/?', 1)[0]}/action/nudge", {"target": "mayor", "message": message}, key)


def test_a_nudge_from_the_dashboard_reaches_the_agents_pane(live: LiveTown) -> None:
    refused = f"dashboard-refused-{os.getpid()}"
    for key in (None, live.key[:-1] + ("x" if live.key[-1] != "x" else "y")):
        code, _ = post_nudge(live, refused, key)
        assert code == 403
    sent = f"dashboard-nudge-{os.getpid()}"
    code, body = post_nudge(live, sent, live.key)
    assert code == 200 and body["ok"], body
    result = body["result"]
    assert isinstance(result, dict) and result["target"] == "mayor"
    if result["submitted"]:  # typed into the pane and submitted: tmux shows it there
        deadline = time.monotonic() + 30
        while sent not in live.pane("mayor") and time.monotonic() < deadline:
            time.sleep(0.5)
        assert sent in live.pane("mayor")
    else:  # the prompt stayed busy: queued as NUDGE mail instead
        assert result["queued_message_id"] and live.nudge_mail(sent) == ["mayor"], result
    assert refused not in live.pane("mayor") and live.nudge_mail(refused) == []  # the refused ones: nowhere
