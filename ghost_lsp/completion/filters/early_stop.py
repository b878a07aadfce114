"""`StopCheck`: the cycle and block rules asked after every decoded token, answered incrementally.

The engine calls the check with the text so far, which grows by a token's characters a step.
Running the rules on the whole text each time cost O(length) per token (O(length²) per
suggestion): on ghost-py-base it was the largest part of a decode step's Python. Each rule here
keeps what earlier calls settled and looks only at what the new characters can change; the
verdicts (and `fired`) are exactly those of running the rules on the whole text
(tests/test_early_stop.py checks them against that slow form). A text that does not extend the
previous one, or a rule that fired, starts the state over.

Why each shortcut is exact (every rule fired on nothing so far, else the state was reset):
- repeated_span: a match (or a position without one) whose regex work stayed inside the text
  seen is the same in any longer text, so the scan resumes after the last such match.
- repeated_ngram: copies of a unit are equal runs of words[j] == words[j+size]; a new trigger
  must have its last matched copy on a changed word, so only runs reaching those are followed.
- recurring: counts of finished lines and of 5-word phrases of finished words are kept; only
  the last line and the phrase with the last (still growing) word are counted per call.
- end of block (indentation): a line's verdict depends only on the text up to its first
  non-blank character (its indentation, that character, the code mask there), so each line is
  judged once, and the scanner giving the mask advances over each character once.
- end of block (braces): `structure.BraceBlockEnd`, the one form of that rule, keeps the
  scanner's state where a longer text cannot change it and steps again only over the last few
  characters (see it).
"""

from __future__ import annotations

import re

from ghost_lsp.completion.filters.cycles import _PERIODIC, repeated_lines
from ghost_lsp.completion.filters.lexical import _LEX, _indent, _norm, _substantial, code_mask_after, context_scan
from ghost_lsp.completion.filters.structure import BraceBlockEnd
from ghost_lsp.languages import BRACE_LANGUAGES
from ghost_lsp.settings.filters import FilterSettings
from ghost_lsp.types import Context

