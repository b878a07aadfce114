"""The fused export (modelkit/llama_graph.py): parity with PyTorch, int8/int4 MatMulNBits,
last-position prefill logits, and every-position logits with a past (speculative decoding)."""

import json

import numpy as np
import pytest

from ghost_lsp.tools.modelkit import export as ex


@pytest.fixture(scope="module")
def tiny_llama16(tmp_path_factory):
    """tiny_hf_llama's shape with head_dim 16 (GroupQueryAttention needs a multiple of 8)."""
    from ghost_lsp.tools.modelkit.tiny import build_tiny_hf

    return build_tiny_hf(tmp_path_factory.mktemp("tiny-llama16"), "llama", hidden=64)


@pytest.fixture(scope="module")
def fused_int8(tiny_llama16, tmp_path_factory):
    out = tmp_path_factory.mktemp("fused-int8")
    report = ex.export_onnx(tiny_llama16, out, quantize="int8-nbits", graph="fused",
                            manifest_fields={"name": "tiny-fused"})
    return out, report


def _torch_logits(hf_dir, ids):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def test_fused_int8_export_is_validated_and_packaged(fused_int8):
    out, report = fused_int8
    assert report["fp32_ok"] and report["fp32_max_abs_logit_diff"] < 1e-4
    assert report["int8_ok"] and report["int8_greedy_agreement"] >= 0.9
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "ghost-lsp-model/1"
    assert manifest["quantization"] == "int8-nbits" and manifest["info"]["graph"] == "fused"
    import onnx

    ops = {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    assert {"MatMulNBits", "GroupQueryAttention"} <= ops and "MatMul" not in ops  # LM head quantized too


def _matches_pytorch_at_every_position(hf_dir, path, seed=1):
    """Prefill, last-k logits (`logits_to_keep`), a multi-token chunk after a past (drafts),
    truncate_past, one-token steps: the graph's fp32 logits against PyTorch's. Returns the Decoder."""
    import onnxruntime as ort

    from ghost_lsp.engine.decoder import Decoder

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    dec = Decoder(sess, str(path))
    ids = [int(i) for i in np.random.default_rng(seed).integers(3, 300, 40)]
    ref = _torch_logits(hf_dir, ids)
    logits, past = dec.run(ids[:20], dec.empty_past())
    assert logits.shape == (20, ref.shape[1]) and np.abs(logits - ref[:20]).max() < 1e-4
    last, _ = dec.run(ids[:20], dec.empty_past(), last_only=True)
    assert last.shape == (1, ref.shape[1]) and np.abs(last[0] - ref[19]).max() < 1e-4
    feed = {"input_ids": np.array([ids[:20]]), "attention_mask": np.ones((1, 20), dtype=np.int64),
            "logits_to_keep": np.array([3]), **dec.empty_past()}
    kept = sess.run(["logits"], feed)[0][0]
    assert kept.shape == (3, ref.shape[1]) and np.abs(kept - ref[17:20]).max() < 1e-4
    chunk, past = dec.run(ids[20:30], past)
    assert chunk.shape[0] == 10 and np.abs(chunk - ref[20:30]).max() < 1e-4
    past = dec.truncate_past(past, 25)  # a rejected draft: resume after position 25
    for i in range(25, 40):
        step, past = dec.run([ids[i]], past)
        assert np.abs(step[-1] - ref[i]).max() < 1e-4, i
    return dec


def test_fused_fp32_graph_matches_pytorch_at_every_position(tiny_llama16, tmp_path):
    from ghost_lsp.tools.modelkit.llama_graph import build_llama_graph

    _matches_pytorch_at_every_position(tiny_llama16, build_llama_graph(tiny_llama16, tmp_path / "fused.onnx"))


def test_fused_model_serves_through_the_engine(fused_int8, tiny_model_dir):
    from ghost_lsp.engine.onnx import OnnxEngine
    from ghost_lsp.types import SamplingParams

    out, _ = fused_int8
    engine = OnnxEngine(out)
    assert engine.decoder.can_keep_last and not OnnxEngine(tiny_model_dir).decoder.can_keep_last
    params = SamplingParams(max_new_tokens=6, temperature=0.0)
    a = engine.generate("def add(a, b):\n    return", params)
    b = engine.generate("def add(a, b):\n    return", params)  # from the KV cache
    assert a.token_ids and a.token_ids == b.token_ids
    lp = engine.token_logprobs("def add(a, b):\n", "    return a")
    assert len(lp) >= 2 and all(x <= 0 for x in lp)


def test_fused_int4_and_unsupported_models(tiny_llama16, tiny_hf_llama, tmp_path):
    # Random tiny weights have tiny logit margins: int4 agreement is low here (0.94 on the
    # shipped model), so only the format is asserted.
    report = ex.export_onnx(tiny_llama16, tmp_path / "int4", quantize="int4", graph="fused", min_agreement=0.0)
    assert json.loads((tmp_path / "int4" / "manifest.json").read_text())["quantization"] == "int4-nbits"
    assert 0.0 <= report["int8_greedy_agreement"] <= 1.0
    import onnx

    nodes = onnx.load(str(tmp_path / "int4" / "model.onnx")).graph.node
    bits = {a.i for n in nodes if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "bits"}
    assert bits == {4} and any(n.op_type == "GatherBlockQuantized" for n in nodes)
    from ghost_lsp.tools.modelkit.llama_graph import UnsupportedModel, build_llama_graph

    with pytest.raises(UnsupportedModel, match="head_dim 12"):  # 48 hidden / 4 heads
        build_llama_graph(tiny_hf_llama, tmp_path / "x.onnx")
    cfg = json.loads((tiny_llama16 / "config.json").read_text())
    bad = tmp_path / "scaled"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({**cfg, "rope_scaling": {"rope_type": "linear", "factor": 2.0}}))
    with pytest.raises(UnsupportedModel, match="rope_scaling"):
        build_llama_graph(bad, tmp_path / "x.onnx")
    with pytest.raises(ValueError, match="graph"):
        ex.export_onnx(tiny_llama16, tmp_path / "y", graph="nope")
    with pytest.raises(ValueError, match="fused"):
        ex.export_onnx(tiny_llama16, tmp_path / "y", quantize="int8-nbits")  # optimum graph


