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

from __future__ import annotations

import ast
import logging
import re
from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import Callable, Sequence

from ghost_lsp.languages import BRACE_LANGUAGES, Language, language_of
from ghost_lsp.types import Candidate, Context

log = logging.getLogger(__name__)

Rule = Callable[[str, Context], tuple[str, str | None]]

MAX_LINES = 12
# Consecutive lines at least this similar (difflib ratio, whitespace-normalised) count as a
# loop from the third such line on: two similar lines are common in real code (x = a[0];
# y = a[1]), a run of three near-copies of a long line is what a looping model writes.
LINE_SIMILARITY = 0.9
# Confidence gate (token log-probs under the model's own distribution). Measured on the shipped
# model over held-out code with `python -m ghost_lsp.tools.evals.loops --confidence`; see README.
MIN_MEAN_LOGPROB = -3.0
MIN_TOKEN_LOGPROB = -9.0
MIN_CHARS = 2

OPENERS = {"(": ")", "[": "]", "{": "}"}
CLOSERS = {v: k for k, v in OPENERS.items()}


# -- lexical helpers --------------------------------------------------------------------------


class Scanner:
    """Bracket stack and string/comment state over text fed in pieces; counts bracket errors.

    Errors: a closer with nothing (or the wrong thing) open, a one-line string still open at
    its line's end, and (from `errors_at_end`) whatever is left open.
    """

    __slots__ = ("syn", "stack", "quote", "block", "line_comment", "errors", "escape", "_i")

    def __init__(self, syn: Language):
        self.syn = syn
        self.stack: list[str] = []
        self.quote: str | None = None
        self.block = False
        self.line_comment = False
        self.errors = 0
        self.escape = False

    def copy(self) -> "Scanner":
        s = Scanner(self.syn)
        s.stack, s.quote, s.block = list(self.stack), self.quote, self.block
        s.line_comment, s.errors, s.escape = self.line_comment, self.errors, self.escape
        return s

    def key(self) -> tuple:
        return (tuple(self.stack), self.quote, self.block, self.line_comment, self.escape)

    def feed(self, text: str, marks: list[bool] | None = None) -> "Scanner":
        """Advance over `text`; `marks`, if given, gets True per character that is code."""
        syn, i, n = self.syn, 0, len(text)
        while i < n:
            if marks is not None:
                code, start = not (self.quote is not None or self.block or self.line_comment), i
            self._step(text, i, n, syn)
            i = self._i
            if marks is not None:
                marks.extend([code] * (i - start))
        return self

    def _step(self, text: str, i: int, n: int, syn: Language) -> None:
        """One lexical step from text[i]; leaves the next offset in self._i."""
        c = text[i]
        if self.line_comment:
            if c == "\n":
                self.line_comment = False
            i += 1
        elif self.block:
            if text.startswith(syn.block_comment[1], i):
                self.block = False
                i += len(syn.block_comment[1])
            else:
                i += 1
        elif self.quote is not None:
            if self.escape:
                self.escape = False
            elif c == "\\":
                self.escape = True
            elif c == "\n" and len(self.quote) == 1 and self.quote != "`":
                self.errors += 1  # a one-line string ran into the line end
                self.quote = None
            elif text.startswith(self.quote, i):
                i += len(self.quote) - 1
                self.quote = None
            i += 1
        elif syn.line_comment and text.startswith(syn.line_comment, i):
            self.line_comment = True
            i += len(syn.line_comment)
        elif syn.block_comment and text.startswith(syn.block_comment[0], i):
            self.block = True
            i += len(syn.block_comment[0])
        elif c in OPENERS:
            self.stack.append(c)
            i += 1
        elif c in CLOSERS:
            if self.stack and self.stack[-1] == CLOSERS[c]:
                self.stack.pop()
            else:
                self.errors += 1
                if CLOSERS[c] in self.stack:  # recover: close up to the matching opener
                    while self.stack.pop() != CLOSERS[c]:
                        pass
            i += 1
        else:
            q = next((q for q in syn.quotes if text.startswith(q, i)), None)
            if q is not None:
                self.quote = q
                i += len(q)
            else:
                i += 1
        self._i = i

    def errors_at_end(self) -> int:
        return self.errors + len(self.stack) + (self.quote is not None) + self.block

    def error_kinds_at_end(self) -> tuple[int, int]:
        """(wrong closers and broken strings, brackets/strings/comments left open)."""
        return self.errors, len(self.stack) + (self.quote is not None) + self.block


def code_mask(text: str, language: str) -> list[bool]:
    """True for each character outside strings and comments (the state starts at the text's start)."""
    out: list[bool] = []
    Scanner(language_of(language)).feed(text, out)
    return out


def _indent(line: str) -> int:
    expanded = line.expandtabs(4)
    return len(expanded) - len(expanded.lstrip(" "))


def _norm(line: str) -> str:
    return re.sub(r"\s+", " ", line.strip())


def _substantial(line: str, min_word_chars: int = 2) -> bool:
    """A line with real content (not only brackets, punctuation or a short keyword like 'pass')."""
    return len(re.sub(r"[\W_]", "", line)) >= min_word_chars


