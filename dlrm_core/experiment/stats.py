"""95% confidence intervals: Student's t over independent replicates (seeds).

The two-sided 97.5% quantiles of Student's t are tabulated (no SciPy dependency); between
tabulated degrees of freedom the next smaller one is used, which widens the interval slightly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# df -> t_{0.975, df}
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
         9: 2.262, 10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131,
         16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086, 25: 2.060, 30: 2.042,
         40: 2.021, 60: 2.000, 120: 1.980}  # fmt: skip
_Z975 = 1.960


@dataclass(frozen=True)
class Interval:
    """Mean of ``n`` replicates and its two-sided 95% t-interval (lo = hi = mean when n < 2).
    results.json carries it as {mean, lo, hi, n}, the wire shape of
    nodeworker.protocol.experiment_results.Interval."""

    mean: float
    lo: float
    hi: float
    n: int

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2.0

    def as_dict(self) -> dict[str, float | int]:
        return {"mean": self.mean, "lo": self.lo, "hi": self.hi, "n": self.n}


def t975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` >= 1 degrees of freedom."""
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    below = [k for k in _T975 if k <= df]
    return _T975[max(below)] if df <= 120 else _Z975


def t_interval(values: Sequence[float | None]) -> Interval | None:
    """The 95% t-interval of the finite ``values``; None when there are none."""
    xs = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not xs:
        return None
    n = len(xs)
    mean = math.fsum(xs) / n
    if n < 2:
        return Interval(mean, mean, mean, n)
    var = math.fsum((x - mean) ** 2 for x in xs) / (n - 1)
    half = t975(n - 1) * math.sqrt(var / n)
    return Interval(mean, mean - half, mean + half, n)
