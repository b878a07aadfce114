"""The current document's prefix and suffix windows around the cursor.

Windows are cut at line boundaries where possible so the model never sees half a line at the
far edge of its context (the line under the cursor is always kept whole up to the cursor).

The prefix window's far edge is anchored: it starts at the first line start at or after an
absolute document offset rounded up to a multiple of `ANCHOR_CHARS`, not at a fixed distance
from the cursor. A window sliding with the cursor would move its start about once per line
typed, and every move changes the prompt's first tokens, so the local engine (which reuses
its KV cache by the longest common token prefix of consecutive prompts) would prefill the
whole prompt again. Anchored, the start moves once per `ANCHOR_CHARS` typed; the window is
between `max_prefix_chars - ANCHOR_CHARS` and `max_prefix_chars` long.
"""

from __future__ import annotations

from ghost_lsp.languages import language_for_path
from ghost_lsp.positions import offset_of
from ghost_lsp.types import Context

# The prefix window's start moves in steps of this many characters of the document.
ANCHOR_CHARS = 1024


def _prefix_window(text: str, offset: int, max_chars: int) -> str:
    """At most `max_chars` of text before `offset`, from an anchored start widened forward to a
    line start. Only the window itself is sliced, so a 10 MB document costs the same as a small one."""
    if offset <= max_chars:
        return text[:offset]
    # A smaller max_chars gets a finer step, so the window never shrinks below half of it.
    step = max(1, min(ANCHOR_CHARS, max_chars // 2))
    start = -(-(offset - max_chars) // step) * step  # ceil to a multiple of step: >= offset - max_chars
    cut = text[start:offset]
    if text[start - 1] == "\n":  # the anchor is a line start already
        return cut
    nl = cut.find("\n")
    # No line start in the window (one long line), or only the cursor's: keep the cut as it is.
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
    prefix = _prefix_window(text, offset, max_prefix_chars)
    suffix = _head_lines(text[offset:offset + max_suffix_chars + 200], max_suffix_chars)
    if "\r\n" in prefix or "\r\n" in suffix:
        prefix, suffix = prefix.replace("\r\n", "\n"), suffix.replace("\r\n", "\n")
    return Context(prefix=prefix, suffix=suffix, path=path, language=language or language_for_path(path))
