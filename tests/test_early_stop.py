"""The incremental early-stop check (completion/filters/early_stop.py) answers exactly as the rules
run on the whole text each time (the slow form below, the check as it was before it kept state)."""

from __future__ import annotations

import random

import pytest

from ghost_lsp.completion.filters import FilterSettings, StopCheck
from ghost_lsp.completion.filters.cycles import recurring, repeated_lines, repeated_ngram, repeated_span
from ghost_lsp.completion.filters.lexical import _LOOKAHEAD, Scanner
from ghost_lsp.completion.filters.structure import BraceBlockEnd, _brace_block_end, end_of_block
from ghost_lsp.languages import BRACE_LANGUAGES, language_of
from ghost_lsp.types import Context


def slow_brace_block_end(text, ctx):
    """structure._brace_block_end as it was before it kept state: the whole text at every call."""
    syn = language_of(ctx.language)
    s = Scanner(syn)
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
            if self.ctx.language in BRACE_LANGUAGES and slow_brace_block_end(text, self.ctx) is not None:
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


# -- end of block in brace languages ----------------------------------------------------------

BRACE_PIECES = ["{", "}", "{\n", "\n}", "\n    }", "}\n", "(", ")", "[", "]", "x", " = ", "foo(", "a.b", ";", "\n",
                "\n    ", " ", '"', "'", "`", "\\", '"}"', "'}'", "'{'", '"{"', "`${x}`", '"a\\"}"', "/", "*", "//",
                "/*", "*/", "// }\n", "/* } */", "/* {", "if (x) {", "} else {", "return 0;", "'\\''", "é", "#", "${",
                "\n\n", "fn f() {", "'a", "}}", "{{", "}\n}"]
BRACE_PREFIXES = ["int f(int x) {\n    ", "function f() {\n  if (x) {\n    ", "", "x = 1;\n", "s = \"abc {",
                  "/* open comment {\n  ", "// line comment }", "a = x /", "s = \"tail\\", "t = `tmpl {\n",
                  "fn main() {\n    let c = '", "{\n  '}", "x = 1; /"]
BRACE_SUFFIXES = ["", "\n}", "}", "  }\n", "\nint g() {}", " x }"]
BRACE_LANGS = ["c", "javascript", "go", "rust", "java", "typescript", "css"]


def _brace_texts(rng: random.Random, n: int) -> list[str]:
    """Growing texts a token at a time; now and then one that does not extend the last."""
    out, text = [], ""
    for _ in range(n):
        r = rng.random()
        if r < 0.05 and text:  # go back: a text that is not an extension of the last one
            text = text[:rng.randrange(len(text))]
        elif r < 0.08:
            text = ""
        piece = rng.choice(BRACE_PIECES)
        for end in sorted({rng.randint(1, len(piece)), len(piece)}):  # sometimes a token splits a piece
            out.append(text + piece[:end])
        text += piece
    return out


def _brace_ctx(rng: random.Random) -> Context:
    return Context(prefix=rng.choice(BRACE_PREFIXES), suffix=rng.choice(BRACE_SUFFIXES), path="a.c",
                   language=rng.choice(BRACE_LANGS))


@pytest.mark.parametrize("seed", range(60))
def test_the_incremental_brace_end_matches_the_whole_text_scan_at_every_prefix(seed):
    rng = random.Random(seed)
    ctx = _brace_ctx(rng)
    finder = BraceBlockEnd(ctx)
    found = 0
    for text in _brace_texts(rng, 80):
        want = slow_brace_block_end(text, ctx)
        assert finder(text) == want == _brace_block_end(text, ctx), (ctx, text)
        found += want is not None
    # every prefix, one character at a time, of a text built the same way
    finder = BraceBlockEnd(ctx)
    text = "".join(rng.choice(BRACE_PIECES) for _ in range(60))
    for end in range(len(text) + 1):
        assert finder(text[:end]) == slow_brace_block_end(text[:end], ctx), (ctx, text[:end])


HAND_WRITTEN = [
    # (prefix, suffix, language, text)
    ("int f() {\n    ", "\n}", "c", 'if (x) {\n        y = "}";\n    }\n    return 1;\n}\nint g() {'),
    ("int f() {\n    ", "", "c", "char c = '}'; // }\n    /* } { */ x++;\n}"),
    ("int f() {\n    ", "}", "c", "x++; }"),
    ("function f() {\n  ", "", "javascript", "const s = `a ${b} }`;\n  return {a: {b: 1}};\n}\n"),
    ("fn f() {\n    ", "\n}", "rust", "let c = '{'; let d = '}';\n}"),  # no char literals in rust's table
    ("x = \"{", "", "go", 'a } b"\n}'),      # the prefix leaves a string open: its '}' is text
    ("/* {", "", "c", " } */ }"),               # likewise a block comment
    ("a = x /", "", "c", "/ } not a comment\n}"),  # prefix and text are scanned apart: no '//' across
    ("s = \"a\\", "", "c", '" } still in the string" }'),  # an escape left open by the prefix
    ("", "", "c", "{{{}}}\n}"),
    ("", "", "c", "(]\n}"),                    # a wrong closer does not hide the block's end
    ("int f() {\n", "", "c", "\n\n    }"),
]


@pytest.mark.parametrize("prefix,suffix,language,text", HAND_WRITTEN)
def test_hand_written_brace_completions_match_at_every_prefix(prefix, suffix, language, text):
    ctx = Context(prefix=prefix, suffix=suffix, path="a", language=language)
    finder = BraceBlockEnd(ctx)
    verdicts = []
    for end in range(len(text) + 1):
        want = slow_brace_block_end(text[:end], ctx)
        assert finder(text[:end]) == want, text[:end]
        verdicts.append(want)
    assert verdicts[-1] is not None or "(]" in text or "still" in text  # the cases do close the block
    # and after a text that does not extend the last one
    for end in range(len(text), -1, -3):
        assert finder(text[:end]) == slow_brace_block_end(text[:end], ctx)


@pytest.mark.parametrize("seed", range(30))
def test_the_stop_check_in_brace_languages_matches_the_whole_text_rules(seed):
    rng = random.Random(1000 + seed)
    ctx = _brace_ctx(rng)
    settings = FilterSettings(cycle=seed % 3 == 0, recurring=seed % 2 == 0)
    texts = _brace_texts(rng, 60)
    for multiline in (True, False):
        for cut in (len(texts), len(texts) // 2):
            assert _run(StopCheck, ctx, multiline, settings, texts[:cut]) == \
                _run(SlowStopCheck, ctx, multiline, settings, texts[:cut])


def test_the_brace_scan_steps_over_each_new_character_once():
    ctx = Context(prefix="int f() {\n    " * 200, suffix="\n}", path="a.c", language="c")
    block = 'if (x) {\n        s = "{ } //";  /* } */ c = \'}\';\n        g(a[1], {b});\n    }\n    '
    text = block * 60  # about 4000 characters that never close the enclosing block
    finder, check = BraceBlockEnd(ctx), StopCheck(ctx, True, FilterSettings(cycle=False))
    rng = random.Random(0)
    end = calls = 0
    while end < len(text):
        new = rng.randint(1, 6)
        end = min(len(text), end + new)
        before = finder.stepped
        assert finder(text[:end]) is None
        assert not check(text[:end])
        calls += 1
        # the new characters and the last few again (a step there may read differently later)
        assert finder.stepped - before <= new + 2 * _LOOKAHEAD
    assert finder.stepped <= len(text) + calls * 2 * _LOOKAHEAD  # not the old calls * length
    assert 0 < check._braces.stepped <= finder.stepped  # the stop check uses the same scan
