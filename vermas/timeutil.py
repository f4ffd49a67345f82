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
    dt = datetime.fromtimestamp(ts, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), ts


def parse(value: str) -> float:
    """Epoch seconds of an RFC 3339 string; raises ValueError on anything else."""
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()
