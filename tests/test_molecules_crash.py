"""Molecules survive SIGKILL: a pour (molecule or wisp) killed before its COMMIT leaves nothing
(no issue, label, dependency, wisp or any other row, the JSONL untouched) and the next pour
works; a step_done killed before its COMMIT leaves the step open, to be closed after. Then 8
real processes pour molecules and wisps, walk them, squash or burn them, concurrently, while
the test SIGKILLs 4 of them at random moments (by PID): every molecule and wisp in the store is
whole or gone (a digest alone), no step was acknowledged closed twice, and every acknowledged
close is kept with its winner's summary.

The kill points are vermas/faults.py checkpoints inside the write transaction (the same
KILL_AT_ENV the polecat spawn tests use); the children are real `vermas-runner mol ...` shell twins
or `python -c` processes on the real store.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from vermas import faults
from vermas.addresses import parse_address
from vermas.export import export_town
from vermas.molecules import formula as f
from vermas.molecules import molecule as m
from vermas.testing.formulas import install
from vermas.town import Town

BIN = Path(sys.executable).parent
RUNNER = str(BIN / "vermas-runner")
MAYOR = parse_address("mayor")
NUX = "gt/polecats/nux"
STEPS = 12


def runner(town: Town, actor: str, *args: str, kill_at: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VERMAS_TOWN", "BD_ACTOR", faults.KILL_AT_ENV)}
    env.update(BD_ACTOR=actor, **({faults.KILL_AT_ENV: kill_at} if kill_at else {}))
    return subprocess.run([RUNNER, *args, "--town", str(town.root), "--json"], env=env, capture_output=True,
                          text=True, timeout=180)


def dump(town: Town) -> list[str]:
    """Every row of every table, through a fresh connection (what a new process would see)."""
    conn = sqlite3.connect(town.layout.store_path)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


def jsonl(town: Town) -> bytes:
    return (town.beads_dir / "issues.jsonl").read_bytes()


@pytest.mark.parametrize("wisp", [False, True], ids=["molecule", "wisp"])
def test_sigkill_mid_pour_leaves_nothing(town: Town, wisp: bool) -> None:
    install(town, "chain", STEPS)
    kind = ["--wisp"] if wisp else []
    first = runner(town, "mayor", "mol", "pour", "chain", "--hook", "gt/polecats/slit")
    assert first.returncode == 0, first.stderr
    export_town(town, force=True)
    store, exported = dump(town), jsonl(town)
    assert any(json.loads(first.stdout)["root"] in line for line in store)

    killed = runner(town, "mayor", "mol", "pour", "chain", "--hook", NUX, *kind, kill_at=m.POUR_KILL_POINT)
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stdout, killed.stderr)
    assert dump(town) == store  # no issue, label, dependency, wisp, prefix count or meta row of the pour
    export_town(town)
    assert jsonl(town) == exported
    with town.db.read() as conn:
        assert conn.execute("SELECT count(*) FROM issues WHERE assignee = ?", (NUX,)).fetchone()[0] == 0

    again = runner(town, "mayor", "mol", "pour", "chain", "--hook", NUX, *kind)
    assert again.returncode == 0, again.stderr
    status = m.status(town, parse_address(NUX))
    assert len(status.steps) == STEPS and status.holder == NUX and status.current and status.current.step == "s1"
    assert status.wisp is wisp and (f"-{m.WISP_INFIX}-" in status.root) is wisp
    export_town(town)
    rows = [json.loads(line) for line in jsonl(town).splitlines()]
    assert sum(1 for r in rows if r["id"].startswith(status.root + ".")) == (0 if wisp else STEPS)


def test_sigkill_mid_step_done_leaves_the_step_open(town: Town) -> None:
    root = m.pour(town, MAYOR, install(town, "chain", 3), hook=NUX).root
    export_town(town, force=True)
    store, exported = dump(town), jsonl(town)
    killed = runner(town, NUX, "mol", "step-done", "s1", "--summary", "lost", kill_at=m.STEP_DONE_KILL_POINT)
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stdout, killed.stderr)
    assert dump(town) == store
    export_town(town)
    assert jsonl(town) == exported
    assert m.status(town, MAYOR, root).steps[0].marker is m.Marker.CURRENT

    done = runner(town, NUX, "mol", "step-done", "s1", "--summary", "kept")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["next"]["step"] == "s2"
    first = m.status(town, MAYOR, root).steps[0]
    assert first.marker is m.Marker.DONE and first.outcome == "kept"


# --- many processes, some killed -------------------------------------------------------------

HOLDERS = [f"gt/polecats/h{i}" for i in range(6)]
WORK_S = 2.5  # each walker works this long; the doomed ones are killed within its first 80%
WALKER = textwrap.dedent(
    """
    import random, sys, time
    from vermas.addresses import parse_address
    from vermas.errors import VermasError
    from vermas.molecules import formula as f, molecule as m
    from vermas.town import Town

    town = Town.open(sys.argv[1])
    tag, holders, seconds = sys.argv[2], sys.argv[3].split(","), float(sys.argv[4])
    rng = random.Random(tag)
    proto = f.cook(f.load("chain", town.root))
    mayor = parse_address("mayor")
    out = sys.stdout

    def say(line):
        out.write(line + "\\n"); out.flush()

    say("READY")
    assert sys.stdin.readline() == "GO\\n"
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if rng.random() < 0.3:  # pour a molecule or a wisp onto some holder's hook
                say(f"POURED {m.pour(town, mayor, proto, hook=rng.choice(holders), wisp=rng.random() < 0.5).root}")
                continue
            with town.db.read() as conn:
                row = conn.execute("SELECT id, assignee FROM issues WHERE issue_type = 'molecule' "
                                   "AND status = 'hooked' ORDER BY random() LIMIT 1").fetchone()
            if row is None:
                continue
            root, holder = row[0], parse_address(row[1])
            state = m.status(town, holder, root)
            if state.current is None and state.wisp and rng.random() < 0.5:
                m.burn(town, holder, root)
                say(f"BURNED {root}")
            elif state.current is None:
                say(f"SQUASHED {root} {m.squash(town, holder, root, f'squashed {root} by {tag}').id}")
            else:
                m.step_done(town, holder, state.current.step, f"by {tag}", root=root)
                say(f"CLOSED {state.current.bead_id} {tag}")
        except VermasError as exc:  # lost a race (already done, occupied hook, closed already)
            say(f"LOST {type(exc).__name__}")
    town.close()
    """
)


def _spawn(town: Town, tag: str, seconds: float) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VERMAS_TOWN", "BD_ACTOR", faults.KILL_AT_ENV)}
    return subprocess.Popen([sys.executable, "-c", WALKER, str(town.root), tag, ",".join(HOLDERS), str(seconds)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _in(ids: list[str]) -> str:
    return f"({','.join('?' * len(ids))})"


def _check_store(town: Town, proto: f.Proto) -> dict[str, str]:
    """Every molecule and wisp whole (all steps, labels, needs) or squashed to its digest alone;
    every wisp row has its molecule and every ephemeral bead its wisp; no orphan rows. Returns
    step bead id -> the outcome recorded for it (in the store, or in the digest of its squash)."""
    blocks = sum(len(s.needs) for s in proto.steps)
    outcomes: dict[str, str] = {}
    with town.db.read() as conn:
        roots = conn.execute("SELECT id, status, notes FROM issues WHERE issue_type = 'molecule'").fetchall()
        assert roots, "no molecule was poured"
        wisps = {r[0] for r in conn.execute("SELECT root FROM wisps")}
        for root, state, notes in roots:
            steps = conn.execute("SELECT i.id, i.status, i.close_reason FROM dependencies d JOIN issues i "
                                 "ON i.id = d.issue_id WHERE d.depends_on_id = ? AND d.type = 'parent-child'",
                                 (root,)).fetchall()
            assert (f"-{m.WISP_INFIX}-" in root) is (root in wisps), root
            if state == "closed":  # a digest alone, naming what it squashed and every step's outcome
                assert steps == [] and root not in wisps, root
                squashed = re.match(r"squashed (\S+) by w\d+\n", notes)
                found = dict(re.findall(r"^- (s\d+): step \d+ for \w+: (by w\d+)$", notes, re.M))
                assert squashed and len(found) == len(proto.steps), (root, notes)
                outcomes.update({f"{squashed[1]}.{sid[1:]}": by for sid, by in found.items()})
                continue
            assert len(steps) == len(proto.steps), (root, len(steps))
            ids = [s[0] for s in steps]
            assert sorted(ids) == sorted(f"{root}.{n}" for n in range(1, len(proto.steps) + 1))
            marks = conn.execute(f"SELECT count(*) FROM labels WHERE label LIKE 'step:%' AND issue_id IN {_in(ids)}",
                                 ids).fetchone()[0]
            deps = conn.execute(f"SELECT count(*) FROM dependencies WHERE type = 'blocks' AND issue_id IN {_in(ids)}",
                                ids).fetchone()[0]
            ephemeral = conn.execute(f"SELECT count(*) FROM issues WHERE ephemeral = 1 AND id IN {_in([root, *ids])}",
                                     [root, *ids]).fetchone()[0]
            assert (marks, deps, ephemeral) == (len(proto.steps), blocks, (1 + len(ids)) * (root in wisps)), root
            outcomes.update({s[0]: s[2] for s in steps if s[1] == "closed"})
        orphans = conn.execute(
            "SELECT (SELECT count(*) FROM labels WHERE issue_id NOT IN (SELECT id FROM issues)) + "
            "(SELECT count(*) FROM dependencies WHERE issue_id NOT IN (SELECT id FROM issues) "
            " OR depends_on_id NOT IN (SELECT id FROM issues)) + "
            "(SELECT count(*) FROM wisps WHERE root NOT IN (SELECT id FROM issues)) + "
            "(SELECT count(*) FROM issues WHERE id LIKE '%.%' AND id NOT IN "
            " (SELECT issue_id FROM dependencies WHERE type = 'parent-child'))").fetchone()[0]
        assert orphans == 0
    return outcomes


def _run_walkers(town: Town, rng: random.Random) -> tuple[dict[str, list[str]], list[str]]:
    """8 walkers started together; 4 of them SIGKILLed (by PID) at random moments. Their logs."""
    procs = {f"w{i}": _spawn(town, f"w{i}", seconds=WORK_S) for i in range(8)}
    doomed = rng.sample(sorted(procs), 4)
    for tag in procs:  # each has imported and opened the town; then all start at once
        assert procs[tag].stdout is not None and procs[tag].stdout.readline() == "READY\n", tag
    for proc in procs.values():
        assert proc.stdin is not None
        proc.stdin.write("GO\n")
        proc.stdin.flush()
    t0 = time.monotonic()
    for tag, delay in sorted(((t, rng.uniform(0.05, WORK_S * 0.8)) for t in doomed), key=lambda x: x[1]):
        time.sleep(max(0.0, delay - (time.monotonic() - t0)))
        os.kill(procs[tag].pid, signal.SIGKILL)
    logs: dict[str, list[str]] = {}
    for tag, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        logs[tag] = out.splitlines()
        assert proc.returncode == (-signal.SIGKILL if tag in doomed else 0), (tag, proc.returncode, err[-2000:])
    return logs, doomed


def test_many_processes_pour_and_walk_while_some_are_killed(town: Town) -> None:
    proto = install(town, "chain", 5)
    seed = int(os.environ.get("VERMAS_CRASH_SEED", time.time_ns() % 10_000))
    print(f"VERMAS_CRASH_SEED={seed}")  # shown with a failure: rerun with it to replay the kills
    logs, _ = _run_walkers(town, random.Random(seed))
    said = [line.split() for lines in logs.values() for line in lines]
    closed = [(words[1], words[2]) for words in said if words[0] == "CLOSED"]
    poured = [words[1] for words in said if words[0] == "POURED"]
    assert closed and any(m.WISP_INFIX in r for r in poured) and any(m.WISP_INFIX not in r for r in poured)
    acknowledged = [bead for bead, _ in closed]
    assert len(acknowledged) == len(set(acknowledged)), "a step was acknowledged closed twice"
    outcomes = _check_store(town, proto)
    with town.db.read() as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        present = {r[0] for r in conn.execute("SELECT id FROM issues")}
    for bead, tag in closed:  # every acknowledged close is kept, by the one who was told it won
        if bead in outcomes:
            assert outcomes[bead] == f"by {tag}", (bead, tag, outcomes[bead])
        else:  # gone only if it was a wisp burned whole
            root = bead.rsplit(".", 1)[0]
            assert m.WISP_INFIX in root and root not in present and bead not in present, (bead, tag)
    export_town(town)
    exported = [json.loads(line)["id"] for line in jsonl(town).splitlines()]
    assert not [i for i in exported if m.WISP_INFIX in i]  # no wisp reached the JSONL
    # and the town goes on: a new pour, a full walk and a squash work after the kills
    after = parse_address("gt/polecats/after")
    status = m.pour(town, MAYOR, proto, hook=str(after), wisp=True)
    while status.current is not None:
        status = m.step_done(town, after, status.current.step, "by w8", root=status.root).molecule
    assert m.squash(town, after, status.root, f"squashed {status.root} by w8\n").status == "closed"
    # the sweep takes the walked wisps nobody squashed or burned, and leaves the rest whole
    m.sweep_wisps(town, 0.0, now=time.time() + 1)
    _check_store(town, proto)
    with town.db.read() as conn:
        left = [m._status(conn, r[0]) for r in conn.execute("SELECT root FROM wisps")]
    assert all(s.current is not None for s in left)
