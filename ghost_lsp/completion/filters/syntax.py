"""The syntax rule: a Python candidate must not add a syntax error to its top-level statement."""

from __future__ import annotations

import ast
import logging
import re

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


_CLAUSE = re.compile(r"(else|elif|except|finally|case)\b")


def _enclose(prefix: str, suffix: str) -> str:
    """A window that begins inside indented blocks (a long function or class body: no top-level
    line in sight) parses as code nested in `if 1:` headers, one per indentation level it dedents
    to. Without them the window's first line is an "unexpected indent", and `ast.parse`, which
    reports only the first error, then hid every error the suggestion adds further on."""
    lines = prefix.split("\n")
    start = 0
    for i, line in enumerate(lines):
        body = line.strip()
        if body and body[0] not in ")]}#" and not _CLAUSE.match(body):
            start = i
            break
    else:
        return prefix
    first = lines[start]
    indent = len(first) - len(first.lstrip(" "))
    if indent == 0 or "\t" in prefix or "\t" in suffix:
        return prefix
    levels = {0}
    for line in lines[start:] + suffix.split("\n"):
        if line.strip():
            n = len(line) - len(line.lstrip(" "))
            if n < indent:
                levels.add(n)
    header = "".join(" " * n + "if 1:\n" for n in sorted(levels))
    return header + "\n".join(lines[start:])


def _window_starts(prefix: str):
    """Where the prefix window may start: its first top-level line, then each statement-like line."""
    p0 = _top_level_start(prefix)
    yield p0
    pos = 0
    for line in prefix.split("\n"):
        body = line.strip()
        if body and body[0] not in ")]}#" and not _CLAUSE.match(body) and pos != p0:
            yield pos
        pos += len(line) + 1


def _parsable_window(prefix: str, suffix: str, tries: int = 8) -> tuple[str, int | None]:
    """(prefix region, first syntax error of region + suffix) for the region that parses past its
    own end. A window can begin inside a multi-line string (a docstring, a template) or deep in a
    block; parsed from there it fails at once, and that first error hid every later one. The
    first of a few candidate starts whose error, if any, lies after the prefix is taken."""
    first = None
    for n, start in enumerate(_window_starts(prefix)):
        if n >= tries:
            break
        region = prefix[start:]
        if start == 0 or region[:1] in (" ", "\t"):
            region = _enclose(region, suffix)
        err = _python_error(region + suffix)
        if first is None:
            first = (region, err)
        if err is None or err >= len(region):
            return region, err
    return first if first is not None else (prefix, _python_error(prefix + suffix))


def syntax_check(text: str, ctx: Context) -> tuple[str, str | None]:
    """Python: keep the longest cut of the suggestion that adds no syntax error to prefix + suffix.

    `ast.parse` reports only the first error, so an error is "new" when it lies inside the
    suggestion, or when it moves relative to where prefix + suffix alone fails.
    """
    if ctx.language != "python" or not text.strip():
        return text, None
    suffix = ctx.suffix[:_top_level_end(ctx.suffix[:_SUFFIX_WINDOW])]
    prefix, base = _parsable_window(ctx.prefix, suffix)
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
