"""The filters' lexical helpers: a bracket/string/comment scanner over the language's syntax
(languages.py), the code mask, line measures."""

from __future__ import annotations

import logging
import re

from ghost_lsp.languages import Language, language_of


log = logging.getLogger(__name__)


OPENERS = {"(": ")", "[": "]", "{": "}"}
CLOSERS = {v: k for k, v in OPENERS.items()}




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


# Longer than any token the scanner reads at once (quotes, comment markers), so a step started
# before it never looks past the end of the context.
_LOOKAHEAD = 8
_context_scan: tuple[str, str, int, Scanner] | None = None  # (language, context, boundary, state there)


def code_mask_after(context: str, text: str, language: str) -> list[bool]:
    """`code_mask(context + text, language)[-len(text):]`, scanning `context` once.

    The early-stop check asks this for every decoded token with the same context (the prefix)
    and a growing text: rescanning the context each time cost a third of a decode step. The
    scan of `context` stops at a step boundary at least `_LOOKAHEAD` characters before its end,
    where a scan of context + text also stops, so the result is exactly the one-pass mask.
    """
    if not text:
        return []
    boundary, state = context_scan(context, language)
    marks: list[bool] = []
    state.copy().feed(context[boundary:] + text, marks)
    return marks[-len(text):]


def context_scan(context: str, language: str) -> tuple[int, Scanner]:
    """(step boundary at least `_LOOKAHEAD` characters before the end of `context`, the scanner's
    state there), for the latest context asked (cached). Callers copy the state before feeding."""
    global _context_scan
    hit = _context_scan
    if hit is None or hit[0] != language or hit[1] != context:
        syn = language_of(language)
        i, s = scan_until(context, syn, len(context) - _LOOKAHEAD)
        hit = _context_scan = (language, context, i, s)
    return hit[2], hit[3]


_STOPS: dict[tuple, re.Pattern] = {}


def _stops(syn: Language, s: Scanner) -> re.Pattern:
    """The characters where a step from this state can do more than pass one character."""
    if s.line_comment:
        chars = "\n"
    elif s.block:
        chars = syn.block_comment[1][0]
    elif s.quote is not None:
        chars = "\\" + s.quote[0] + ("\n" if len(s.quote) == 1 and s.quote != "`" else "")
    else:
        chars = "".join(m[0] for m in (syn.line_comment, syn.block_comment and syn.block_comment[0], *syn.quotes) if m)
        chars += "()[]{}"
    key = (chars,)
    pat = _STOPS.get(key)
    if pat is None:
        pat = _STOPS[key] = re.compile("[" + "".join(re.escape(c) for c in chars) + "]")
    return pat


def scan_until(text: str, syn: Language, stop: int) -> tuple[int, Scanner]:
    """The scanner's state at its first step boundary at or after `stop`, and that boundary: the
    same as stepping one character at a time (`while i < stop: _step`), but runs of characters
    that only pass (letters, blanks, most punctuation) are skipped with one regex search."""
    s, i, n = Scanner(syn), 0, len(text)
    while i < stop:
        if not s.escape:
            m = _stops(syn, s).search(text, i, stop)
            if m is None:
                return max(i, stop), s
            i = m.start()
        s._step(text, i, n, syn)
        i = s._i
    return i, s


def _indent(line: str) -> int:
    expanded = line.expandtabs(4)
    return len(expanded) - len(expanded.lstrip(" "))


def _norm(line: str) -> str:
    return re.sub(r"\s+", " ", line.strip())


def _substantial(line: str, min_word_chars: int = 2) -> bool:
    """A line with real content (not only brackets, punctuation or a short keyword like 'pass')."""
    return len(re.sub(r"[\W_]", "", line)) >= min_word_chars


_LEX = re.compile(r"\w+|[^\w\s]", re.UNICODE)


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
