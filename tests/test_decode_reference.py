"""The decode step's fast paths (the n-gram estimate and mix, masking and the greedy log-prob in
sampling.py, the incremental early-stop check) give exactly what the straightforward forms
below give — the code as it was before it was made fast — down to the last bit of every score,
and so the same tokens: checked on random tables and, end to end, on a real ONNX model."""

from __future__ import annotations

import random

import numpy as np
import pytest

from ghost_lsp.engine import decode as decode_mod
from ghost_lsp.engine.ngram import Estimate, MixStats, NgramModel
from ghost_lsp.engine.ngram_table import MAX_CONTEXT, NgramTable, context_hashes
from ghost_lsp.engine.sampling import choose_token, token_logprob


def slow_estimate(model: NgramModel, context):
    support, probs, est = None, None, None
    for k, h in enumerate(context_hashes(context, MAX_CONTEXT), 1):
        nxt, c = model.counts(context, k, h)
        if not len(nxt):
            break
        if support is None:
            support, idx = np.unique(nxt, return_inverse=True)
        else:
            idx = np.searchsorted(support, nxt)
        dense = np.bincount(idx, weights=c, minlength=len(support))
        total = float(dense.sum())
        if total <= 0:
            break
        distinct = int(np.count_nonzero(dense))
        probs = dense / total if probs is None else (dense + distinct * probs) / (total + distinct)
        est = (k, total, distinct)
    if probs is None:
        return None
    keep = support < model.vocab_size if model.vocab_size else slice(None)
    k, total, distinct = est
    return Estimate(support[keep], probs[keep], k, total, distinct, total / (total + distinct) * k / MAX_CONTEXT,
                    model.vocab_size)


def slow_mix(model: NgramModel, logits, context, mask=None, stats=None):
    if stats is not None:
        stats.steps += 1
    est = slow_estimate(model, context) if model.weight > 0 and model.vocab_size else None
    if est is None:
        return logits
    lam = model.weight * est.confidence
    x = np.asarray(logits, dtype=np.float32)
    m = x.max()
    lse = m + np.log(np.exp(x - m).sum())
    scores = x - np.float32(lse - np.log1p(-lam))
    t = est.tokens
    scores[t] = np.log((1.0 - lam) * np.exp(x[t] - lse) + lam * est.weights)
    if stats is not None:
        stats.matched += 1
        stats.lambda_sum += lam
        if mask is not None:
            changed = np.argmax(np.where(mask, x, -np.inf)) != np.argmax(np.where(mask, scores, -np.inf))
        else:
            changed = np.argmax(x) != np.argmax(scores)
        stats.changed += bool(changed)
    return scores


def slow_choose(logits, *, temperature=0.0, top_p=1.0, counts=None, frequency_penalty=0.0, presence_penalty=0.0,
                mask=None, rng=None):
    from ghost_lsp.engine.sampling import _draw, apply_penalties, softmax

    raw = np.asarray(logits, dtype=np.float32)
    if mask is not None:
        if not mask.any():
            raise ValueError("every token is masked")
        raw = np.where(mask, raw, -np.inf)
    penalised = raw
    if counts is not None:
        penalised = apply_penalties(raw, counts, frequency_penalty, presence_penalty)
    if temperature <= 0.0:
        tok = int(np.argmax(penalised))
        return tok, token_logprob(raw, tok)
    probs = softmax(penalised / np.float32(temperature))
    return _draw(probs, top_p, (rng or np.random.default_rng()).random())


def _model(rng: np.random.Generator, vocab: int = 60, weights=(1.0, 2.0, 4.0), length: int = 40,
           repeat: float = 0.7) -> NgramModel:
    """Tiers over token streams that repeat themselves (so long contexts are seen). Integral
    weights and small supports take the estimate's Python path, the rest its numpy path."""
    def doc(n):
        base = rng.integers(0, vocab + 4, size=rng.integers(5, length))  # a few ids past the vocabulary
        return np.concatenate([base if rng.random() < repeat else rng.integers(0, vocab, size=len(base))
                               for _ in range(n)]).astype(np.int32)
    tables = [NgramTable([doc(6) for _ in range(3)]), NgramTable([doc(4)]), NgramTable([doc(3)])]
    tiers = list(zip(tables, weights))
    return NgramModel(tiers[: rng.integers(1, 4)], vocab_size=vocab, weight=0.6)


def test_estimate_and_mix_equal_the_one_length_at_a_time_form():
    rng = np.random.default_rng(0)
    seen, sizes = 0, []
    for case in range(60):
        big = case % 3 == 2  # supports of a hundred tokens and more: the numpy path
        vocab = 150 if big else 60
        allowed = np.ones(vocab, dtype=bool)
        allowed[[3, 17]] = False
        allowed.flags.writeable = False
        model = _model(rng, vocab, (1.0, 2.0, 4.0) if case % 2 else (0.5, 1.5, 3.0), 2000 if big else 40,
                       0.0 if big else 0.7)
        for _ in range(30):
            context = [int(x) for x in rng.integers(0, vocab, size=int(rng.integers(1, 12)))]
            est_fast, est_slow = model.estimate(context), slow_estimate(model, context)
            if est_slow is None:
                assert est_fast is None
            else:
                seen += 1
                for f in ("tokens", "weights"):
                    assert np.array_equal(getattr(est_fast, f), getattr(est_slow, f))
                assert (est_fast.order, est_fast.total, est_fast.distinct, est_fast.confidence) == \
                    (est_slow.order, est_slow.total, est_slow.distinct, est_slow.confidence)
                sizes.append(len(est_slow.tokens))
            logits = rng.normal(size=vocab).astype(np.float32) * 3
            for mask in (None, allowed, np.asarray(allowed).copy()):
                a, b = MixStats(), MixStats()
                fast, slow = model.mix(logits.copy(), context, mask, a), slow_mix(model, logits.copy(), context, mask, b)
                assert np.array_equal(fast, slow) and a == b
    assert seen > 300 and max(sizes) > 64 and min(sizes) <= 64  # both paths


