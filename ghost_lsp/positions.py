"""The one position codec of ghost-lsp: (line, character) in code points ⇄ offsets in a text.

Lines split on "\\n" only, as LSP counts them (`str.splitlines` also breaks at U+2028 and
friends, which LSP does not); a "\\r" before the "\\n" belongs to the line's end. The LSP
server converts the client's units (UTF-16 by default) to code points first (lsp/server.py)
and hands on code points: every stage below it speaks them.
"""

from __future__ import annotations


def lines_of(text: str) -> list[str]:
    return text.split("\n")


def line_span(text: str, line: int) -> tuple[int, int] | None:
    """(start, end) offsets of line `line` ("\\r" included, "\\n" not); None past the end."""
    start = 0
    for _ in range(line):
        nl = text.find("\n", start)
        if nl < 0:
            return None
        start = nl + 1
    end = text.find("\n", start)
    return start, len(text) if end < 0 else end


def offset_of(text: str, line: int, character: int) -> int:
    """Code-point offset of (line, character); ValueError when the position does not exist.

    A character past the end of its line is clamped to the line end (editors send such
    positions after trailing whitespace is trimmed); a line past the end is an error.
    """
    if line < 0 or character < 0:
        raise ValueError(f"negative position {line}:{character}")
    span = line_span(text, line)
    if span is None:
        raise ValueError(f"line {line} is past the end of the document")
    start, end = span
    return start + min(character, len(text[start:end].rstrip("\r")))


def split_at(text: str, line: int, character: int) -> tuple[str, str]:
    """(text before, text after) a position in code points. Lenient, for caches and indexes: a
    position past the end clamps to it."""
    span = line_span(text, line)
    if span is None:
        return text, ""
    start, end = span
    offset = start + min(max(0, character), end - start)
    return text[:offset], text[offset:]


def read_at(path, line: int, col: int) -> str:
    """The text of `path` (a pathlib.Path), checking that the 1-based (line, col) an editor shows
    exists in it; ValueError says what is wrong. For commands that take a file and a position."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read {path}: {e}") from None
    lines = lines_of(text)
    if not 1 <= line <= len(lines):
        raise ValueError(f"--line {line} is outside {path} (1..{len(lines)})")
    width = len(lines[line - 1].rstrip("\r")) + 1
    if not 1 <= col <= width:
        raise ValueError(f"--col {col} is outside line {line} (1..{width})")
    return text
