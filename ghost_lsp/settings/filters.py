"""The filters' settings: each rule on/off and its thresholds (the `filters` settings section).

The rules themselves are in completion/filters/.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_LINES = 12
# Consecutive lines at least this similar (difflib ratio, whitespace-normalised) count as a
# loop from the third such line on: two similar lines are common in real code (x = a[0];
# y = a[1]), a run of three near-copies of a long line is what a looping model writes.
LINE_SIMILARITY = 0.9
# Confidence gate (token log-probs under the model's own distribution). Measured on the shipped
# model over held-out code with `python -m ghost_lsp.tools.evals.loops --confidence`; see README.
MIN_MEAN_LOGPROB = -3.0
MIN_TOKEN_LOGPROB = -9.0
# Ghost text is cut where the log-prob of all its tokens so far falls under this: what is shown
# is what the model is likely to have right. Chosen on the tuning set (boltons + marshmallow, 100
# lines, ghost-py-base) with `ghost-lsp eval keystrokes --grid min_cum_logprob=-0.5,-1,-2`:
# off 16.8 % keystrokes saved, 88 % shown, 2.5 % right; -2: 25.6 %, 46 %, 11 %; -1: 23.2 %, 20 %,
# 30 %; -0.5: 14.0 %, 7 %, 46 %. -1 is the most saved with shown ghost text right >= 25 %.
MIN_CUM_LOGPROB = -1.0
MIN_CHARS = 2


@dataclass(frozen=True)
class FilterSettings:
    """Each rule on/off (all on by default) and its thresholds; the `filters` settings section."""

    indent: bool = True  # drop blanks before the first word when the cursor is at an indentation
    cycle: bool = True
    recurring: bool = True  # part of cycle: the third non-adjacent copy of a line or phrase
    end_of_block: bool = True
    suffix_overlap: bool = True
    bracket_balance: bool = True
    syntax: bool = True
    confidence: bool = True
    trivial: bool = True
    early_stop: bool = True
    max_lines: int = MAX_LINES
    min_chars: int = MIN_CHARS
    line_similarity: float = LINE_SIMILARITY
    min_mean_logprob: float = MIN_MEAN_LOGPROB
    min_token_logprob: float = MIN_TOKEN_LOGPROB
    min_cum_logprob: float = MIN_CUM_LOGPROB


ALL_OFF = FilterSettings(indent=False, cycle=False, end_of_block=False, suffix_overlap=False, bracket_balance=False,
                         syntax=False, confidence=False, trivial=False, early_stop=False)