def test_fused_default_int8_is_dynamic_and_validated(tiny_llama16, tmp_path):
    report = ex.export_onnx(tiny_llama16, tmp_path / "dyn", graph="fused", min_agreement=0.5)
    assert report["fp32_ok"] and report["int8_ok"] and report["int8_greedy_agreement"] >= 0.5
    assert json.loads((tmp_path / "dyn" / "manifest.json").read_text())["quantization"] == "int8-dynamic"
    import onnx

    ops = {n.op_type for n in onnx.load(str(tmp_path / "dyn" / "model.onnx")).graph.node}
    # Written as the op onnxruntime fuses quantize_dynamic's MatMulInteger pattern into.
    assert "DynamicQuantizeMatMul" in ops and "GroupQueryAttention" in ops and "MatMul" not in ops


def test_in_place_kv_buffers_never_overwrite_a_cache_handed_out(tiny_llama16, tmp_path):
    """Branching from an older cache (the KV cache reusing a prefix) copies into new buffers."""
    import onnxruntime as ort

    from ghost_lsp.engine.decoder import Decoder
    from ghost_lsp.tools.modelkit.llama_graph import build_llama_graph

    path = build_llama_graph(tiny_llama16, tmp_path / "fused.onnx")
    dec = Decoder(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]), str(path))
    assert dec.kv_capacity == 256  # the checkpoint's max_position_embeddings
    ids = [int(i) for i in np.random.default_rng(2).integers(3, 300, 30)]
    ref = _torch_logits(tiny_llama16, ids)
    _, a = dec.run(ids[:20], dec.empty_past())
    _, a1 = dec.run([ids[20]], a)  # in place: a1 extends a's buffer
    assert a1["past_key_values.0.key"].base is a["past_key_values.0.key"].base
    kept = {k: v.copy() for k, v in a1.items()}
    other, b = dec.run([7, 8, 9], a)  # a branch from the shorter cache
    assert b["past_key_values.0.key"].base is not a1["past_key_values.0.key"].base
    assert all(np.array_equal(a1[k], kept[k]) for k in kept)  # untouched
    step, _ = dec.run(ids[21:30], a1)
    assert np.abs(step - ref[21:30]).max() < 1e-4
    with pytest.raises(Exception, match="capacity"):
        dec.run(list(range(3, 260)), dec.empty_past())