_LEX = re.compile(r"\w+|[^\w\s]", re.UNICODE)


# -- cycle detection ---------------------------------------------------------------------------


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


# -- structure -----------------------------------------------------------------------------------


def indentation(text: str, ctx: Context) -> tuple[str, str | None]:
    """Drop blanks the suggestion puts before its first word when the cursor already sits at
    the end of an indentation (the editor's auto-indent put it there).

    A code BPE spells indentation as a run of spaces plus a space-led word (' if'); after
    token healing the model may take the whole run and the space-led word too, giving one
    space too many, which the syntax rule then throws away with the whole line (seen at
    about a third of held-out next-line positions). Kept when the line above opens a block
    the cursor is not yet inside: the extra indentation may be what that block needs.
    """
    line_prefix = ctx.current_line_prefix
    if not line_prefix or line_prefix.strip():
        return text, None
    first = text.split("\n", 1)[0]
    lead = len(first) - len(first.lstrip(" \t"))
    if lead == 0 or not first.strip():
        return text, None
    # the nearest non-blank line above (only the prefix's tail is split: this runs per candidate)
    above = next((l for l in reversed(ctx.prefix.rsplit("\n", 51)[:-1][-50:]) if l.strip()), "")
    if above.rstrip().endswith((":", "{", "(", "[")) and _indent(line_prefix) <= _indent(above):
        return text, None
    return text[lead:], "indent"


def end_of_line(text: str, ctx: Context) -> tuple[str, str | None]:
    """Single-line mode: keep the rest of the current line only."""
    if "\n" not in text:
        return text, None
    # a suggestion that starts with a newline belongs to another line: nothing is left to show
    return text.split("\n", 1)[0], "end_of_line"


def _indent_block_end(text: str, ctx: Context) -> int | None:
    line_prefix = ctx.current_line_prefix
    ref = _indent(line_prefix) if line_prefix.strip() else len(line_prefix.expandtabs(4))
    mask = code_mask(ctx.prefix[-2000:] + text, ctx.language)[-len(text):] if text else []
    pos = 0
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if i > 0 and line.strip():
            first = pos + len(line) - len(line.lstrip())
            in_code = mask[first] if first < len(mask) else True
            # a dedented line that starts by closing a bracket ends an expression, not the block;
            # a dedented line inside a multi-line string is text, not code
            if _indent(line) < ref and line.lstrip()[0] not in ")]}" and in_code:
                return pos - 1
        pos += len(line) + 1
    return None


def _brace_block_end(text: str, ctx: Context) -> tuple[int, bool] | None:
    """(cut offset, keep the closer) at the '}' closing the cursor's enclosing block."""
    syn = language_of(ctx.language)
    s = Scanner(syn)
    # the string/comment state at the cursor comes from the prefix; brackets start from zero
    s.feed(ctx.prefix[-2000:])
    s.stack, s.errors = [], 0
    i, n = 0, len(text)
    while i < n:
        code = s.quote is None and not s.block and not s.line_comment
        depth = len(s.stack)
        s._step(text, i, n, syn)
        if text[i] == "}" and code and depth == 0:
            suffix_has = ctx.suffix.lstrip().startswith("}")
            line_start = text.rfind("\n", 0, i) + 1
            if suffix_has:
                if text[line_start:i].strip() == "":
                    return max(0, line_start - 1), False
                return i, False
            return i + 1, True
        i = s._i
    return None


def end_of_block(text: str, ctx: Context) -> tuple[str, str | None]:
    """Stop where the cursor's block ends.

    Indentation-structured text: at the first code line indented less than the cursor's line.
    Brace languages: at the '}' that closes the enclosing block; the '}' is kept only when the
    text after the cursor does not already start with one.
    """
    if ctx.language in BRACE_LANGUAGES:
        found = _brace_block_end(text, ctx)
        if found is None:
            return text, None
        cut, _ = found
        kept = text[:cut].rstrip()
        return kept, "end_of_block" if kept != text else None
    cut = _indent_block_end(text, ctx)
    if cut is None:
        return text, None
    return text[:cut].rstrip(), "end_of_block"


def max_lines(text: str, ctx: Context, limit: int = MAX_LINES) -> tuple[str, str | None]:
    lines = text.split("\n")
    if len(lines) <= limit:
        return text, None
    return "\n".join(lines[:limit]), "max_lines"


# -- overlap with the text after the cursor ----------------------------------------------------


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


def _cut_points(text: str) -> list[int]:
    """Offsets where a truncated suggestion still reads well, longest first: the whole text,
    line ends, before and after each bracket or quote."""
    pts = {len(text), 0}
    for i, ch in enumerate(text):
        if ch == "\n" or ch in OPENERS or ch in CLOSERS or ch in "\"'`":
            pts.add(i)
        if ch in CLOSERS or ch in "\"'`":
            pts.add(i + 1)
    return sorted(pts, reverse=True)


_SUFFIX_WINDOW = 2000


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


