"""The Verifier: runs a plan's shell tests in the candidate work tree. Not a model.

Each test runs as `bash -c COMMAND` in its own session (so its own process group), with a
scrubbed environment (PATH, LANG and a throwaway HOME/TMPDIR; no API keys, tokens or agent
identity leak into code under test), stdin closed, stdout and stderr merged into one pipe.

Containment, because test commands are written by a model and run against code written by
another one:
- timeout: the whole process group is SIGKILLed, not just the shell, so forked children die;
- when the shell exits, whatever it left running in its group is killed too (a background
  child holding the pipe open would otherwise keep the run waiting forever);
- a process that escaped the group (setsid) cannot stall the run: reading stops a short grace
  period after the shell is gone;
- output is streamed into a head+tail buffer (64 KiB kept by default), so a flood never fills
  memory, and a command that writes more than the flood limit is killed.
Every test yields Evidence, including how it failed.
"""

from __future__ import annotations

import asyncio
import os
import selectors
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from vermas.inspector.models import Evidence, TestResult, TestSpec

HEAD_BYTES = 32 * 1024
TAIL_BYTES = 32 * 1024
FLOOD_BYTES = 64 * 1024 * 1024
EXIT_GRACE_S = 1.0
READ_CHUNK = 64 * 1024
KEPT_ENV = ("PATH", "LANG", "LC_ALL", "TZ")

OnResult = Callable[[TestResult], Awaitable[None]]


class OutputCap:
    """Keeps the first `head` and the last `tail` bytes of a stream, and counts the rest."""

    def __init__(self, head: int = HEAD_BYTES, tail: int = TAIL_BYTES) -> None:
        self.head_limit = head
        self.tail_limit = tail
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.head_limit - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if chunk and self.tail_limit:
            self.tail += chunk
            if len(self.tail) > 2 * self.tail_limit:  # trim in batches: amortised O(1) per byte
                del self.tail[: len(self.tail) - self.tail_limit]

    @property
    def truncated(self) -> bool:
        return self.total > len(self.head) + min(len(self.tail), self.tail_limit)

    def text(self) -> str:
        tail = bytes(self.tail[-self.tail_limit :]) if self.tail_limit else b""
        head = self.head.decode("utf-8", "replace")
        if not self.truncated:
            return head + tail.decode("utf-8", "replace")
        omitted = self.total - len(self.head) - len(tail)
        return f"{head}\n[... {omitted} bytes omitted by the Verifier ...]\n{tail.decode('utf-8', 'replace')}"


def scrubbed_env(home: Path, base: Mapping[str, str] | None = None, keep: Sequence[str] = ()) -> dict[str, str]:
    """The environment a test sees: only what running tools needs, nothing secret.

    Why an allow-list: the runner's environment holds API keys, tokens, BD_ACTOR and
    VERMAS_TOWN; code under test must not read or use them, so nothing is inherited unless
    it is on the list (KEPT_ENV plus the town's `pass_env`, which refuses secret-looking names).
    """
    source = os.environ if base is None else base
    env = {key: source[key] for key in (*KEPT_ENV, *keep) if key in source}
    env.setdefault("PATH", os.defpath)
    env.setdefault("LANG", "C.UTF-8")
    tmp = home / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    # No .pyc litter in the candidate's work tree; tests can tell they run under the Verifier.
    env.update({"HOME": str(home), "TMPDIR": str(tmp), "VERMAS_VERIFIER": "1", "PYTHONDONTWRITEBYTECODE": "1"})
    return env


def _shell() -> str:
    return shutil.which("bash") or "/bin/sh"


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _signal_name(returncode: int | None) -> str | None:
    if returncode is None or returncode >= 0:
        return None
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def run_command(
    command: str,
    cwd: Path,
    timeout: float,
    *,
    base_env: Mapping[str, str] | None = None,
    keep_env: Sequence[str] = (),
    head: int = HEAD_BYTES,
    tail: int = TAIL_BYTES,
    flood: int = FLOOD_BYTES,
) -> Evidence:
    """Run one shell command, contained; blocks the calling thread until it is over."""
    start = time.monotonic()
    home = Path(tempfile.mkdtemp(prefix="vermas-verify-home-"))
    cap = OutputCap(head, tail)
    try:
        try:
            proc = subprocess.Popen(
                [_shell(), "-c", command], cwd=cwd, env=scrubbed_env(home, base_env, keep_env),
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            return Evidence(command=command, output="", output_bytes=0, exit_code=None,
                            duration_s=time.monotonic() - start, error=f"{type(exc).__name__}: {exc}")
        timed_out = flooded = False
        deadline = start + timeout
        try:
            timed_out, flooded = _pump(proc, cap, deadline, flood)
            if proc.poll() is None:  # it closed its output but runs on: it still has its deadline
                try:
                    proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    timed_out = True
        finally:
            _killpg(proc.pid)  # nothing of this test outlives it, whatever happened above
            proc.wait()
            assert proc.stdout is not None
            proc.stdout.close()
        return Evidence(
            command=command, output=cap.text(), output_bytes=cap.total, truncated=cap.truncated,
            exit_code=None if proc.returncode < 0 else proc.returncode,
            signal=_signal_name(proc.returncode), duration_s=round(time.monotonic() - start, 3),
            timed_out=timed_out, flooded=flooded,
        )
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _pump(proc: subprocess.Popen[bytes], cap: OutputCap, deadline: float, flood: int) -> tuple[bool, bool]:
    """Stream output into cap until EOF, the deadline, a flood, or the grace after exit."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    timed_out = flooded = False
    exited_at: float | None = None
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while True:
            now = time.monotonic()
            if exited_at is None and proc.poll() is not None:
                exited_at = now
                _killpg(proc.pid)  # leftovers of the group would hold the pipe open
            if exited_at is None and now >= deadline:
                timed_out = True
                _killpg(proc.pid)
                proc.wait()
                exited_at = time.monotonic()
            if exited_at is not None and time.monotonic() - exited_at > EXIT_GRACE_S:
                break  # something outside the group still holds the pipe; stop listening
            wait = 0.05 if exited_at is not None else max(0.0, min(0.05, deadline - now))
            if not sel.select(timeout=wait):
                continue
            try:
                chunk = os.read(fd, READ_CHUNK)
            except BlockingIOError:
                continue
            if not chunk:
                break
            cap.feed(chunk)
            if cap.total > flood and exited_at is None:
                flooded = True
                _killpg(proc.pid)
                proc.wait()
                exited_at = time.monotonic()
    return timed_out, flooded


async def run_tests(
    tests: Sequence[TestSpec],
    cwd: Path,
    *,
    parallelism: int = 4,
    on_result: OnResult | None = None,
    base_env: Mapping[str, str] | None = None,
    keep_env: Sequence[str] = (),
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
            pool, lambda: run_command(test.command, cwd, test.timeout, base_env=base_env, keep_env=keep_env)
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
