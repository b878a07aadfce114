"""The forward (type-through) cache: answer from the current suggestion while the user types
what it predicted. A request-level speed-up that runs no model; pure and clock-injected, so it
is tested without a server (the adaptive debounce is its sibling, debounce.py)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace

from ghost_lsp.completion.prompt import prompt_hash
from ghost_lsp.types import Completion


@dataclass
class _Shown:
    prefix: str
    suffix: str
    completion: Completion


class ForwardCache:
    """The last suggestion per document, to answer while the user types it.

    When the text before the cursor is the old one plus characters the suggestion predicted,
    and the text after the cursor is unchanged, the rest of the suggestion is the answer, as
    the model already said. Any other edit is a miss (the entry is replaced after the model
    runs again).
    """

    def __init__(self, max_docs: int = 64):
        self.max_docs = max_docs
        self._docs: OrderedDict[str, _Shown] = OrderedDict()
        self.hits = self.misses = 0

    def put(self, uri: str, prefix: str, suffix: str, completion: Completion) -> None:
        if not completion.text:
            return
        self._docs.pop(uri, None)
        self._docs[uri] = _Shown(prefix, suffix, completion)
        while len(self._docs) > self.max_docs:
            self._docs.popitem(last=False)

    def forget(self, uri: str) -> None:
        self._docs.pop(uri, None)

    def clear(self) -> None:
        """Drop every shown suggestion (the settings changed: another model or filters may answer)."""
        self._docs.clear()

    def get(self, uri: str, prefix: str, suffix: str, new_id: Callable[[], str]) -> Completion | None:
        shown = self._docs.get(uri)
        hit = self._match(shown, prefix, suffix)
        if hit is None:
            self.misses += 1
            return None
        self.hits += 1
        self._docs.move_to_end(uri)
        typed, c = hit, shown.completion
        alternatives = [a[len(typed):] for a in c.alternatives
                        if a.startswith(typed) and a[len(typed):].strip()]
        # The rest of the suggestion continues the old prompt plus what was typed: the feedback
        # log (and a fine-tune on it) must pair it with that prompt, not the old one.
        prompt = c.prompt + typed if c.prompt else c.prompt
        hashed = prompt_hash(prompt) if c.prompt else c.prompt_hash
        return replace(c, id=new_id(), text=c.text[len(typed):], alternatives=alternatives,
                       timings_ms={"forward_cache": 1.0}, cut_reasons=list(c.cut_reasons),
                       prompt=prompt, prompt_hash=hashed)

    @staticmethod
    def _match(shown: _Shown | None, prefix: str, suffix: str) -> str | None:
        """The typed part of the suggestion, or None when the request is not a type-through."""
        if shown is None or suffix != shown.suffix or not prefix.startswith(shown.prefix):
            return None
        typed = prefix[len(shown.prefix):]
        text = shown.completion.text
        # The same position again (re-triggered, or invoked by hand) asks the model anew:
        # the KV cache makes that cheap, and the answer may have had reasons to change.
        if not typed or not text.startswith(typed) or not text[len(typed):].strip():
            return None
        return typed