# -- syntax --------------------------------------------------------------------------------------


def _top_level_start(prefix: str) -> int:
    """Offset of the first top-level code line of a window that may begin mid-block."""
    pos = 0
    for line in prefix.split("\n"):
        s = line.lstrip()
        if line and line[0] not in " \t" and s and s[0] not in ")]}" \
                and not re.match(r"(else|elif|except|finally|case)\b", s):
            return pos
        pos += len(line) + 1
    return 0  # all indented: parse it all (an error at its start then hides later ones)


def _top_level_end(suffix: str) -> int:
    """Offset of the last top-level line start of the suffix window (everything before it is
    complete statements, so a window cut mid-statement adds no error of its own)."""
    if "\n" not in suffix:
        return len(suffix)
    lines = suffix.split("\n")
    pos = len(suffix)
    for line in reversed(lines[1:]):
        pos -= len(line) + 1
        if line and line[0] not in " \t#)]}":
            return pos + 1
    return len(suffix)


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


# -- confidence ----------------------------------------------------------------------------------


def kept_token_logprobs(candidate: Candidate, kept_len: int) -> list[float]:
    """Model log-probs of the tokens that start inside the kept text (all when offsets are unknown)."""
    lps = candidate.model_logprobs or candidate.logprobs
    if candidate.offsets and len(candidate.offsets) == len(lps):
        return [lp for lp, off in zip(lps, candidate.offsets) if off < max(1, kept_len)]
    return list(lps)


def confidence(text: str, ctx: Context, candidate: Candidate | None, min_mean: float = MIN_MEAN_LOGPROB,
               min_token: float = MIN_TOKEN_LOGPROB) -> tuple[str, str | None]:
    """Shorten before the first token the model found very unlikely (log-prob < min_token; at
    that line's start when it is not the first line); then drop the rest if the mean log-prob of
    its tokens is under min_mean. Without log-probs (remote engines may not send them) it passes."""
    if candidate is None or not (candidate.model_logprobs or candidate.logprobs):
        return text, None
    lps = candidate.model_logprobs or candidate.logprobs
    reason = None
    if candidate.offsets and len(candidate.offsets) == len(lps):
        for lp, off in zip(lps, candidate.offsets):
            if off >= len(text):
                break
            if lp < min_token and off > 0:
                nl = text.rfind("\n", 0, off)
                cut = nl if nl >= 0 else off
                text, reason = text[:cut].rstrip(), "low_confidence"
                break
            if lp < min_token:
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


# -- settings and the pipeline -------------------------------------------------------------------


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


ALL_OFF = FilterSettings(indent=False, cycle=False, end_of_block=False, suffix_overlap=False, bracket_balance=False,
                         syntax=False, confidence=False, trivial=False, early_stop=False)


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
                                                              s.min_token_logprob)))
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


class StopCheck:
    """`stop_check(text_so_far) -> bool` for the engine's decode loop.

    True once the cycle rules or the end of the cursor's block (or line, in single-line mode)
    would cut the text before its end: every further token would be thrown away.
    """

    def __init__(self, ctx: Context, multiline: bool, settings: FilterSettings | None = None):
        self.ctx, self.multiline = ctx, multiline
        self.s = settings or FilterSettings()
        self.fired: str | None = None
        self._lines = 0

    def __call__(self, text: str) -> bool:
        if not text.strip():
            return False
        s = self.s
        if not self.multiline and "\n" in text.lstrip("\n") and text.split("\n", 1)[0].strip():
            self.fired = "end_of_line"
            return True
        if s.cycle:
            for rule in (repeated_span, repeated_ngram):
                kept, why = rule(text, self.ctx)
                if why and len(kept) < len(text.rstrip()):
                    self.fired = "cycle"
                    return True
            if s.recurring:
                kept, why = recurring(text, self.ctx)
                if why and len(kept) < len(text.rstrip()):
                    self.fired = "cycle"
                    return True
        lines = text.count("\n")
        if lines != self._lines:  # line rules only change when a line completes
            self._lines = lines
            done = text[: text.rfind("\n")]
            if s.cycle:
                kept, why = repeated_lines(done, self.ctx, s.line_similarity)
                if why and kept.strip():
                    self.fired = "cycle"
                    return True
        if self.multiline and s.end_of_block and "\n" in text:
            last = text.rsplit("\n", 1)[-1]
            if last.strip():  # the new line's first character decides
                kept, why = end_of_block(text, self.ctx)
                if why and len(kept) < len(text.rstrip()) and self.ctx.language not in BRACE_LANGUAGES:
                    self.fired = "end_of_block"
                    return True
            if self.ctx.language in BRACE_LANGUAGES and _brace_block_end(text, self.ctx) is not None:
                self.fired = "end_of_block"
                return True
        return False


def dedupe(texts: Sequence[str]) -> list[int]:
    """Indices of the first occurrence of each distinct non-empty text."""
    seen, out = set(), []
    for i, t in enumerate(texts):
        if t and t not in seen:
            seen.add(t)
            out.append(i)
    return out
