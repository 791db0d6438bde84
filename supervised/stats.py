"""Means and Student-t confidence intervals over seeds, and paired gaps.

The interval is mean ± t_{(1+c)/2, n−1} · s / √n with s the sample standard deviation (n − 1 in the
denominator). The quantile comes from ``scipy.stats.t`` when scipy is installed, otherwise from the
table below (two-sided 95%, exact to 4 decimals for 1–30 degrees of freedom, then the next tabulated
value downwards, which makes the interval slightly wider, never narrower). The generalisation gap's
interval uses the per-seed paired differences (fresh − warm of the same seed and initialisation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["MeanCI", "mean_ci", "paired_gap", "t_quantile"]

# Two-sided 95% Student-t quantiles t_{0.975, df}.
_T975 = {
    1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764, 5: 2.5706, 6: 2.4469, 7: 2.3646, 8: 2.3060, 9: 2.2622,
    10: 2.2281, 11: 2.2010, 12: 2.1788, 13: 2.1604, 14: 2.1448, 15: 2.1314, 16: 2.1199, 17: 2.1098,
    18: 2.1009, 19: 2.0930, 20: 2.0860, 21: 2.0796, 22: 2.0739, 23: 2.0687, 24: 2.0639, 25: 2.0595,
    26: 2.0555, 27: 2.0518, 28: 2.0484, 29: 2.0452, 30: 2.0423, 40: 2.0211, 60: 2.0003, 120: 1.9799,
}  # fmt: skip


def t_quantile(df: int, confidence: float = 0.95) -> float:
    """Two-sided Student-t quantile t_{(1+confidence)/2, df}."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    try:
        from scipy.stats import t
    except ImportError:
        if abs(confidence - 0.95) > 1e-12:
            raise ImportError("confidence levels other than 0.95 need scipy (pip install scipy)") from None
        if df in _T975:
            return _T975[df]
        below = [k for k in _T975 if k <= df]
        return _T975[max(below)]
    return float(t.ppf(0.5 + confidence / 2.0, df))


@dataclass(frozen=True)
class MeanCI:
    """Mean, half-width of the confidence interval (NaN with one value), and the number of values."""

    mean: float
    half_width: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    def format(self, scale: float = 100.0, digits: int = 1) -> str:
        """``"56.2 ± 1.3"`` (values × ``scale``); ``"56.2"`` when there is no interval."""
        if math.isnan(self.half_width):
            return f"{self.mean * scale:.{digits}f}"
        return f"{self.mean * scale:.{digits}f} ± {self.half_width * scale:.{digits}f}"


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> MeanCI:
    """Mean and Student-t interval of ``values`` (independent runs, e.g. one per seed)."""
    values = [float(v) for v in values]
    n = len(values)
    if n == 0:
        raise ValueError("mean_ci needs at least one value")
    mean = sum(values) / n
    if n == 1:
        return MeanCI(mean, float("nan"), 1)
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    return MeanCI(mean, t_quantile(n - 1, confidence) * math.sqrt(variance / n), n)


def paired_gap(reference: Sequence[float], other: Sequence[float], confidence: float = 0.95) -> MeanCI:
    """Mean and interval of ``reference[i] − other[i]`` (e.g. fresh − warm test accuracy per seed)."""
    if len(reference) != len(other):
        raise ValueError(f"paired values need equal lengths, got {len(reference)} and {len(other)}")
    return mean_ci([a - b for a, b in zip(reference, other)], confidence)
