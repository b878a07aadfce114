"""Quantized fused exports of every fused architecture (llama, qwen2, mistral, phi3, gemma,
starcoder2) × {int8, int4},
each through export_onnx's own check (greedy agreement with PyTorch ≥ min_agreement), and the
streamed writing under them: external data, the memory estimate.

Random tiny weights have logit margins so thin that int4 rounding alone flips most greedy
tokens (0.3-0.4 agreement), which would test the noise, not the graph. So the int4 models here
have their weights on the int4 grid (each 32-value block a scale times integers in [-8, 7], one
of them -8): rounding to int4 is then lossless, and agreement below 0.9 can only come from a
wrong graph (block layout, transposes, scales, biases) or the int8 activations of the kernels
(accuracy_level 4, prepacked as the engine runs them: qwen2's large random biases lose 1-3 of
the 32 tokens to them, so the check runs its full 4 prompts × 8 tokens).
"""

import json
import re

import numpy as np
import pytest

from ghost_lsp.engine.manifest import Manifest
from ghost_lsp.tools.modelkit import export as ex
from ghost_lsp.tools.modelkit import export_inputs
from ghost_lsp.tools.modelkit.export_inputs import ExportInputError
from test_export_families import build_hf

pytestmark = pytest.mark.slow

ARCHS = [("llama", "starcoder"), ("qwen2", "qwen"), ("mistral", "starcoder"), ("phi3", "phi3"),
         ("gemma", "codegemma"), ("starcoder2", "starcoder2")]


