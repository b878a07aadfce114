"""Next-token choice from one row of logits: pure numpy, no model, no state but the RNG.

Order of operations (the same as OpenAI-style servers): mask → penalties → greedy or
(temperature → top-p → sample).
"""

from __future__ import annotations

import numpy as np


def log_softmax(x: np.ndarray) -> np.ndarray:
    """log-softmax over the last axis; -inf entries stay -inf."""
    x = np.asarray(x, dtype=np.float64)
    m = np.max(x, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    z = x - m
    with np.errstate(divide="ignore"):
        return z - np.log(np.sum(np.exp(z), axis=-1, keepdims=True))


def apply_penalties(logits: np.ndarray, counts: np.ndarray, frequency_penalty: float,
                    presence_penalty: float) -> np.ndarray:
    """OpenAI semantics: logit -= frequency_penalty * count + presence_penalty * (count > 0).

    `counts[i]` is how often token i was generated so far (same length as logits).
    Returns a new array; the input is not modified.
    """
    if not frequency_penalty and not presence_penalty:
        return logits
    counts = np.asarray(counts)
    return logits - (frequency_penalty * counts + presence_penalty * (counts > 0))


def _nucleus_order(probs: np.ndarray, target: float) -> np.ndarray:
    """Indices of the most probable tokens, most probable first (ties: lower index first),
    enough of them for their mass to reach `target`.

    A full stable argsort of an 8 k vocabulary costs ~1 ms per sampled token. Instead find,
    by bisection over thresholds max(p)·2^-j, a threshold whose tokens already hold the mass,
    and sort only those: every token at or above it is taken (ties included), so they are a
    prefix of the full sort's order and the nucleus is the same.
    """
    pmax = float(probs.max())
    lo, hi = 0, 64
    if pmax <= 0.0 or probs[probs >= pmax * 2.0 ** -hi].sum() < target:
        return np.argsort(-probs, kind="stable")
    while lo < hi:
        mid = (lo + hi) // 2
        if probs[probs >= pmax * 2.0 ** -mid].sum() >= target:
            hi = mid
        else:
            lo = mid + 1
    top = np.flatnonzero(probs >= pmax * 2.0 ** -lo)
    return top[np.argsort(-probs[top], kind="stable")]


def top_p_filter(probs: np.ndarray, top_p: float) -> np.ndarray:
    """Keep the smallest set of most probable tokens whose mass reaches top_p; renormalise."""
    if top_p >= 1.0:
        return probs
    total = float(np.sum(probs))
    order = _nucleus_order(probs, top_p * total)
    cum = np.cumsum(probs[order])
    # The first index where the mass reaches top_p is included, so at least one token stays.
    keep_n = min(len(order), int(np.searchsorted(cum, top_p * total, side="left")) + 1)
    out = np.zeros_like(probs)
    kept = order[:keep_n]
    out[kept] = probs[kept]
    return out / out.sum()


def top_p_filter_sorted(probs: np.ndarray, top_p: float) -> np.ndarray:
    """The textbook nucleus (full stable sort of the vocabulary): the oracle `top_p_filter`
    is tested against and the baseline `ghost-lsp bench --only sampling` times it against."""
    order = np.argsort(-probs, kind="stable")
    cum = np.cumsum(probs[order])
    keep_n = int(np.searchsorted(cum, top_p * cum[-1], side="left")) + 1
    out = np.zeros_like(probs)
    out[order[:keep_n]] = probs[order[:keep_n]]
    return out / out.sum()


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
    raw = np.asarray(logits, dtype=np.float64)
    if mask is not None:
        if not mask.any():
            raise ValueError("every token is masked")
        raw = np.where(mask, raw, -np.inf)
    penalised = raw
    if counts is not None:
        penalised = apply_penalties(raw, counts, frequency_penalty, presence_penalty)
    if temperature <= 0.0:
        tok = int(np.argmax(penalised))
        return tok, float(log_softmax(raw)[tok])
    logp = log_softmax(penalised / temperature)
    probs = np.exp(logp)
    probs = top_p_filter(probs, top_p)
    if rng is None:
        rng = np.random.default_rng()
    # Inverse-CDF draw: one uniform number per step keeps seeded runs reproducible.
    cum = np.cumsum(probs)
    tok = int(np.searchsorted(cum, rng.random() * cum[-1], side="right"))
    tok = min(tok, len(probs) - 1)
    while probs[tok] == 0.0:  # float edge: landed on a zeroed slot after the last kept one
        tok -= 1
    return tok, float(np.log(probs[tok]))


def choose_tokens(logits: np.ndarray, *, temperatures: np.ndarray, top_ps: np.ndarray,
                  counts: np.ndarray | None = None, frequency_penalties: np.ndarray | None = None,
                  presence_penalties: np.ndarray | None = None, mask: np.ndarray | None = None,
                  rngs: list | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`choose_token` for a batch of rows at once (one row per sequence, each with its own
    settings and RNG): the same tokens and log-probs as calling it row by row, with the
    vocabulary-wide work done in one numpy call per step instead of one per row.

    `mask` is one boolean vector shared by every row; `counts` is (rows, vocab).
    """
    raw = np.asarray(logits, dtype=np.float64)
    n = raw.shape[0]
    if mask is not None:
        raw = np.where(mask, raw, -np.inf)
    penalised = raw
    if counts is not None and frequency_penalties is not None and presence_penalties is not None and \
            (np.any(frequency_penalties) or np.any(presence_penalties)):
        penalised = raw - (frequency_penalties[:, None] * counts + presence_penalties[:, None] * (counts > 0))
    toks = np.zeros(n, dtype=np.int64)
    lps = np.zeros(n, dtype=np.float64)
    greedy = np.flatnonzero(temperatures <= 0.0)
    if len(greedy):
        toks[greedy] = np.argmax(penalised[greedy], axis=-1)
        lps[greedy] = log_softmax(raw[greedy])[np.arange(len(greedy)), toks[greedy]]
    sampled = np.flatnonzero(temperatures > 0.0)
    if len(sampled):
        probs = np.exp(log_softmax(penalised[sampled] / temperatures[sampled, None]))
        for j, i in enumerate(sampled):
            if top_ps[i] < 1.0:
                probs[j] = top_p_filter(probs[j], float(top_ps[i]))
        cum = np.cumsum(probs, axis=-1)
        draws = np.array([(rngs[i] if rngs is not None else np.random.default_rng()).random() for i in sampled])
        picked = np.minimum((cum <= (draws * cum[:, -1])[:, None]).sum(axis=-1), probs.shape[1] - 1)
        for j, i in enumerate(sampled):
            tok = int(picked[j])
            while probs[j, tok] == 0.0:  # float edge, as in choose_token
                tok -= 1
            toks[i], lps[i] = tok, float(np.log(probs[j, tok]))
    return toks, lps
