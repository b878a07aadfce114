"""Training data: the corpus tokenized once into a flat uint16 array per split, random windows
from it (some in fill-in-the-middle order), and fixed validation windows."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ghost_lsp.tools.modelkit.tokenizer import EOS


def tokenize_split(corpus_dir: str | Path, split: str, tokenizer_path: str | Path) -> np.ndarray:
    """Tokenize `<split>.jsonl` into one flat array (cached as tokens_<split>.npy next to it)."""
    from tokenizers import Tokenizer

    from ghost_lsp.tools.modelkit.corpus import read_documents

    corpus_dir = Path(corpus_dir)
    cache = corpus_dir / f"tokens_{split}.npy"
    tok_mtime = os.path.getmtime(tokenizer_path)
    if cache.exists() and os.path.getmtime(cache) > tok_mtime:
        return np.load(cache, mmap_mode="r")
    arr = tokenize_texts([d.text for d in read_documents(corpus_dir / f"{split}.jsonl")],
                         Tokenizer.from_file(str(tokenizer_path)))
    np.save(cache, arr)
    return arr


def tokenize_texts(texts: list[str], tok) -> np.ndarray:
    """Documents as one flat uint16 array, each followed by end-of-text, as the corpus is trained on."""
    eos = tok.token_to_id(EOS)
    parts = []
    for i in range(0, len(texts), 256):
        for enc in tok.encode_batch(texts[i:i + 256]):
            parts.append(np.asarray(enc.ids, dtype=np.uint16))
            parts.append(np.asarray([eos], dtype=np.uint16))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint16)


class Batcher:
    """Random windows from a flat token array, some rearranged into FIM order."""

    def __init__(self, tokens: np.ndarray, context: int, special: dict[str, int], fim_rate: float, seed: int):
        if len(tokens) <= context + 1:
            raise ValueError(f"corpus too small: {len(tokens)} tokens for context {context}")
        self.tokens = tokens
        self.context = context
        self.sp = special
        self.fim_rate = fim_rate
        self.rng = np.random.default_rng(seed)

    def sample(self) -> np.ndarray:
        """One sequence of context+1 tokens (inputs are [:-1], targets [1:])."""
        n = self.context + 1
        if self.rng.random() >= self.fim_rate:
            start = self.rng.integers(0, len(self.tokens) - n)
            return np.asarray(self.tokens[start:start + n], dtype=np.int64)
        body = n - 4  # three sentinels + end-of-text
        start = self.rng.integers(0, len(self.tokens) - body)
        w = np.asarray(self.tokens[start:start + body], dtype=np.int64)
        # a FIM sample should not span two documents: cut at the first end-of-text
        eos_at = np.flatnonzero(w == self.sp["eos"])
        if len(eos_at) and eos_at[0] > 8:
            w = w[:eos_at[0]]
        i, j = sorted(self.rng.integers(0, len(w) + 1, 2))
        seq = np.concatenate([
            [self.sp["prefix"]], w[:i], [self.sp["suffix"]], w[j:], [self.sp["middle"]], w[i:j], [self.sp["eos"]],
        ])
        if len(seq) < n:  # pad with ordinary text after the end-of-text
            extra_start = self.rng.integers(0, len(self.tokens) - (n - len(seq)))
            seq = np.concatenate([seq, self.tokens[extra_start:extra_start + n - len(seq)]])
        return seq[:n].astype(np.int64)

    def batch(self, size: int) -> np.ndarray:
        return np.stack([self.sample() for _ in range(size)])


def fixed_windows(tokens: np.ndarray, context: int, count: int, seed: int = 0) -> np.ndarray:
    """Deterministic plain windows for validation loss (same windows for every model)."""
    rng = np.random.default_rng(seed)
    n = context + 1
    starts = rng.integers(0, max(1, len(tokens) - n), count)
    return np.stack([np.asarray(tokens[s:s + n], dtype=np.int64) for s in starts])