def snap_to_int4_grid(hf_dir):
    """Rewrite every 2-D weight of the checkpoint so 32-value blocks along its input dimension
    are exactly representable in symmetric int4."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim != 2 or p.shape[1] % 32:
                continue
            blocks = p.reshape(p.shape[0], -1, 32)
            scale = blocks.abs().amax(-1, keepdim=True) / 8
            scale[scale == 0] = 1.0  # an all-zero block (the padding token's embedding row): no NaN
            k = torch.clamp(torch.round(blocks / scale), -8, 7)
            k[..., 0] = -8  # the block's extreme, so the quantizer picks this very scale
            p.copy_((k * scale).reshape(p.shape))
    model.save_pretrained(hf_dir)
    return hf_dir


@pytest.mark.parametrize("quantize", ["int8", "int4"])
@pytest.mark.parametrize("arch,specials_of", ARCHS)
def test_fused_quantized_export_agrees_with_pytorch(tmp_path, arch, specials_of, quantize):
    hf = build_hf(tmp_path / "hf", arch, specials_of, hidden=64)  # head_dim 16 for GroupQueryAttention
    if quantize == "int4":
        snap_to_int4_grid(hf)
    report = ex.export_onnx(hf, tmp_path / "out", quantize=quantize, graph="fused")  # min_agreement 0.9, 4 × 8 tokens
    assert report["fp32_ok"] and report["int8_ok"] and report["int8_greedy_agreement"] >= 0.9, report
    m = Manifest.load(tmp_path / "out")
    assert (m.architecture, m.quantization) == (arch, {"int8": "int8-dynamic", "int4": "int4-nbits"}[quantize])
    import onnx

    ops = {n.op_type for n in onnx.load(str(tmp_path / "out" / "model.onnx")).graph.node}
    want = {"DynamicQuantizeMatMul"} if quantize == "int8" else {"MatMulNBits", "GatherBlockQuantized"}
    assert want <= ops and "MatMul" not in ops, ops
    assert ("Add" in ops) == (arch in ("qwen2", "starcoder2"))  # q/k/v (and StarCoder2's c_fc) biases


def test_int4_check_fails_a_model_it_changes(tmp_path):
    """The same check on weights off the grid: int4 flips greedy tokens and the export is refused."""
    hf = build_hf(tmp_path / "hf", "qwen2", "qwen", hidden=64)
    with pytest.raises(ex.ExportValidationError, match="int4-nbits greedy agreement"):
        ex.export_onnx(hf, tmp_path / "out", quantize="int4", graph="fused", steps=6, min_agreement=0.95)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("quantize", [None, "int8-dynamic", "int8-nbits", "int4-nbits"])
def test_external_data_graph_equals_the_inline_one(tmp_path, quantize):
    """A large model's weights go to model.onnx.data (aligned, mapped by onnxruntime); its logits
    are those of the one-file graph, and the graph file itself holds no weights."""
    from ghost_lsp.engine.decoder import Decoder
    from ghost_lsp.tools.modelkit.export_check import session
    from ghost_lsp.tools.modelkit.llama_graph import build_llama_graph

    hf = build_hf(tmp_path / "hf", "qwen2", "qwen", hidden=64)
    inline = build_llama_graph(hf, tmp_path / "a" / "model.onnx", quantize, external=False)
    external = build_llama_graph(hf, tmp_path / "b" / "model.onnx", quantize, external=True)
    assert not (tmp_path / "a" / "model.onnx.data").exists()
    data = tmp_path / "b" / "model.onnx.data"
    assert data.stat().st_size > 4 * external.stat().st_size
    ids = [int(i) for i in np.random.default_rng(0).integers(3, 300, 12)]
    runs = []
    for path in (inline, external):
        dec: Decoder = session(path)
        runs.append(dec.run(ids, dec.empty_past())[0])
    assert np.array_equal(runs[0], runs[1])


def test_streamed_export_moves_the_data_file_into_the_folder(tmp_path, monkeypatch):
    from ghost_lsp.tools.modelkit import llama_graph

    monkeypatch.setattr(llama_graph, "INLINE_MAX", 0)  # every model "large"
    hf = build_hf(tmp_path / "hf", "mistral", "starcoder", hidden=64)
    report = ex.export_onnx(hf, tmp_path / "out", quantize="int8", graph="fused", steps=4)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "manifest.json", "model.onnx", "model.onnx.data", "tokenizer.json"]
    assert report["model_bytes"] == sum(p.stat().st_size for p in (tmp_path / "out").glob("model.onnx*"))
    assert not list(tmp_path.glob(".ghost-export-*"))  # the work folder went
    from ghost_lsp.engine.onnx import OnnxEngine
    from ghost_lsp.types import SamplingParams

    assert OnnxEngine(tmp_path / "out").generate("def f():\n", SamplingParams(max_new_tokens=3)).token_ids


def test_fused_memory_estimate_is_one_copy_and_refuses_with_the_numbers(tmp_path, monkeypatch):
    from transformers import AutoConfig

    hf = build_hf(tmp_path / "hf", "qwen2", "qwen", hidden=64)
    from ghost_lsp.tools.bench.realsize import CONFIGS

    # Qwen2.5-Coder-1.5B's published config, counted on the meta device.
    (hf / "config.json").write_text((CONFIGS / "qwen2.5-coder-1.5b.json").read_text())
    config = AutoConfig.from_pretrained(hf)
    n = export_inputs.parameter_count(config)
    # As if the folder held the real bf16 checkpoint (3.09 GB): 10.5 GiB; measured peak 8.97 GiB.
    fused, _ = export_inputs.memory_needed(config, n, "fused")
    optimum, _ = export_inputs.memory_needed(config, n, "optimum")
    assert 1.5e9 < n < 1.6e9 and 10.4 < fused / 2**30 < 10.6 < optimum / 2**30
    monkeypatch.setattr(export_inputs, "available_memory", lambda: 6 * 2**30)
    with pytest.raises(ExportInputError, match=r"1\.54 B parameters need about 7\.\d GiB .*streamed.* 6\.0 GiB is"):
        ex.export_onnx(hf, tmp_path / "out", graph="fused")
    monkeypatch.setattr(export_inputs, "available_memory", lambda: 12 * 2**30)
    assert export_inputs.check_memory(config, "fused") == n
    # a few MiB short: the message never shows the two figures as equal
    monkeypatch.setattr(export_inputs, "available_memory", lambda: fused - 2**30 // 40)
    with pytest.raises(ExportInputError, match=r"need about (\d+\.\d\d) GiB") as refused:
        export_inputs.check_memory(config, "fused")
    need, have = re.findall(r"(\d+\.\d+) GiB", str(refused.value))[:2]
    assert float(need) > float(have)
    with pytest.raises(ExportInputError, match="fp32 copies"):
        export_inputs.check_memory(config, "optimum")


def _scaled_down(cfg: dict) -> dict:
    """A realsize config at test size: its keys and switches (biases, multi-query, tying, window)
    kept, its dimensions tiny, its token ids inside the tiny vocabulary."""
    small = {"hidden_size": 64, "n_embd": 64, "intermediate_size": 128, "n_inner": 128, "num_hidden_layers": 2,
             "n_layer": 2, "num_attention_heads": 4, "n_head": 4, "head_dim": 16, "max_position_embeddings": 128,
             "n_positions": 128, "vocab_size": 512, "sliding_window": 64}
    out = {k: small.get(k, v) for k, v in cfg.items()}
    if "num_key_value_heads" in cfg:
        out["num_key_value_heads"] = min(cfg["num_key_value_heads"], 2)
    for k in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if isinstance(cfg.get(k), int) and cfg[k] >= small["vocab_size"]:
            out[k] = 0
    return out


@pytest.mark.parametrize("name", ["codegemma-2b", "phi-3-mini", "starcoder2-3b"])
def test_fused_export_of_the_other_architectures_checks_memory_first(tmp_path, monkeypatch, name):
    """`model export --graph fused` of a published-size Gemma/Phi-3/StarCoder2 (realsize_configs/,
    counted on the meta device) reckons the streamed estimate and refuses where it would not fit."""
    from transformers import AutoConfig

    from ghost_lsp.tools.bench import realsize

    fields = {k: v for k, v in json.loads((realsize.CONFIGS / f"{name}.json").read_text()).items()
              if not k.startswith("_") and k != "auto_map"}
    arch = fields["model_type"]
    hf = build_hf(tmp_path / "hf", arch, {"gemma": "codegemma"}.get(arch, arch), hidden=64)
    (hf / "config.json").write_text(json.dumps(fields))  # the published size, the tiny checkpoint's files
    config = AutoConfig.from_pretrained(hf)
    n = export_inputs.parameter_count(config)
    fused, how = export_inputs.memory_needed(config, n, "fused")  # as if the folder held the bf16 checkpoint
    assert fused == 6 * n + (1 << 30) + fields["vocab_size"] * fields["hidden_size"] * 4 and "streamed" in how
    (hf / "pytorch_model.bin").write_bytes(b"\0" * 4096)  # the weights again, in the format not loaded
    assert export_inputs.checkpoint_bytes(hf, n) == (hf / "model.safetensors").stat().st_size
    monkeypatch.setattr(export_inputs, "available_memory", lambda: 8 * 2**30)
    with pytest.raises(ExportInputError, match=rf"{n / 1e9:.2f} B parameters need about \d+\.\d GiB .*streamed"):
        ex.export_onnx(hf, tmp_path / "out", graph="fused")
    assert not (tmp_path / "out").exists()


def test_realsize_bench_runs_every_step_on_a_tiny_config(tmp_path):
    """`bench --realsize` on a tiny qwen2 config: build, both fused exports, speed, the table."""
    from ghost_lsp.tools.bench import realsize

    cfg = _scaled_down(json.loads((realsize.CONFIGS / "qwen2.5-coder-0.5b.json").read_text()))
    (tmp_path / "tiny.json").write_text(json.dumps(cfg))
    res = realsize.run_realsize(tmp_path / "tiny.json", tmp_path / "work", engines=realsize.expand_engines("fused"), rounds=1,
                                n_prompt=16, n_new=4, threads=1)
    assert [(r["engine"], r["format"]) for r in res["rows"]] == [("onnx fused", "int8"), ("onnx fused", "int4")]
    for r in res["rows"]:
        assert r["export_peak_rss_gb"] > 0.1 and r["bytes"] < r["fp32_bytes"] and r["prefill_ms"] > 0
    assert "| onnx fused int4 |" in realsize.table(res) and not (tmp_path / "work" / "tiny").exists()


def test_realsize_engines_name_formats_and_a_failed_step_says_why(tmp_path):
    from ghost_lsp.tools.bench import realsize

    assert realsize.expand_engines("fused,llama.cpp-q8_0") == {("fused", "int8"), ("fused", "int4"),
                                                               ("llama.cpp", "q8_0")}
    assert realsize.expand_engines("fused-int8, optimum") == {("fused", "int8"), ("optimum", "int8")}
    for bad in ("vllm", "fused-q8_0", "llama.cpp-int4"):
        with pytest.raises(ValueError, match="unknown engine"):
            realsize.expand_engines(bad)
    # a step that fails raises with the child's own last words (run_realsize records them as skipped)
    with pytest.raises(RuntimeError, match="export failed .*nothing"):
        realsize._measured(["export", str(tmp_path / "nothing"), str(tmp_path / "out"), "fused", "int8"])


def test_every_realsize_config_builds_at_its_published_size():
    """Each published config instantiates with transformers' class here (meta device: nothing
    allocated) at the parameter count its _source states, and write_gguf writes its type."""
    import re

    from ghost_lsp.tools.bench import realsize
    from ghost_lsp.tools.bench.peer_models import GGUF_ARCHS

    configs = sorted(realsize.CONFIGS.glob("*.json"))
    assert len(configs) >= 8
    for path in configs:
        stated = re.search(r"([\d.]+) ([BM]) parameters", json.loads(path.read_text())["_source"])
        config = realsize.realsize_config(path)
        n = export_inputs.parameter_count(config)
        scale = 1e9 if stated[2] == "B" else 1e6
        assert abs(n / scale - float(stated[1])) <= 0.0051 * (1 if scale == 1e9 else 100), (path.name, n)
        assert config.model_type in GGUF_ARCHS
        fused, _ = export_inputs.memory_needed(config, n, "fused")
        optimum, _ = export_inputs.memory_needed(config, n, "optimum")
        assert 4 * n < fused and 4 * n < optimum


OTHER_ARCH_CONFIGS = ["starcoder2-3b", "tiny_starcoder-164m", "santacoder-1.1b", "codegemma-2b", "phi-3-mini"]


@pytest.mark.parametrize("name", OTHER_ARCH_CONFIGS)
def test_realsize_bench_writes_and_times_the_other_architectures(tmp_path, name):
    """A scaled-down copy of each published config: built with its class, its fused int8/int4
    exports written, checked and timed (gpt_bigcode's skipped with the reason: the fused graph
    does not build it), llama.cpp's q8_0 and q4_0 GGUFs written and timed."""
    pytest.importorskip("llama_cpp")
    from ghost_lsp.tools.bench import realsize

    cfg = _scaled_down(json.loads((realsize.CONFIGS / f"{name}.json").read_text()))
    (tmp_path / f"{name}.json").write_text(json.dumps(cfg))
    res = realsize.run_realsize(tmp_path / f"{name}.json", tmp_path / "work", engines=realsize.expand_engines("fused,llama.cpp"),
                                rounds=1, n_prompt=16, n_new=4, threads=1)
    fused = cfg["model_type"] != "gpt_bigcode"
    assert (cfg["model_type"] in ex.FUSED_TYPES) == fused
    if fused:
        assert res["skipped"] == []
    else:
        assert [s["engine"] for s in res["skipped"]] == ["fused"]
        assert "fused builds llama, qwen2, mistral, phi3, gemma, starcoder2 only" in res["skipped"][0]["reason"]
    onnx = [("onnx fused", "int8"), ("onnx fused", "int4")] if fused else []
    assert [(r["engine"], r["format"]) for r in res["rows"]] == onnx + [("llama.cpp", "q8_0"), ("llama.cpp", "q4_0")]
    for r in res["rows"]:
        assert "skipped" not in r and r["prefill_ms"] > 0 and r["decode_ms_per_token"] > 0
        assert r.get("fp32_max_abs_logit_diff", 0) < 1e-3
    assert 0 < res["parameters"] < 1e6


