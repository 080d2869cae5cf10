"""Small statistics for reports: percentile bootstrap intervals over questions.

Questions are the sampling unit (a held-out set is a sample of questions), so an interval says how
much an accuracy could move on another draw of as many questions. Seeded: the same scores give the
same interval.
"""

from __future__ import annotations

import random
import statistics


def bootstrap_ci(scores: list[float], *, resamples: int = 1000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``scores``; (nan, nan) for an empty list."""
    if not scores:
        return float("nan"), float("nan")
    rng = random.Random(seed)
    n = len(scores)
    means = sorted(sum(rng.choices(scores, k=n)) / n for _ in range(resamples))
    lo = means[int((1 - level) / 2 * (resamples - 1))]
    hi = means[int((1 + level) / 2 * (resamples - 1))]
    return lo, hi


def spread(values: list[float]) -> float:
    """Sample standard deviation (0 for fewer than two values)."""
    return statistics.stdev(values) if len(values) > 1 else 0.0
