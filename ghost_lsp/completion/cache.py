"""Request-level speed-ups that run no model: the forward (type-through) cache and the
adaptive debounce. Pure and clock-injected, so both are tested without a server."""

from __future__ import annotations

import hashlib

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace

from ghost_lsp.types import Completion


@dataclass
class _Shown:
    prefix: str
    suffix: str
    completion: Completion


class ForwardCache:
    """The last suggestion per document, to answer while the user types it.

    When the text before the cursor is the old one plus characters the suggestion predicted,
    and the text after the cursor is unchanged, the rest of the suggestion is the answer, as
    the model already said. Any other edit is a miss (the entry is replaced after the model
    runs again).
    """

    def __init__(self, max_docs: int = 64):
        self.max_docs = max_docs
        self._docs: OrderedDict[str, _Shown] = OrderedDict()
        self.hits = self.misses = 0

    def put(self, uri: str, prefix: str, suffix: str, completion: Completion) -> None:
        if not completion.text:
            return
        self._docs.pop(uri, None)
        self._docs[uri] = _Shown(prefix, suffix, completion)
        while len(self._docs) > self.max_docs:
            self._docs.popitem(last=False)

    def forget(self, uri: str) -> None:
        self._docs.pop(uri, None)

    def clear(self) -> None:
        """Drop every shown suggestion (the settings changed: another model or filters may answer)."""
        self._docs.clear()

    def get(self, uri: str, prefix: str, suffix: str, new_id: Callable[[], str]) -> Completion | None:
        shown = self._docs.get(uri)
        hit = self._match(shown, prefix, suffix)
        if hit is None:
            self.misses += 1
            return None
        self.hits += 1
        self._docs.move_to_end(uri)
        typed, c = hit, shown.completion
        alternatives = [a[len(typed):] for a in c.alternatives
                        if a.startswith(typed) and a[len(typed):].strip()]
        # The rest of the suggestion continues the old prompt plus what was typed: the feedback
        # log (and a fine-tune on it) must pair it with that prompt, not the old one.
        prompt = c.prompt + typed if c.prompt else c.prompt
        prompt_hash = hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16] if c.prompt else c.prompt_hash
        return replace(c, id=new_id(), text=c.text[len(typed):], alternatives=alternatives,
                       timings_ms={"forward_cache": 1.0}, cut_reasons=list(c.cut_reasons),
                       prompt=prompt, prompt_hash=prompt_hash)

    @staticmethod
    def _match(shown: _Shown | None, prefix: str, suffix: str) -> str | None:
        """The typed part of the suggestion, or None when the request is not a type-through."""
        if shown is None or suffix != shown.suffix or not prefix.startswith(shown.prefix):
            return None
        typed = prefix[len(shown.prefix):]
        text = shown.completion.text
        # The same position again (re-triggered, or invoked by hand) asks the model anew:
        # the KV cache makes that cheap, and the answer may have had reasons to change.
        if not typed or not text.startswith(typed) or not text[len(typed):].strip():
            return None
        return typed


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
