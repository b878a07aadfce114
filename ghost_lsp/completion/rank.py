"""Ranking of filtered candidates: the best first.

Score of a candidate whose kept text is non-empty:

    mean model log-prob of the tokens that start inside the kept text   (length-normalised)
  + LINE_BONUS per kept line break       (more useful text, at equal confidence)
  + AGREE_BONUS per other candidate that kept the very same text         (self-consistency)
  - CUT_PENALTY per defect cut (cycle, suffix_overlap, bracket_balance, syntax, low_confidence):
    a candidate the filters had to repair is less trustworthy; end_of_line/end_of_block/max_lines
    are expected cuts and indent a tokenisation artefact, not defects.

The model log-prob is the model's own (`Candidate.model_logprobs`), not the sampler's, so
candidates drawn at different temperatures compare fairly. With a `Reranker` (a second model),
its mean log-prob of the kept text replaces the first model's.
"""

from __future__ import annotations

import logging
from typing import Protocol, Sequence

from ghost_lsp.completion.filters import kept_token_logprobs
from ghost_lsp.types import Candidate

log = logging.getLogger(__name__)

LINE_BONUS = 0.05
AGREE_BONUS = 0.1
CUT_PENALTY = 0.3
NEUTRAL_CUTS = {"end_of_line", "end_of_block", "max_lines", "indent"}
NO_LOGPROB = -5.0  # an engine that returns no log-probs: every candidate gets the same term


def mean_logprob(candidate: Candidate, kept_text: str) -> float:
    lps = kept_token_logprobs(candidate, len(kept_text))
    return sum(lps) / len(lps) if lps else NO_LOGPROB


def score(candidate: Candidate, kept_text: str, reasons: list[str], *, agree: int = 0,
          model_term: float | None = None) -> float:
    if not kept_text:
        return float("-inf")
    term = mean_logprob(candidate, kept_text) if model_term is None else model_term
    penalties = sum(CUT_PENALTY for r in reasons if r not in NEUTRAL_CUTS)
    return term + LINE_BONUS * kept_text.count("\n") + AGREE_BONUS * agree - penalties


class Reranker(Protocol):
    """A second opinion: one score per candidate text (higher is better), e.g. a mean log-prob."""

    def scores(self, prefix: str, texts: Sequence[str]) -> list[float]: ...


class ModelReranker:
    """Scores candidates by their mean token log-prob under a second model (e.g. the teacher).

    The prompt is the plain left context (no FIM markers), so any causal model folder works,
    whatever prompt format it was trained with.
    """

    def __init__(self, engine, max_prefix_chars: int = 2000):
        self.engine = engine
        self.max_prefix_chars = max_prefix_chars

    def scores(self, prefix: str, texts: Sequence[str]) -> list[float]:
        out = []
        for t in texts:
            lps = self.engine.token_logprobs(prefix[-self.max_prefix_chars:], t)
            out.append(sum(lps) / len(lps) if lps else NO_LOGPROB)
        return out


def rank(candidates: list[Candidate], kept: list[tuple[str, list[str]]], *,
         reranker: Reranker | None = None, prefix: str = "") -> list[int]:
    """Indices of candidates with a distinct non-empty kept text, best first; ties keep input
    order. Of candidates that kept the same text only the best-scoring one is listed."""
    texts = [k[0] for k in kept]
    counts: dict[str, int] = {}
    for t in texts:
        if t:
            counts[t] = counts.get(t, 0) + 1
    model_terms: dict[str, float] = {}
    if reranker is not None and counts:
        distinct = list(counts)
        try:
            model_terms = dict(zip(distinct, reranker.scores(prefix, distinct)))
        except Exception:  # noqa: BLE001 - a broken second model must not lose the suggestion
            log.exception("reranker failed; ranking by the first model only")
    best: dict[str, tuple[float, int]] = {}
    for i, (c, (t, reasons)) in enumerate(zip(candidates, kept)):
        if not t:
            continue
        sc = score(c, t, reasons, agree=counts[t] - 1, model_term=model_terms.get(t))
        if t not in best or sc > best[t][0]:
            best[t] = (sc, i)
    ordered = sorted(best.values(), key=lambda v: (-v[0], v[1]))
    return [i for _, i in ordered]
