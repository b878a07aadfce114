"""Prometheus metrics of the model server (one registry per server, so tests can run several)."""

from __future__ import annotations

import collections
import threading
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ghost_lsp.serving.batcher import Stats

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class Metrics(Stats):
    def __init__(self, target_utilisation: float, window_s: float = 10.0):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("ghost_serve_requests", "HTTP completion requests by outcome", ["status"], registry=r)
        self.rejected = Counter("ghost_serve_rejected", "requests refused before running", ["reason"], registry=r)
        self.latency = Histogram("ghost_serve_request_seconds", "completion request latency (to the last byte)",
                                 buckets=_LATENCY_BUCKETS, registry=r)
        self.refusal = Histogram("ghost_serve_refusal_seconds",
                                 "request arrival to a refusal (400/401/413/429/503), measured in the server",
                                 buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1), registry=r)
        self.ttft = Histogram("ghost_serve_time_to_first_token_seconds", "submit to first generated token",
                              buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("ghost_serve_queue_depth", "sequences waiting to be admitted", registry=r)
        self.active = Gauge("ghost_serve_active_sequences", "sequences in the running batch", registry=r)
        self.batch_size = Histogram("ghost_serve_batch_size", "rows per decode step", buckets=_BATCH_BUCKETS,
                                    registry=r)
        self.step_seconds = Histogram("ghost_serve_decode_step_seconds", "one batched decode step",
                                      buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1), registry=r)
        self.tokens = Counter("ghost_serve_generated_tokens", "tokens generated", registry=r)
        self.prompt_tokens = Counter("ghost_serve_prompt_tokens", "prompt tokens prefilled", registry=r)
        self.tokens_per_s = Gauge("ghost_serve_tokens_per_second", "generated tokens per second, recent window",
                                  registry=r)
        self.utilisation = Gauge("ghost_serve_utilisation",
                                 "share of recent wall time the model was running (0..1); the HPA target",
                                 registry=r)
        self.target = Gauge("ghost_serve_target_utilisation", "configured utilisation target", registry=r)
        self.target.set(target_utilisation)
        self._window = window_s
        self._recent: collections.deque[tuple[float, int]] = collections.deque()
        self._lock = threading.Lock()

    # -- Stats hooks (scheduler thread) ---------------------------------------------------

    def batch(self, size: int, seconds: float, tokens: int) -> None:
        self.batch_size.observe(size)
        self.step_seconds.observe(seconds)
        self._count(tokens)

    def prefill(self, tokens: int, seconds: float) -> None:
        self.prompt_tokens.inc(tokens)
        self._count(1)  # the prefill also yields each sequence's first token

    def queue(self, depth: int, active: int) -> None:
        self.queue_depth.set(depth)
        self.active.set(active)

    def _count(self, n: int) -> None:
        now = time.monotonic()
        self.tokens.inc(n)
        with self._lock:
            self._recent.append((now, n))
            while self._recent and self._recent[0][0] < now - self._window:
                self._recent.popleft()
            self.tokens_per_s.set(sum(k for _, k in self._recent) / self._window)

    def refresh(self, utilisation: float) -> None:
        """Called before each scrape: decay the windowed gauges even when idle."""
        self.utilisation.set(utilisation)
        self._count(0)
