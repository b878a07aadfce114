"""Paired comparison of two models on the same items: mean difference and a bootstrap CI."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Paired:
    n: int
    mean_a: float
    mean_b: float
    diff: float      # mean of b - a
    ci_low: float
    ci_high: float

    @property
    def significant(self) -> bool:
        return self.ci_low > 0 or self.ci_high < 0


def paired(a: list[float], b: list[float], resamples: int = 2000, level: float = 0.95, seed: int = 0) -> Paired:
    """Per-item scores of A and B on the same items; percentile bootstrap over items of mean(b - a)."""
    if len(a) != len(b):
        raise ValueError(f"paired scores need the same items ({len(a)} vs {len(b)})")
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if not len(x):
        return Paired(0, 0.0, 0.0, 0.0, 0.0, 0.0)
    d = y - x
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(resamples, len(d)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return Paired(len(d), float(x.mean()), float(y.mean()), float(d.mean()), float(lo), float(hi))
