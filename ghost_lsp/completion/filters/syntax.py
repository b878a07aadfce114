"""The syntax rule: a Python candidate must not add a syntax error to its top-level statement."""

from __future__ import annotations

import ast
import logging

from ghost_lsp.completion.filters.lexical import _cut_points, _SUFFIX_WINDOW, _top_level_end, _top_level_start
from ghost_lsp.types import Context


log = logging.getLogger(__name__)


def _python_error(src: str) -> int | None:
    """Character offset of the first syntax error, or None when `src` parses."""
    try:
        ast.parse(src)
        return None
    except SyntaxError as e:
        line = max(1, e.lineno or 1)
        start = 0
        for _ in range(line - 1):
            nl = src.find("\n", start)
            if nl < 0:
                return len(src)
            start = nl + 1
        return min(len(src), start + max(0, (e.offset or 1) - 1))
    except (ValueError, RecursionError, MemoryError):
        return 0


def syntax_check(text: str, ctx: Context) -> tuple[str, str | None]:
    """Python: keep the longest cut of the suggestion that adds no syntax error to prefix + suffix.

    `ast.parse` reports only the first error, so an error is "new" when it lies inside the
    suggestion, or when it moves relative to where prefix + suffix alone fails.
    """
    if ctx.language != "python" or not text.strip():
        return text, None
    p0 = _top_level_start(ctx.prefix)
    prefix = ctx.prefix[p0:]
    suffix = ctx.suffix[:_top_level_end(ctx.suffix[:_SUFFIX_WINDOW])]
    base = _python_error(prefix + suffix)
    P = len(prefix)

    def adds_error(k: int) -> bool:
        e = _python_error(prefix + text[:k] + suffix)
        if e is None:
            return False
        if P <= e < P + k:
            return True
        mapped = e if e < P else e - k
        return base is None or mapped != base

    for k in _cut_points(text)[:24]:
        if not adds_error(k):
            if k == len(text):
                return text, None
            return text[:k].rstrip(), "syntax"
    return "", "syntax"
