"""Other open documents: the window most like the code before the cursor.

Copilot's "neighbouring tabs": slide a window of lines over each open document, score it by the
Jaccard similarity of its identifier set to the identifiers of the last lines before the cursor,
and keep the best window per document. Documents in the cursor's language come first, then the
most recently used; a time slice bounds the scan.
"""

from __future__ import annotations

import keyword
import os
import re
import time
from functools import lru_cache

from ghost_lsp.context.base import NEIGHBOURS, ContextRequest
from ghost_lsp.languages import language_for_path
from ghost_lsp.types import Context, Snippet

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Words every Python window shares: they would make unrelated windows look alike.
_STOP = frozenset(keyword.kwlist) | {"self", "cls", "None", "True", "False", "print", "len", "str", "int"}


def identifiers(text: str) -> frozenset[str]:
    return frozenset(w for w in _IDENT.findall(text) if w not in _STOP and len(w) > 1)


@lru_cache(maxsize=64)
def _windows(text: str, size: int, stride: int, max_lines: int) -> tuple[tuple[int, frozenset[str]], ...]:
    """(start line, identifiers) per window. Cached on the text itself: an unchanged open
    document is tokenized once (str caches its hash, so the lookup is cheap)."""
    lines = text.split("\n", max_lines)[:max_lines]
    out = []
    for start in range(0, max(1, len(lines) - size + stride), stride):
        ids = identifiers("\n".join(lines[start:start + size]))
        if ids:
            out.append((start, ids))
    return tuple(out)


def _display(path: str, req: ContextRequest) -> str:
    """The path as the prompt shows it: relative to the project, else the file name (an
    absolute path says where the user's home is and costs tokens)."""
    root = str(req.index.root) if req.index is not None else os.path.dirname(req.path)
    if root and os.path.isabs(path) and path.startswith(root.rstrip(os.sep) + os.sep):
        return os.path.relpath(path, root)
    return os.path.basename(path) or path


class OpenFiles:
    name = NEIGHBOURS

    def __init__(self, window_lines: int = 20, stride: int = 10, query_lines: int = 20,
                 max_docs: int = 20, max_lines: int = 5000, top: int = 3, min_score: float = 0.05):
        self.window_lines, self.stride, self.query_lines = window_lines, stride, query_lines
        self.max_docs, self.max_lines, self.top, self.min_score = max_docs, max_lines, top, min_score

    def provide(self, req: ContextRequest, ctx: Context, deadline: float) -> list[Snippet]:
        if not req.open_docs:
            return []
        query = identifiers("\n".join(ctx.prefix.split("\n")[-self.query_lines:]))
        if not query:
            return []
        lang = ctx.language
        # same language first; within it dict order = most recently used first (stable sort)
        docs = sorted(((p, t) for p, t in req.open_docs.items() if p != req.path and "\x00" not in t[:4096]),
                      key=lambda pt: language_for_path(pt[0]) != lang)[:self.max_docs]
        found: list[Snippet] = []
        for path, text in docs:
            if time.monotonic() > deadline:
                break
            best, best_start = 0.0, -1
            for start, ids in _windows(text, self.window_lines, self.stride, self.max_lines):
                score = len(query & ids) / len(query | ids)
                if score > best:
                    best, best_start = score, start
            if best >= self.min_score:
                lines = text.split("\n", best_start + self.window_lines + 1)
                body = "\n".join(lines[best_start:best_start + self.window_lines]).strip("\n")
                found.append(Snippet(path=_display(path, req), text=body + "\n", score=best, source=self.name))
        found.sort(key=lambda s: -s.score)
        return found[:self.top]
