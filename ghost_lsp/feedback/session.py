"""The feedback loop as the server holds it: one object per server process.

Keeps server.py to one call per LSP message: suggestions shown, document changes and the
accept command go to the `Tracker`; a timer on the event loop runs its survival checks
and expiries.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from ghost_lsp.feedback.infer import Tracker
from ghost_lsp.positions import line_span

log = logging.getLogger(__name__)

TICK_S = 1.0


class FeedbackLoop:
    def __init__(self, emit: Callable[[str, str, dict], None], **tracker_args):
        self.tracker = Tracker(emit, **tracker_args)
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._tick_forever())

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            try:
                self.tracker.tick()
            except Exception:  # feedback must never take the server down
                log.exception("feedback tick failed")

    def stop(self) -> None:
        """Cancel the timer and label what the accept grace still held back."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        try:
            self.tracker.flush()
        except Exception:
            log.exception("feedback flush failed")

    # -- one call per LSP message; none raises ------------------------------------------------

    def shown(self, uri: str, suggestion_id: str, suggestion: str, doc_text: str, line: int, col: int) -> None:
        try:
            offset = line_span(doc_text, line)[0] + col
            self.tracker.shown(uri, suggestion_id, suggestion, doc_text, offset)
        except Exception:
            log.exception("feedback: shown")

    def changed(self, uri: str, text: str) -> None:
        try:
            self.tracker.changed(uri, text)
        except Exception:
            log.exception("feedback: didChange")

    def closed(self, uri: str) -> None:
        try:
            self.tracker.closed(uri)
        except Exception:
            log.exception("feedback: didClose")

    def accepted(self, suggestion_id: str) -> None:
        try:
            self.tracker.accept_command(suggestion_id)
        except Exception:
            log.exception("feedback: accept command")
