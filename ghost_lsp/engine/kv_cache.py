"""The engine's KV cache across requests: the model state of recent prompts, reused by the next
prompt that shares a prefix with one of them (a user typing one character more)."""

from __future__ import annotations

import numpy as np

class KvEntry:
    """The cache of one token sequence: its past key/values and the logits at marked lengths."""

    __slots__ = ("ids", "key", "marks", "nbytes", "past")

    def __init__(self, key, ids: list[int], past: dict[str, np.ndarray], marks: dict[int, np.ndarray]):
        self.key, self.ids, self.past, self.marks = key, ids, past, marks
        self.nbytes = sum(a.nbytes for a in past.values()) + sum(m.nbytes for m in marks.values())


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class KvCache:
    """Past key/values of the last few token sequences, least recently used evicted first.

    One entry per key (the engine's callers key by document), so typing in one file does not
    evict another file's cache; a lookup may still use any entry, since a shared prefix is a
    shared prefix whichever document it came from. Bounded by entry count and bytes.
    """

    def __init__(self, max_entries: int = 4, max_bytes: int = 64 << 20):
        self.max_entries = max(0, int(max_entries))
        self.max_bytes = max(0, int(max_bytes))
        self._entries: list[KvEntry] = []  # least recently used first
        self.hits = self.misses = 0
        self.reused_tokens = self.run_tokens = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self._entries)

    def clear(self) -> None:
        self._entries.clear()

    def lookup(self, ids: list[int]) -> tuple[KvEntry | None, int]:
        """The entry sharing the longest token prefix with `ids`, and that prefix length."""
        best, best_n = None, 0
        for e in self._entries:
            n = common_prefix(e.ids, ids)
            if n > best_n:
                best, best_n = e, n
        if best is not None:
            self._entries.remove(best)
            self._entries.append(best)
        return best, best_n

    def put(self, key, ids: list[int], past: dict[str, np.ndarray], marks: dict[int, np.ndarray],
            base: KvEntry | None = None) -> None:
        """Store a sequence's cache; it replaces the entry of the same key, or (keyless) the
        entry it was computed from, which it extends or supersedes."""
        if self.max_entries == 0:
            return
        entry = KvEntry(key, list(ids), past, marks)
        if entry.nbytes > self.max_bytes:
            return
        self._entries = [e for e in self._entries
                         if not ((key is not None and e.key == key) or (key is None and e is base))]
        self._entries.append(entry)
        while len(self._entries) > self.max_entries or self.nbytes > self.max_bytes:
            self._entries.pop(0)

    def stats(self) -> dict:
        total = self.reused_tokens + self.run_tokens
        return {"entries": len(self._entries), "bytes": self.nbytes, "hits": self.hits,
                "misses": self.misses, "reused_tokens": self.reused_tokens,
                "run_tokens": self.run_tokens,
                "token_reuse": round(self.reused_tokens / total, 4) if total else 0.0}
