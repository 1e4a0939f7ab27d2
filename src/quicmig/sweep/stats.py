"""Medians with bootstrap confidence intervals (percentile method), seeded."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95
SEED = 0  # the resampling is seeded: the same runs give the same interval
CHUNK = 2_000_000  # values resampled at a time (bounds memory for groups of many runs)


def median(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("median of no values")
    return float(np.median(np.asarray(values, dtype=float)))


def bootstrap_interval(
    values: Sequence[float], level: float = LEVEL, resamples: int = RESAMPLES, seed: int = SEED
) -> tuple[float, float]:
    """The `level` percentile-bootstrap interval of the median of `values`: medians of
    `resamples` resamples drawn with replacement, and their (1-level)/2 and (1+level)/2
    quantiles."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        raise ValueError("interval of no values")
    if data.size == 1:
        return float(data[0]), float(data[0])
    rng = np.random.default_rng(seed)
    per_chunk = max(1, CHUNK // data.size)
    medians = []
    for start in range(0, resamples, per_chunk):
        count = min(per_chunk, resamples - start)
        picks = rng.integers(0, data.size, size=(count, data.size))
        medians.append(np.median(data[picks], axis=1))
    low, high = np.quantile(np.concatenate(medians), [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)