@pytest.mark.parametrize("in_place", [True, False])
def test_fused_model_batches_right_padded_rows_like_single_sequences(fused_int8, tiny_llama16, tmp_path,
                                                                     monkeypatch, in_place):
    """The fused graph takes no position_ids: the batcher right-pads its rows and GQA reads each
    row's length from the mask. Prompts of different lengths, run together and joining a running
    batch, give each the text the engine gives it alone (fp32 and the int8 model): with the
    caches in place, and padded per step (what a model too large for the in-place buffers gets)."""
    import threading
    import time

    from ghost_lsp.engine.onnx import OnnxEngine
    from ghost_lsp.serving import batcher as batcher_module
    from ghost_lsp.serving.batch import _InPlaceBatch
    from ghost_lsp.serving.batcher import Batcher, Stats
    from ghost_lsp.serving.sequence import SeqParams, Sequence
    from ghost_lsp.types import SamplingParams

    if not in_place:
        monkeypatch.setattr(batcher_module, "IN_PLACE_MAX_BYTES", 0)

    fp32 = tmp_path / "fused-fp32"
    ex.export_onnx(tiny_llama16, fp32, quantize="none", graph="fused", manifest_fields={"name": "tiny-fused32"})
    prompts = ["def add(a, b):\n    return", "import os\n", "class Stack:\n    def push(self, item):\n        self.",
               "x = 1\n" * 9 + "y = ", "for i in range(10):\n    print("]

    class Sizes(Stats):
        sizes: list[int] = []

        def batch(self, size, seconds, tokens):
            self.sizes.append(size)

    for model in (fp32, fused_int8[0]):
        engine = OnnxEngine(model, reuse_kv=False)
        stats = Sizes()
        stats.sizes = []
        batcher = Batcher(engine, max_batch=8, max_queue=16, stats=stats)
        assert batcher.max_batch == 8 and isinstance(batcher._batch, _InPlaceBatch) == in_place
        texts: dict[int, str] = {}
        done = threading.Event()

        def emitter(i, parts):
            def emit(ev):
                parts.append(ev.text)
                if ev.final:
                    texts[i] = "".join(parts)
                    if len(texts) == 2 * len(prompts):
                        done.set()
            return emit

        try:
            for i, p in enumerate(prompts + prompts[::-1]):
                batcher.submit([Sequence(engine, engine.encode(p), SeqParams(max_tokens=12, temperature=0.0),
                                         time.monotonic() + 30, emitter(i, []))])
                if i >= len(prompts):
                    time.sleep(0.002)  # the second round joins a running batch
            assert done.wait(30)
        finally:
            batcher.close()
        ref = [engine.generate(p, SamplingParams(max_new_tokens=12, temperature=0.0)).text for p in prompts]
        assert [texts[i] for i in range(2 * len(prompts))] == ref + ref[::-1], model.name
        assert max(stats.sizes) >= 3, stats.sizes  # they really ran together
        assert any(ref)


