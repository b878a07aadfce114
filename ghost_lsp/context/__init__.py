"""Context collection: what the prompt may show the model about the cursor's surroundings.

`gather` = the current document's windows (required) + every provider's snippets (each may
fail or run late alone, see base.FanOut) + the optional cleaner.
"""

from __future__ import annotations

from ghost_lsp.context.base import ContextRequest, FanOut, Provider, ProviderReport
from ghost_lsp.context.cleaner import get_cleaner
from ghost_lsp.context.window import collect_context
from ghost_lsp.types import Context

PROVIDERS = ("open_files", "project")


def make_providers(names: tuple[str, ...] | list[str] = PROVIDERS) -> list[Provider]:
    """Providers by name, in priority order; unknown names are ignored (settings warn)."""
    from ghost_lsp.context.neighbours import OpenFiles
    from ghost_lsp.context.project import ProjectDefinitions

    known = {"open_files": OpenFiles, "project": ProjectDefinitions}
    return [known[n]() for n in names if n in known]


def gather(req: ContextRequest, fanout: FanOut | None = None, cleaner: str = "",
           reports: list[ProviderReport] | None = None) -> Context:
    """The full Context for `req`. Raises ValueError only for a position not in the document."""
    ctx = collect_context(req.text, req.line, req.character, path=req.path, language=req.language)
    if fanout is not None:
        got = fanout.run(req, ctx)
        if reports is not None:
            reports.extend(got)
    c = get_cleaner(cleaner) if cleaner else None
    if c is not None and ctx.snippets:
        ctx = c.clean(ctx)
    return ctx


__all__ = ["ContextRequest", "FanOut", "ProviderReport", "collect_context", "gather", "make_providers", "PROVIDERS"]
