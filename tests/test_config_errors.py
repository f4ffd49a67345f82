"""A bad `town.toml` (issue 8, items 7 and 8): one clear line naming the file and the problem,
exit 2 in both CLIs, a clear tool error over MCP, and a patrol that keeps its last good config.

Every case is a file a user could leave behind: truncated mid-write, saved in the wrong
encoding, hand-edited with a wrong type or value."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from conftest import fail
from vermas import beads, patrol
from vermas.addresses import parse_address
from vermas.errors import ConfigError
from vermas.town import Town, load_config

BIN = Path(sys.executable).parent
GOOD = '[town]\nname = "t"\nprefix = "gt"\n\n[agent]\ncommand = "claude"\n'

# (case, file bytes, words the one-line error must contain)
BAD_FILES: list[tuple[str, bytes, tuple[str, ...]]] = [
    ("truncated mid-string", b'[town]\nname = "t"\nprefix = "g', ("not valid TOML",)),
    ("truncated to its comment", b"# vermas town confi", ("[town] has no prefix", "truncated")),
    ("empty file", b"", ("[town] has no prefix",)),
    ("not UTF-8", b'[town]\nname = "\xff"\nprefix = "gt"\n', ("not UTF-8", "line 2, byte 15")),
    ("bad prefix", b'[town]\nprefix = "Bad_Prefix"\n', ("prefix", "lowercase letter", "Bad_Prefix")),
    ("town is a value", b'town = 5\n', ("[town] must be a table", "int")),
    ("rigs is a value", b'rigs = "x"\n[town]\nprefix = "gt"\n', ("[rigs] must be a table",)),
    ("rig is a value", b'[town]\nprefix = "gt"\n[rigs]\nmy = 3\n', ("rigs.my must be a table",)),
    ("rig without url", b'[town]\nprefix = "gt"\n[rigs.my]\nprefix = "my"\n', ("rigs.my.git_url", "required")),
    ("max_polecats out of range", b'[town]\nprefix = "gt"\n[rigs.my]\ngit_url = "u"\nprefix = "my"\n'
     b'max_polecats = 0\n', ("rigs.my.max_polecats", "greater than or equal to 1")),
    ("unknown inspector key", b'[town]\nprefix = "gt"\n[inspector]\nmodle = "x"\n', ("inspector.modle",)),
    ("agent args not a list", b'[town]\nprefix = "gt"\n[agent]\nargs = "x"\n', ("agent.args",)),
]


def _write(town: Town, content: bytes) -> Path:
    """Replace the file at once (a patrol reading a half-written file would see a third state)."""
    path = town.layout.config_file
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(content)
    os.replace(tmp, path)
    return path


@pytest.mark.parametrize("case, content, words", BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_load_config_one_clear_line(town: Town, case: str, content: bytes, words: tuple[str, ...]) -> None:
    path = _write(town, content)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert "\n" not in message
    for word in words:
        assert word in message, (case, message)


def test_a_good_file_still_loads(town: Town) -> None:
    assert load_config(_write(town, GOOD.encode())).prefix == "gt"


def _runner(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "vermas-runner"), *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("case, content, words", BAD_FILES[:5], ids=[c[0] for c in BAD_FILES[:5]])
def test_runner_exits_2_with_one_line(town: Town, case: str, content: bytes, words: tuple[str, ...]) -> None:
    path = _write(town, content)
    for command in (["bead", "list"], ["status"], ["sling", "gt-zzzz", "mayor"]):
        proc = _runner(*command, "--town", str(town.root))
        assert proc.returncode == 2, (command, proc.stderr)
        assert "Traceback" not in proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert lines == [f"vermas-runner: {path}: " + lines[0].split(f"{path}: ", 1)[1]], proc.stderr
        assert words[0] in lines[0]


@pytest.mark.parametrize("zygote", ["on", "off"])
def test_mcp_server_exits_2_with_one_line(town: Town, zygote: str) -> None:
    path = _write(town, b'[town]\nname = "t"\nprefix = "g')
    env = {**os.environ, "VERMAS_ZYGOTE": zygote}
    proc = subprocess.run([str(BIN / "vermas-mcp"), "--town", str(town.root), "--actor", "mayor"],
                          capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "not valid TOML" in lines[0], proc.stderr


async def test_tool_on_a_broken_file_is_a_clear_tool_error(town: Town, client_for: Callable[..., Any]) -> None:
    """A running server whose town.toml breaks under it: the tools that re-read the config say
    what is wrong, and nothing is written."""
    bead = beads.create(town, parse_address("mayor"), "work")
    path = _write(town, b'[town]\nprefix = "gt"\n[rigs]\nmy = \xff\n')
    before = town.layout.store_path.read_bytes()
    async with client_for("mayor") as mayor:
        text = await fail(mayor, "sling", bead_id=bead.id, target="my")
    assert str(path) in text and "not UTF-8" in text, text
    assert text.split(": ", 1)[1].startswith(str(path)), text  # not the SDK's bare "Error executing tool sling"
    assert town.layout.store_path.read_bytes() == before


def test_refresh_config_keeps_the_last_good_config(town: Town) -> None:
    _write(town, GOOD.encode())
    assert town.refresh_config() is None and town.config.prefix == "gt"
    _write(town, b"[town]\nprefix = ")
    problem = town.refresh_config()
    assert isinstance(problem, ConfigError) and town.config.prefix == "gt"
    _write(town, GOOD.replace('"gt"', '"mp"').encode())
    assert town.refresh_config() is None and town.config.prefix == "mp"


@pytest.mark.parametrize("before, now, expected", [
    (None, None, None),
    ("bad A", "bad A", None),
    (None, "bad A", "bad A; keeping the last good config until the file is fixed"),
    ("bad A", "bad B", "bad B; keeping the last good config until the file is fixed"),
    ("bad A", None, "town.toml is valid again; config reloaded"),
])
def test_config_notice_once_per_change(before: str | None, now: str | None, expected: str | None) -> None:
    assert patrol.config_notice(before, now) == expected


PATROL = """
import sys
from pathlib import Path
from vermas import patrol
from vermas.sessions import TownSessions
from vermas.town import Town
town = Town.open(sys.argv[1])
print("READY", flush=True)
patrol.run_forever(town, TownSessions(town.root, socket=sys.argv[2]), interval=0.1)
"""


def _wait_for(proc_out: Path, text: str, within: float = 20.0) -> str:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        seen = proc_out.read_text()
        if text in seen:
            return seen
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never logged; log so far: {proc_out.read_text()!r}")


def test_patrol_survives_a_broken_file_and_logs_once(town: Town, tmp_path: Path) -> None:
    """The real patrol loop, in its own process: a broken town.toml is logged once (not every
    round), the loop goes on with the last good config, and the fix is noticed."""
    _write(town, GOOD.encode())
    log = tmp_path / "runner.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-c", PATROL, str(town.root), f"vermas-test-cfg-{os.getpid()}"],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_for(log, "READY")  # opened with the good file before it breaks
        time.sleep(0.3)
        _write(town, b'[town]\nprefix = "g')
        _wait_for(log, "keeping the last good config")
        time.sleep(1.0)  # ten more rounds on the broken file
        assert proc.poll() is None, log.read_text()
        _write(town, GOOD.encode())
        seen = _wait_for(log, "valid again")
        assert seen.count("keeping the last good config") == 1, seen
        assert "Traceback" not in seen
        assert f"{town.layout.config_file}: not valid TOML" in seen
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        from vermas.sessions import TownSessions  # deferred: libtmux, only to clean up

        # the deacon in that patrol may have (re)started core sessions on the test's socket
        TownSessions(town.root, socket=f"vermas-test-cfg-{os.getpid()}").kill_server()
