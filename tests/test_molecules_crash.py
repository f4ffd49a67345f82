"""Molecules survive SIGKILL: a pour killed before its COMMIT leaves nothing (no issue, label,
dependency or any other row, the JSONL untouched) and the next pour works; a step_done killed
before its COMMIT leaves the step open, to be closed after. Then 8 real processes pour, walk
and squash molecules concurrently while the test SIGKILLs some at random moments (by PID):
every molecule in the store is whole or gone, and no step was acknowledged closed twice.

The kill points are vermas/faults.py checkpoints inside the write transaction (the same
KILL_AT_ENV the polecat spawn tests use); the children are real `vermas-runner` shell twins
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

from vermas import faults
from vermas.addresses import parse_address
from vermas.export import export_town
from vermas.molecules import formula as f
from vermas.molecules import molecule as m
from vermas.town import Town

BIN = Path(sys.executable).parent
RUNNER = str(BIN / "vermas-runner")
MAYOR = parse_address("mayor")
NUX = "gt/polecats/nux"
STEPS = 12


def chain(name: str, n: int) -> str:
    """A formula of n steps, each needing the one before (and step 3k also the first)."""
    lines = [f'formula = "{name}"', f'description = "{n} chained steps"']
    for i in range(1, n + 1):
        needs = [f"s{i - 1}"] if i > 1 else []
        if i % 3 == 0 and i > 2:
            needs.append("s1")
        lines += ["[[steps]]", f'id = "s{i}"', f'title = "step {i}"', f"needs = {json.dumps(needs)}",
                  f'acceptance = "s{i} accepted"']
    return "\n".join(lines) + "\n"


def install(town: Town, name: str, n: int) -> f.Proto:
    """The formula written to the town's .beads/formulas/ (for the shell twins), and its proto."""
    folder = town.root / ".beads" / "formulas"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}{f.SUFFIX}").write_text(chain(name, n))
    return f.cook(f.load(name, town.root))


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


def test_sigkill_mid_pour_leaves_nothing(town: Town) -> None:
    install(town, "chain", STEPS)
    first = runner(town, "mayor", "mol-pour", "chain", "--hook", "gt/polecats/slit")
    assert first.returncode == 0, first.stderr
    export_town(town, force=True)
    store, exported = dump(town), jsonl(town)
    assert any(json.loads(first.stdout)["root"] in line for line in store)

    killed = runner(town, "mayor", "mol-pour", "chain", "--hook", NUX, kill_at=m.POUR_KILL_POINT)
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stdout, killed.stderr)
    assert dump(town) == store  # no issue, label, dependency, prefix count or meta row of the pour
    export_town(town)
    assert jsonl(town) == exported
    with town.db.read() as conn:
        assert conn.execute("SELECT count(*) FROM issues WHERE assignee = ?", (NUX,)).fetchone()[0] == 0

    again = runner(town, "mayor", "mol-pour", "chain", "--hook", NUX)
    assert again.returncode == 0, again.stderr
    status = m.status(town, parse_address(NUX))
    assert len(status.steps) == STEPS and status.holder == NUX and status.current and status.current.step == "s1"
    export_town(town)
    rows = [json.loads(line) for line in jsonl(town).splitlines()]
    assert sum(1 for r in rows if r["id"].startswith(status.root + ".")) == STEPS


