"""Ranking of filtered candidates: the best first.

Score = mean token log-prob of the kept text's tokens (length-normalised, so long candidates are
not punished for their length) + a small bonus per kept line (more useful text) - a penalty per
cut reason (a candidate the filters had to repair is less trustworthy).
"""

from __future__ import annotations

from ghost_lsp.types import Candidate

LINE_BONUS = 0.05
CUT_PENALTY = 0.3
NEUTRAL_CUTS = {"end_of_line", "end_of_block"}  # expected cuts in normal use, not a defect


def score(candidate: Candidate, kept_text: str, reasons: list[str]) -> float:
    if not kept_text:
        return float("-inf")
    lps = candidate.logprobs
    mean_lp = sum(lps) / len(lps) if lps else -5.0
    penalties = sum(CUT_PENALTY for r in reasons if r not in NEUTRAL_CUTS)
    return mean_lp + LINE_BONUS * kept_text.count("\n") - penalties


def rank(candidates: list[Candidate], kept: list[tuple[str, list[str]]]) -> list[int]:
    """Indices of candidates with a non-empty kept text, best first; ties keep the input order."""
    scored = [(score(c, k[0], k[1]), i) for i, (c, k) in enumerate(zip(candidates, kept)) if k[0]]
    scored.sort(key=lambda t: (-t[0], t[1]))
    return [i for _, i in scored]
