"""The current document's prefix and suffix windows around the cursor.

Windows are cut at line boundaries where possible so the model never sees half a line at the
far edge of its context (the line under the cursor is always kept whole up to the cursor).
"""

from __future__ import annotations

from ghost_lsp.languages import language_for_path
from ghost_lsp.positions import offset_of
from ghost_lsp.types import Context

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
