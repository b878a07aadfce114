"""Post-processing of a generated candidate: one pure function per rule.

Each rule takes the candidate text and the context and returns (kept text, reason or None).
`apply_filters` runs them in order and collects the reasons of every cut, which are logged
with the suggestion so the effect of each rule can be counted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from ghost_lsp.types import Context

Rule = Callable[[str, Context], tuple[str, str | None]]

MAX_LINES = 12


def _indent(line: str) -> int:
    expanded = line.expandtabs(4)
    return len(expanded) - len(expanded.lstrip(" "))


def end_of_line(text: str, ctx: Context) -> tuple[str, str | None]:
    """Single-line mode: keep the rest of the current line only.

    """
    if "\n" not in text:
        return text, None
    # a suggestion that starts with a newline belongs to another line: nothing is left to show
    return text.split("\n", 1)[0], "end_of_line"


def end_of_block(text: str, ctx: Context) -> tuple[str, str | None]:
    """Stop where indentation returns above the cursor's block (indentation-structured code).

    The block's indentation is the cursor line's; a suggestion line that is indented less
    (and is not blank) ends the block. Lines after a trailing ':' on the cursor line may go
    deeper; that is fine.
    """
    line_prefix = ctx.current_line_prefix
    if line_prefix.strip():
        ref = _indent(line_prefix)
    else:
        # cursor on a blank line: the block is the one the cursor's indentation sits in
        ref = len(line_prefix.expandtabs(4))
    lines = text.split("\n")
    for i, line in enumerate(lines[1:], start=1):
        # a dedented line that starts by closing a bracket ends an expression, not the block
        if line.strip() and _indent(line) < ref and line.lstrip()[0] not in ")]}":
            return "\n".join(lines[:i]).rstrip(), "end_of_block"
    return text, None


def max_lines(text: str, ctx: Context, limit: int = MAX_LINES) -> tuple[str, str | None]:
    lines = text.split("\n")
    if len(lines) <= limit:
        return text, None
    return "\n".join(lines[:limit]), "max_lines"


def _norm(line: str) -> str:
    return re.sub(r"\s+", " ", line.strip())


def repeated_lines(text: str, ctx: Context) -> tuple[str, str | None]:
    """Cut before a block of one or more lines that repeats the block just before it.

    Blank lines and lines of only brackets/punctuation are not counted as repetition
    (closing several brackets in a row is normal code).
    """
    lines = text.split("\n")
    norm = [_norm(l) for l in lines]
    for start in range(1, len(lines)):
        for size in range(1, min(start, len(lines) - start) + 1):
            a, b = norm[start - size:start], norm[start:start + size]
            if a == b and any(len(re.sub(r"[\W_]", "", x)) >= 2 for x in a):
                return "\n".join(lines[:start]).rstrip(), "cycle"
    # the prefix's last complete line repeated as the suggestion's first full line
    prev = _norm(ctx.prefix.rsplit("\n", 2)[-2]) if ctx.prefix.count("\n") >= 1 else ""
    if ctx.current_line_prefix.strip() == "" and prev and len(re.sub(r"[\W_]", "", prev)) >= 3:
        first_full = next((n for n in norm if n), "")
        if first_full == prev and len([n for n in norm if n]) == 1:
            return "", "cycle"
    return text, None


_PERIODIC = re.compile(r"(.{3,40}?)\1{2,}", re.S)


def repeated_span(text: str, ctx: Context) -> tuple[str, str | None]:
    """Cut a span that repeats itself three or more times in a row ("a.a.a.a", "foo(foo(foo(")."""
    m = _PERIODIC.search(text)
    if not m:
        return text, None
    unit = m.group(1)
    if not re.search(r"\w", unit) or unit.strip() == "":
        return text, None  # runs of spaces, dashes or '====' rulers are legitimate
    return text[: m.start() + len(unit)].rstrip(), "cycle"


def suffix_overlap(text: str, ctx: Context) -> tuple[str, str | None]:
    """Drop the end of the suggestion that the rest of the cursor's line already holds.

    Typical case: the editor auto-inserted ')' or '"]' after the cursor and the model wrote it too.
    """
    rest = ctx.suffix.split("\n", 1)[0]
    if not rest.strip():
        return text, None
    first = text.split("\n", 1)[0].rstrip()
    stripped = rest.strip()
    if first.endswith(stripped):
        # what follows on the suggestion's later lines would land after the existing rest of line
        return first[: -len(stripped)], "suffix_overlap"
    return text, None


def trailing_whitespace(text: str, ctx: Context) -> tuple[str, str | None]:
    # ghost text ending in blank lines or spaces only moves the cursor somewhere odd
    return text.rstrip(), None


def empty(text: str, ctx: Context) -> tuple[str, str | None]:
    if not text.strip():
        return "", "empty"
    return text, None


@dataclass(frozen=True)
class FilterSettings:
    cycle: bool = True
    end_of_block: bool = True
    suffix_overlap: bool = True
    max_lines: int = MAX_LINES


def apply_filters(text: str, ctx: Context, *, multiline: bool,
                  settings: FilterSettings | None = None) -> tuple[str, list[str]]:
    """Run the rules in order; return the kept text ('' = drop) and the reasons of every cut."""
    s = settings or FilterSettings()
    rules: list[Rule] = []
    if s.cycle:
        rules += [repeated_span, repeated_lines]
    if multiline:
        if s.end_of_block:
            rules.append(end_of_block)
        rules.append(lambda t, c: max_lines(t, c, s.max_lines))
    else:
        rules.append(end_of_line)
    if s.suffix_overlap:
        rules.append(suffix_overlap)
    rules += [trailing_whitespace, empty]
    reasons: list[str] = []
    for rule in rules:
        text, why = rule(text, ctx)
        if why:
            reasons.append(why)
        if not text:
            if "empty" not in reasons:
                reasons.append("empty")
            break
    return text, reasons