_WORD = re.compile(r"[^\W\d]")
_MAX_UNIT, _PHRASE, _PHRASE_WORDS = 16, 5, 3  # repeated_ngram's and recurring's defaults


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
        self._brace = ctx.language in BRACE_LANGUAGES
        self._braces: BraceBlockEnd | None = None  # made at its first use (it scans the prefix)
        self._reset()

    def _reset(self) -> None:
        self._text = ""
        # repeated_span: where the scan resumes, characters seen, runs of equal characters per
        # distance, the latest start of a run long enough for a match
        self._span_from, self._span_n, self._runs, self._window = 0, 0, {}, -1
        # the lexical tokens: words, their lower-case forms, and flags; changed_from: the first
        # index that changed since repeated_ngram last looked
        self._words: list[str] = []
        self._starts: list[int] = []
        self._has_word: list[bool] = []
        self._alnum: list[bool] = []
        self._lower: list[str] = []
        self._lower_word: list[bool] = []
        self._changed_from = 0
        self._line_counts: dict[str, int] = {}  # recurring: finished lines
        self._line_at = 0                       # where the first unfinished line starts
        self._twice = False                     # some finished line was seen twice
        self._phrases: dict[tuple[str, ...], int] = {}  # recurring: phrases of finished words
        self._phrase_next = 0
        self._block_at = -1  # end of block: where the first line not yet judged starts (-1: none yet)
        self._block_line = 0
        self._scan = None    # (offset in tail + text, scanner state there)
        if self._braces is not None:
            self._braces.reset()

    def __call__(self, text: str) -> bool:
        if not text.startswith(self._text):
            self._reset()
        self._text = text
        try:
            fired = self._check(text)
        except Exception:
            self._reset()  # a rule that raised may have left its state half updated
            raise
        if fired:
            self._reset()
        return fired

    def _check(self, text: str) -> bool:
        if not text.strip():
            return False
        s = self.s
        if not self.multiline and "\n" in text.lstrip("\n") and text.split("\n", 1)[0].strip():
            self.fired = "end_of_line"
            return True
        if s.cycle:
            if self._span(text) or self._ngram(text):
                self.fired = "cycle"
                return True
            if s.recurring and self._recurring(text):
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
            if self._brace:
                if self._braces is None:
                    self._braces = BraceBlockEnd(self.ctx)
                if self._braces(text) is not None:
                    self.fired = "end_of_block"
                    return True
            elif text.rsplit("\n", 1)[-1].strip() and self._block_end(text):
                self.fired = "end_of_block"
                return True
        return False

    # -- cycles -----------------------------------------------------------------------------

    def _span(self, text: str) -> bool:
        """repeated_span would cut: a unit with a letter repeated 3+ times, in finditer's order.

        _PERIODIC matches at p (unit length L, 3..40) iff text[j] == text[j + L] for every j in
        [p, p + 2L): runs of such equalities are followed per L as characters arrive, so the
        regex runs only when a run long enough starts at or after where the scan resumes."""
        n, runs = len(text), self._runs
        for k in range(self._span_n, n):  # the equalities the new characters complete
            ch, lo, grown = text[k], max(0, k - 40), {}
            j = text.rfind(ch, lo, k - 2)
            while j >= 0:
                size = k - j
                r = grown[size] = runs.get(size, 0) + 1
                if r >= 2 * size:
                    self._window = max(self._window, k - 3 * size + 1)
                j = text.rfind(ch, lo, j)
            runs = grown
        self._runs, self._span_n = runs, n
        # the first position where a match could still appear as the text grows
        settle = min([n - 40] + [max(n - size - r, n - 3 * size + 1) for size, r in runs.items()])
        pos = self._span_from
        if self._window >= pos:
            settled = True
            for m in _PERIODIC.finditer(text, pos):
                unit = m.group(1)
                if _WORD.search(unit) and unit.strip():
                    return True
                if settled and (m.start() == pos or m.start() <= settle) and m.end() + len(unit) <= n:
                    pos = m.end()  # this match and the positions before it stay as they are
                elif settled:
                    pos, settled = max(pos, min(m.start(), settle)), False
            if not settled:
                self._span_from = pos
                return False
        self._span_from = max(pos, settle)
        return False

    def _lex(self, text: str) -> None:
        """Bring the lexical tokens up to `text`: the last one may have grown, so it is lexed again."""
        words = self._words
        start = 0
        if words:
            last = len(words) - 1
            start = self._starts[last]
            for lst in (words, self._starts, self._has_word, self._alnum, self._lower, self._lower_word):
                del lst[last:]
            self._changed_from = min(self._changed_from, last)
        for m in _LEX.finditer(text, start):
            w = m.group()
            low = w.lower()
            words.append(w)
            self._starts.append(m.start())
            self._has_word.append(_WORD.match(w) is not None)
            self._alnum.append(w[0].isalnum())
            self._lower.append(low)
            self._lower_word.append(_WORD.match(low) is not None)

    def _ngram(self, text: str) -> bool:
        """repeated_ngram would cut: a run of words repeated back to back (see its thresholds)."""
        self._lex(text)
        words, c, n = self._words, self._changed_from, len(self._words)
        self._changed_from = n
        hw, an = self._has_word, self._alnum
        for size in range(1, min(_MAX_UNIT, n // 2) + 1):
            run = 0  # how many j >= i in a row have words[j] == words[j + size]
            for i in range(n - size - 1, -1, -1):
                if words[i] == words[i + size]:
                    run += 1
                else:
                    run = 0
                    if i + size <= c:
                        break  # runs further left end before any changed word
                    continue
                if run < size:
                    continue
                reps = 1 + run // size
                if i + reps * size - 1 < c:
                    continue  # settled at an earlier call (it did not fire then)
                if reps >= 8 and any(an[i:i + size]) or \
                        (reps >= 4 or reps * size >= 8) and any(hw[i:i + size]):
                    return True
        return False

    def _recurring(self, text: str) -> bool:
        """recurring would cut: a substantial line or a 5-word phrase seen a third time."""
        counts = self._line_counts
        end = text.rfind("\n")
        if end >= self._line_at:
            for line in text[self._line_at:end].split("\n"):
                key = _norm(line)
                if len(key) >= 8 and _substantial(key, 4):
                    counts[key] = counts.get(key, 0) + 1
                    if counts[key] >= 2:
                        self._twice = True
                        if counts[key] >= 3:
                            return True
            self._line_at = end + 1
        if self._twice and len(text) - self._line_at >= 8:  # a finished line seen twice: the last one may be a third
            key = _norm(text[self._line_at:])
            if len(key) >= 8 and _substantial(key, 4) and counts.get(key, 0) >= 2:
                return True
        words, flags, n = self._lower, self._lower_word, len(self._lower)
        phrases = self._phrases
        for i in range(self._phrase_next, n - _PHRASE):  # phrases of finished words (not the last)
            if sum(flags[i:i + _PHRASE]) >= _PHRASE_WORDS:
                gram = tuple(words[i:i + _PHRASE])
                phrases[gram] = phrases.get(gram, 0) + 1
                if phrases[gram] >= 3:
                    return True
        self._phrase_next = max(self._phrase_next, n - _PHRASE)
        i = n - _PHRASE
        return i >= 0 and sum(flags[i:]) >= _PHRASE_WORDS and phrases.get(tuple(words[i:]), 0) >= 2

    # -- end of block (indentation languages) -----------------------------------------------

    def _block_end(self, text: str) -> bool:
        """The first line (after the first) with content, indented less than the cursor's line,
        not starting with a closing bracket, in code: `end_of_block` would cut there."""
        ctx = self.ctx
        if self._block_at < 0:
            line_prefix = ctx.current_line_prefix
            self._ref = _indent(line_prefix) if line_prefix.strip() else len(line_prefix.expandtabs(4))
            context = ctx.prefix[-2000:]
            boundary, state = context_scan(context, ctx.language)
            self._tail = context[boundary:]
            self._scan = (0, state.copy())
            self._block_at, self._block_line = 0, 0
        pos, index = self._block_at, self._block_line
        while True:  # from the first line not yet judged; the last line is judged again next call
            nl = text.find("\n", pos)
            line = text[pos:] if nl < 0 else text[pos:nl]
            if index > 0 and line.strip():
                first = pos + len(line) - len(line.lstrip())
                if _indent(line) < self._ref and line.lstrip()[0] not in ")]}" and self._in_code(text, first):
                    return True
            if nl < 0:
                break
            pos, index = nl + 1, index + 1
        self._block_at, self._block_line = pos, index
        return False

    def _in_code(self, text: str, first: int) -> bool:
        """code_mask_after(prefix, text)[first], advancing one scanner over each character once
        (the character before `first` is a blank, so a scanner step ends there)."""
        full = self._tail + text
        target = len(self._tail) + first
        i, state = self._scan
        syn = state.syn
        while i < target:
            state._step(full, i, len(full), syn)
            i = state._i
        if i != target:  # not a step boundary after all: the one-pass mask decides
            return code_mask_after(self.ctx.prefix[-2000:], text, self.ctx.language)[first]
        self._scan = (i, state)
        return not (state.quote is not None or state.block or state.line_comment)