def test_one_token_steps_match_pytorch_after_any_switch_of_cache(tiny_llama16, tmp_path):
    """A one-token step binds a fixed-width attention mask (ones up to the cache's length): its
    logits match PyTorch while extending one cache, after switching to a shorter one (fresh
    buffers) and back to a longer one, and through the engine's KV-cache reuse across edits."""
    import onnxruntime as ort

    from ghost_lsp.engine.decoder import Decoder
    from ghost_lsp.engine.onnx import OnnxEngine
    from ghost_lsp.tools.modelkit.llama_graph import build_llama_graph
    from ghost_lsp.types import SamplingParams

    path = build_llama_graph(tiny_llama16, tmp_path / "fused.onnx")
    dec = Decoder(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]), str(path))
    ids = [int(i) for i in np.random.default_rng(5).integers(3, 300, 30)]
    ref = _torch_logits(tiny_llama16, ids)

    def steps(past, start, stop):
        for i in range(start, stop):
            logits, past = dec.run([ids[i]], past)
            assert np.abs(logits[-1] - ref[i]).max() < 1e-4, i
        return past

    _, long = dec.run(ids[:10], dec.empty_past())
    long = steps(long, 10, 20)
    _, short = dec.run(ids[:5], dec.empty_past())
    steps(short, 5, 12)
    steps(long, 20, 25)

    fp32 = tmp_path / "fused-fp32"
    ex.export_onnx(tiny_llama16, fp32, quantize="none", graph="fused", manifest_fields={"name": "tiny-fused32"})
    cached, fresh = OnnxEngine(fp32, kv_entries=3), OnnxEngine(fp32, reuse_kv=False)
    doc = "def count_words(text):\n    counts = {}\n    for word in text.split():\n"
    greedy = SamplingParams(max_new_tokens=10)
    for prompt in (doc, doc + "        counts[word] = ", doc[:-5], doc.replace("text", "txt"), doc):
        a, b = cached.generate(prompt, greedy, cache_key="a.py"), fresh.generate(prompt, greedy)
        assert a.token_ids == b.token_ids, prompt
    assert cached.kv_cache.stats()["hits"] >= 3


def test_in_place_batch_rows_join_and_leave_without_disturbing_the_others(tiny_llama16, tmp_path):
    """The fused graph's in-place batch: rows of different lengths step together, a row leaving
    moves the later ones down a slot, a row joining takes the next slot, and every step's logits
    equal the single-sequence run of the same tokens."""
    from types import SimpleNamespace

    import onnxruntime as ort

    from ghost_lsp.engine.decoder import Decoder
    from ghost_lsp.tools.modelkit.llama_graph import build_llama_graph
    from ghost_lsp.serving.batch import _InPlaceBatch

    path = build_llama_graph(tiny_llama16, tmp_path / "fused.onnx")
    dec = Decoder(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]), str(path))
    rng = np.random.default_rng(9)
    prompts = [[int(t) for t in rng.integers(3, 300, n)] for n in (7, 19, 3, 12)]
    fed = [list(p) for p in prompts]
    batch = _InPlaceBatch(dec, slots=4, capacity=dec.kv_capacity)
    for i in range(3):
        logits, cache = dec.run(prompts[i], dec.empty_past(), last_only=True)
        batch.join(SimpleNamespace(i=i), cache)

    def step_and_check():
        for r in batch.rows:
            r.next_token = int(rng.integers(3, 300))
            fed[r.i].append(r.next_token)
        got = batch.step()
        for row, r in zip(got, batch.rows):
            want, _ = dec.run(fed[r.i], dec.empty_past(), last_only=True)
            assert np.abs(row - want[-1]).max() < 1e-4, r.i

    for _ in range(3):
        step_and_check()
    batch.keep([0, 2])  # the middle row leaves: the last one moves into its slot
    assert [r.i for r in batch.rows] == [0, 2] and batch.row_length(1) == len(fed[2])
    step_and_check()
    logits, cache = dec.run(prompts[3], dec.empty_past(), last_only=True)
    batch.join(SimpleNamespace(i=3), cache)
    for _ in range(3):
        step_and_check()
    batch.keep([])
    assert batch.rows == []


