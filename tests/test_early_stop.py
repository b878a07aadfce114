"""The incremental early-stop check (completion/filters/early_stop.py) answers exactly as the rules
run on the whole text each time (the slow form below, the check as it was before it kept state)."""

from __future__ import annotations

import random

import pytest

from ghost_lsp.completion.filters import FilterSettings, StopCheck
from ghost_lsp.completion.filters.cycles import recurring, repeated_lines, repeated_ngram, repeated_span
from ghost_lsp.completion.filters.structure import _brace_block_end, end_of_block
from ghost_lsp.languages import BRACE_LANGUAGES
from ghost_lsp.types import Context


class SlowStopCheck:
    """Every rule on the whole text at every call."""

    def __init__(self, ctx, multiline, settings=None):
        self.ctx, self.multiline = ctx, multiline
        self.s = settings or FilterSettings()
        self.fired = None
        self._lines = 0

    def __call__(self, text):
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
        if lines != self._lines:
            self._lines = lines
            done = text[: text.rfind("\n")]
            if s.cycle:
                kept, why = repeated_lines(done, self.ctx, s.line_similarity)
                if why and kept.strip():
                    self.fired = "cycle"
                    return True
        if self.multiline and s.end_of_block and "\n" in text:
            last = text.rsplit("\n", 1)[-1]
            if last.strip():
                kept, why = end_of_block(text, self.ctx)
                if why and len(kept) < len(text.rstrip()) and self.ctx.language not in BRACE_LANGUAGES:
                    self.fired = "end_of_block"
                    return True
            if self.ctx.language in BRACE_LANGUAGES and _brace_block_end(text, self.ctx) is not None:
                self.fired = "end_of_block"
                return True
        return False


PIECES = ["x", "y", " = ", "foo", "(", ")", ", ", "a", ".", "b", "\n", "\n    ", "\n        ", "    ", " ", "0",
          ", 0", "return ", "self", ".x", '"', '"""', "#", " the value is a string", "[", "]", "{", "}", ":",
          "if x:", "else:", "\n\n", "abc", "abcabc", "é", "'", "\\", "value", "name", " of the", "---", "=="]
PREFIXES = ["def f(x):\n    ", "class A:\n    def m(self):\n        y = 1\n        ", "x = [\n    ",
            's = """doc\n    ', "if a:\n    pass\n", "", "    # c\n    "]


def _texts(rng: random.Random, n: int) -> list[str]:
    """Growing texts, a few characters at a time (as decoded tokens arrive), with repetitions."""
    out, text = [], ""
    for _ in range(n):
        r = rng.random()
        if r < 0.15 and len(text) > 4:  # repeat a recent span: cycles of every kind
            a = rng.randrange(max(0, len(text) - 40), len(text))
            piece = text[a:a + rng.randint(1, 12)]
        else:
            piece = rng.choice(PIECES)
        for ch_end in sorted({rng.randint(1, len(piece)), len(piece)}):  # sometimes a token splits a piece
            out.append(text + piece[:ch_end])
        text += piece
    return out


def _run(cls, ctx, multiline, settings, texts):
    check = cls(ctx, multiline, settings)
    return [check(t) for t in texts], check.fired


@pytest.mark.parametrize("seed", range(40))
def test_incremental_check_matches_the_whole_text_rules(seed):
    rng = random.Random(seed)
    language = "javascript" if seed % 7 == 6 else "python"
    ctx = Context(prefix=rng.choice(PREFIXES), suffix=rng.choice(["", "\n}", "\nz = 1"]), path="a.py", language=language)
    settings = FilterSettings(recurring=seed % 5 != 0, cycle=seed % 11 != 10)
    texts = _texts(rng, 60)
    for multiline in (True, False):
        for cut in (len(texts), len(texts) // 3):  # a check kept after it fired, and a fresh one
            assert _run(StopCheck, ctx, multiline, settings, texts[:cut]) == \
                _run(SlowStopCheck, ctx, multiline, settings, texts[:cut])


def test_a_text_that_does_not_extend_the_last_one_starts_over():
    ctx = Context(prefix="def f():\n    ", suffix="", path="a.py", language="python")
    texts = ["x = 1", "x = 1\n    y", "abab", "x = f(x) x = f(x) x = f(x) x = f(x)", "x", "x\nz", "x\n    a.b.a.b.a.b.a"]
    assert _run(StopCheck, ctx, True, None, texts) == _run(SlowStopCheck, ctx, True, None, texts)


@pytest.mark.parametrize("language", ["python", "javascript", "lua", "rust", "markdown", "ruby"])
def test_the_skipping_scan_stops_where_and_as_the_one_step_scan_does(language):
    from ghost_lsp.completion.filters.lexical import Scanner, scan_until
    from ghost_lsp.languages import language_of

    syn = language_of(language)
    rng = random.Random(language)
    alphabet = ['"""', "'''", '"', "'", "`", "#", "//", "/*", "*/", "--", "\\", "\n", " ", "x", "(", ")", "{", "}",
                "[", "]", "ab", "/"]
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        stop = len(text) - rng.randint(0, 10)
        slow, i = Scanner(syn), 0
        while i < stop:
            slow._step(text, i, len(text), syn)
            i = slow._i
        j, fast = scan_until(text, syn, stop)
        assert (j, fast.key(), fast.errors) == (i, slow.key(), slow.errors), text
