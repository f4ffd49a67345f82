"""The dashboard served for real (uvicorn on 127.0.0.1, a real town store): the secret guards
every request and action (403, nothing changes), actions go through the tools' core as the
overseer, and a store change reaches the SSE stream."""

from __future__ import annotations

import json
import os
import stat
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from tests.conftest import make_repo
from vermas import beads, rig
from vermas.addresses import parse_address
from vermas.dashboard import actions, view, web
from vermas.town import Town


@pytest.fixture
def served(town: Town) -> Iterator[tuple[Town, str]]:
    import uvicorn

    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(web.build_app(town), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield town, f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(10)


def post(url: str, body: dict[str, object], key: str | None) -> tuple[int, dict[str, object]]:
    headers = {"Content-Type": "application/json", **({"X-Vermas-Key": key} if key else {})}
    req = urllib.request.Request(url, json.dumps(body).encode(), headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        text = exc.read()
        try:
            return exc.code, json.loads(text)
        except ValueError:
            return exc.code, {"text": text.decode()}


def test_secret_is_owner_only_and_stable(town: Town) -> None:
    key = actions.secret(town)
    path = town.layout.runtime_dir / actions.SECRET_FILE
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert actions.secret(town) == key and len(key) >= 24
    assert actions.authorized(town, key) and not actions.authorized(town, key[:-1])
    assert not actions.authorized(town, None)


def test_without_the_key_everything_is_403_and_nothing_changes(served: tuple[Town, str], tmp_path) -> None:
    town, base = served
    bead = beads.create(town, parse_address("mayor"), "Stay open")
    for key in (None, "wrong"):
        code, _ = post(f"{base}/action/bead_close", {"bead_id": bead.id}, key)
        assert code == 403
        code, _ = post(f"{base}/action/sling", {"bead_id": bead.id, "target": "mayor"}, key)
        assert code == 403
        with pytest.raises(urllib.error.HTTPError) as page:
            urllib.request.urlopen(f"{base}/?key={key or ''}", timeout=10)
        assert page.value.code == 403
    assert beads.show(town, bead.id).status == "open"
    with pytest.raises(urllib.error.HTTPError) as get:  # actions are POST only
        urllib.request.urlopen(f"{base}/action/sling?key={actions.secret(town)}", timeout=10)
    assert get.value.code == 405


def test_with_the_key_actions_run_as_overseer_through_the_core(served: tuple[Town, str]) -> None:
    town, base = served
    key = actions.secret(town)
    bead = beads.create(town, parse_address("mayor"), "Hook me")
    code, body = post(f"{base}/action/sling", {"bead_id": bead.id, "target": "mayor"}, key)
    assert code == 200 and body["ok"], body
    assert beads.show(town, bead.id).status == "hooked"
    code, body = post(f"{base}/action/sling", {"bead_id": bead.id, "target": "mayor"}, key)
    assert code == 409 and "hooked" in str(body["error"])  # the core's own refusal
    code, body = post(f"{base}/action/mq_retry", {"mr_id": "nope"}, key)
    assert code in (400, 404) and not body["ok"]
    code, body = post(f"{base}/action/bead_close", {"bead_id": bead.id}, key)
    assert code == 404 and "actions:" in str(body["error"])  # only the dashboard's actions exist


def test_store_change_reaches_the_event_stream(served: tuple[Town, str]) -> None:
    town, base = served
    key = actions.secret(town)
    seen: list[dict[str, object]] = []

    def listen() -> None:
        with urllib.request.urlopen(f"{base}/events?key={key}", timeout=30) as resp:
            for raw in resp:
                line = raw.decode()
                if line.startswith("data: "):
                    seen.append(json.loads(line[6:]))
                    if len(seen) >= 2:
                        return

    t = threading.Thread(target=listen, daemon=True)
    t.start()
    deadline = time.monotonic() + 20
    while not seen and time.monotonic() < deadline:
        time.sleep(0.05)
    assert seen, "no first snapshot"
    other = Town.open(town.root)  # another process's connection, as an agent's vermas-mcp would be
    bead = beads.create(other, parse_address("mayor"), "Seen live")
    other.close()
    t.join(20)
    assert len(seen) >= 2
    assert bead.id in [b["id"] for b in seen[-1]["ready"]]  # type: ignore[index, union-attr]


def test_snapshot_shows_rig_queue_and_cost_panel_absent(town: Town, tmp_path) -> None:
    repo = make_repo(tmp_path / "src")
    rig.add(town, "sample", str(repo), prefix="sp", test_command="true")
    snap = view.snapshot(town, panes={})
    assert [q.status.rig for q in snap.queues] == ["sample"]
    assert {a.address for a in snap.agents} >= {"mayor", "sample/witness", "sample/refinery"}
    assert all(a.state == "dead" for a in snap.agents)  # no tmux sessions: gone, from the evidence
    assert snap.cost is None and view.cost_section(town) is None


def test_retry_requeues_a_failed_merge_request(served: tuple[Town, str], tmp_path) -> None:
    from vermas.refinery import ledger
    from vermas.refinery.types import MRState

    town, base = served
    repo = make_repo(tmp_path / "src")
    rig.add(town, "sample", str(repo), prefix="sp", test_command="true")
    bead = beads.create(town, parse_address("mayor"), "Merge me", rig="sample")
    mr = ledger.enqueue(town, rig="sample", bead=bead.id, polecat="sample/polecats/nux", branch="polecat/nux/x",
                        commit="0" * 40).id
    ledger.transition(town, mr, MRState.CLAIMED, "runner:test")
    ledger.transition(town, mr, MRState.FAILED, "runner:test", {"reason": "tool missing"})
    code, _ = post(f"{base}/action/mq_retry", {"mr_id": mr}, None)
    assert code == 403 and ledger.get(town, mr).state is MRState.FAILED
    code, body = post(f"{base}/action/mq_retry", {"mr_id": mr}, actions.secret(town))
    assert code == 200 and body["ok"], body
    assert ledger.get(town, mr).state is MRState.QUEUED
    events = ledger.events(town, mr)
    assert events[-1].actor == "overseer" and events[-1].to_state is MRState.QUEUED
    snap = view.snapshot(town, panes={})
    assert snap.queues[0].last_failure and snap.queues[0].last_failure["reason"] == "tool missing"


def test_cost_panel_shows_recorded_costs(town: Town) -> None:
    """Once a cost is recorded (an inspector call here), the snapshot carries it per agent and
    per bead, with the totals the store holds."""
    from vermas import cost

    bead = beads.create(town, parse_address("mayor"), "Costed")
    calls = [cost.ModelCallCost(role="auditor", model="claude-sonnet-4-5", cost_usd=0.25,
                                tokens=cost.Tokens(input_tokens=1000, output_tokens=200))]
    cost.record_model_calls(town, "inspector", bead.id, calls)
    snap = view.snapshot(town, panes={})
    assert snap.cost is not None
    assert [(line.key, line.tokens.output_tokens) for line in snap.cost.by_bead] == [(bead.id, 200)]
    assert snap.cost.total.cost_usd == pytest.approx(0.25)
    assert json.loads(snap.model_dump_json())["cost"]["total"]["tokens"]["input_tokens"] == 1000


# ---- browser hardening (issue 20 item 14) ---------------------------------------------------------

def raw(base: str, method: str, path: str, headers: dict[str, str], body: bytes | None = None,
        ) -> tuple[int, dict[str, str], str]:
    """One real HTTP request with exactly these headers (Host included): status, headers, body."""
    import http.client

    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for name, value in headers.items():
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read().decode()
    finally:
        conn.close()


def test_a_foreign_host_header_is_refused_even_with_the_key(served: tuple[Town, str]) -> None:
    """DNS rebinding: a hostile page whose name resolves to 127.0.0.1 sends its own Host."""
    town, base = served
    key, port = actions.secret(town), int(base.rsplit(":", 1)[1])
    bead = beads.create(town, parse_address("mayor"), "Stay open")
    for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1:{port + 1}", f"localhost.evil.example:{port}",
                 ""):
        code, _, text = raw(base, "GET", f"/?key={key}", {"Host": host})
        assert code == 403 and "is not this dashboard" in text and f"127.0.0.1:{port}" in text, (host, code, text)
        code, _, text = raw(base, "POST", f"/action/sling?key={key}",
                            {"Host": host, "Content-Type": "application/json"},
                            json.dumps({"bead_id": bead.id, "target": "mayor"}).encode())
        assert code == 403, (host, code, text)
    assert beads.show(town, bead.id).status == "open"
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}"):
        code, _, text = raw(base, "GET", f"/snapshot.json?key={key}", {"Host": host})
        assert code == 200 and json.loads(text)["town"], host