# write_gguf's architectures beyond llama (tests/test_bench_peers.py), each with the tokenizer of a
# family that ships it. Each has what its mapping could get wrong: qwen2 its q/k/v biases unrotated,
# starcoder2 LayerNorm and biases everywhere, gpt_bigcode the fused multi-query c_attn and learned
# positions, gemma its (1 + w) norms, phi3 the fused qkv_proj and gate_up_proj.
GGUF_ARCHS = [("qwen2", "qwen"), ("starcoder2", "starcoder2"), ("gpt_bigcode", "starcoder"),
              ("gemma", "codegemma"), ("phi3", "phi3")]


@pytest.mark.parametrize("arch,specials_of", GGUF_ARCHS)
def test_gguf_matches_pytorch_in_llama_cpp(tmp_path, arch, specials_of):
    """f32: llama.cpp's last logits are PyTorch's (the peers' gate) and its greedy tokens the same;
    q8_0 (every dimension a multiple of 32) loads and runs, in a subprocess so a crash is a failure."""
    pytest.importorskip("llama_cpp")
    import subprocess
    import sys

    import torch
    from transformers import AutoModelForCausalLM

    from ghost_lsp.tools.bench.peer_models import write_gguf
    from ghost_lsp.tools.bench.peers import _llama_cpp_runner, logits_check

    hf = build_hf(tmp_path / "hf", arch, specials_of, hidden=64)
    write_gguf(hf, tmp_path / "m.gguf", "f32")
    ids = [int(i) for i in np.random.default_rng(0).integers(3, 300, 20)]
    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
    seq = list(ids)
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0, -1].numpy()
        for _ in range(8):  # greedy without a cache: nothing of generate()'s to differ
            seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
    r = _llama_cpp_runner(tmp_path / "m.gguf", "f32", 1, 64, f32_kv=True)
    check = logits_check(ref, r.prefill(ids))
    tokens = [r.next_token() for _ in range(8)]
    r.close()
    assert check["ok"], check
    assert tokens == seq[len(ids):]

    assert write_gguf(hf, tmp_path / "m-q8.gguf", "q8_0") == {"fallback_f16": []}
    code = ("import sys; from pathlib import Path; from ghost_lsp.tools.bench.peers import _llama_cpp_runner\n"
            "r = _llama_cpp_runner(Path(sys.argv[1]), 'q8_0', 1, 64)\n"
            "x = r.prefill(list(range(3, 40)))\n"
            "assert x.ndim == 1 and bool((abs(x) < 1e4).all()) and r.next_token() >= 0\n"
            "r.close(); print('ok')\n")
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m-q8.gguf")], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0 and "ok" in p.stdout, p.stderr[-2000:]
