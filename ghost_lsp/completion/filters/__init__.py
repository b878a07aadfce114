"""Post-processing of a generated candidate: one small pure function per rule.

A rule takes the candidate text and the `Context` and returns (kept text, reason or None);
`apply_filters` runs the enabled rules in a fixed order and collects every cut's reason, which
is counted and logged with the suggestion. Rules never raise on odd input: a rule that fails
is logged and skipped (one broken rule must not fail a completion).

Reasons: cycle, end_of_line, end_of_block, max_lines, suffix_overlap, bracket_balance, syntax,
low_confidence, empty, too_short, already_typed.

`StopCheck` runs the cycle and block rules while the engine decodes, so a looping candidate
stops early instead of spending its whole token budget on text the filters would cut.
"""

from ghost_lsp.completion.filters.confidence import confidence, kept_token_logprobs, trivial
from ghost_lsp.completion.filters.cycles import cycle, recurring, repeated_lines, repeated_ngram, repeated_span
from ghost_lsp.completion.filters.lexical import Scanner, code_mask
from ghost_lsp.completion.filters.overlap import bracket_balance, suffix_overlap
from ghost_lsp.completion.filters.pipeline import StopCheck, apply_filters, dedupe
from ghost_lsp.completion.filters.structure import end_of_block, end_of_line, indentation, max_lines
from ghost_lsp.completion.filters.syntax import syntax_check
from ghost_lsp.settings.filters import ALL_OFF, FilterSettings

__all__ = ["ALL_OFF", "FilterSettings", "Scanner", "StopCheck", "apply_filters", "bracket_balance", "code_mask",
           "confidence", "cycle", "dedupe", "end_of_block", "end_of_line", "indentation", "kept_token_logprobs",
           "max_lines", "recurring", "repeated_lines", "repeated_ngram", "repeated_span", "suffix_overlap",
           "syntax_check", "trivial"]
