"""Where the repository's own data lives: prompt templates, the shipped model, recipes' runs.

The package is used from a checkout (`pip install -e .`): `prompts/`, `models/` and `data/`
sit next to `ghost_lsp/`. Every module finds them here, not by counting `..` from itself.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
REPO = PACKAGE.parent
PROMPTS_DIR = REPO / "prompts"
MODELS_DIR = REPO / "models"
SHIPPED_MODEL = MODELS_DIR / "ghost-py-base"
# PyPI packages kept out of every training corpus, for evaluation (one name a line).
EVAL_RESERVED = REPO / "data" / "eval-reserved.txt"


def runs_dir() -> Path:
    """Training scratch (corpora, checkpoints): $GHOST_LSP_RUNS, else runs/ in the checkout."""
    return Path(os.environ.get("GHOST_LSP_RUNS") or REPO / "runs")


def portable(path: str | Path) -> str:
    """`path` as a model's manifest records it: relative to the checkout when inside it, so a
    shipped manifest names no one machine's folders."""
    p = Path(path).resolve()
    return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(path)