def test_the_export_reads_the_model_weights_not_a_training_checkpoint_beside_them(tiny_llama16, tmp_path):
    """A shipped checkpoint/ folder holds stable.safetensors (the pre-decay weights, same tensor
    names) beside model.safetensors: the fused graph must be built from model.safetensors, as
    PyTorch loads it (reading both once exported the pre-decay weights: logits off by 5)."""
    import shutil

    from safetensors.numpy import load_file, save_file

    from ghost_lsp.tools.modelkit.weights import CheckpointReader

    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_llama16, folder)
    decoy = {k: v + 1.0 for k, v in load_file(str(folder / "model.safetensors")).items()}
    save_file(decoy, str(folder / "stable.safetensors"))
    real = load_file(str(folder / "model.safetensors"))
    reader = CheckpointReader(folder)
    assert all(np.array_equal(reader.get(k), v) for k, v in real.items())
    report = ex.export_onnx(folder, tmp_path / "out", quantize=None, graph="fused", manifest_fields={"name": "c"})
    assert report["fp32_ok"] and report["fp32_max_abs_logit_diff"] < 1e-4


# The other fused architectures, tiny random checkpoints of the real transformers classes
# (test_export_families.build_hf: Gemma's norms and StarCoder2's LayerNorms and biases random,
# Gemma's head_dim twice hidden/heads; StarCoder2's GELU is the tanh one). phi3-long: Phi-4-mini's partial rotary and Phi-3.5-mini's
# LongRoPE, served with its short factors up to original_max_position_embeddings.
LONGROPE = {"type": "longrope", "short_factor": [1.0 + 0.3 * i for i in range(8)], "long_factor": [4.0] * 8}
ARCHS = {
    "phi3": ("phi3", "phi3", 64, {}),
    # As CodeGemma's config.json: GemmaMLP (transformers 4.57) reads hidden_act, erf's GELU.
    "gemma": ("gemma", "codegemma", 64, {"hidden_act": "gelu", "hidden_activation": "gelu_pytorch_tanh"}),
    "starcoder2": ("starcoder2", "starcoder2", 64, {}),
    "phi3-long": ("phi3", "phi3", 128, {"partial_rotary_factor": 0.5, "max_position_embeddings": 256,
                                        "original_max_position_embeddings": 64, "rope_scaling": LONGROPE}),
}


@pytest.fixture(scope="module", params=list(ARCHS))
def arch_hf(request, tmp_path_factory):
    from test_export_families import build_hf

    arch, specials_of, hidden, extra = ARCHS[request.param]
    return build_hf(tmp_path_factory.mktemp(request.param) / "hf", arch, specials_of, hidden=hidden, **extra)


