"""Runs the stages for one request: context → prompt → engine → filters → rank.

Used by the LSP server and by `ghost-lsp complete` alike; knows nothing of LSP.
Inference runs on one worker thread (one inference at a time); the event loop stays free
to read messages, and a cancelled request sets the engine's cancel event so decoding
stops within one token step.
"""

from __future__ import annotations

import asyncio
from collections import Counter
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, Callable

from ghost_lsp.completion.debounce import Debouncer
from ghost_lsp.completion.forward_cache import ForwardCache
from ghost_lsp.positions import split_at
from ghost_lsp.context import ContextRequest, FanOut, gather, make_providers
from ghost_lsp.engine.ngram_index import adaptation, workspace_for
from ghost_lsp.engine.base import Engine, EngineError, LocalEngine
from ghost_lsp.settings.globs import is_excluded  # noqa: F401 - re-exported for callers
from ghost_lsp.completion.filters import StopCheck, apply_filters
from ghost_lsp.completion.prompt import build_prompt, prompt_hash
from ghost_lsp.completion.rank import ModelReranker, rank
from ghost_lsp.settings.core import Settings
from ghost_lsp.types import Candidate, Completion, CompletionRequest, SamplingParams

log = logging.getLogger(__name__)


def want_multiline(mode: str, request_multiline: bool, line_prefix: str, line_suffix: str) -> bool:
    """Multi-line when asked, or in "auto" at a fresh line or right after a block opener."""
    if mode == "always":
        return True
    if mode == "never" or not request_multiline:
        return False
    if line_suffix.strip():
        return False  # text right of the cursor: complete this line only
    stripped = line_prefix.strip()
    return stripped == "" or stripped.endswith(":")


def wants_logprobs(s: Settings) -> bool:
    """Whether candidates need the model's per-token log-probs: the confidence gate reads them,
    and the ranker compares several candidates by them unless a second model scores them."""
    return s.filters.confidence or (s.n > 1 and not s.rerank_model)