def test_sigkill_mid_step_done_leaves_the_step_open(town: Town) -> None:
    root = m.pour(town, MAYOR, install(town, "chain", 3), hook=NUX).root
    export_town(town, force=True)
    store, exported = dump(town), jsonl(town)
    killed = runner(town, NUX, "mol-step-done", "s1", "--summary", "lost", kill_at=m.STEP_DONE_KILL_POINT)
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stdout, killed.stderr)
    assert dump(town) == store
    export_town(town)
    assert jsonl(town) == exported
    assert m.status(town, MAYOR, root).steps[0].marker is m.Marker.CURRENT

    done = runner(town, NUX, "mol-step-done", "s1", "--summary", "kept")
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
    out.write("READY\\n"); out.flush()
    assert sys.stdin.readline() == "GO\\n"
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if rng.random() < 0.3:
                poured = m.pour(town, mayor, proto, hook=rng.choice(holders))
                out.write(f"POURED {poured.root}\\n"); out.flush()
                continue
            with town.db.read() as conn:
                row = conn.execute("SELECT id, assignee FROM issues WHERE issue_type = 'molecule' "
                                   "AND status = 'hooked' ORDER BY random() LIMIT 1").fetchone()
            if row is None:
                continue
            root, holder = row[0], parse_address(row[1])
            current = m.status(town, holder, root).current
            if current is None:
                m.squash(town, holder, root, f"squashed by {tag}")
                out.write(f"SQUASHED {root}\\n"); out.flush()
                continue
            m.step_done(town, holder, current.step, f"by {tag}", root=root)
            out.write(f"CLOSED {current.bead_id} {tag}\\n"); out.flush()
        except VermasError as exc:  # lost a race (already done, occupied hook, closed already)
            out.write(f"LOST {type(exc).__name__}\\n"); out.flush()
    town.close()
    """
)


def _spawn(town: Town, tag: str, seconds: float) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VERMAS_TOWN", "BD_ACTOR", faults.KILL_AT_ENV)}
    return subprocess.Popen([sys.executable, "-c", WALKER, str(town.root), tag, ",".join(HOLDERS), str(seconds)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _check_store(town: Town, proto: f.Proto) -> dict[str, str]:
    """Every molecule whole (all steps, labels, needs) or squashed to its digest alone; no
    orphan rows. Returns step bead id -> the outcome recorded for it (open steps excluded)."""
    blocks = sum(len(s.needs) for s in proto.steps)
    outcomes: dict[str, str] = {}
    with town.db.read() as conn:
        roots = conn.execute("SELECT id, status, notes FROM issues WHERE issue_type = 'molecule'").fetchall()
        assert roots, "no molecule was poured"
        for root, state, notes in roots:
            steps = conn.execute("SELECT i.id, i.status, i.close_reason FROM dependencies d JOIN issues i "
                                 "ON i.id = d.issue_id WHERE d.depends_on_id = ? AND d.type = 'parent-child'",
                                 (root,)).fetchall()
            if state == "closed":  # squashed: the digest alone, every step's outcome in its notes
                assert steps == [], root
                found = dict(re.findall(r"^- (s\d+): step \d+: (by w\d+)$", notes, re.M))
                assert len(found) == len(proto.steps), (root, notes)
                outcomes.update({f"{root}.{sid[1:]}": by for sid, by in found.items()})
                continue
            assert len(steps) == len(proto.steps), (root, len(steps))
            ids = [s[0] for s in steps]
            assert sorted(ids) == sorted(f"{root}.{n}" for n in range(1, len(proto.steps) + 1))
            marks = conn.execute(f"SELECT count(*) FROM labels WHERE label LIKE 'step:%' AND issue_id IN "
                                 f"({','.join('?' * len(ids))})", ids).fetchone()[0]
            deps = conn.execute(f"SELECT count(*) FROM dependencies WHERE type = 'blocks' AND issue_id IN "
                                f"({','.join('?' * len(ids))})", ids).fetchone()[0]
            assert (marks, deps) == (len(proto.steps), blocks), root
            outcomes.update({s[0]: s[2] for s in steps if s[1] == "closed"})
        orphans = conn.execute(
            "SELECT (SELECT count(*) FROM labels WHERE issue_id NOT IN (SELECT id FROM issues)) + "
            "(SELECT count(*) FROM dependencies WHERE issue_id NOT IN (SELECT id FROM issues) "
            " OR depends_on_id NOT IN (SELECT id FROM issues)) + "
            "(SELECT count(*) FROM issues WHERE id LIKE '%.%' AND id NOT IN "
            " (SELECT issue_id FROM dependencies WHERE type = 'parent-child'))").fetchone()[0]
        assert orphans == 0
    return outcomes


def test_many_processes_pour_and_walk_while_some_are_killed(town: Town) -> None:
    proto = install(town, "chain", 5)
    rng = random.Random(int(os.environ.get("VERMAS_CRASH_SEED", time.time_ns() % 10_000)))
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

    closed = [line.split()[1:] for lines in logs.values() for line in lines if line.startswith("CLOSED ")]
    assert closed, "no step was closed; the walkers did nothing"
    acknowledged = [bead for bead, _ in closed]
    assert len(acknowledged) == len(set(acknowledged)), "a step was acknowledged closed twice"
    outcomes = _check_store(town, proto)
    for bead, tag in closed:  # every acknowledged close is in the store, by the one who was told it won
        assert outcomes.get(bead) == f"by {tag}", (bead, tag, outcomes.get(bead))
    assert sum(1 for lines in logs.values() for line in lines if line.startswith("POURED ")) >= 1
    with town.db.read() as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    # and the town goes on: a new pour and a full walk work after the kills
    status = m.pour(town, MAYOR, proto, hook="gt/polecats/after")
    after = parse_address("gt/polecats/after")
    while status.current is not None:
        status = m.step_done(town, after, status.current.step, "after", root=status.root).molecule
    assert m.squash(town, after, status.root, "done").status == "closed"
