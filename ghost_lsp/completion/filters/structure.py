"""Structure rules: indentation at the cursor, the end of the line (single-line mode), the end
of the cursor's block (indentation or braces), the line budget."""

from __future__ import annotations

import logging

from ghost_lsp.completion.filters.lexical import _LOOKAHEAD, Scanner, _indent, code_mask_after
from ghost_lsp.languages import BRACE_LANGUAGES, language_of
from ghost_lsp.settings.filters import MAX_LINES
from ghost_lsp.types import Context


log = logging.getLogger(__name__)


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
    mask = code_mask_after(ctx.prefix[-2000:], text, ctx.language)
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


class BraceBlockEnd:
    """The '}' closing the cursor's enclosing block, asked again as the text grows.

    `finder(text)` is `_brace_block_end(text, ctx)`: (cut offset, keep the closer), or None.
    Called with texts that extend the previous one (the early-stop check, once per decoded
    token), each character is stepped over once: a scanner step from offset i reads at most
    `_LOOKAHEAD` characters, so one that starts that far before the text's end reads the same
    in any longer text and its state is kept; only the last few characters are stepped again,
    on a copy. A text that does not extend the previous one starts over. `stepped` counts the
    characters stepped over (the tests' measure of the work).
    """

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.syn = language_of(ctx.language)
        start = Scanner(self.syn)
        # the string/comment state at the cursor comes from the prefix; brackets start from zero
        start.feed(ctx.prefix[-2000:])
        start.stack, start.errors = [], 0
        self._start = start
        self.stepped = 0
        self.reset()

    def reset(self) -> None:
        self._text = ""
        self._at, self._state = 0, self._start.copy()  # the kept state, at a step boundary
        self._found: tuple[int, bool] | None = None    # a '}' found where no longer text changes it

    def __call__(self, text: str) -> tuple[int, bool] | None:
        if not text.startswith(self._text):
            self.reset()
        self._text = text
        if self._found is None:
            i, self._found = self._scan(self._state, text, self._at, len(text) - _LOOKAHEAD + 1)
            if self._found is None:
                self._at = i
                return self._scan(self._state.copy(), text, i, len(text))[1]
        return self._found

    def _scan(self, s: Scanner, text: str, i: int, stop: int) -> tuple[int, tuple[int, bool] | None]:
        """Step `s` from offset i until a step boundary at or after `stop`, or the closing '}'."""
        syn, n = self.syn, len(text)
        while i < stop:
            if text[i] == "}" and not s.stack and s.quote is None and not s.block and not s.line_comment:
                return i, self._cut(text, i)
            s._step(text, i, n, syn)
            self.stepped += s._i - i
            i = s._i
        return i, None

    def _cut(self, text: str, i: int) -> tuple[int, bool]:
        if self.ctx.suffix.lstrip().startswith("}"):
            line_start = text.rfind("\n", 0, i) + 1
            if text[line_start:i].strip() == "":
                return max(0, line_start - 1), False
            return i, False
        return i + 1, True


def _brace_block_end(text: str, ctx: Context) -> tuple[int, bool] | None:
    """(cut offset, keep the closer) at the '}' closing the cursor's enclosing block."""
    return BraceBlockEnd(ctx)(text)


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