def test_estimate_matches_on_contexts_the_cache_has_seen_at_every_length():
    rng = np.random.default_rng(1)
    stream = np.tile(rng.integers(0, 50, size=23), 6).astype(np.int32)
    model = NgramModel([(NgramTable([stream]), 1.0), (NgramTable([stream[::-1].copy()]), 4.0)], vocab_size=50)
    orders = set()
    for end in range(1, len(stream)):
        context = list(stream[max(0, end - 12):end])
        fast, slow = model.estimate(context), slow_estimate(model, context)
        assert np.array_equal(fast.weights, slow.weights) and fast.order == slow.order
        orders.add(fast.order)
    assert MAX_CONTEXT in orders


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_choose_token_equals_the_where_and_two_pass_form(temperature):
    rng = np.random.default_rng(2)
    allowed = np.ones(500, dtype=bool)
    allowed[[0, 7, 499]] = False
    allowed.flags.writeable = False
    for i in range(200):
        logits = (rng.normal(size=500) * 4).astype(np.float32)
        logits[rng.integers(0, 500, size=3)] = logits.max()  # ties
        mask = allowed if i % 3 else rng.random(500) < 0.3
        counts = rng.integers(0, 3, size=500) if i % 4 == 0 else None
        kw = dict(temperature=temperature, counts=counts, frequency_penalty=0.5 if counts is not None else 0.0,
                  mask=mask, top_p=0.9)
        assert choose_token(logits, rng=np.random.default_rng(i), **kw) == \
            slow_choose(logits, rng=np.random.default_rng(i), **kw)


# -- end to end: a real ONNX model, the n-gram cache on, the early-stop check on ----------------

PROMPTS = ["def add(a, b):\n    return", "class Point:\n    def __init__(self, x, y):\n        self.x = x\n",
           "import os\n\nfor name in os.listdir('.'):\n    ", "x = [1, 2, 3]\ny = [", "def f(x):\n    if x:\n"]


@pytest.mark.slow
def test_generations_are_token_for_token_those_of_the_reference_code(tiny_model_dir, monkeypatch):
    from test_early_stop import SlowStopCheck

    from ghost_lsp.completion.filters import StopCheck
    from ghost_lsp.engine.ngram_index import WorkspaceNgrams
    from ghost_lsp.engine.onnx import OnnxEngine
    from ghost_lsp.engine.speculative import Adapt
    from ghost_lsp.types import Context, SamplingParams

    engine = OnnxEngine(tiny_model_dir, reuse_kv=False)
    ws = WorkspaceNgrams(engine.encode, len(engine.vocab))
    ws.set_files({f"f{i}.py": p * 3 + "\n    return self.x + self.y\n" for i, p in enumerate(PROMPTS)})

    def run(check_cls):
        out = []
        for prompt in PROMPTS:
            for temperature, multiline in ((0.0, True), (0.0, False), (0.7, True)):
                ctx = Context(prefix=prompt, suffix="", path="a.py", language="python")
                params = SamplingParams(max_new_tokens=40, temperature=temperature, seed=3,
                                        stop_check=check_cls(ctx, multiline))
                c = engine.generate(prompt, params, adapt=Adapt(ngrams=ws.model(0.6)))
                info = {k: v for k, v in c.decode_info.items() if k.startswith("ngram")}
                out.append((c.token_ids, c.logprobs, c.model_logprobs, c.text, c.finish_reason, info))
        return out

    fast = run(StopCheck)
    with monkeypatch.context() as m:
        m.setattr(NgramModel, "mix", slow_mix)
        m.setattr(decode_mod, "choose_token", slow_choose)
        slow = run(SlowStopCheck)
    assert fast == slow
    assert sum(o[5]["ngram_matched"] for o in fast) > 20  # the cache was really mixed in
    assert {o[4] for o in fast} & {"early_stop", "stop"}  # and the check really stopped some


def test_the_text_decoded_a_token_at_a_time_is_the_one_shot_decoding():
    import codecs

    from ghost_lsp.engine.decode import Generation, Vocabulary

    rng = random.Random(5)
    pieces = [b"a", b" x", "é".encode(), "€".encode()[:1], "€".encode()[1:], b"\xff", b"\xe2\x82", b"\n", "😀".encode()]
    table = pieces + [rng.choice(pieces) + rng.choice(pieces) for _ in range(20)]
    vocab = Vocabulary(table, np.zeros(len(table), dtype=bool), None, healing=False)
    for _ in range(200):
        healed = rng.choice([b"", b"a", b" x"])
        gen = Generation(vocab, healed)
        gen.remaining = b""
        gen.generated = healed
        for _ in range(rng.randint(1, 12)):
            tok = rng.randrange(len(table))
            gen.take(tok)
            one_shot = codecs.getincrementaldecoder("utf-8")("replace").decode(gen.generated[len(healed):], final=False)
            assert gen.text() == one_shot


def test_stop_search_from_where_the_last_one_ended():
    from ghost_lsp.engine.decode import first_stop

    rng = random.Random(7)
    for _ in range(300):
        stops = rng.sample(["\n\n", "def ", "\nclass", "#", "ab"], rng.randint(1, 3))
        text, seen = "", 0
        for _ in range(30):
            text += rng.choice(["a", "b", "\n", "de", "f ", "#", "\nclass", "x"])
            cut = first_stop(text, stops, seen)
            assert cut == first_stop(text, stops)
            if cut >= 0:
                break
            seen = len(text)
