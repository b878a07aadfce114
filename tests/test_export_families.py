"""`model export` on tiny random checkpoints of each architecture people bring (issue #19):
exported with optimum, validated against PyTorch, and given the family its tokenizer says.
Also the refusals: no tokenizer, unknown architecture, no FIM tokens (plain), too big."""

import argparse
import json

import pytest

from ghost_lsp.engine.manifest import Manifest
from ghost_lsp.tools.modelkit import export as ex
from ghost_lsp.tools.modelkit import export_inputs
from ghost_lsp.tools.modelkit.export_inputs import ExportInputError
from test_families import byte_level

pytestmark = pytest.mark.slow

# Each architecture with the special tokens of the family that ships it.
SPECIALS = {
    "qwen": ["<|endoftext|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
             "<|repo_name|>", "<|file_sep|>"],
    "deepseek": ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜fim▁hole｜>", "<｜fim▁begin｜>",
                 "<｜fim▁end｜>"],
    "starcoder2": ["<|endoftext|>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>",
                   "<repo_name>", "<file_sep>"],
    "starcoder": ["<|endoftext|>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>"],
    "codegemma": ["<pad>", "<eos>", "<bos>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
                  "<|file_separator|>"],
    "phi3": ["<unk>", "<s>", "</s>", "<|endoftext|>", "<|end|>"],
    "codegen": ["<|endoftext|>", "<mask_1>", "<sep>", "<eom>"],
}


def _tokenizer(specials):
    return byte_level(specials, vocab_size=400)


