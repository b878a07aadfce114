"""The current document's prefix and suffix windows around the cursor.

Windows are cut at line boundaries where possible so the model never sees half a line at the
far edge of its context (the line under the cursor is always kept whole up to the cursor).
"""

from __future__ import annotations

from ghost_lsp.languages import language_for_path
from ghost_lsp.types import Context

def offset_of(text: str, line: int, character: int) -> int:
    """Code-point offset of (line, character); ValueError when the position does not exist.

    A character past the end of its line is clamped to the line end (editors send such
    positions after trailing whitespace is trimmed); a line past the end is an error.
    """
    if line < 0 or character < 0:
        raise ValueError(f"negative position {line}:{character}")
    start = 0
    for _ in range(line):
        nl = text.find("\n", start)
        if nl < 0:
            raise ValueError(f"line {line} is past the end of the document")
        start = nl + 1
    end = text.find("\n", start)
    if end < 0:
        end = len(text)
    line_text = text[start:end].rstrip("\r")
    return start + min(character, len(line_text))


def read_at(path, line: int, col: int) -> str:
    """The text of `path` (a pathlib.Path), checking that the 1-based (line, col) an editor shows
    exists in it; ValueError says what is wrong. For commands that take a file and a position."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read {path}: {e}") from None
    lines = text.split("\n")
    if not 1 <= line <= len(lines):
        raise ValueError(f"--line {line} is outside {path} (1..{len(lines)})")
    width = len(lines[line - 1].rstrip("\r")) + 1
    if not 1 <= col <= width:
        raise ValueError(f"--col {col} is outside line {line} (1..{width})")
    return text


def _tail_lines(text: str, max_chars: int) -> str:
    """The last `max_chars` of text, widened forward to a line start."""
    if len(text) <= max_chars:
        return text
    cut = text[-max_chars:]
    nl = cut.find("\n")
    return cut[nl + 1:] if 0 <= nl < len(cut) - 1 else cut


def _head_lines(text: str, max_chars: int) -> str:
    """The first `max_chars` of text, narrowed back to a line end."""
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    nl = cut.rfind("\n")
    return cut[:nl + 1] if nl > 0 else cut


def collect_context(
    text: str,
    line: int,
    character: int,
    *,
    path: str,
    language: str,
    open_docs: dict[str, str] | None = None,
    max_prefix_chars: int = 4000,
    max_suffix_chars: int = 2000,
) -> Context:
    """Prefix/suffix windows at (line, character), in code points. Raises ValueError for a bad position."""
    offset = offset_of(text, line, character)
    # Only the neighbourhood is sliced, so a 10 MB document costs the same as a small one here.
    prefix = _tail_lines(text[max(0, offset - max_prefix_chars - 200):offset], max_prefix_chars)
    suffix = _head_lines(text[offset:offset + max_suffix_chars + 200], max_suffix_chars)
    if "\r\n" in prefix or "\r\n" in suffix:
        prefix, suffix = prefix.replace("\r\n", "\n"), suffix.replace("\r\n", "\n")
    return Context(prefix=prefix, suffix=suffix, path=path, language=language or language_for_path(path))
