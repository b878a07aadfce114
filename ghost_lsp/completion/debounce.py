"""The adaptive debounce: how long to wait for more typing before running the model. Runs no
model; clock-injected, so it is tested without a server."""

from __future__ import annotations

import time
from collections.abc import Callable


class Debouncer:
    """How long to wait before running the model for a document, from the typing pace and
    how long the model has been taking.

    Waiting only pays when the next key would arrive before the answer: then a short wait
    lets that key supersede this request instead of both running (a burst costs one
    inference). When the model answers well within the usual gap between keys, or after a
    pause, there is nothing to coalesce: no wait. Mid-burst waits are about 0.4 of the gap,
    between `base_ms` and twice that; without history, `base_ms`.
    """

    def __init__(self, base_ms: float, *, burst_ms: float = 150.0, pause_ms: float = 1000.0,
                 clock: Callable[[], float] = time.monotonic):
        self.base_ms, self.burst_ms, self.pause_ms = base_ms, burst_ms, pause_ms
        self._clock = clock
        self._last: dict[str, float] = {}
        self._gap: dict[str, float] = {}  # exponential moving average of the gap, ms
        self.inference_ms: float | None = None  # moving average of model time per request

    def note_inference(self, ms: float) -> None:
        self.inference_ms = ms if self.inference_ms is None else 0.7 * self.inference_ms + 0.3 * ms

    def delay_ms(self, uri: str) -> float:
        now = self._clock()
        last = self._last.get(uri)
        self._last[uri] = now
        if len(self._last) > 256:
            oldest = min(self._last, key=self._last.get)
            self._last.pop(oldest)
            self._gap.pop(oldest, None)
        if self.base_ms <= 0:
            return 0.0
        if last is None:
            return self.base_ms
        gap = (now - last) * 1000
        if gap >= self.pause_ms:
            self._gap.pop(uri, None)
            return 0.0
        avg = self._gap[uri] = 0.5 * gap + 0.5 * self._gap.get(uri, gap)
        if self.inference_ms is not None and avg > 1.5 * self.inference_ms:
            return 0.0  # the answer comes before the next key
        if avg < self.burst_ms:
            return min(max(self.base_ms, 0.4 * avg), 2 * self.base_ms)
        return self.base_ms