def build_hf(folder, arch, specials_of, hidden=32, **extra):
    """A random tiny checkpoint of `arch` with a byte-level tokenizer holding `specials_of`'s tokens
    (`extra`: more config fields)."""
    import torch
    import transformers as T

    tok = _tokenizer(SPECIALS[specials_of])
    vocab = tok.get_vocab_size()
    eos = 1 if specials_of in ("deepseek", "phi3", "codegemma") else 0
    common = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  eos_token_id=eos, bos_token_id=eos, pad_token_id=eos, initializer_range=0.2)
    common.update(extra)
    if arch == "gpt_bigcode":
        cfg = T.GPTBigCodeConfig(vocab_size=vocab, n_embd=hidden, n_layer=2, n_head=4, n_positions=128,
                                 multi_query=True, eos_token_id=eos, bos_token_id=eos, initializer_range=0.2)
    elif arch == "gemma":  # its own head_dim, twice hidden/heads here (256 at 2B, not 2048/8)
        cfg = T.GemmaConfig(head_dim=hidden // 2, **common)
    elif arch == "phi3":
        cfg = T.Phi3Config(**common)
    elif arch == "phi":
        cfg = T.PhiConfig(**{**common, "num_key_value_heads": 4})  # Phi-2 has no grouped KV heads
    else:
        cfg = {"llama": T.LlamaConfig, "qwen2": T.Qwen2Config, "mistral": T.MistralConfig,
               "starcoder2": T.Starcoder2Config}[arch](**common)
    torch.manual_seed(0)
    model = T.AutoModelForCausalLM.from_config(cfg).eval()
    if arch == "qwen2":  # Qwen2 has q/k/v biases; make them matter
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                torch.nn.init.normal_(proj.bias, std=0.5)
    if arch in ("gemma", "starcoder2"):  # Gemma's norms (1 + 0 at init), StarCoder2's LayerNorm and biases
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith("bias") or "norm" in name:
                    param.add_(torch.randn_like(param) * 0.5)
    model.save_pretrained(folder)
    T.PreTrainedTokenizerFast(tokenizer_object=tok, model_input_names=["input_ids", "attention_mask"]
                              ).save_pretrained(folder)
    return folder


ARCHS = [  # (architecture, whose tokenizer, the family export must pick)
    ("llama", "deepseek", "deepseek"),
    ("qwen2", "qwen", "qwen"),
    ("mistral", "starcoder", "starcoder"),
    ("starcoder2", "starcoder2", "starcoder2"),
    ("gpt_bigcode", "starcoder", "starcoder"),
    ("gemma", "codegemma", "codegemma"),
    ("phi3", "phi3", "plain"),
    ("phi", "phi3", "plain"),  # Phi-2
    ("llama", "codegen", "codegen"),  # CodeGen2.5 is a Llama
]


@pytest.mark.parametrize("arch,specials_of,family", ARCHS, ids=[f"{a[0]}-{a[2]}" for a in ARCHS])
def test_each_architecture_exports_and_validates(tmp_path, arch, specials_of, family):
    hf = build_hf(tmp_path / "hf", arch, specials_of)
    report = ex.export_onnx(hf, tmp_path / "out", quantize="none", steps=4)
    assert report["fp32_ok"], report
    m = Manifest.load(tmp_path / "out")
    assert (m.architecture, m.family, report["family"]) == (arch, family, family)
    assert m.fim == (family != "plain")
    if family == "qwen":
        assert (m.fim_prefix, m.eos_token) == ("<|fim_prefix|>", "<|endoftext|>")
        assert "<|file_sep|>" in m.stop_tokens
    if family == "deepseek":
        assert (m.fim_prefix, m.fim_middle, m.eos_token) == ("<｜fim▁begin｜>", "<｜fim▁end｜>", "<｜end▁of▁sentence｜>")
    if family == "codegen":
        assert (m.fim_suffix, m.fim_middle, m.eos_token) == ("<mask_1>", "<mask_1>", "<eom>")
    if family == "codegemma":
        assert m.eos_token == "<|file_separator|>" and "<eos>" in m.stop_tokens
    if family == "plain":
        assert m.eos_token in SPECIALS["phi3"]
    # The engine finds the family's end token and sentinels, and completes the family's prompt.
    from ghost_lsp.completion.prompt import build_prompt
    from ghost_lsp.engine.onnx import OnnxEngine
    from ghost_lsp.types import Context, SamplingParams

    eng = OnnxEngine(tmp_path / "out")
    assert eng.eos_id is not None and eng.eos_id == eng.tokenizer.token_to_id(m.eos_token)
    assert all(i is not None for i in eng._fim_ids) if m.fim else True
    ctx = Context(prefix="def add(a, b):\n    return ", suffix="\n", path="pkg/a.py", language="python")
    prompt = build_prompt(ctx, m, eng.count_tokens, 8)
    assert prompt.fim == m.fim and prompt.template.startswith(family)
    c = eng.generate(prompt.text, SamplingParams(max_new_tokens=3, stop=prompt.stop))
    assert c.finish_reason in ("length", "eos", "stop")


def _cli(argv):
    parser = argparse.ArgumentParser(prog="ghost-lsp model")
    ex.add_model_export_parser(parser.add_subparsers())
    args = parser.parse_args(["export", *map(str, argv)])
    return args.func(args)


def test_no_fim_tokens_is_plain_and_said(tmp_path, capsys):
    hf = build_hf(tmp_path / "hf", "phi3", "phi3")
    assert _cli([hf, tmp_path / "out", "--quantize", "none"]) == 0
    out = capsys.readouterr()
    report = json.loads(out.out)
    assert report["family"] == "plain" and not report["fim"]
    assert "exported as family plain: left-to-right, no fill-in-the-middle" in out.err and "phi3" in out.err


def test_family_flag_overrides_and_is_checked(tmp_path, capsys):
    hf = build_hf(tmp_path / "hf", "starcoder2", "starcoder2")
    assert _cli([hf, tmp_path / "out", "--quantize", "none", "--family", "starcoder"]) == 0
    assert Manifest.load(tmp_path / "out").family == "starcoder"
    capsys.readouterr()
    assert _cli([hf, tmp_path / "out2", "--quantize", "none", "--family", "qwen"]) == 2
    out = capsys.readouterr()
    assert "lacks <|fim_prefix|>" in out.err and not (tmp_path / "out2").exists()


def test_folder_without_tokenizer_is_refused(tmp_path, capsys):
    hf = build_hf(tmp_path / "hf", "llama", "starcoder")
    (hf / "tokenizer.json").unlink()
    with pytest.raises(ExportInputError, match="no tokenizer.json; it has tokenizer_config.json only"):
        ex.export_onnx(hf, tmp_path / "out")
    assert _cli([hf, tmp_path / "out"]) == 2
    assert "export refused" in capsys.readouterr().err
    with pytest.raises(ExportInputError, match="no config.json"):
        ex.export_onnx(tmp_path, tmp_path / "out")


def test_unknown_architecture_is_refused(tmp_path):
    hf = build_hf(tmp_path / "hf", "llama", "starcoder")
    cfg = json.loads((hf / "config.json").read_text())
    (hf / "config.json").write_text(json.dumps({**cfg, "model_type": "ghostformer"}))
    with pytest.raises(ExportInputError, match="unknown architecture 'ghostformer'"):
        ex.export_onnx(hf, tmp_path / "out")
    (hf / "config.json").write_text(json.dumps({**cfg, "model_type": "bert"}))
    with pytest.raises(ExportInputError, match="'bert' has no ONNX export for text generation"):
        ex.export_onnx(hf, tmp_path / "out")
    (hf / "config.json").write_text(json.dumps({**cfg, "model_type": "gemma2"}))
    with pytest.raises(ExportInputError, match=r"--graph fused builds .* not 'gemma2' \(Gemma 2 .*soft-capping"):
        ex.export_onnx(hf, tmp_path / "out", graph="fused")


def test_model_too_big_for_memory_is_refused_with_the_numbers(tmp_path, monkeypatch):
    hf = build_hf(tmp_path / "hf", "llama", "starcoder")
    cfg = {k: v for k, v in json.loads((hf / "config.json").read_text()).items() if k != "head_dim"}
    # A 7B-shaped config: counted on the meta device, nothing allocated.
    (hf / "config.json").write_text(json.dumps({**cfg, "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008,
                                                "num_hidden_layers": 32, "num_attention_heads": 32,
                                                "num_key_value_heads": 32}))
    monkeypatch.setattr(export_inputs, "available_memory", lambda: 16 * 2**30)
    with pytest.raises(ExportInputError, match=r"6\.7\d B parameters need about \d+\.\d GiB .* 16\.0 GiB is available"):
        ex.export_onnx(hf, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("arch,specials_of", [("qwen2", "qwen"), ("mistral", "starcoder")])
def test_fused_graph_covers_qwen2_and_mistral(tmp_path, arch, specials_of):
    from ghost_lsp.engine.onnx import OnnxEngine
    from ghost_lsp.types import SamplingParams

    hf = build_hf(tmp_path / "hf", arch, specials_of, hidden=64)  # GroupQueryAttention: head_dim 16
    # fp32 against PyTorch (int8 agreement on random tiny weights measures noise, not the graph)
    report = ex.export_onnx(hf, tmp_path / "out", quantize="none", graph="fused", steps=6)
    assert report["fp32_ok"] and report["fp32_max_abs_logit_diff"] < 1e-3, report
    m = Manifest.load(tmp_path / "out")
    assert (m.architecture, m.info["graph"], m.quantization) == (arch, "fused", "none")
    c = OnnxEngine(tmp_path / "out").generate("def f():\n    ", SamplingParams(max_new_tokens=4))
    assert len(c.token_ids) >= 1


def test_fused_graph_stops_at_the_sliding_window(tmp_path):
    from transformers import MistralConfig

    from ghost_lsp.tools.modelkit.llama_graph import positions

    assert positions(MistralConfig(max_position_embeddings=32768, sliding_window=4096)) == 4096
    assert positions(MistralConfig(max_position_embeddings=128, sliding_window=4096)) == 128
    assert positions(MistralConfig(max_position_embeddings=128, sliding_window=None)) == 128
    assert ex._context_length(MistralConfig(max_position_embeddings=32768, sliding_window=4096)) == 4096
    from transformers import Phi3Config, Starcoder2Config

    # Phi-3.5-mini: LongRoPE, served with its short factors up to the original 4096 positions.
    phi35 = Phi3Config(max_position_embeddings=131072, original_max_position_embeddings=4096, sliding_window=262144,
                       rope_scaling={"type": "longrope", "short_factor": [1.0] * 48, "long_factor": [2.0] * 48})
    assert positions(phi35) == ex._context_length(phi35) == 4096
    assert positions(Phi3Config(max_position_embeddings=4096, sliding_window=2047)) == 2047  # Phi-3-mini-4k
    starcoder2 = Starcoder2Config(max_position_embeddings=16384, sliding_window=4096)  # starcoder2-3b
    assert positions(starcoder2) == ex._context_length(starcoder2) == 4096


def test_fused_graph_refuses_what_groupqueryattention_cannot_run(tmp_path):
    from ghost_lsp.tools.modelkit.llama_graph import UnsupportedModel, build_llama_graph

    hf = build_hf(tmp_path / "hf", "qwen2", "qwen", hidden=32)  # head_dim 8: fails at run time, so refused here
    with pytest.raises(UnsupportedModel, match="head_dim 8 is not a multiple of 16"):
        build_llama_graph(hf, tmp_path / "fused.onnx")
