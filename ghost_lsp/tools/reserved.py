"""The PyPI packages reserved for evaluation (data/eval-reserved.txt): never in a training
corpus (modelkit/corpus.py), so the evals may use them as held-out code (evals/sources.py)."""

from __future__ import annotations

import re
from pathlib import Path

from ghost_lsp.paths import EVAL_RESERVED


def normalise_name(name: str) -> str:
    """PEP 503 normalisation, so 'More_Itertools' matches 'more-itertools'."""
    return re.sub(r"[-_.]+", "-", name).lower()


def load_reserved(path: str | Path = EVAL_RESERVED) -> set[str]:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return {normalise_name(s.strip()) for s in lines if s.strip() and not s.startswith("#")}
