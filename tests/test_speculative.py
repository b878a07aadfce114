"""Speculative decoding equals plain decoding token for token (fp32 tiny model: greedy, seeded
sampling with penalties, token healing, the n-gram mix), with fewer model calls, a correctly
trimmed KV cache, and a fallback for graphs that return only the last position."""

import numpy as np
import pytest

from ghost_lsp.engine.ngram import NgramModel
from ghost_lsp.engine.ngram_table import NgramTable
from ghost_lsp.engine.onnx import OnnxEngine
from ghost_lsp.engine.speculative import Adapt, prompt_lookup
from ghost_lsp.types import SamplingParams

# Ends in a newline + indentation: token healing re-spells the tail.
PROMPT = "def add(a, b):\n    return a + b\n\ndef add(a, b):\n    return a + b\n\ndef add(a, b):\n    "
SAMPLED = SamplingParams(max_new_tokens=24, temperature=0.9, top_p=0.9, frequency_penalty=0.4,
                         presence_penalty=0.3, seed=7)
GREEDY = SamplingParams(max_new_tokens=24)


def test_prompt_lookup_takes_what_followed_the_last_occurrence():
    ctx = [1, 2, 3, 4, 9, 1, 2, 3, 5, 6, 2, 3]
    assert prompt_lookup(ctx, 2) == [5, 6]  # most recent earlier [2, 3]... via the longest n first
    assert prompt_lookup([1, 2, 3, 7, 1, 2, 3], 3) == [7, 1, 2]
    assert prompt_lookup([1, 2, 3], 4) == []
    assert prompt_lookup([4, 4], 0) == []


@pytest.fixture(scope="module")
def engine(tiny_model_dir_fp32):
    return OnnxEngine(tiny_model_dir_fp32, reuse_kv=False)


def _oracle(target: list[int], n_prompt: int, wrong_every: int = 3):
    """A drafter that proposes the plain output with every `wrong_every`-th token wrong: drafts
    are then accepted in part and rejected in part."""
    def draft(context, n):
        done = len(context) - n_prompt
        out = list(target[done:done + n])
        for i in range(len(out)):
            if (done + i) % wrong_every == wrong_every - 1:
                out[i] = (out[i] + 1) % 50
        return out
    return draft


@pytest.mark.parametrize("params", [GREEDY, SAMPLED], ids=["greedy", "seeded-sampling"])
def test_partial_acceptance_equals_plain_decoding(engine, params):
    plain = engine.generate(PROMPT, params)
    assert len(plain.token_ids) >= 8
    from ghost_lsp.engine.healing import heal_prompt

    n_prompt = len(heal_prompt(engine.encode(PROMPT), engine.token_bytes)[0])
    spec = engine.generate(PROMPT, params, adapt=Adapt(draft_tokens=6, drafter=_oracle(plain.token_ids, n_prompt)))
    assert spec.token_ids == plain.token_ids and spec.text == plain.text
    assert spec.logprobs == pytest.approx(plain.logprobs, abs=1e-4)
    info = spec.decode_info
    assert 0 < info["draft_accepted"] < info["draft_tokens"]  # some accepted, some rejected
    assert info["decode_calls"] < plain.decode_info["decode_calls"]


@pytest.mark.parametrize("params", [GREEDY, SAMPLED], ids=["greedy", "seeded-sampling"])
def test_prompt_lookup_and_ngram_mix_equal_plain_decoding(engine, params):
    toks = np.array(engine.encode(PROMPT * 3), dtype=np.int32)
    cache = NgramModel([(NgramTable([toks]), 1.0)], vocab_size=len(engine.token_bytes), weight=0.9)
    mixed = engine.generate(PROMPT, params, adapt=Adapt(ngrams=cache, draft_tokens=0))
    fast = engine.generate(PROMPT, params, adapt=Adapt(ngrams=cache, draft_tokens=8))
    assert fast.token_ids == mixed.token_ids and fast.text == mixed.text
    assert fast.model_logprobs == pytest.approx(mixed.model_logprobs, abs=1e-4)
    assert fast.decode_info["draft_tokens"] > 0
    assert mixed.decode_info["ngram_matched"] > 0
    plain = engine.generate(PROMPT, params)
    assert engine.generate(PROMPT, params, adapt=Adapt(draft_tokens=8)).token_ids == plain.token_ids


