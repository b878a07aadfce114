"""Rules against the text after the cursor: a candidate that re-types the suffix, or leaves
its brackets unbalanced against it."""

from __future__ import annotations

import logging

from ghost_lsp.completion.filters.lexical import (_cut_points, _norm, Scanner, _substantial, _SUFFIX_WINDOW,
                                                  _top_level_start)
from ghost_lsp.languages import language_of
from ghost_lsp.settings.filters import MAX_LINES
from ghost_lsp.types import Context


log = logging.getLogger(__name__)


_CLOSING_PUNCT = set(")]}>\"'`;:,.")


def suffix_overlap(text: str, ctx: Context) -> tuple[str, str | None]:
    """Drop the part of the suggestion that the text after the cursor already holds.

    Rest of the cursor's line: the longest end of the suggestion's first line that the rest of
    line starts with, if that is the whole rest or only closing brackets/quotes/punctuation
    (typical: the editor auto-inserted ')' or '"]'). Later lines: a tail of the suggestion that
    repeats the lines right after the cursor's line.
    """
    rest = ctx.suffix.split("\n", 1)[0]
    if rest.strip():
        first = text.split("\n", 1)[0].rstrip()
        r = rest.strip()
        for k in range(min(len(r), len(first)), 0, -1):
            if first.endswith(r[:k]) and (k == len(r) or set(r[:k]) <= _CLOSING_PUNCT):
                return first[:-k].rstrip() if k == len(r) else first[:-k], "suffix_overlap"
        return text, None
    # the lines following the cursor's line
    after = [l for l in ctx.suffix.split("\n")[1:] if l.strip()][:MAX_LINES]
    if not after:
        return text, None
    lines = text.split("\n")
    after_n = [_norm(l) for l in after]
    for j in range(1, len(lines)):
        tail = [_norm(l) for l in lines[j:] if l.strip()]
        if not tail or not any(_substantial(t) for t in tail):
            continue
        if len(tail) <= len(after_n) and tail[:-1] == after_n[:len(tail) - 1] \
                and after_n[len(tail) - 1].startswith(tail[-1]):
            return "\n".join(lines[:j]).rstrip(), "suffix_overlap"
    return text, None


def bracket_balance(text: str, ctx: Context) -> tuple[str, str | None]:
    """Keep the longest cut of the suggestion that adds no bracket or quote errors to
    prefix + suffix (string- and comment-aware); if none but the empty one, drop it."""
    syn = language_of(ctx.language)
    suffix = ctx.suffix[:_SUFFIX_WINDOW]
    # a window may begin inside a string or comment: start at its first top-level line
    after_prefix = Scanner(syn).feed(ctx.prefix[_top_level_start(ctx.prefix):])
    base = after_prefix.copy().feed(suffix).error_kinds_at_end()
    seen: dict[tuple, tuple[int, int]] = {}

    # Both kinds are compared apart: closing the prefix's open '(' must not pay for a stray ')'.
    def errors(k: int) -> tuple[int, int]:
        s = after_prefix.copy().feed(text[:k])
        own = s.errors - after_prefix.errors
        key = s.key()
        if key not in seen:
            t = s.copy()
            t.errors = after_prefix.errors
            seen[key] = t.feed(suffix).error_kinds_at_end()
        wrong, left_open = seen[key]
        return wrong + own, left_open

    for k in _cut_points(text):
        e = errors(k)
        if e[0] <= base[0] and e[1] <= base[1]:
            if k == len(text):
                return text, None
            return text[:k].rstrip(), "bracket_balance"
    return "", "bracket_balance"
