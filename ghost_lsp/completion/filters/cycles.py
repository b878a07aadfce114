"""Cycle rules: a candidate that repeats itself (a span, an n-gram, whole lines, a recurring
line or phrase) is cut where the repetition starts."""

from __future__ import annotations

import logging
import re
from difflib import SequenceMatcher

from ghost_lsp.completion.filters.lexical import _LEX, _norm, _substantial
from ghost_lsp.settings.filters import LINE_SIMILARITY
from ghost_lsp.types import Context


log = logging.getLogger(__name__)


_PERIODIC = re.compile(r"(.{3,40}?)\1{2,}", re.S)


def repeated_span(text: str, ctx: Context) -> tuple[str, str | None]:
    """Cut a span that repeats itself three or more times in a row ("a.a.a.a", "foo(foo(foo(")."""
    for m in _PERIODIC.finditer(text):
        unit = m.group(1)
        # runs of spaces, dashes, '====' rulers or digits ('0, 0, 0') are legitimate
        if re.search(r"[^\W\d]", unit) and unit.strip():
            return text[: m.start() + len(unit)].rstrip(), "cycle"
    return text, None


def repeated_ngram(text: str, ctx: Context, max_unit: int = 16) -> tuple[str, str | None]:
    """Cut at the second copy of a run of lexical tokens repeated back to back.

    Whitespace and line breaks are ignored, so `x = f(x) x = f(x)` and the same statement on two
    lines are both caught. A unit with an identifier counts as a loop when it repeats 4+ times,
    or 2+ times covering 8+ tokens (long enough that it is not `a, a`); a unit of only numbers
    and punctuation ('0, ') at 8+ times; punctuation alone ('-----') never.
    """
    toks = [(m.start(), m.group()) for m in _LEX.finditer(text)]
    words = [t for _, t in toks]
    n = len(words)
    best: int | None = None
    for i in range(n):
        if best is not None and toks[i][0] >= best:
            break
        for size in range(1, min(max_unit, (n - i) // 2) + 1):
            unit = words[i:i + size]
            has_word = any(re.match(r"[^\W\d]", w) for w in unit)
            reps = 1
            while words[i + reps * size:i + (reps + 1) * size] == unit:
                reps += 1
            # numbers/punctuation only ('0, 0, 0'): a literal table, unless it runs on and on
            if reps >= 8 and any(w[0].isalnum() for w in unit) or has_word and (reps >= 4 or (reps >= 2 and reps * size >= 8)):
                cut = toks[i + size][0]
                best = cut if best is None else min(best, cut)
                break
    if best is None:
        return text, None
    return text[:best].rstrip(), "cycle"


def repeated_lines(text: str, ctx: Context, similarity: float = LINE_SIMILARITY) -> tuple[str, str | None]:
    """Cut before repeated lines: a block of lines that repeats the block just before it, or the
    third line of a run of near-identical lines (difflib ratio >= `similarity`).

    Blank lines and lines of only brackets/punctuation are not counted (closing several
    brackets in a row is normal code).
    """
    lines = text.split("\n")
    norm = [_norm(l) for l in lines]
    for start in range(1, len(lines)):
        for size in range(1, min(start, len(lines) - start) + 1):
            a, b = norm[start - size:start], norm[start:start + size]
            if a == b and any(_substantial(x) for x in a):
                return "\n".join(lines[:start]).rstrip(), "cycle"
    run = 1
    for i in range(1, len(lines)):
        a, b = norm[i - 1], norm[i]
        if len(b) >= 8 and _substantial(b, 3) and SequenceMatcher(None, a, b).ratio() >= similarity:
            run += 1
            if run >= 3:
                return "\n".join(lines[:i]).rstrip(), "cycle"
        else:
            run = 1
    # the prefix's last complete line repeated as the whole suggestion
    prev = _norm(ctx.prefix.rsplit("\n", 2)[-2]) if ctx.prefix.count("\n") >= 1 else ""
    if ctx.current_line_prefix.strip() == "" and prev and _substantial(prev, 3):
        full = [n for n in norm if n]
        if len(full) == 1 and full[0] == prev:
            return "", "cycle"
    return text, None


def recurring(text: str, ctx: Context, phrase: int = 5, min_words: int = 3) -> tuple[str, str | None]:
    """Cut before the third occurrence of something the suggestion keeps coming back to, even
    when the copies are not back to back: a substantial line (the same statement in every
    branch of an if/elif/else the model keeps extending), or a phrase of `phrase` lexical
    tokens with `min_words` words ('the value is a string' in comment after comment).

    Two copies stay (parallel branches and paired calls are normal code); the third is where
    small models' loops show up in practice (residual cases of the loop benchmark). Phrases
    compare case-insensitively and may overlap. Thresholds chosen on the loop benchmark: on real
    held-out code it cuts 1.3-2.9 % of 4-line windows (parallel statements), shortening the
    model's kept suggestions by under 1 % on average (README, "Filters").
    """
    best: int | None = None
    seen: dict[str, int] = {}
    offset = 0
    for line in text.split("\n"):
        key = _norm(line)
        if len(key) >= 8 and _substantial(key, 4):
            seen[key] = seen.get(key, 0) + 1
            if seen[key] == 3:
                best = offset
                break
        offset += len(line) + 1
    toks = [(m.start(), m.group()) for m in _LEX.finditer(text)]
    words = [t.lower() for _, t in toks]  # 'The value is' in one comment, 'the value is' in the next
    is_word = [bool(re.match(r"[^\W\d]", w)) for w in words]
    counts: dict[tuple[str, ...], int] = {}
    for i in range(len(words) - phrase + 1):
        if best is not None and toks[i][0] >= best:
            break
        if sum(is_word[i:i + phrase]) < min_words:
            continue
        gram = tuple(words[i:i + phrase])
        counts[gram] = counts.get(gram, 0) + 1  # overlapping copies count: 'name of the name of the name'
        if counts[gram] == 3:
            best = toks[i][0] if best is None else min(best, toks[i][0])
            break
    if best is None:
        return text, None
    return text[:best].rstrip(), "cycle"


def cycle(text: str, ctx: Context, similarity: float = LINE_SIMILARITY,
          with_recurring: bool = True) -> tuple[str, str | None]:
    """All cycle rules; the earliest cut wins."""
    reason = None
    for rule in (repeated_span, repeated_ngram):
        text, why = rule(text, ctx)
        reason = reason or why
    text, why = repeated_lines(text, ctx, similarity)
    reason = reason or why
    if with_recurring:
        text, why = recurring(text, ctx)
    return text, reason or why
