"""Near-duplicate files: MinHash over each file's set of normalised lines, with LSH banding."""

from __future__ import annotations

import hashlib

import numpy as np

_PRIME = (1 << 61) - 1


class NearDuplicateIndex:
    """MinHash over sets of normalised lines, with LSH banding; Jaccard ≥ threshold is a duplicate."""

    def __init__(self, num_perm: int = 64, bands: int = 16, threshold: float = 0.85, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.a = rng.integers(1, _PRIME, num_perm, dtype=np.uint64)
        self.b = rng.integers(0, _PRIME, num_perm, dtype=np.uint64)
        self.bands = bands
        self.rows = num_perm // bands
        self.threshold = threshold
        self.buckets: list[dict[bytes, list[int]]] = [{} for _ in range(bands)]
        # signatures only: the share of equal MinHash values estimates the Jaccard similarity, and
        # a signature is 512 bytes where a file's line set can be megabytes
        self.sigs: list[np.ndarray] = []

    @staticmethod
    def shingle(text: str) -> set[int]:
        lines = {l.strip() for l in text.splitlines()}
        lines.discard("")
        return {int.from_bytes(hashlib.blake2b(l.encode(), digest_size=7).digest(), "little") for l in lines}

    def signature(self, sh: set[int]) -> np.ndarray:
        x = np.fromiter(sh, dtype=np.uint64, count=len(sh))
        # (a*x + b) mod p with uint64 wraparound is a fine hash family for bucketing purposes
        return ((np.outer(self.a, x) + self.b[:, None]) % np.uint64(_PRIME)).min(axis=1)

    def _keys(self, sig: np.ndarray) -> list[bytes]:
        return [sig[i * self.rows:(i + 1) * self.rows].tobytes() for i in range(self.bands)]

    def find(self, text: str) -> tuple[bool, np.ndarray | None]:
        """(whether a near duplicate of `text` is indexed, its signature); (True, None) for empty text."""
        sh = self.shingle(text)
        if not sh:
            return True, None
        sig = self.signature(sh)
        seen: set[int] = set()
        for band, key in enumerate(self._keys(sig)):
            for idx in self.buckets[band].get(key, ()):
                if idx in seen:
                    continue
                seen.add(idx)
                if float(np.mean(self.sigs[idx] == sig)) >= self.threshold:
                    return True, sig
        return False, sig

    def add(self, sig: np.ndarray) -> None:
        idx = len(self.sigs)
        self.sigs.append(sig)
        for band, key in enumerate(self._keys(sig)):
            self.buckets[band].setdefault(key, []).append(idx)

    def add_if_new(self, text: str) -> bool:
        """Add `text`; return False (and add nothing) if a near duplicate is already indexed."""
        dup, sig = self.find(text)
        if dup:
            return False
        self.add(sig)
        return True
