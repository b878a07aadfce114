"""Context collection: what the prompt may show the model about the cursor's surroundings."""

from ghost_lsp.context.window import collect_context

__all__ = ["collect_context"]