class Completer:
    """Long-lived: holds the engine, the settings and the feedback store."""

    def __init__(self, engine: Engine | None, settings: Settings, store: Any = None, index: Any = None):
        self.engine = engine
        self.settings = settings
        self.store = store
        self.variant = ""  # A/B variant name, set by the front end (feedback/ab.py)
        self.index = index  # ProjectIndex or None; the server keeps it current
        self.ngrams = None  # WorkspaceNgrams (context/ngram_index.py), made with the first local request
        self._fanout: tuple[tuple[str, ...], FanOut] | None = None
        # Documents by last completion request, most recent last: the open-files provider
        # looks at recently edited documents first.
        self._recent: dict[str, None] = {}
        # How often each filter cut a candidate, since start (also logged per suggestion).
        self.cut_counts: Counter[str] = Counter()
        # Each candidate's (kept text, cut reasons) from the latest filter stage: lets a sequential
        # caller (the evals) say which rule dropped a request's output. Not for concurrent use.
        self.last_kept: list[tuple[str, list[str]]] = []
        self._reranker: tuple[str, Any] | None = None  # (model folder, ModelReranker or None)
        # One worker: inferences are serialised and a queued one that is cancelled never runs.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ghost-infer")
        # The newest request for a document supersedes an older one still running.
        self._running: dict[str, threading.Event] = {}
        # Type-through answers, the per-document typing pace, and the newest request per
        # document (an older one still waiting out its debounce is dropped when woken).
        self.forward = ForwardCache()
        self._debouncer: Debouncer | None = None
        self._latest: dict[str, int] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._seq = 0

    def file_changed(self, path: str, deleted: bool = False) -> None:
        """A workspace file was saved, changed on disk or deleted (the server calls this)."""
        if self.ngrams is not None:
            self.ngrams.update_file(path, deleted)

    def close(self) -> None:
        if self.ngrams is not None:
            self.ngrams.stop()
        for ev in self._running.values():
            ev.set()
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- feedback, called by the front end once a suggestion is really shown/accepted ---

    def shown(self, completion: Completion, request: CompletionRequest) -> None:
        if self.store is not None and self.settings.feedback:
            self.store.record_shown(completion, request, store_prompt=self.settings.feedback_prompts)

    def event(self, suggestion_id: str, kind: str, detail: dict | None = None) -> None:
        if self.store is not None and self.settings.feedback:
            self.store.record_event(suggestion_id, kind, detail)

    # -- the pipeline ---------------------------------------------------------------------

    async def _in_worker(self, fn: Callable, cancel: threading.Event) -> Any:
        fut = asyncio.get_running_loop().run_in_executor(self._executor, fn)
        try:
            return await fut
        except asyncio.CancelledError:
            # The worker thread cannot be interrupted; the engine polls this between steps.
            cancel.set()
            raise

    async def complete(
        self, req: CompletionRequest, text: str, open_docs: dict[str, str] | None = None
    ) -> Completion | None:
        """The best suggestion for `req` in `text`, or None (disabled, excluded, no model,
        bad position, nothing worth showing). Raises only asyncio.CancelledError."""
        s, engine = self.settings, self.engine
        self.last_kept = []
        if engine is None or not s.enabled or "\x00" in text or is_excluded(req.path, s.exclude):
            return None
        if open_docs:  # an excluded file open in the editor gives the model no snippet, no n-gram either
            open_docs = {p: t for p, t in open_docs.items() if not is_excluded(p, s.exclude)}
        # A newer request makes older ones for the document stale: stop a running one now,
        # wake a waiting one so it returns at once (coalescing a burst into one inference).
        self._seq += 1
        seq = self._latest[req.uri] = self._seq
        previous = self._running.pop(req.uri, None)
        if previous is not None:
            previous.set()
        waiting = self._wake.pop(req.uri, None)
        if waiting is not None:
            waiting.set()

        if s.forward_cache:
            prefix, suffix = split_at(text, req.line, req.character)
            hit = self.forward.get(req.uri, prefix, suffix, lambda: uuid.uuid4().hex)
            if hit is not None:
                log.debug("forward-cache hit for %s", req.uri)
                return hit
        if self._debouncer is None or self._debouncer.base_ms != s.debounce_ms:
            self._debouncer = Debouncer(s.debounce_ms)
        delay = self._debouncer.delay_ms(req.uri)
        if delay > 0:
            wake = self._wake[req.uri] = asyncio.Event()
            try:
                await asyncio.wait_for(wake.wait(), delay / 1000)
                return None  # superseded while waiting
            except TimeoutError:
                pass
            finally:
                if self._wake.get(req.uri) is wake:
                    del self._wake[req.uri]
        if self._latest.get(req.uri) != seq:
            return None

        cancel = threading.Event()
        self._running[req.uri] = cancel
        try:
            return await self._complete(req, text, open_docs, engine, s, cancel)
        finally:
            if self._running.get(req.uri) is cancel:
                del self._running[req.uri]

    def fanout(self) -> FanOut:
        """The context providers the settings name (rebuilt when they change)."""
        names = tuple(self.settings.context_providers)
        if self._fanout is None or self._fanout[0] != names:
            self._fanout = (names, FanOut(make_providers(names)))
        return self._fanout[1]

    def context_request(self, req: CompletionRequest, text: str, open_docs: dict[str, str] | None) -> ContextRequest:
        key = req.path or req.uri
        self._recent.pop(key, None)
        self._recent[key] = None
        while len(self._recent) > 256:
            self._recent.pop(next(iter(self._recent)))
        docs = open_docs or {}
        # most recently requested first, then the rest in the order given
        ordered = {p: docs[p] for p in reversed(self._recent) if p in docs}
        ordered.update(docs)
        return ContextRequest(text=text, line=req.line, character=req.character, path=req.path,
                              language=req.language, open_docs=ordered, index=self.index)

    def reranker(self, s: Settings):
        """The second-model ranker the settings name (loaded once per folder), or None."""
        if not s.rerank_model:
            return None
        if self._reranker is None or self._reranker[0] != s.rerank_model:
            try:
                from ghost_lsp.engine.loading import load_local

                self._reranker = (s.rerank_model, ModelReranker(load_local(s.rerank_model)))
            except Exception as e:  # noqa: BLE001 - a bad folder leaves ranking to the first model
                log.warning("rerank_model %s cannot be loaded (%s); ranking without it", s.rerank_model, e)
                self._reranker = (s.rerank_model, None)
        return self._reranker[1]

    async def _complete(self, req, text, open_docs, engine, s: Settings, cancel) -> Completion | None:
        t0 = time.perf_counter()
        deadline = time.monotonic() + s.deadline_ms / 1000
        timings: dict[str, float] = {}

        try:
            ctx = gather(self.context_request(req, text, open_docs), self.fanout(), s.prompt_cleaner)
        except ValueError as e:
            log.debug("no context: %s", e)
            return None
        t1 = time.perf_counter()
        timings["context_ms"] = (t1 - t0) * 1000

        try:
            prompt = await self._in_worker(
                partial(build_prompt, ctx, engine.manifest, engine.count_tokens, s.max_new_tokens,
                        s.prompts or None), cancel
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("prompt stage failed")
            return None
        t2 = time.perf_counter()
        timings["prompt_ms"] = (t2 - t1) * 1000

        line_suffix = ctx.suffix.split("\n", 1)[0]
        multiline = want_multiline(s.multiline, req.multiline, ctx.current_line_prefix, line_suffix)
        adapt = None  # n-gram cache mix and speculative drafts, for the local engine
        if isinstance(engine, LocalEngine):
            self.ngrams = workspace_for(self.ngrams, engine, s, self.index)
            adapt = await self._in_worker(partial(adaptation, self.ngrams, s, req.path or req.uri, text,
                                                  open_docs or {}, req.line, req.character), cancel)
        candidates: list[Candidate] = []
        for i in range(s.n):
            if cancel.is_set() or (i > 0 and time.monotonic() >= deadline):
                break
            # The engine's KV cache makes candidates after the first cost decoding only.
            temp = s.temperatures[i] if i < len(s.temperatures) else (0.0 if i == 0 else s.temperature)
            params = SamplingParams(
                max_new_tokens=s.max_new_tokens,
                temperature=temp,
                top_p=s.top_p,
                frequency_penalty=s.frequency_penalty,
                presence_penalty=s.presence_penalty,
                stop=list(prompt.stop),
                stop_check=StopCheck(ctx, multiline, s.filters) if s.filters.early_stop else None,
                logprobs=wants_logprobs(s),
            )
            try:
                gen = partial(engine.generate, prompt.text, params, cancel, deadline)
                if isinstance(engine, LocalEngine):  # keyed KV slots: one document's typing keeps others'
                    gen = partial(gen, cache_key=req.uri, adapt=adapt)
                cand = await self._in_worker(gen, cancel)
            except asyncio.CancelledError:
                raise
            except EngineError as e:  # expected failures (a remote server down): no traceback
                log.warning("engine failed: %s", e)
                break
            except Exception:
                log.exception("engine failed")
                break
            if cand.finish_reason == "cancelled":
                return None  # superseded by a newer request for this document
            candidates.append(cand)
        t3 = time.perf_counter()
        timings["generate_ms"] = (t3 - t2) * 1000
        if candidates and self._debouncer is not None:
            self._debouncer.note_inference(timings["generate_ms"])
        timings["prefill_ms"] = sum(c.prefill_ms for c in candidates)
        timings["decode_ms"] = sum(c.decode_ms for c in candidates)
        if not candidates:
            return None

        def filter_and_rank():
            kept = [apply_filters(c.text, ctx, multiline=multiline, settings=s.filters, candidate=c)
                    for c in candidates]
            return kept, rank(candidates, kept, reranker=self.reranker(s), prefix=ctx.prefix)

        try:
            kept, order = await self._in_worker(filter_and_rank, cancel)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("filter/rank stage failed")
            return None
        t4 = time.perf_counter()
        timings["filters_ms"] = (t4 - t3) * 1000
        timings["total_ms"] = (t4 - t0) * 1000
        self.last_kept = kept
        for _, reasons in kept:
            self.cut_counts.update(reasons)
        if not order:
            log.debug("all %d candidates filtered out: %s", len(kept), [r for _, r in kept])
            return None

        best = order[0]
        log.debug("suggestion %r cut %s; candidates' cuts %s; timings %s", kept[best][0][:80], kept[best][1],
                  [r for _, r in kept], {k: round(v, 2) for k, v in timings.items()})
        completion = Completion(
            id=uuid.uuid4().hex,
            text=kept[best][0],
            candidate=candidates[best],
            cut_reasons=kept[best][1],
            alternatives=[kept[i][0] for i in order[1:]],
            timings_ms={k: round(v, 2) for k, v in timings.items()},
            prompt_template=prompt.template,
            prompt_hash=prompt_hash(prompt.text),
            model_id=engine.model_id,
            prompt=prompt.text,
            variant=self.variant,
        )
        if s.forward_cache:
            self.forward.put(req.uri, *split_at(text, req.line, req.character), completion)
        return completion
