"""Rules on a candidate's own worth: the model's confidence in its tokens, and trivial text
(empty, whitespace, too short, already typed)."""

from __future__ import annotations

import logging

from ghost_lsp.settings.filters import MIN_CHARS, MIN_CUM_LOGPROB, MIN_MEAN_LOGPROB, MIN_TOKEN_LOGPROB
from ghost_lsp.types import Candidate, Context


log = logging.getLogger(__name__)


def kept_token_logprobs(candidate: Candidate, kept_len: int) -> list[float]:
    """Model log-probs of the tokens that start inside the kept text (all when offsets are unknown)."""
    lps = candidate.model_logprobs or candidate.logprobs
    if candidate.offsets and len(candidate.offsets) == len(lps):
        return [lp for lp, off in zip(lps, candidate.offsets) if off < max(1, kept_len)]
    return list(lps)


def confidence(text: str, ctx: Context, candidate: Candidate | None, min_mean: float = MIN_MEAN_LOGPROB,
               min_token: float = MIN_TOKEN_LOGPROB, min_cum: float = MIN_CUM_LOGPROB) -> tuple[str, str | None]:
    """Shorten before the first token the model found very unlikely (log-prob < min_token; at
    that line's start when it is not the first line), or where the log-prob of the whole text so
    far falls under min_cum (on the first line, at that token: ghost text is worth showing only
    as far as the model is likely to be right); then drop the rest if the mean log-prob of its
    tokens is under min_mean. Without log-probs (remote engines may not send them) it passes."""
    if candidate is None or not (candidate.model_logprobs or candidate.logprobs):
        return text, None
    lps = candidate.model_logprobs or candidate.logprobs
    reason = None
    if candidate.offsets and len(candidate.offsets) == len(lps):
        cum = 0.0
        for lp, off in zip(lps, candidate.offsets):
            if off >= len(text):
                break
            cum += lp
            if (lp < min_token or cum < min_cum) and off > 0:
                nl = text.rfind("\n", 0, off)
                cut = nl if nl >= 0 else off
                text, reason = text[:cut].rstrip(), "low_confidence"
                break
            if lp < min_token or cum < min_cum:
                return "", "low_confidence"
    kept = kept_token_logprobs(candidate, len(text))
    if kept and sum(kept) / len(kept) < min_mean:
        return "", "low_confidence"
    return text, reason


# -- trivial -------------------------------------------------------------------------------------


def trivial(text: str, ctx: Context, min_chars: int = MIN_CHARS) -> tuple[str, str | None]:
    """Drop what is empty, only whitespace, too short to be worth showing, or already typed."""
    text = text.rstrip()  # ghost text ending in blank lines or spaces moves the cursor somewhere odd
    if not text.strip():
        return "", "empty"
    if len(text.strip()) < min_chars:
        return "", "too_short"
    if ctx.suffix.lstrip().startswith(text.strip()):
        return "", "already_typed"
    return text, None
