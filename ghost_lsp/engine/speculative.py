"""Prompt-lookup speculative decoding, and the per-generation hooks the ONNX decode loop calls.

Drafts: when the last few tokens occurred earlier in the prompt (or the generation so far), the
tokens that followed there are proposed; failing that, the workspace n-gram cache's majority
continuation (engine/ngram.py). No second model.

Verification without a second decoding rule: `Stepper.step(tok)` feeds the token the loop just
chose together with the draft after it, in one forward pass (Decoder.run returns logits for
every fed position). The loop then chooses its next token from the first row exactly as it
would have (same masks, penalties, rng draw); if that token is the first draft token, the next
row is already there and no model call is made, and so on. At the first disagreement the drafted
positions are cut from the KV cache (truncate_past) and the chosen token is fed as usual. So the
accepted prefix is the longest one the decoding rule agrees with, by construction, whatever the
rule (greedy, seeded sampling, penalties, token healing, the n-gram mix).

Numerics: a multi-token pass computes the same function as one-token passes, but not the same
floating-point operations. In fp32 the difference is rounding (~1e-6). Dynamically quantized int8
models choose one activation scale per pass, so rows shift by up to ~0.2 in logits and a near-tie
can flip; `ghost-lsp eval ngram` reports how often outputs differ on held-out code.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ghost_lsp.engine.ngram import MixStats, NgramModel

log = logging.getLogger(__name__)


def prompt_lookup(context: list[int], max_tokens: int, ngram_sizes: tuple[int, ...] = (3, 2)) -> list[int]:
    """Tokens that followed the most recent earlier occurrence of the last n tokens (largest n
    first); [] when the tail never occurred before."""
    if max_tokens <= 0 or len(context) < 2:
        return []
    arr = np.asarray(context, dtype=np.int64)
    for n in ngram_sizes:
        if len(arr) <= n:
            continue
        tail = arr[-n:]
        # windows starting at 0..len-n-1 (the tail itself excluded)
        win = np.lib.stride_tricks.sliding_window_view(arr[:-1], n)
        hits = np.flatnonzero((win == tail).all(axis=1))
        if len(hits):
            start = int(hits[-1]) + n
            out = arr[start:start + max_tokens].tolist()
            if out:
                return out
    return []


@dataclass
class Adapt:
    """Per-request decoding adaptation, built by the completer from the settings.

    `ngrams` None: no interpolation (drafts then come from the prompt alone).
    `draft_tokens` 0: no speculative drafts.
    """

    ngrams: NgramModel | None = None
    draft_tokens: int = 0
    # (context, n) -> up to n draft tokens; None = prompt lookup, then the n-gram cache.
    drafter: Callable[[list[int], int], list[int]] | None = None


class Stepper:
    """Feeds chosen tokens to the decoder, verifying drafted continuations in the same pass."""

    def __init__(self, decoder, past: dict, context: list[int],
                 drafter: Callable[[list[int], int], list[int]] | None = None, max_draft: int = 0,
                 max_len: int = 1 << 30):
        self.decoder, self.past = decoder, past
        self.context = list(context)  # committed tokens: the KV cache holds these, then `ahead`
        self.ahead: list[tuple[int, np.ndarray]] = []  # (drafted token, logits after it), fed already
        self.drafter = drafter if max_draft > 0 else None
        self.max_draft, self.max_len = max_draft, max_len
        self.calls = self.drafted = self.accepted = 0
        self.model_s = 0.0  # time inside the model's runs: the rest of a decode step is pipeline

    def _run(self, ids: list[int]) -> np.ndarray:
        t = time.perf_counter()
        out, self.past = self.decoder.run(ids, self.past)
        self.model_s += time.perf_counter() - t
        self.calls += 1
        return out

    def step(self, tok: int, useful: int | None = None) -> np.ndarray:
        """Append `tok`; return the model's logits after it. `useful`: how many more tokens the
        caller may still need logits for (drafts beyond that would be wasted work)."""
        self.context.append(tok)
        if self.ahead:
            if self.ahead[0][0] == tok:
                self.accepted += 1
                return self.ahead.pop(0)[1]
            # The rule chose otherwise: the drafted positions leave the cache.
            self.past = self.decoder.truncate_past(self.past, len(self.context) - 1)
            self.ahead = []
        draft: list[int] = []
        if self.drafter is not None:
            room = min(self.max_draft, self.max_len - len(self.context))
            if useful is not None:
                room = min(room, useful)
            if room > 0:
                draft = [int(t) for t in self.drafter(self.context, room)][:room]
        out = self._run([tok] + draft)
        if draft and len(out) < len(draft) + 1:
            # A graph that returns only the last position's logits cannot verify drafts: undo
            # the pass, feed the token alone, and decode without drafts from now on.
            log.warning("the model returned %d logit rows for %d tokens: speculative drafts off", len(out),
                        len(draft) + 1)
            self.drafter = None
            self.past = self.decoder.truncate_past(self.past, len(self.context) - 1)
            out = self._run([tok])
            draft = []
        self.drafted += len(draft)
        self.ahead = list(zip(draft, out[1:len(draft) + 1]))
        return out[0]

    def finish(self) -> dict:
        """The KV cache of the committed tokens only (drafts never chosen cut off)."""
        if self.ahead:
            self.past = self.decoder.truncate_past(self.past, len(self.context))
            self.ahead = []
        return self.past


@dataclass
class DecodeHooks:
    """What the ONNX decode loop calls per step: `scores` (the n-gram mix) and `step` (feeding
    tokens, with drafts). With no adaptation both are the plain behaviour."""

    decoder: object
    past: dict
    context: list[int]
    adapt: Adapt | None = None
    max_len: int = 1 << 30
    mix_stats: MixStats = field(default_factory=MixStats)
    draft_sources: dict = field(default_factory=lambda: {"prompt": 0, "cache": 0})

    def __post_init__(self):
        a = self.adapt or Adapt()
        self.ngrams = a.ngrams
        self.stepper = Stepper(self.decoder, self.past, self.context, a.drafter or self._draft, a.draft_tokens,
                               self.max_len)

    def _draft(self, context: list[int], n: int) -> list[int]:
        d = prompt_lookup(context, n)
        if d:
            self.draft_sources["prompt"] += 1
            return d
        if self.ngrams is not None:
            d = self.ngrams.draft(context, n)
            if d:
                self.draft_sources["cache"] += 1
        return d

    def scores(self, logits: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        if self.ngrams is None:
            return logits
        return self.ngrams.mix(logits, self.stepper.context, mask, self.mix_stats)

    def step(self, tok: int, useful: int | None = None) -> np.ndarray:
        return self.stepper.step(tok, useful)

    def finish(self) -> dict:
        return self.stepper.finish()

    def info(self) -> dict:
        """Counters for Candidate.decode_info: model calls in the decode loop (prefill not
        included), drafted and accepted tokens, and what the n-gram mix did."""
        s, m = self.stepper, self.mix_stats
        out = {"decode_calls": s.calls, "model_ms": round(s.model_s * 1000, 3), "draft_tokens": s.drafted, "draft_accepted": s.accepted,
               "drafts_from_prompt": self.draft_sources["prompt"], "drafts_from_cache": self.draft_sources["cache"]}
        if self.ngrams is not None:
            out.update(ngram_steps=m.steps, ngram_matched=m.matched, ngram_changed=m.changed,
                       ngram_mean_lambda=round(m.lambda_sum / m.matched, 4) if m.matched else 0.0)
        return out
