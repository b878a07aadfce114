"""Continuous batching in-process: batched greedy output equals the single-sequence engine's."""

from __future__ import annotations

import threading
import time

import pytest

from ghost_lsp.engine.onnx import OnnxEngine
from ghost_lsp.serving.batcher import Batcher, QueueFull, Stats
from ghost_lsp.serving.sequence import SeqParams, Sequence, _holdback
from ghost_lsp.types import SamplingParams

PROMPTS = ["def add(a, b):\n    return", "import os\n", "class Stack:\n    def push(self, item):\n        self.",
           "x = 1\n" * 9 + "y = ", "for i in range(10):\n    print("]


class Sizes(Stats):
    def __init__(self):
        self.sizes = []

    def batch(self, size, seconds, tokens):
        self.sizes.append(size)


@pytest.fixture(scope="module")
def engine(tiny_model_dir_fp32):
    return OnnxEngine(tiny_model_dir_fp32, reuse_kv=False)


def _run(batcher, engine, prompts, params, stagger=0.0):
    """Submit one sequence per prompt; return their texts, bounded in time."""
    out, done = {}, threading.Event()

    def emitter(i):
        parts = []

        def emit(ev):
            parts.append(ev.text)
            if ev.final:
                out[i] = ("".join(parts), ev.finish_reason)
                if len(out) == len(prompts):
                    done.set()
        return emit

    for i, p in enumerate(prompts):
        batcher.submit([Sequence(engine, engine.encode(p), params, time.monotonic() + 30, emitter(i))])
        if stagger:
            time.sleep(stagger)
    assert done.wait(30), "batcher did not finish"
    return [out[i] for i in range(len(prompts))]


def test_batched_greedy_equals_unbatched(engine):
    stats = Sizes()
    batcher = Batcher(engine, max_batch=8, max_queue=16, stats=stats)
    try:
        got = _run(batcher, engine, PROMPTS, SeqParams(max_tokens=20, temperature=0.0))
        # and sequences joining a batch already running (different cache lengths, new padding)
        late = _run(batcher, engine, PROMPTS[::-1], SeqParams(max_tokens=20, temperature=0.0), stagger=0.003)
    finally:
        batcher.close()
    ref = [engine.generate(p, SamplingParams(max_new_tokens=20, temperature=0.0)) for p in PROMPTS]
    assert [t for t, _ in got] == [c.text for c in ref]
    assert [t for t, _ in late] == [c.text for c in ref][::-1]
    assert max(stats.sizes) >= 3, stats.sizes  # they really ran together
    assert any(r.text for r in ref)


def test_batched_seeded_sampling_equals_unbatched(engine):
    """Rows past token healing are sampled together in one numpy call: same draws as one by one."""
    stats = Sizes()
    batcher = Batcher(engine, max_batch=8, max_queue=16, stats=stats)
    params = dict(temperature=0.9, top_p=0.9, frequency_penalty=0.3, presence_penalty=0.2, seed=11)
    try:
        got = _run(batcher, engine, PROMPTS, SeqParams(max_tokens=20, **params))
    finally:
        batcher.close()
    ref = [engine.generate(p, SamplingParams(max_new_tokens=20, **params)) for p in PROMPTS]
    assert [t for t, _ in got] == [c.text for c in ref]
    assert max(stats.sizes) >= 3, stats.sizes


def test_stop_sequence_and_holdback(engine):
    ref = engine.generate(PROMPTS[0], SamplingParams(max_new_tokens=20, temperature=0.0)).text
    assert len(ref) >= 4
    stop = ref[2:4]
    batcher = Batcher(engine, max_batch=4)
    try:
        [(text, reason)] = _run(batcher, engine, PROMPTS[:1], SeqParams(max_tokens=20, temperature=0.0, stop=[stop]))
    finally:
        batcher.close()
    assert text == ref[:ref.find(stop)] and reason == "stop"
    assert _holdback("abc de", ["def"]) == 2 and _holdback("abc", ["xyz"]) == 0


def test_queue_bound_and_deadline(engine):
    batcher = Batcher(engine, max_batch=1, max_queue=2, batching=False)
    try:
        assert batcher.max_batch == 1
        seqs = [Sequence(engine, engine.encode("x"), SeqParams(max_tokens=1), time.monotonic() + 5, lambda ev: None)
                for _ in range(3)]
        with pytest.raises(QueueFull):
            batcher.submit(seqs)
        events = []
        expired = Sequence(engine, engine.encode("x"), SeqParams(max_tokens=5), time.monotonic() - 1, events.append)
        batcher.submit([expired])
        t0 = time.monotonic()
        while not events and time.monotonic() - t0 < 5:
            time.sleep(0.01)
        assert events and events[-1].final and events[-1].finish_reason == "deadline"
    finally:
        batcher.close()


def test_admission_refuses_what_would_wait_too_long_for_a_slot(engine, monkeypatch):
    batcher = Batcher(engine, max_batch=2, max_queue=64, max_wait_s=0.05)
    try:
        assert batcher.expected_wait(10) == 0.0  # no history yet: only the queue bound applies
        # Learn the service time from real sequences.
        _run(batcher, engine, PROMPTS[:2], SeqParams(max_tokens=30, temperature=0.0))
        service = batcher._service_s
        assert service > 0
        assert batcher.expected_wait(2) == 0.0  # two free slots: no wait
        # 2 slots free a full batch per service time: the k-th sequence beyond them waits k/2 of it.
        assert batcher.expected_wait(6) == pytest.approx(4 * service / 2)
        # Freeze the scheduler (nothing leaves the queue) so the decisions depend on counts only.
        monkeypatch.setattr(batcher, "_take", lambda: None)
        batcher.max_wait_s = service  # room for 2 sequences beyond the 2 free slots

        def seq():
            return Sequence(engine, engine.encode("x"), SeqParams(max_tokens=1), time.monotonic() + 30,
                            lambda ev: None)

        batcher.submit([seq(), seq()])  # the free slots: no wait
        batcher.submit([seq(), seq()])  # then a wait of exactly one service time: admitted
        t = time.perf_counter()
        with pytest.raises(QueueFull, match="expected wait"):
            batcher.submit([seq()])
        assert time.perf_counter() - t < 0.05  # refused at once, not queued
        assert batcher.queued() == 4
    finally:
        batcher.close()
