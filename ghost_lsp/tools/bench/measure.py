"""What the benchmarks measure with: medians, percentiles, the peak memory of a run."""

from __future__ import annotations

import logging
import statistics
import threading

import numpy as np

log = logging.getLogger(__name__)


def _median(xs):
    return round(float(statistics.median(xs)), 3) if xs else None


def _pct(xs, q):
    return round(float(np.percentile(xs, q)), 1) if xs else None


class PeakRss:
    """Peak resident memory of this process above a baseline, sampled every 2 ms."""

    def __init__(self):
        import psutil

        self._proc = psutil.Process()
        self.base = self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)

    @property
    def mb(self) -> float:
        return round((self.peak - self.base) / 2**20, 1)