def test_kv_cache_is_trimmed_to_the_chosen_tokens(tiny_model_dir_fp32):
    plain_engine = OnnxEngine(tiny_model_dir_fp32)
    spec_engine = OnnxEngine(tiny_model_dir_fp32)
    plain = plain_engine.generate(PROMPT, GREEDY, cache_key="d")
    from ghost_lsp.engine.healing import heal_prompt

    n_prompt = len(heal_prompt(spec_engine.encode(PROMPT), spec_engine.token_bytes)[0])
    spec = spec_engine.generate(PROMPT, GREEDY, cache_key="d",
                                adapt=Adapt(draft_tokens=5, drafter=_oracle(plain.token_ids, n_prompt, 4)))
    assert spec.token_ids == plain.token_ids
    (a,), (b,) = plain_engine.kv_cache._entries, spec_engine.kv_cache._entries
    assert a.ids == b.ids
    for name in a.past:
        assert a.past[name].shape == b.past[name].shape
        np.testing.assert_allclose(a.past[name], b.past[name], atol=1e-4)
    # the next keystroke reuses it: same continuation as a fresh engine
    again = spec_engine.generate(PROMPT + "ret", GREEDY, cache_key="d")
    assert again.token_ids == OnnxEngine(tiny_model_dir_fp32).generate(PROMPT + "ret", GREEDY).token_ids


def test_graph_with_last_position_logits_only_falls_back_to_plain(engine):
    plain = engine.generate(PROMPT, GREEDY)
    decoder = engine.decoder
    real_run = decoder.run

    def last_only(ids, past, *args, **kwargs):
        out, present = real_run(ids, past, *args, **kwargs)
        return out[-1:], present

    decoder.run = last_only
    try:
        spec = engine.generate(PROMPT, GREEDY, adapt=Adapt(draft_tokens=4, drafter=lambda c, n: [1] * n))
    finally:
        decoder.run = real_run
    assert spec.token_ids == plain.token_ids and spec.decode_info["draft_tokens"] == 0


def test_completer_feeds_the_cache_and_reports_what_it_did(tiny_model_dir_fp32, tmp_path):
    import asyncio

    from ghost_lsp.completion.completer import Completer
    from ghost_lsp.settings.core import Settings
    from ghost_lsp.types import CompletionRequest

    text = "def add(a, b):\n    return a + b\n\ndef add(a, b):\n    return a + b\n\ndef add(a, b):\n    "
    req = CompletionRequest(uri="file:///w/a.py", version=1, line=7, character=4, path="/w/a.py", trigger="invoked")
    results = {}
    for name, s in {"on": Settings(debounce_ms=0, feedback=False, forward_cache=False),
                    "off": Settings(debounce_ms=0, feedback=False, forward_cache=False, ngram_cache=False,
                                    draft_tokens=0)}.items():
        engine = OnnxEngine(tiny_model_dir_fp32)
        seen = []
        real = engine.generate

        def generate(*args, _real=real, _seen=seen, **kwargs):
            cand = _real(*args, **kwargs)
            _seen.append(cand)
            return cand

        engine.generate = generate
        completer = Completer(engine, s)
        try:
            asyncio.run(completer.complete(req, text, {"/w/b.py": "x = add(1, 2)\n"}))
        finally:
            completer.close()
        assert seen, name
        results[name] = (seen[0].decode_info, completer.ngrams)
    info, ws = results["on"]
    assert info["ngram_steps"] > 0 and ws is not None and ws.stats()["current_tokens"] > 0
    assert ws.stats()["open_tokens"] > 0
    info, ws = results["off"]
    assert "ngram_steps" not in info and info["draft_tokens"] == 0 and ws is None