def test_cross_origin_posts_are_refused(served: tuple[Town, str]) -> None:
    town, base = served
    key, port = actions.secret(town), int(base.rsplit(":", 1)[1])
    bead = beads.create(town, parse_address("mayor"), "Hook me only from the page")
    body = json.dumps({"bead_id": bead.id, "target": "mayor"}).encode()
    own = {"Host": f"127.0.0.1:{port}", "Content-Type": "application/json", "X-Vermas-Key": key}
    for extra in ({"Origin": "http://evil.example"}, {"Origin": "null"}, {"Origin": f"http://127.0.0.1:{port + 1}"},
                  {"Origin": f"https://127.0.0.1:{port}"}, {"Sec-Fetch-Site": "cross-site"},
                  {"Sec-Fetch-Site": "same-site"},
                  {"Origin": f"http://127.0.0.1:{port}", "Sec-Fetch-Site": "cross-site"}):
        code, _, text = raw(base, "POST", "/action/sling", {**own, **extra}, body)
        assert code == 403 and "forbidden" in text and "own page" in text, (extra, code, text)
    assert beads.show(town, bead.id).status == "open"
    code, _, text = raw(base, "POST", "/action/sling",
                        {**own, "Origin": f"http://127.0.0.1:{port}", "Sec-Fetch-Site": "same-origin"}, body)
    assert code == 200 and json.loads(text)["ok"], text  # the page's own fetch, as Chromium sends it
    assert beads.show(town, bead.id).status == "hooked"


