"""ghost-lsp: an AI code-autocomplete language server backed by a small local ONNX model."""

__version__ = "0.1.0"