def test_other_architectures_match_pytorch_at_every_position(arch_hf, tmp_path):
    from transformers import AutoConfig

    from ghost_lsp.tools.modelkit.llama_graph import build_llama_graph, positions

    import onnx

    path = build_llama_graph(arch_hf, tmp_path / "fused.onnx")
    dec = _matches_pytorch_at_every_position(arch_hf, path)
    cfg = AutoConfig.from_pretrained(arch_hf)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    want = {"phi3": {"Sigmoid", "SkipSimplifiedLayerNormalization"}, "gemma": {"Gelu"},  # erf's, as hidden_act
            "starcoder2": {"FastGelu", "LayerNormalization", "SkipLayerNormalization"}}[cfg.model_type]
    assert want <= ops, ops
    assert dec.kv_capacity == positions(cfg) == (64 if getattr(cfg, "rope_scaling", None) else 128)
    head = dec.past["past_key_values.0.key"][0]  # (batch, kv_heads, seq, head_dim) from the graph
    assert head[1:] == (2, 0, cfg.head_dim if cfg.model_type == "gemma" else cfg.hidden_size // 4)


def _torch_greedy(hf_dir, ids, steps, vocab):
    """PyTorch's greedy tokens over the tokens the engine may choose, up to an end token."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    seq = list(ids)
    with torch.no_grad():
        for _ in range(steps):
            logits = model(torch.tensor([seq])).logits[0, -1].numpy()
            tok = int(np.argmax(np.where(vocab.allowed, logits, -np.inf)))
            if tok in vocab.end_ids:
                break
            seq.append(tok)
    return seq[len(ids):]


def test_other_architectures_decode_greedily_like_pytorch_through_the_engine(arch_hf, tmp_path):
    from ghost_lsp.engine.onnx import OnnxEngine
    from ghost_lsp.types import SamplingParams

    report = ex.export_onnx(arch_hf, tmp_path / "out", quantize="none", graph="fused", steps=6)
    assert report["fp32_ok"] and report["fp32_max_abs_logit_diff"] < 1e-4, report
    engine = OnnxEngine(tmp_path / "out", token_healing=False, reuse_kv=False)
    for prompt in ("def add(a, b):\n    return", "import os\nclass Stack:\n    def push(self, item):\n"):
        got = engine.generate(prompt, SamplingParams(max_new_tokens=12)).token_ids
        assert got == _torch_greedy(arch_hf, engine.encode(prompt), 12, engine.vocab), prompt
        assert got


def test_refused_architectures_and_settings_say_why(tmp_path):
    from test_export_families import build_hf

    from ghost_lsp.tools.modelkit.export_inputs import ExportInputError, check_architecture
    from ghost_lsp.tools.modelkit.llama_graph import UnsupportedModel, build_llama_graph

    hf = build_hf(tmp_path / "hf", "gemma", "codegemma", hidden=64)
    cfg = json.loads((hf / "config.json").read_text())

    def with_config(name, **changes):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({**cfg, **changes}))
        return folder

    gemma2 = with_config("gemma2", model_type="gemma2", architectures=["Gemma2ForCausalLM"])
    with pytest.raises(UnsupportedModel, match="Gemma 2 .*soft-capping.* is not supported by the fused format"):
        build_llama_graph(gemma2, tmp_path / "x.onnx")
    with pytest.raises(ExportInputError, match=r"not 'gemma2' \(Gemma 2 .*\); use --graph optimum"):
        check_architecture("gemma2", "fused", ex.FUSED_TYPES)  # what `model export --graph fused` says first
    linear = with_config("linear", rope_scaling={"rope_type": "linear", "factor": 2.0})
    with pytest.raises(UnsupportedModel, match="rope_scaling .*linear.* is not supported by the fused format"):
        build_llama_graph(linear, tmp_path / "x.onnx")
    phi3 = build_hf(tmp_path / "phi3", "phi3", "phi3", hidden=128, partial_rotary_factor=0.75)
    with pytest.raises(UnsupportedModel, match=r"24 rotary dimensions .* not a multiple of 16"):
        build_llama_graph(phi3, tmp_path / "x.onnx")


def test_the_fp32_check_fails_a_graph_whose_logits_are_nan(tiny_llama16, tmp_path, monkeypatch):
    """NaN logits once compared as 0 difference (max() passes over NaN): the check must fail them."""
    from ghost_lsp.tools.modelkit import export_check
    from ghost_lsp.tools.modelkit.llama_graph import build_llama_graph

    path = build_llama_graph(tiny_llama16, tmp_path / "fused.onnx")
    real = export_check.session

    def nan_session(p, prepack=True):
        dec = real(p, prepack)
        run = dec.run

        def nan_run(ids, past, last_only=False):
            logits, present = run(ids, past, last_only)
            return np.where(np.arange(logits.shape[-1]) == 7, np.nan, logits), present
        dec.run = nan_run
        return dec

    def load():
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(tiny_llama16).eval()

    monkeypatch.setattr(export_check, "session", nan_session)
    report = export_check.validate(load, [[5, 6, 7, 8]], path, None, 3, 1e-3, 0.9)
    assert report["fp32_max_abs_logit_diff"] == float("inf") and not report["fp32_ok"]
