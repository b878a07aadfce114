"""A token n-gram model over the user's own code, and its mix with the neural model.

Why: a model small enough to answer in milliseconds knows little of any one project, yet code
repeats itself inside a project (its identifiers, call patterns, idioms). Cache language models
for code and kNN-LM both mix a retrieval distribution into the model's; this is the n-gram form.

The counts are `NgramTable`s (engine/ngram_table.py: how they are stored and looked up).

Estimate (`NgramModel.estimate`): several tables (tiers: the current document, the other open
documents, the project) are summed with weights, then interpolated Witten-Bell from context
length 1 up to the longest context seen:
    p_k(w) = (c_k(w) + u_k * p_{k-1}(w)) / (C_k + u_k)
with c_k the weighted counts after the k-token context, C_k their sum, u_k how many distinct
tokens followed it; p_1 is the maximum-likelihood estimate. No unigram level: where not even the
last token was seen, the cache knows nothing and the model decides alone.

Mix (`NgramModel.mix`): p = (1 - λ) p_model + λ p_cache, with λ = weight * C_K / (C_K + u_K) *
K / MAX_CONTEXT for the longest matched context length K: high when a long context was seen
often and always went the same way, low for a one-token context with many continuations. The
decoding rule (greedy, penalties, temperature, top-p, healing masks) then runs on log p, so the
log-probs the filters and the ranker see are the mixed ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ghost_lsp.engine.ngram_table import MAX_CONTEXT, NgramTable, context_hash, context_hashes
from ghost_lsp.engine.sampling import masked_argmax

# Supports up to this many entries after the last token: the estimate's sums and recursion in
# Python floats. A decode step runs right after the model, when numpy's code and data are out
# of the caches: there a dozen small numpy calls cost more than the arithmetic in Python.
_SMALL = 64


def _small_estimate(toks: list, cnts: list, weights: list, rows: list, n_orders: int, vocab_size: int):
    """(support below vocab_size, probs, (order, total, distinct)) from the look-ups, in Python
    floats: the same IEEE operations, in the same order, as the numpy path (whose sums of
    integral counts are exact in any order); None where a token after a longer context is not
    in the support (only a hash collision does that: the numpy path decides then)."""
    lists = [t.tolist() for t in toks]
    support = sorted({x for t, r in zip(lists, rows) if r == 0 for x in t})
    pos = {x: i for i, x in enumerate(support)}
    width = len(support)
    dense = [[0.0] * width for _ in range(n_orders)]
    for t, c, w, r in zip(lists, cnts, weights, rows):
        row = dense[r]
        for x, v in zip(t, c.tolist()):
            i = pos.get(x)
            if i is None:
                return None
            row[i] += v * w
    probs, est = None, None
    for k in range(n_orders):
        row = dense[k]
        total = sum(row)
        if total <= 0:
            break
        distinct = width - row.count(0.0)
        if probs is None:
            probs = [v / total for v in row]
        else:
            d = total + distinct
            probs = [(v + distinct * p) / d for v, p in zip(row, probs)]
        est = (k + 1, total, distinct)
    if probs is None:
        return None
    if vocab_size and support[-1] >= vocab_size:  # ids past the model's vocabulary: dropped
        probs = [p for x, p in zip(support, probs) if x < vocab_size]
        support = [x for x in support if x < vocab_size]
    return np.array(support, dtype=np.int32), np.array(probs, dtype=np.float64), est


@dataclass
class Estimate:
    """The cache's view of the next token: a distribution over the tokens it has seen follow the
    context (sparse: `tokens` sorted, `weights` summing to 1) and how much to trust it."""

    tokens: np.ndarray  # ids with non-zero probability
    weights: np.ndarray
    order: int          # longest context length that was seen (K)
    total: float        # C_K, weighted
    distinct: int       # u_K
    confidence: float   # C_K / (C_K + u_K) * K / MAX_CONTEXT, in [0, 1)
    vocab_size: int = 0

    @property
    def probs(self) -> np.ndarray:
        """Dense over the vocabulary (for tests and debugging; decoding uses the sparse form)."""
        out = np.zeros(max(self.vocab_size, int(self.tokens.max()) + 1 if len(self.tokens) else 0))
        out[self.tokens] = self.weights
        return out


@dataclass
class MixStats:
    """What the cache did during one generation (reported in Candidate.decode_info)."""

    steps: int = 0          # decode steps
    matched: int = 0        # steps where the cache had an estimate (λ > 0)
    lambda_sum: float = 0.0
    changed: int = 0        # steps where the mix changed the model's top token


@dataclass
class NgramModel:
    """Weighted tiers of n-gram tables seen as one model (a snapshot: tables are immutable)."""

    tiers: list[tuple[NgramTable, float]] = field(default_factory=list)
    vocab_size: int = 0
    weight: float = 0.6  # the largest λ

    @property
    def tokens(self) -> int:
        return sum(t.tokens for t, _ in self.tiers)

    def counts(self, context: list[int], k: int, h: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Weighted (next tokens, counts) after the last k tokens, all tiers (a token may repeat).
        `h`: the context's hash, if known."""
        toks, cnts = [], []
        if h is None:
            if len(context) < k:
                return np.empty(0, np.int32), np.empty(0, np.float32)
            h = context_hash(context, k)
        for table, w in self.tiers:
            nxt, c = table.lookup_hash(h, k)
            if len(nxt):
                toks.append(nxt)
                cnts.append(c * w)
        if not toks:
            return np.empty(0, np.int32), np.empty(0, np.float32)
        if len(toks) == 1:
            return toks[0], cnts[0]
        return np.concatenate(toks), np.concatenate(cnts)

    def _orders(self) -> list[list[tuple]]:
        """Per context length: each tier's (hashes, offsets, next tokens, counts, weight), built
        once per snapshot so a decode step's look-ups touch no attributes."""
        got = getattr(self, "_by_order", None)
        if got is None or got[0] is not self.tiers:
            got = self._by_order = (self.tiers, [[(*t.orders[k], w) for t, w in self.tiers]
                                                 for k in range(MAX_CONTEXT)])
        return got[1]

    def estimate(self, context: list[int]) -> Estimate | None:
        """Interpolated Witten-Bell estimate of the next token, or None if the cache never saw
        the last token followed by anything. Computed over the tokens seen after the last token
        only (every longer context's continuations are among them).

        Per decode step: one binary search per context length and table, then the counts of
        every length and table weighted and binned in one matrix (one bincount: each bin sums
        its tables in the same order as a bincount per length would), then the recursion
        p_k = (c_k + u_k p_{k-1}) / (C_k + u_k) row by row in place. The same float operations
        as one length at a time (tests/test_decode_reference.py holds it to that form), in a
        few numpy calls instead of a dozen per length."""
        hashes = context_hashes(context, MAX_CONTEXT)
        if not hashes:
            return None
        queries = np.array(hashes, dtype=np.uint64)
        orders = self._orders()
        toks, cnts, weights, sizes, rows = [], [], [], [], []
        n_orders, alive = 0, range(len(self.tiers))
        for k in range(len(hashes)):
            q, seen = queries[k], []
            for j in alive:
                uh, offsets, nxt, counts, w = orders[k][j]
                i = uh.searchsorted(q)
                if i < len(uh) and uh[i] == q:
                    lo, hi = offsets[i], offsets[i + 1]
                    toks.append(nxt[lo:hi])
                    cnts.append(counts[lo:hi])
                    weights.append(w)
                    sizes.append(hi - lo)
                    rows.append(k)
                    seen.append(j)
            if not seen:
                break
            # a table that never saw the k-token context never saw a longer one (the longer
            # context's position holds the shorter one too): only a hash collision could differ
            n_orders, alive = k + 1, seen
        if not n_orders:
            return None
        first = sum(size for size, row in zip(sizes, rows) if row == 0)
        if first <= _SMALL and self._exact_in_python():
            got = _small_estimate(toks, cnts, weights, rows, n_orders, self.vocab_size)
            if got is not None:
                support, probs, (k, total, distinct) = got
                return Estimate(support, probs, k, total, distinct, total / (total + distinct) * k / MAX_CONTEXT,
                                self.vocab_size)
        if len(toks) > 1:
            toks, cnts = np.concatenate(toks), np.concatenate(cnts)
            # each table's counts times its weight, in float32 as count * weight per table would be
            cnts = cnts * np.repeat(np.array(weights, dtype=np.float32), sizes)
        else:
            toks, cnts = toks[0], cnts[0] * weights[0]
        support = np.unique(toks[:first])  # the tokens seen after the last token
        idx = np.searchsorted(support, toks)  # (on the first rows: np.unique's inverse)
        width = len(support)
        if n_orders > 1:
            idx += np.repeat(np.array(rows, dtype=np.intp) * width, sizes)
        dense = np.bincount(idx, weights=cnts, minlength=n_orders * width).reshape(n_orders, width)
        totals = dense.sum(axis=1).tolist()
        distincts = np.count_nonzero(dense, axis=1).tolist()
        probs, est = None, None
        for k in range(n_orders):
            total, distinct = totals[k], distincts[k]
            if total <= 0:
                break
            if probs is None:
                probs = dense[k] / total
            else:  # (dense + distinct * probs) / (total + distinct), in place
                np.multiply(probs, distinct, out=probs)
                np.add(dense[k], probs, out=probs)
                np.divide(probs, total + distinct, out=probs)
            est = (k + 1, total, distinct)
        if probs is None:
            return None
        return self._estimate_of(support, probs, est)

    def _estimate_of(self, support: np.ndarray, probs: np.ndarray, est: tuple) -> Estimate:
        keep = support < self.vocab_size if self.vocab_size else slice(None)
        k, total, distinct = est
        return Estimate(support[keep], probs[keep], k, total, distinct, total / (total + distinct) * k / MAX_CONTEXT,
                        self.vocab_size)

    def _exact_in_python(self) -> bool:
        """Whether every weighted count is an integer below 2^24 (integral weights up to 16,
        tables under 2^20 tokens), so float32 products and float64 sums of them are exact."""
        got = getattr(self, "_integral", None)
        if got is None or got[0] is not self.tiers:
            ok = all(float(w).is_integer() and 0 <= w <= 16 and t.tokens < 1 << 20 for t, w in self.tiers)
            got = self._integral = (self.tiers, ok)
        return got[1]

    def mix(self, logits: np.ndarray, context: list[int], mask: np.ndarray | None = None,
            stats: MixStats | None = None) -> np.ndarray:
        """Scores to decode from: log((1 - λ) softmax(logits) + λ p_cache); the logits unchanged
        when the cache has nothing (so a cold cache decodes exactly as the model alone)."""
        if stats is not None:
            stats.steps += 1
        est = self.estimate(context) if self.weight > 0 and self.vocab_size else None
        if est is None:
            return logits
        lam = self.weight * est.confidence
        x = np.asarray(logits, dtype=np.float32)  # float32 as sampling.py (float64 exp is slow)
        top = int(np.argmax(x))
        m = x[top]  # x.max(), without a second pass
        lse = m + np.log(np.exp(x - m).sum())
        # log((1 - λ) p) everywhere, then the cache's tokens get their mixed mass
        scores = x - np.float32(lse - np.log1p(-lam))
        t = est.tokens
        scores[t] = np.log((1.0 - lam) * np.exp(x[t] - lse) + lam * est.weights)
        if stats is not None:
            stats.matched += 1
            stats.lambda_sum += lam
            stats.changed += bool(masked_argmax(x, mask, top) != masked_argmax(scores, mask))
        return scores

    def draft(self, context: list[int], max_tokens: int, min_share: float = 0.5) -> list[int]:
        """Continue `context` by the cache's most frequent next token while it is a clear
        majority (share ≥ min_share after the longest seen context of ≥ 2 tokens)."""
        ctx = list(context[-MAX_CONTEXT:])
        out: list[int] = []
        while len(out) < max_tokens:
            best = None
            hashes = context_hashes(ctx, MAX_CONTEXT)
            for k in range(len(hashes), 1, -1):
                nxt, c = self.counts(ctx, k, hashes[k - 1])
                if len(nxt):
                    if len(nxt) > 1:
                        uniq, inv = np.unique(nxt, return_inverse=True)
                        c = np.bincount(inv, weights=c)
                        nxt = uniq
                    i = int(np.argmax(c))
                    if c[i] >= min_share * float(c.sum()):
                        best = int(nxt[i])
                    break
            if best is None:
                break
            out.append(best)
            ctx = (ctx + [best])[-MAX_CONTEXT:]
        return out
