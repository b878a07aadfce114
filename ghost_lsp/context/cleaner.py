"""The optional "prompt cleaner" hook: rewrite or compress context before the budget is spent.

Off by default. A cleaner gets the collected `Context` and returns one (it may rewrite the
snippets; a second model could summarise them here). The one built in, `strip`, drops
comment-only and blank lines from snippets so more code fits in the budget; it leaves the
prefix and suffix alone (the model must see the cursor's surroundings exactly).
"""

from __future__ import annotations

from typing import Protocol

from ghost_lsp.types import Context, Snippet

COMMENT_MARKS = {"python": "#", "ruby": "#", "shellscript": "#", "lua": "--"}


class Cleaner(Protocol):
    name: str

    def clean(self, ctx: Context) -> Context: ...


class StripComments:
    name = "strip"

    def clean(self, ctx: Context) -> Context:
        mark = COMMENT_MARKS.get(ctx.language, "//")
        out = []
        for s in ctx.snippets:
            lines = [ln for ln in s.text.split("\n") if ln.strip() and not ln.lstrip().startswith(mark)]
            if lines:
                out.append(Snippet(path=s.path, text="\n".join(lines) + "\n", score=s.score, source=s.source))
        ctx.snippets = out
        return ctx


CLEANERS = {"strip": StripComments}


def get_cleaner(name: str) -> Cleaner | None:
    """The cleaner called `name`; None for "" / "off" or an unknown name."""
    cls = CLEANERS.get(name)
    return cls() if cls else None