def test_every_response_says_no_referrer_no_frames_and_no_inline_script(served: tuple[Town, str]) -> None:
    import re

    town, base = served
    key, port = actions.secret(town), int(base.rsplit(":", 1)[1])
    host = {"Host": f"127.0.0.1:{port}"}
    seen = {path: raw(base, "GET", path, host) for path in
            (f"/?key={key}", f"/page.js?key={key}", f"/snapshot.json?key={key}", "/?key=wrong", "/page.js")}
    seen["refused host"] = raw(base, "GET", f"/?key={key}", {"Host": "evil.example"})
    for path, (_, headers, _) in seen.items():
        assert headers.get("referrer-policy") == "no-referrer", path
        assert headers.get("x-frame-options") == "DENY", path
        csp = headers.get("content-security-policy", "")
        directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
        assert directives["script-src"] == "'self'" and directives["default-src"] == "'none'", (path, csp)
        assert directives["frame-ancestors"] == "'none'", (path, csp)
    assert seen["/page.js"][0] == 403 and seen["/?key=wrong"][0] == 403  # the script is guarded too
    code, headers, script = seen[f"/page.js?key={key}"]
    assert code == 200 and headers["content-type"].startswith("text/javascript") and "EventSource" in script
    code, _, page = seen[f"/?key={key}"]
    assert code == 200
    assert re.findall(r"<script[^>]*>", page) == [f'<script src="page.js?key={key}">']  # no inline script
    assert not re.search(r"\son[a-z]+\s*=", page + script), "an inline event handler"  # CSP would block it


def test_a_dashboard_action_reaches_the_export_while_it_runs(town: Town) -> None:
    """Issue 20 item 10: the real `vermas-runner dashboard` exports what its buttons write while
    it runs, as an MCP server does, not only when it exits."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    runner = str(Path(sys.executable).with_name("vermas-runner"))
    bead = beads.create(town, parse_address("mayor"), "Sling me from the page")
    env = {k: v for k, v in os.environ.items() if k not in ("VERMAS_TOWN", "BD_ACTOR")}
    proc = subprocess.Popen([runner, "dashboard", "--town", str(town.root), "--port", "0"], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"dashboard: (http://127\.0\.0\.1:\d+)/\?key=(\S+)", line)
        assert match, line
        code, body = post(f"{match.group(1)}/action/sling", {"bead_id": bead.id, "target": "mayor"}, match.group(2))
        assert code == 200 and body["ok"], body
        export = town.layout.export_file("issues")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            rows = {r["id"]: r for r in map(json.loads, export.read_text().splitlines())}
            if rows.get(bead.id, {}).get("status") == "hooked":
                break
            time.sleep(0.2)
        assert rows[bead.id]["status"] == "hooked" and rows[bead.id]["assignee"] == "mayor"
        assert proc.poll() is None  # exported while running, not at exit
    finally:
        proc.terminate()  # by its PID
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(15)
