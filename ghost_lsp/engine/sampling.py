"""Next-token choice from one row of logits: pure numpy, no model, no state but the RNG.

Order of operations (the same as OpenAI-style servers): mask → penalties → greedy or
(temperature → top-p → sample).

Everything runs in float32, as the logits come: numpy's float64 exp is ~8x slower here (16 rows
of an 8 k vocabulary: 1.86 vs 0.22 ms), which made the softmax most of a decode step's Python,
and a sampling probability or a log-prob needs no more than float32's 7 digits.
"""

from __future__ import annotations

import numpy as np


def log_softmax(x: np.ndarray) -> np.ndarray:
    """log-softmax over the last axis (float32); -inf entries stay -inf."""
    x = np.asarray(x, dtype=np.float32)
    m = np.max(x, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    z = x - m
    with np.errstate(divide="ignore"):
        return z - np.log(np.sum(np.exp(z), axis=-1, keepdims=True))


def softmax(x: np.ndarray) -> np.ndarray:
    """softmax over the last axis (float32); -inf entries get 0. One exp pass (exp of
    log_softmax would take two)."""
    x = np.asarray(x, dtype=np.float32)
    e = np.exp(x - np.max(x, axis=-1, keepdims=True))
    e /= np.sum(e, axis=-1, keepdims=True)
    return e


def token_logprob(x: np.ndarray, tok: int) -> float:
    """log_softmax(x)[tok] for one row, without writing the whole row's log-probs."""
    x = np.asarray(x, dtype=np.float32)
    m = x.max()
    return float(x[tok] - m - np.log(np.sum(np.exp(x - m))))


_MASKED: tuple[np.ndarray, np.ndarray] | None = None  # (a read-only mask, its False ids)


def apply_mask(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """`np.where(mask, x, -inf)` as a new array; ValueError if the mask allows nothing.

    Per decoded token: a read-only mask (the vocabulary's fixed one, engine/decode.py) is
    nearly all True, so x is copied and -inf written at its few False ids (remembered per mask),
    a fifth of the `where`'s cost; any other mask takes the `where`."""
    global _MASKED
    if mask.flags.writeable or x.dtype != np.float32 or x.shape != mask.shape:
        if not mask.any():
            raise ValueError("every token is masked")
        return np.where(mask, x, -np.inf)
    hit = _MASKED
    if hit is None or hit[0] is not mask:
        hit = _MASKED = (mask, np.flatnonzero(~mask))
    if len(hit[1]) == len(mask):
        raise ValueError("every token is masked")
    out = x.copy()
    out[hit[1]] = -np.inf
    return out


def masked_argmax(x: np.ndarray, mask: np.ndarray | None, top: int | None = None) -> int:
    """argmax(where(mask, x, -inf)): the first of equal maxima, as np.argmax. `top`: argmax(x),
    if known. When the unmasked first maximum is allowed it is the answer (one pass)."""
    if top is None:
        top = int(np.argmax(x))
    if mask is None or mask[top]:
        return top
    return int(np.argmax(apply_mask(x, mask)))


def apply_penalties(logits: np.ndarray, counts: np.ndarray, frequency_penalty: float,
                    presence_penalty: float) -> np.ndarray:
    """OpenAI semantics: logit -= frequency_penalty * count + presence_penalty * (count > 0).

    `counts[i]` is how often token i was generated so far (same length as logits). For rows of
    logits, the penalties may be columns (one per row). Returns a new array; the input is not
    modified.
    """
    if not isinstance(frequency_penalty, np.ndarray) and not frequency_penalty and not presence_penalty:
        return logits  # per decoded token: a scalar check, no numpy call
    counts = np.asarray(counts)
    return logits - (frequency_penalty * counts + presence_penalty * (counts > 0)).astype(logits.dtype)


def top_p_filter(probs: np.ndarray, top_p: float) -> np.ndarray:
    """Keep the smallest set of most probable tokens whose mass reaches top_p; renormalise."""
    if top_p >= 1.0:
        return probs
    kept = _nucleus(probs, top_p * float(np.sum(probs)))
    out = np.zeros_like(probs)
    out[kept] = probs[kept]
    return out / out.sum()


def top_p_filter_sorted(probs: np.ndarray, top_p: float) -> np.ndarray:
    """The textbook nucleus (full stable sort of the vocabulary): the oracle `top_p_filter`
    is tested against and the baseline `ghost-lsp bench --only sampling` times it against."""
    order = np.argsort(-probs, kind="stable")
    cum = np.cumsum(probs[order])
    # The mass to reach: top_p of the row's sum, as top_p_filter takes it (in float32 a
    # sequential cum[-1] differs from np.sum's pairwise sum in the last digits).
    keep_n = min(len(order), int(np.searchsorted(cum, top_p * float(np.sum(probs)), side="left")) + 1)
    out = np.zeros_like(probs)
    out[order[:keep_n]] = probs[order[:keep_n]]
    return out / out.sum()


# A full stable argsort of an 8 k vocabulary costs ~1 ms per sampled token; the nucleus needs
# only the top of it. Every token at or above a threshold is taken (ties included), so if their
# mass reaches the target they are a prefix of the full sort's order and the nucleus is the
# same. Most rows' nucleus lies within 2^-8 of the most probable token (one comparison over
# the vocabulary, then a small sort); for flatter rows one pass bins the mass by powers of two
# below the maximum and the first bin that reaches the target gives the threshold.
_FIRST_CUT = 8
_BINS = 64


def _nucleus(probs: np.ndarray, target: float) -> np.ndarray:
    """Token ids of the nucleus (the most probable tokens, ties: lower index first, until their
    mass reaches `target`), in ascending id order: the same set as the textbook full sort."""
    pmax = float(probs.max())
    order = cum = None
    for cut in (_FIRST_CUT, None):
        if pmax <= 0.0:
            break
        if cut is None:  # bin k holds the tokens with p / pmax in [2^-k, 2^(1-k))
            _, e = np.frexp(probs / pmax)
            mass = np.cumsum(np.bincount(np.clip(1 - e, 0, _BINS), weights=probs, minlength=_BINS + 1))
            cut = int(np.searchsorted(mass, target, side="left"))
            if cut >= _BINS:
                break
        cand = np.flatnonzero(probs >= pmax * 2.0 ** -cut)  # ascending ids: the stable tie order
        order = cand[np.argsort(-probs[cand], kind="stable")]
        cum = np.cumsum(probs[order])
        if cum[-1] >= target:
            break
        order = None
    if order is None:  # rounding at a bin's edge, or a tail past 2^-64: the full sort
        order = np.argsort(-probs, kind="stable")
        cum = np.cumsum(probs[order])
    keep_n = min(len(order), int(np.searchsorted(cum, target, side="left")) + 1)
    return np.sort(order[:keep_n])


_BLOCK = 128  # inverse-CDF search: block sums first, then one block's running sum


def _inverse_cdf(p: np.ndarray, u: float) -> int:
    """The index where the running sum of `p` first passes u * sum(p) (never a zero entry).

    numpy's cumsum is sequential (~3.5 ns an element: 29 µs over an 8 k vocabulary, the most of
    a sampled token's Python); summing blocks is vectorised, so only one block is scanned."""
    n = len(p)
    if n <= 4 * _BLOCK:
        cum = np.cumsum(p)
        j = min(int(np.searchsorted(cum, u * cum[-1], side="right")), n - 1)
    else:
        blocks = np.cumsum(np.add.reduceat(p, np.arange(0, n, _BLOCK)))
        target = u * blocks[-1]
        b = min(int(np.searchsorted(blocks, target, side="right")), len(blocks) - 1)
        inner = np.cumsum(p[b * _BLOCK:(b + 1) * _BLOCK])
        rest = target - (blocks[b - 1] if b else 0.0)
        j = b * _BLOCK + min(int(np.searchsorted(inner, rest, side="right")), len(inner) - 1)
    while p[j] == 0.0 and j > 0:  # float edge: landed on a zero after the last entry with mass
        j -= 1
    return j


def _draw(probs: np.ndarray, top_p: float, u: float) -> tuple[int, float]:
    """Inverse-CDF draw with the uniform number `u` from one row of probabilities, after
    top-p; returns (token id, its log-prob under the distribution drawn from). Works on the
    kept tokens only (no vocabulary-sized filtered copy): shared by choose_token and
    choose_tokens so that a batched row draws what it would alone."""
    kept = None
    if top_p < 1.0:
        kept = _nucleus(probs, top_p * float(np.sum(probs)))
        p = probs[kept]
        p = p / p.sum()
    else:
        p = probs
    j = _inverse_cdf(p, u)
    return (int(kept[j]) if kept is not None else j), float(np.log(p[j]))


def choose_token(logits: np.ndarray, *, temperature: float = 0.0, top_p: float = 1.0,
                 counts: np.ndarray | None = None, frequency_penalty: float = 0.0,
                 presence_penalty: float = 0.0, mask: np.ndarray | None = None,
                 rng: np.random.Generator | None = None) -> tuple[int, float]:
    """Pick the next token; return (token id, its log-prob).

    `mask` is a boolean array, True = allowed. The log-prob is taken under the final
    distribution the token was drawn from (after penalties, temperature and top-p). For
    greedy decoding that distribution is a point mass, so instead the log-softmax of the
    (masked) logits before penalties is returned: what the model itself thought, which is
    what a ranker wants.
    """
    raw = np.asarray(logits, dtype=np.float32)
    if mask is not None:
        raw = apply_mask(raw, mask)
    penalised = raw
    if counts is not None:
        penalised = apply_penalties(raw, counts, frequency_penalty, presence_penalty)
    if temperature <= 0.0:
        tok = int(np.argmax(penalised))
        if penalised is raw:  # the maximum is the chosen token's own score: no second pass for it
            m = raw[tok]
            if raw is not logits:  # our own copy: shift and exponentiate it in place
                np.subtract(raw, m, out=raw)
                return tok, float(m - m - np.log(np.sum(np.exp(raw, out=raw))))
            return tok, float(m - m - np.log(np.sum(np.exp(raw - m))))
        return tok, token_logprob(raw, tok)
    probs = softmax(penalised / np.float32(temperature))
    if rng is None:
        rng = np.random.default_rng()
    # Inverse-CDF draw: one uniform number per step keeps seeded runs reproducible.
    return _draw(probs, top_p, rng.random())


def choose_tokens(logits: np.ndarray, *, temperatures: np.ndarray, top_ps: np.ndarray,
                  counts: np.ndarray | None = None, frequency_penalties: np.ndarray | None = None,
                  presence_penalties: np.ndarray | None = None, mask: np.ndarray | None = None,
                  rngs: list | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`choose_token` for a batch of rows at once (one row per sequence, each with its own
    settings and RNG): the same tokens and log-probs as calling it row by row, with the
    vocabulary-wide work done in one numpy call per step instead of one per row.

    `mask` is one boolean vector shared by every row; `counts` is (rows, vocab).
    """
    raw = np.asarray(logits, dtype=np.float32)
    n = raw.shape[0]
    if mask is not None:
        raw = np.where(mask, raw, -np.inf)
    penalised = raw
    if counts is not None and frequency_penalties is not None and presence_penalties is not None and \
            (np.any(frequency_penalties) or np.any(presence_penalties)):
        penalised = apply_penalties(raw, counts, frequency_penalties[:, None], presence_penalties[:, None])
    toks = np.zeros(n, dtype=np.int64)
    lps = np.zeros(n, dtype=np.float64)
    greedy = np.flatnonzero(temperatures <= 0.0)
    if len(greedy):
        toks[greedy] = np.argmax(penalised[greedy], axis=-1)
        lps[greedy] = log_softmax(raw[greedy])[np.arange(len(greedy)), toks[greedy]]
    sampled = np.flatnonzero(temperatures > 0.0)
    if len(sampled):
        probs = softmax(penalised[sampled] / temperatures[sampled, None].astype(np.float32))
        for j, i in enumerate(sampled):
            rng = rngs[i] if rngs is not None else np.random.default_rng()
            toks[i], lps[i] = _draw(probs[j], float(top_ps[i]), rng.random())
    return toks, lps
