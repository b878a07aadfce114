"""The engine protocol every backend (local ONNX, remote HTTP) implements, and the wider one of
an engine whose model runs in this process."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ghost_lsp.engine.manifest import Manifest
from ghost_lsp.types import Candidate, SamplingParams

if TYPE_CHECKING:
    from ghost_lsp.engine.speculative import Adapt


class EngineError(RuntimeError):
    """A model could not be loaded or run; the message names the path and the cause."""


class Engine(Protocol):
    """What the completer, the evals and the model server use of any engine."""

    model_id: str
    manifest: Manifest  # the model folder's description: template family, context length, tokens
    provider: str  # what runs it, for logs: an onnxruntime execution provider, or the server's URL

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


@runtime_checkable
class LocalTokens(Protocol):
    """The model's tokens, known in this process: what the workspace n-gram cache counts in."""

    token_bytes: list[bytes]  # the bytes each token id stands for

    def encode(self, text: str) -> list[int]: ...


@runtime_checkable
class LocalEngine(Engine, LocalTokens, Protocol):
    """An engine whose model runs in this process (engine/onnx.py): its tokens are known here,
    so it keeps a KV cache per document, mixes in the workspace's n-grams, drafts tokens, and
    scores any text (the reranker). `isinstance(engine, LocalEngine)` says which kind a caller holds."""

    def generate(self, prompt: str, params: SamplingParams, cancel: threading.Event | None = None,
                 deadline: float | None = None, *, cache_key: str | None = None,
                 adapt: Adapt | None = None) -> Candidate:
        """As Engine.generate; `cache_key` names the KV-cache slot (e.g. the document), `adapt`
        mixes in the n-gram cache and turns on drafts (engine/speculative.py)."""
        ...

    def token_logprobs(self, prompt: str, continuation: str | list[int]) -> list[float]: ...
