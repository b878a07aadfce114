"""One completion the model server is generating: its parameters, its decoding state (the shared
step of engine/decode.py), its stop sequences, and the events it streams to its listener.
Called from the scheduler thread only."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ghost_lsp.engine.decode import Generation, first_stop
from ghost_lsp.engine.healing import heal_split
from ghost_lsp.engine.onnx import OnnxEngine
from ghost_lsp.engine.sampling import log_softmax

log = logging.getLogger(__name__)


@dataclass
class SeqParams:
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    logprobs: int | None = None  # top alternatives per token (OpenAI `logprobs`), None = off


@dataclass
class Event:
    """What a sequence produced since its last event. `final` carries finish_reason."""

    text: str
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]
    final: bool = False
    finish_reason: str | None = None


def _holdback(text: str, stops: list[str]) -> int:
    """Chars at the end of `text` that could still become a stop sequence (not safe to send)."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best


class Sequence:
    """One completion being generated; `emit` is called from the scheduler thread."""

    def __init__(self, engine: OnnxEngine, prompt_ids: list[int], params: SeqParams, deadline: float,
                 emit: Callable[[Event], None]):
        self.params, self.deadline, self.emit = params, deadline, emit
        self.engine = engine
        self.prompt_tokens = len(prompt_ids)
        vocab = engine.vocab
        keep, healed = heal_split(prompt_ids, vocab.token_bytes) if vocab.healer else (len(prompt_ids), b"")
        self.gen = Generation(vocab, healed, params.seed)  # the decoding state (engine/decode.py)
        self.ids = prompt_ids[:keep] or ([engine.eos_id] if engine.eos_id is not None else [])
        self.max_steps = params.max_tokens + (len(prompt_ids) - keep)
        self.stops = [s for s in params.stop if s]
        self.text = ""
        self.steps = 0
        self.completion_tokens = 0
        # per generated token (healed-tail tokens included): string, log-probs
        self.tok_text: list[str] = []
        self.tok_lp: list[float] = []
        self.tok_top: list[dict[str, float]] = []
        self.sent_chars = 0
        self.sent_tokens = 0
        self.next_token: int | None = None
        self.cancelled = False
        self.done = False
        self.submitted = time.monotonic()
        self.admitted_at: float | None = None  # prefilled and running
        self.first_token_at: float | None = None

    def cancel(self) -> None:
        self.cancelled = True  # read by the scheduler between steps

    def consume(self, logits: np.ndarray) -> bool:
        """Choose the next token from `logits`; return True when the sequence has finished."""
        mask = self.gen.mask()
        tok, lp = self.gen.choose(logits, mask, self.params)
        return self.take(tok, lp, logits, mask)

    def take(self, tok: int, lp: float, logits: np.ndarray, mask: np.ndarray) -> bool:
        """Record the chosen token (from `consume`, or from a batched choice for rows that are
        past token healing); return True when the sequence has finished."""
        eng, p = self.engine, self.params
        self.steps += 1
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()
        if tok in eng.vocab.end_ids:
            return self.finish("stop")
        visible = self.gen.take(tok)
        self.tok_text.append(eng.token_bytes[tok].decode("utf-8", "replace"))
        if p.logprobs is not None:
            self.tok_lp.append(lp)
            if p.logprobs > 0:
                lps = log_softmax(np.where(mask, logits, -np.inf))
                top = np.argpartition(-lps, p.logprobs)[:p.logprobs] if p.logprobs < len(lps) else np.arange(len(lps))
                self.tok_top.append({eng.token_bytes[int(i)].decode("utf-8", "replace"): float(lps[i])
                                     for i in top[np.argsort(-lps[top])]})
        if visible:
            self.completion_tokens += 1
            self.text = self.gen.text()
            cut = first_stop(self.text, self.stops)
            if cut >= 0:
                self.text = self.text[:cut]
                return self.finish("stop")
        if self.steps >= self.max_steps:
            return self.finish("length")
        self.next_token = tok
        self._send(final=False)
        return False

    def _send(self, final: bool, reason: str | None = None) -> None:
        safe = len(self.text) if final else len(self.text) - _holdback(self.text, self.stops)
        if not final and safe <= self.sent_chars:
            return
        offsets = self.gen.offsets()
        # Tokens that start before the end of the text sent (as OnnxEngine cuts at a stop).
        n_tok = self.gen.tokens_before(self.text[:safe])
        sl = slice(self.sent_tokens, n_tok)
        has_lp = self.params.logprobs is not None
        ev = Event(text=self.text[self.sent_chars:safe], tokens=self.tok_text[sl],
                   token_logprobs=self.tok_lp[sl] if has_lp else [],
                   top_logprobs=self.tok_top[sl] if has_lp and self.params.logprobs else [],
                   text_offset=offsets[sl] if has_lp else [], final=final, finish_reason=reason)
        self.sent_chars, self.sent_tokens = max(safe, self.sent_chars), max(n_tok, self.sent_tokens)
        try:
            self.emit(ev)
        except Exception:  # a vanished listener must not stop the batch
            log.debug("event listener failed", exc_info=True)
            self.cancelled = True

    def finish(self, reason: str) -> bool:
        if not self.done:
            self.done = True
            self._send(final=True, reason=reason)
        return True
