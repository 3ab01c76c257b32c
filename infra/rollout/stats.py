"""The statistics the rollout tool reads proportions with: intervals, a test, a sample size.

All for binomial proportions (right answers among corrections, low-confidence answers
among requests), without SciPy: the normal quantiles come from `statistics.NormalDist`.

- `wilson`: the Wilson score interval of one proportion; unlike the textbook p +- z*se it
  stays inside [0, 1] and is not absurdly narrow at 0/n or n/n (Newcombe 1998, method 3).
- `newcombe`: the interval of a difference of two independent proportions from their
  Wilson intervals (Newcombe 1998, method 10, the "hybrid score" interval).
- `z_test`: the two-sided pooled two-proportion z-test's p-value.
- `per_group`: how many observations each of two equal groups needs for that test to
  detect a given difference with a given power (Fleiss, no continuity correction).
"""

from __future__ import annotations

import math
from statistics import NormalDist

_NORMAL = NormalDist()


def z_of(confidence: float) -> float:
    """The two-sided normal quantile: 1.96 for 0.95."""
    return _NORMAL.inv_cdf(0.5 + confidence / 2)


def wilson(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of successes / n (n > 0)."""
    if n <= 0:
        raise ValueError("an interval needs at least one observation")
    z = z_of(confidence)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe(k1: int, n1: int, k2: int, n2: int, confidence: float = 0.95) -> tuple[float, float]:
    """The hybrid score interval of k1/n1 - k2/n2 (both n > 0)."""
    p1, p2 = k1 / n1, k2 / n2
    low1, high1 = wilson(k1, n1, confidence)
    low2, high2 = wilson(k2, n2, confidence)
    difference = p1 - p2
    return (
        difference - math.hypot(p1 - low1, high2 - p2),
        difference + math.hypot(high1 - p1, p2 - low2),
    )


def z_test(k1: int, n1: int, k2: int, n2: int) -> float:
    """Two-sided p-value of "k1/n1 and k2/n2 are the same proportion" (pooled z-test)."""
    pooled = (k1 + k2) / (n1 + n2)
    spread = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if spread == 0:  # all successes or all failures on both sides: no difference seen
        return 1.0
    return math.erfc(abs(k1 / n1 - k2 / n2) / spread / math.sqrt(2))


def per_group(p1: float, p2: float, alpha: float, power: float) -> int:
    """Observations per group for the two-sided test at `alpha` to tell p1 from p2 with `power`."""
    if p1 == p2:
        raise ValueError("the difference to detect must not be zero")
    mean = (p1 + p2) / 2
    needed = (
        z_of(1 - alpha) * math.sqrt(2 * mean * (1 - mean))
        + _NORMAL.inv_cdf(power) * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))
    ) ** 2 / (p1 - p2) ** 2
    return math.ceil(needed)
