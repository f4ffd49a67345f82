"""RFC 3339 timestamps as bd writes them, plus epoch seconds for ordering.

bd wrote local time with an offset and microseconds in its SQLite era and UTC seconds in
its Dolt era; both must compare correctly, so we order by parsed epoch, never by string.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone


def now() -> tuple[str, float]:
    """The current instant as (RFC 3339 UTC string with microseconds, epoch seconds)."""
    ts = time.time()
    t = time.gmtime(ts)
    micro = int((ts % 1) * 1_000_000)
    stamp = (f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T{t.tm_hour:02d}:{t.tm_min:02d}:"
             f"{t.tm_sec:02d}.{micro:06d}Z")  # strftime costs more than the rest of a send
    return stamp, ts


def parse(value: str) -> float:
    """Epoch seconds of an RFC 3339 string; raises ValueError on anything else."""
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()
