"""What the benchmark scripts share: percentiles and judging figures against targets."""

from __future__ import annotations

import math
from typing import Any

# (figure key, target, comparison "<=" or ">=", unit, label)
Target = tuple[str, float, str, str, str]


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def evaluate(figures: dict[str, float], targets: list[Target]) -> list[dict[str, Any]]:
    """One row per target: the figure, the target as text, and whether it passes (a missing
    or non-finite figure fails)."""
    rows = []
    for key, target, op, unit, label in targets:
        value = figures.get(key, math.nan)
        ok = bool(math.isfinite(value) and (value <= target if op == "<=" else value >= target))
        rows.append({"key": key, "label": label, "value": value, "target": f"{op} {target:g} {unit}".strip(),
                     "pass": ok})
    return rows
