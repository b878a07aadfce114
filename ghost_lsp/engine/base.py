"""The engine protocol every backend (local ONNX, remote HTTP) implements."""

from __future__ import annotations

import threading
from typing import Protocol

from ghost_lsp.types import Candidate, SamplingParams


class EngineError(RuntimeError):
    """A model could not be loaded or run; the message names the path and the cause."""


class Engine(Protocol):
    model_id: str

    def generate(
        self,
        prompt: str,
        params: SamplingParams,
        cancel: threading.Event | None = None,
        deadline: float | None = None,
    ) -> Candidate:
        """Generate one continuation of `prompt`.

        Stops at params.max_new_tokens, at a stop sequence (excluded from the text), at
        end-of-text, when `cancel` is set (checked between token steps) or when
        time.monotonic() passes `deadline`; finish_reason says which.
        """
        ...

    def count_tokens(self, text: str) -> int: ...
