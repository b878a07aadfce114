"""Context providers behind one small interface, called through a fan-out that survives failure.

The current document's windows are required (a bad position means no completion); every other
provider only adds `Snippet`s and may fail or run late alone: the fan-out logs it and goes on
without it, so one broken provider never fails a completion.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from ghost_lsp.types import Context, Snippet

if TYPE_CHECKING:
    from ghost_lsp.context.index import ProjectIndex

log = logging.getLogger(__name__)

# Snippet.source values the prompt budget orders by (definitions before neighbour windows).
DEFINITIONS = "project"
NEIGHBOURS = "open_files"


@dataclass
class ContextRequest:
    """What providers may look at for one cursor position."""

    text: str
    line: int
    character: int
    path: str
    language: str
    # other open documents, path -> text, most recently used first
    open_docs: dict[str, str] = field(default_factory=dict)
    index: "ProjectIndex | None" = None


class Provider(Protocol):
    """Adds snippets to `ctx` (whose prefix/suffix are already set). Must check `deadline`
    (time.monotonic()) in its loops and return what it has when it passes."""

    name: str

    def provide(self, req: ContextRequest, ctx: Context, deadline: float) -> list[Snippet]: ...


@dataclass
class ProviderReport:
    name: str
    ms: float
    snippets: int
    status: str  # "ok" | "failed: ..." | "late" (result dropped)


class FanOut:
    """Runs providers in order, each within its time slice; remembers the last run's reports."""

    def __init__(self, providers: list[Provider], slice_ms: float = 15.0):
        self.providers = providers
        self.slice_ms = slice_ms
        self._complaints: dict[str, int] = {}

    def _complain(self, name: str, message: str, exc_info: bool = False) -> None:
        # First time and then every 100th, so a broken provider cannot flood the log.
        n = self._complaints.get(name, 0)
        self._complaints[name] = n + 1
        if n % 100 == 0:
            log.warning("context provider %s %s (skipped; %d time(s) so far)", name, message, n + 1,
                        exc_info=exc_info)

    def run(self, req: ContextRequest, ctx: Context) -> list[ProviderReport]:
        reports = []
        for p in self.providers:
            t0 = time.perf_counter()
            deadline = time.monotonic() + self.slice_ms / 1000
            try:
                got = p.provide(req, ctx, deadline)
            except Exception as e:  # noqa: BLE001 - any provider failure is survivable
                ms = (time.perf_counter() - t0) * 1000
                self._complain(p.name, f"failed: {type(e).__name__}: {e}", exc_info=True)
                reports.append(ProviderReport(p.name, ms, 0, f"failed: {type(e).__name__}"))
                continue
            ms = (time.perf_counter() - t0) * 1000
            # A little grace over the slice: the check is cooperative, timers are coarse.
            if ms > self.slice_ms * 1.5 + 1:
                self._complain(p.name, f"took {ms:.1f} ms, over its {self.slice_ms:.0f} ms slice")
                reports.append(ProviderReport(p.name, ms, 0, "late"))
                continue
            for s in got:
                s.source = s.source or p.name
            ctx.snippets.extend(got)
            reports.append(ProviderReport(p.name, ms, len(got), "ok"))
        return reports
