"""Local engine: a ghost-lsp model folder run with plain onnxruntime + tokenizers + numpy.

No torch, transformers or optimum here: the server imports this, and those cost seconds of
start-up and hundreds of MB. The decode loop prefills the prompt once, then feeds one token
per step with the previous step's `present.*` outputs as `past_key_values.*` inputs.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import numpy as np

from ghost_lsp.engine.base import EngineError
from ghost_lsp.engine.decoder import Decoder, default_providers, session_options
from ghost_lsp.engine.kv_cache import KvCache, KvEntry
from ghost_lsp.engine.decode import Generation, Vocabulary, first_stop
from ghost_lsp.engine.healing import heal_prompt, token_bytes_table
from ghost_lsp.engine.sampling import log_softmax, token_logprob
from ghost_lsp.engine.speculative import Adapt, DecodeHooks
from ghost_lsp.engine.manifest import Manifest
from ghost_lsp.types import Candidate, SamplingParams

log = logging.getLogger(__name__)

class OnnxEngine:
    """The Engine protocol over a local model folder (see ghost_lsp/engine/manifest.py).

    One generate() at a time: calls are serialised by a lock (the server runs them on an
    executor thread; two concurrent sessions would only fight over the same cores).
    """

    def __init__(self, model_dir: str | Path, providers: list[str] | None = None, *,
                 intra_op_threads: int | None = None, token_healing: bool = True,
                 reuse_kv: bool = True, kv_entries: int = 4, kv_max_bytes: int = 64 << 20,
                 graph_optimization: str = "all"):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.path = Path(model_dir)
        if not self.path.is_dir():
            raise EngineError(f"{self.path}: model folder not found")
        try:
            self.manifest = Manifest.load(self.path)
        except ValueError as e:
            raise EngineError(str(e)) from None
        self.model_id = self.manifest.model_id
        onnx_path = self.path / self.manifest.onnx
        tok_path = self.path / self.manifest.tokenizer
        if not onnx_path.is_file():
            raise EngineError(f"{onnx_path}: ONNX model file missing")
        try:
            self.tokenizer = Tokenizer.from_file(str(tok_path))
        except Exception as e:  # noqa: BLE001 - tokenizers raises bare Exception subclasses
            raise EngineError(f"{tok_path}: unreadable tokenizer: {e}") from None

        opts = session_options(intra_op_threads, graph_optimization)
        opts.log_severity_level = 3  # ORT's own warnings would go to stderr unformatted
        providers = providers or default_providers()
        try:
            session = ort.InferenceSession(str(onnx_path), opts, providers=providers)
        except Exception as e:  # noqa: BLE001 - ORT raises its own exception types per failure
            raise EngineError(f"{onnx_path}: cannot load ONNX model: {e}") from None
        self.provider = session.get_providers()[0]
        self.decoder = Decoder(session, str(onnx_path))
        log.info("loaded %s from %s on %s (%d intra-op threads)", self.model_id, self.path,
                 self.provider, opts.intra_op_num_threads)

        size = self.decoder.vocab_size or self.tokenizer.get_vocab_size(with_added_tokens=True)
        self.token_bytes, special = token_bytes_table(self.tokenizer, size)
        self.token_bytes = self.token_bytes[:size]
        self.eos_id = self.tokenizer.token_to_id(self.manifest.eos_token)
        # Control tokens (FIM markers, pad) must never be generated; ids past the tokenizer's
        # vocabulary (padded embedding rows) are not text at all.
        banned = np.zeros(size, dtype=bool)
        banned[[i for i in special if i < size]] = True
        banned[self.tokenizer.get_vocab_size(with_added_tokens=True):] = True
        self.vocab = Vocabulary(self.token_bytes, banned, self.eos_id, healing=token_healing)
        # FIM prompts are healed at the cursor (before <fim_suffix>), not at <fim_middle>
        self._fim_ids = ((self.tokenizer.token_to_id(self.manifest.fim_suffix),
                          self.tokenizer.token_to_id(self.manifest.fim_middle)) if self.manifest.fim else (None, None))
        self.reuse_kv = reuse_kv
        self.kv_cache = KvCache(kv_entries if reuse_kv else 0, kv_max_bytes)
        self._lock = threading.Lock()

    # -- tokens ---------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

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
        budget = max(1, ctx - max_new)
        if len(ids) > budget:
            ids = ids[-budget:]  # safety net: the prompt stage should have budgeted already
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
            if tok == self.eos_id:
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
                if params.stop_check is not None and self._stop_check(params.stop_check, text):
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

    @staticmethod
    def _stop_check(check, text: str) -> bool:
        try:
            return bool(check(text))
        except Exception:  # noqa: BLE001 - a broken hook must not kill the generation
            log.exception("stop_check failed; ignored")
            return False

    def token_logprobs(self, prompt: str, continuation: str | list[int]) -> list[float]:
        """Log-prob of each token of `continuation` (text or token ids) given `prompt`.

        One forward pass over the full model distribution (no masks, no healing): a score,
        not a sampling trace.
        """
        with self._lock:
            p = self.encode(prompt)
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
