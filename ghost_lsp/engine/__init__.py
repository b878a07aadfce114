"""Engines turn a prompt into candidates. They know nothing of LSP."""

from ghost_lsp.engine.base import Engine, EngineError

__all__ = ["Engine", "EngineError"]
