"""The filters run in order (`apply_filters`), while decoding (`StopCheck`, early_stop.py), and the
deduplication of candidates."""

from __future__ import annotations

import logging
from typing import Callable, Sequence

from ghost_lsp.completion.filters.confidence import confidence, trivial
from ghost_lsp.completion.filters.cycles import cycle
from ghost_lsp.completion.filters.early_stop import StopCheck  # noqa: F401 - the filters' decode-time check
from ghost_lsp.completion.filters.overlap import bracket_balance, suffix_overlap
from ghost_lsp.completion.filters.structure import end_of_block, end_of_line, indentation, max_lines
from ghost_lsp.completion.filters.syntax import syntax_check
from ghost_lsp.settings.filters import FilterSettings
from ghost_lsp.types import Candidate, Context

log = logging.getLogger(__name__)


Rule = Callable[[str, Context], tuple[str, str | None]]


def _rules(s: FilterSettings, multiline: bool, candidate: Candidate | None) -> list[tuple[str, Rule]]:
    rules: list[tuple[str, Rule]] = []
    if s.indent:
        rules.append(("indent", indentation))
    if s.cycle:
        rules.append(("cycle", lambda t, c: cycle(t, c, s.line_similarity, s.recurring)))
    if multiline:
        if s.end_of_block:
            rules.append(("end_of_block", end_of_block))
        rules.append(("max_lines", lambda t, c: max_lines(t, c, s.max_lines)))
    else:
        rules.append(("end_of_line", end_of_line))
    if s.suffix_overlap:
        rules.append(("suffix_overlap", suffix_overlap))
    if s.bracket_balance:
        rules.append(("bracket_balance", bracket_balance))
    if s.syntax:
        rules.append(("syntax", syntax_check))
    if s.confidence:
        rules.append(("confidence", lambda t, c: confidence(t, c, candidate, s.min_mean_logprob,
                                                              s.min_token_logprob, s.min_cum_logprob)))
    if s.trivial:
        rules.append(("trivial", lambda t, c: trivial(t, c, s.min_chars)))
    else:
        rules.append(("empty", lambda t, c: (t.rstrip(), None) if t.strip() else ("", "empty")))
    return rules


def apply_filters(text: str, ctx: Context, *, multiline: bool, settings: FilterSettings | None = None,
                  candidate: Candidate | None = None) -> tuple[str, list[str]]:
    """Run the enabled rules in order; return the kept text ('' = drop) and every cut's reason.

    CRLF documents: rules see '\\n' only; the kept text comes back with the document's '\\r\\n'.
    """
    s = settings or FilterSettings()
    crlf = "\r\n" in ctx.prefix or "\r\n" in ctx.suffix
    if crlf or "\r\n" in text:
        ctx = Context(ctx.prefix.replace("\r\n", "\n"), ctx.suffix.replace("\r\n", "\n"), ctx.path,
                      ctx.language, ctx.snippets)
        text = text.replace("\r\n", "\n")
    reasons: list[str] = []
    for name, rule in _rules(s, multiline, candidate):
        try:
            text, why = rule(text, ctx)
        except Exception:  # noqa: BLE001 - one broken rule must not fail the completion
            log.exception("filter rule %s failed; skipped", name)
            continue
        if why:
            reasons.append(why)
        if not text.strip():
            text = ""
            if not any(r in reasons for r in ("empty", "too_short", "already_typed")) and \
                    why not in ("bracket_balance", "syntax", "low_confidence"):
                reasons.append("empty")
            break
    if crlf:
        text = text.replace("\n", "\r\n")
    return text, reasons


def dedupe(texts: Sequence[str]) -> list[int]:
    """Indices of the first occurrence of each distinct non-empty text."""
    seen, out = set(), []
    for i, t in enumerate(texts):
        if t and t not in seen:
            seen.add(t)
            out.append(i)
    return out
