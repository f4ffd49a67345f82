"""The Verifier: runs a plan's shell tests in the candidate work tree. Not a model.

Each test runs as `bash -c COMMAND` with a scrubbed environment (PATH, LANG and a throwaway
HOME/TMPDIR; no API keys, tokens or agent identity leak into code under test), stdin closed,
stdout and stderr merged into one pipe.

Containment, because test commands are written by a model and run against code written by
another one, is vermas.contain's (shared with the refinery's merge test runs): a separate helper
process tree, the town's store and runtime hidden, everything but the work tree read-only where
namespaces work, the whole tree SIGKILLed on timeout, flood or exit, escapees (setsid, double
fork) killed after the run; output kept as head + tail (64 KiB by default).
Every test yields Evidence, including how it failed.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from vermas import contain
from vermas.contain import FLOOD_BYTES, HEAD_BYTES, TAIL_BYTES
from vermas.errors import VermasError
from vermas.inspector.models import Evidence, TestResult, TestSpec

KEPT_ENV = ("PATH", "LANG", "LC_ALL", "TZ")

OnResult = Callable[[TestResult], Awaitable[None]]


def scrubbed_env(base: Mapping[str, str] | None = None, keep: Sequence[str] = ()) -> dict[str, str]:
    """The environment a test sees: only what running tools needs, nothing secret.

    Why an allow-list: the runner's environment holds API keys, tokens, BD_ACTOR and
    VERMAS_TOWN; code under test must not read or use them, so nothing is inherited unless
    it is on the list (KEPT_ENV plus the town's `pass_env`, which refuses secret-looking names).
    HOME and TMPDIR are private to the run (vermas.contain makes them).
    """
    source = os.environ if base is None else base
    env = {key: source[key] for key in (*KEPT_ENV, *keep) if key in source}
    env.setdefault("PATH", os.defpath)
    env.setdefault("LANG", "C.UTF-8")
    # No .pyc litter in the candidate's work tree; tests can tell they run under the Verifier.
    env.update({"VERMAS_VERIFIER": "1", "PYTHONDONTWRITEBYTECODE": "1"})
    return env


def town_private_paths(town_root: Path) -> tuple[Path, ...]:
    """What a test must not even read: the town's store and runtime files (mail, configs, temp HOMEs)."""
    return (town_root / ".beads", town_root / ".runtime")


def run_command(
    command: str,
    cwd: Path,
    timeout: float,
    *,
    base_env: Mapping[str, str] | None = None,
    keep_env: Sequence[str] = (),
    hidden: Sequence[Path] = (),
    network: bool = False,
    head: int = HEAD_BYTES,
    tail: int = TAIL_BYTES,
    flood: int = FLOOD_BYTES,
) -> Evidence:
    """Run one shell command, contained (vermas.contain); blocks the calling thread until it is over.
    `network=True` (a rig's `test_network`) keeps the host's network; otherwise, where network
    namespaces work, the command has only a loopback of its own."""
    start = time.monotonic()
    try:
        done = contain.run(command, cwd=cwd, timeout=timeout, env=scrubbed_env(base_env, keep_env),
                           hidden=hidden, network=network, head=head, tail=tail, flood=flood)
    except VermasError as exc:
        return Evidence(command=command, output="", output_bytes=0, exit_code=None,
                        duration_s=round(time.monotonic() - start, 3), error=str(exc))
    return Evidence(
        command=command, output=done.output, output_bytes=done.output_bytes, truncated=done.truncated,
        exit_code=done.exit_code, signal=done.signal, duration_s=done.duration_s,
        timed_out=done.timed_out, flooded=done.flooded, error=done.error,
    )


async def run_tests(
    tests: Sequence[TestSpec],
    cwd: Path,
    *,
    parallelism: int = 4,
    on_result: OnResult | None = None,
    base_env: Mapping[str, str] | None = None,
    keep_env: Sequence[str] = (),
    hidden: Sequence[Path] = (),
    network: bool = False,
) -> list[TestResult]:
    """Run tests with at most `parallelism` at once; results in the order of `tests`.

    Each test blocks a worker thread of a private pool (sized to the parallelism, so the
    bound is exact and other users of the default executor are not starved).
    """
    if parallelism < 1:
        raise ValueError("parallelism must be at least 1")
    if not tests:
        return []
    loop = asyncio.get_running_loop()
    pool = ThreadPoolExecutor(max_workers=min(parallelism, len(tests)), thread_name_prefix="vermas-verifier")

    async def one(test: TestSpec) -> TestResult:
        evidence = await loop.run_in_executor(
            pool, lambda: run_command(test.command, cwd, test.timeout, base_env=base_env, keep_env=keep_env,
                                      hidden=hidden, network=network)
        )
        result = TestResult(criterion_id=test.criterion_id, description=test.description,
                            passed=evidence.exit_code == 0 and evidence.failure is None, evidence=evidence)
        if on_result is not None:
            await on_result(result)
        return result

    try:
        return list(await asyncio.gather(*(one(t) for t in tests)))
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
