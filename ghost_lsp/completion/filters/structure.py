"""Structure rules: indentation at the cursor, the end of the line (single-line mode), the end
of the cursor's block (indentation or braces), the line budget."""

from __future__ import annotations

import logging

from ghost_lsp.completion.filters.lexical import code_mask_after, _indent, Scanner
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
