"""Feedback: what was shown, what was accepted (SQLite, written off the request path)."""

from ghost_lsp.feedback.store import FeedbackStore, uri_hash

__all__ = ["FeedbackStore", "uri_hash"]
