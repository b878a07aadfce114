"""The decode loop of an engine whose model runs in this process, whatever runs the model: the
ONNX engine (onnx.py, over decoder.Decoder) and the llama.cpp engine (llamacpp.py, over a
llama.cpp context) share it, so both give the same Candidate (token healing, masks, sampling,
stop sequences, cancel and deadline, per-token log-probs, the n-gram mix) and their output goes
through the same filters.

A subclass sets `manifest`, `vocab` (decode.Vocabulary), `token_bytes`, `eos_id`, `_fim_ids`,
`reuse_kv`, `_lock`, `encode`, a `decoder` (run(ids, past, last_only) -> (logit rows, past),
empty_past(), truncate_past(past, n)) and a `kv_cache` (lookup(ids), put(...), the counters of
kv_cache.KvCache).
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np

from ghost_lsp.engine.base import EngineError
from ghost_lsp.engine.decode import Generation, first_stop, stop_check_fires
from ghost_lsp.engine.healing import heal_prompt
from ghost_lsp.engine.kv_cache import KvEntry
from ghost_lsp.engine.sampling import log_softmax, token_logprob
from ghost_lsp.engine.speculative import Adapt, DecodeHooks
from ghost_lsp.types import Candidate, SamplingParams

log = logging.getLogger(__name__)


class LocalModel:
    """Generation over a decoder and its KV cache. One generate() at a time: calls are
    serialised by a lock (the server runs them on an executor thread; two concurrent sessions
    would only fight over the same cores)."""

    bos_ids: list[int] = []  # put before every prompt (a GGUF model that asks for its BOS token)

    def count_tokens(self, text: str) -> int:
        return len(self.encode(text))

    # -- generation -----------------------------------------------------------------------

    def _prefill(self, ids: list[int]) -> tuple[np.ndarray, dict[str, np.ndarray], KvEntry | None, int]:
        """Run the prompt, reusing the cached KV of the longest shared token prefix (cut at
        the first differing token). Returns (last logits, cache, the entry used, tokens reused).

        A prompt that ends where a cached entry kept logits (an identical prompt, e.g. the next
        candidate) runs nothing: dynamic int8 picks activation scales per call, so re-running
        even one token would shift the logits and break seeded repeats.
        """
        cache = self.kv_cache
        base, common = cache.lookup(ids) if self.reuse_kv else (None, 0)
        if base is not None and common == len(ids) and common in base.marks:
            cache.hits += 1
            cache.reused_tokens += common
            past = base.past if len(base.ids) == common else self.decoder.truncate_past(base.past, common)
            return base.marks[common], past, base, common
        common = min(common, len(ids) - 1)  # at least one token must run to get logits
        if common > 0:
            cache.hits += 1
            logits, present = self.decoder.run(ids[common:], self.decoder.truncate_past(base.past, common),
                                               last_only=True)
        else:
            cache.misses += 1
            logits, present = self.decoder.run(ids, self.decoder.empty_past(), last_only=True)
        cache.reused_tokens += common
        cache.run_tokens += len(ids) - common
        return logits[-1], present, base, common

    def generate(self, prompt: str, params: SamplingParams, cancel: threading.Event | None = None,
                 deadline: float | None = None, *, cache_key: str | None = None,
                 adapt: Adapt | None = None) -> Candidate:
        """Generate one continuation (see Engine.generate).

        The prompt's last token(s) are re-chosen by the model (token healing); the returned
        text starts right after the prompt. `token_ids`/`logprobs` are every generated token,
        so the first ones may re-spell the healed prompt tail. `cache_key` (e.g. the document)
        names the KV-cache slot this call's prompt + generated tokens are kept in. `adapt`
        (engine/speculative.py) mixes in the workspace n-gram cache and turns on drafts.
        """
        with self._lock:
            return self._generate(prompt, params, cancel, deadline, cache_key, adapt)

    def _generate(self, prompt, params, cancel, deadline, cache_key=None, adapt=None) -> Candidate:
        t0 = time.perf_counter()
        ctx = self.manifest.context_length
        max_new = max(0, int(params.max_new_tokens))
        ids = self.encode(prompt)
        budget = max(1, ctx - max_new - len(self.bos_ids))
        if len(ids) > budget:
            ids = ids[-budget:]  # safety net: the prompt stage should have budgeted already
        ids = self.bos_ids + ids
        prompt_ids, healed = heal_prompt(ids, self.token_bytes, self._fim_ids) if self.vocab.healer else (ids, b"")
        if not prompt_ids:
            if self.eos_id is None:
                return Candidate(text="", finish_reason="length")
            prompt_ids = [self.eos_id]  # an empty prompt starts like a new document
        cand = Candidate(text="", prompt_tokens=len(ids))
        if max_new == 0:
            return cand

        logits, past, base, reused = self._prefill(prompt_ids)
        t1 = time.perf_counter()
        cand.prefill_ms = (t1 - t0) * 1000
        log.debug("kv cache: reused %d of %d prompt tokens", reused, len(prompt_ids))
        # Logits kept with the cache: the prompt end (the next candidate starts there) and,
        # below, the end of what was fed (a user typing the suggestion lands there).
        marks = {m: v for m, v in base.marks.items() if m <= reused} if base is not None else {}
        marks[len(prompt_ids)] = logits
        fed = list(prompt_ids)
        hooks = DecodeHooks(self.decoder, past, fed, adapt, ctx)  # n-gram mix and drafts

        gen = Generation(self.vocab, healed, params.seed)
        stops = [s for s in params.stop if s]
        # Re-spelling the healed tail costs steps the caller did not budget for.
        max_steps = max_new + (len(ids) - len(prompt_ids))  # room to re-spell the healed tail
        text, reason = "", "length"
        step_s = 0.0  # moving average of one decode step: stop before a step would pass the deadline
        for step in range(max_steps):
            if cancel is not None and cancel.is_set():
                reason = "cancelled"
                break
            if deadline is not None and time.monotonic() + step_s >= deadline:
                reason = "deadline"
                break
            mask = gen.mask()
            scores = hooks.scores(logits, mask)
            tok, lp = gen.choose(scores, mask, params)
            if tok in self.vocab.end_ids:
                reason = "eos"
                break
            cand.token_ids.append(tok)
            cand.logprobs.append(lp)
            if params.temperature > 0.0:  # the ranker wants the model's own view, not the sampler's
                model_lp = token_logprob(np.where(mask, scores, -np.inf), tok)
            else:
                model_lp = lp
            cand.model_logprobs.append(model_lp)
            if gen.take(tok):
                searched = len(text)  # the text so far had no stop sequence in it
                text = gen.text()
                cut = first_stop(text, stops, searched)
                if cut >= 0:
                    text = text[:cut]
                    # Drop tokens that begin inside or after the stop sequence.
                    n_keep = gen.tokens_before(text)
                    del cand.token_ids[n_keep:], cand.logprobs[n_keep:], cand.model_logprobs[n_keep:]
                    reason = "stop"
                    break
                if params.stop_check is not None and stop_check_fires(params.stop_check, text):
                    reason = "early_stop"
                    break
            if step + 1 >= max_steps:
                break
            if len(fed) + 1 > ctx:
                break  # context window full
            ts = time.perf_counter()
            logits = hooks.step(tok, max_steps - step - 2)
            fed.append(tok)
            dt = time.perf_counter() - ts
            step_s = dt if step_s == 0.0 else 0.7 * step_s + 0.3 * dt
        past = hooks.finish()
        cand.decode_info = hooks.info()
        if self.reuse_kv:
            marks[len(fed)] = logits
            keep_marks = dict(sorted(marks.items())[-4:])
            self.kv_cache.put(cache_key, fed, past, keep_marks, base=base)
        cand.text = text
        cand.offsets = gen.offsets(len(cand.token_ids))
        cand.finish_reason = reason
        cand.decode_ms = (time.perf_counter() - t1) * 1000
        return cand

    def token_logprobs(self, prompt: str, continuation: str | list[int]) -> list[float]:
        """Log-prob of each token of `continuation` (text or token ids) given `prompt`.

        One forward pass over the full model distribution (no masks, no healing): a score,
        not a sampling trace.
        """
        with self._lock:
            p = self.bos_ids + self.encode(prompt)
            c = list(continuation) if not isinstance(continuation, str) else self.encode(continuation)
            if not c:
                return []
            if not p:
                p = [self.eos_id] if self.eos_id is not None else []
            ids = (p + c)[-self.manifest.context_length:]
            n_prompt = len(ids) - len(c)
            if n_prompt < 1:
                raise EngineError("continuation does not fit the context window with a prompt")
            logits, _ = self.decoder.run(ids, self.decoder.empty_past())
            lp = log_softmax(logits[n_prompt - 1:-1])
            return [float(lp[i, t]) for i, t in enumerate(c)]
