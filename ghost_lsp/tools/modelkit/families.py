"""The export's view of the model families (the table and detection live in the runtime,
engine/families.py, because the GGUF engine detects them too), and the tokenizer fix one family
needs before its tokenizer.json ships."""

from __future__ import annotations

from ghost_lsp.engine.families import (FAMILIES, NO_FIM_TYPES, Detection, Family, FamilyError,  # noqa: F401
                                       detect_family)

__all__ = ["FAMILIES", "NO_FIM_TYPES", "Detection", "Family", "FamilyError", "detect_family", "shipped_tokenizer"]


def shipped_tokenizer(family: str, tokenizer_json: str) -> str | None:
    """The tokenizer.json text to ship when the family's template needs it changed, else None.

    Code Llama: an older tokenizer.json puts SentencePiece's dummy "▁" before every piece
    between special tokens (a Prepend normalizer), so "▁<SUF>{suffix}" would gain a space the
    model never saw after <SUF>. Moved to a Metaspace pre-tokenizer that prepends to the text's
    first piece only (what transformers' Llama conversion writes today), the prompt's tokens are
    exactly infilling_prompt_tokens'; plain text still gets its one leading "▁".
    """
    import json

    if family != "codellama":
        return None
    data = json.loads(tokenizer_json)
    norm = data.get("normalizer") or {}
    steps = norm.get("normalizers", []) if norm.get("type") == "Sequence" else [norm]
    if not any(step.get("type") == "Prepend" for step in steps):
        return None
    data["normalizer"] = None  # Metaspace also turns spaces into "▁"
    data["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False}
    return json.dumps(data, ensure_ascii=False)
