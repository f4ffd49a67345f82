"""Fault injection for the crash tests: SIGKILL this process at a named checkpoint, as a crash
or an impatient Ctrl-\\ would, so a test can prove what a half-done operation leaves behind.

One environment variable names the checkpoint; unset (always, outside tests) every checkpoint
is a dictionary lookup. Shared by the polecat spawn (tests/test_spawn_repair.py) and the
molecule verbs (tests/test_molecules_crash.py); it lives here, importing nothing of vermas,
so any module may call it without an import cycle.
"""

from __future__ import annotations

import os
import signal

KILL_AT_ENV = "VERMAS_TEST_SPAWN_KILL"


def checkpoint(step: str) -> None:
    """SIGKILL this process if KILL_AT_ENV names `step`."""
    if os.environ.get(KILL_AT_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)
