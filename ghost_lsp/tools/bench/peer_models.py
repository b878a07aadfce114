"""The models `bench --peers` runs on each engine: a checkpoint long enough for the prompt, a
random ~20 M Llama, GGUF files for llama.cpp (written with gguf), and onnxruntime-genai's
model folder (built by its builder, in a separate Python)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np


log = logging.getLogger(__name__)

GENAI_BUILDER_ENV = "GHOST_GENAI_BUILDER"
# 20.8 M parameters at vocabulary 8192; every dimension a multiple of 32 (GGUF block size).
RANDOM_20M = dict(hidden_size=384, intermediate_size=1024, num_hidden_layers=10, num_attention_heads=6,
                  num_key_value_heads=6)


def _bench_checkpoint(hf_dir: Path, work: Path, min_positions: int) -> Path:
    """A copy of hf_dir whose max_position_embeddings covers prompt + new tokens.

    The shipped model's context is 256, the bench needs 320 positions; RoPE computes any
    position, so only the config's limit changes (weights are the same files)."""
    cfg = json.loads((hf_dir / "config.json").read_text())
    if cfg.get("max_position_embeddings", 0) >= min_positions:
        return hf_dir
    out = work / (hf_dir.name + "-bench")
    out.mkdir(parents=True, exist_ok=True)
    for p in hf_dir.iterdir():
        if p.is_file() and p.name != "config.json":
            target = out / p.name
            if not target.exists():
                os.symlink(p.resolve(), target)
    cfg["max_position_embeddings"] = min_positions
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    return out


def build_random_llama(out: Path, tokenizer_json: Path, max_positions: int, **dims) -> Path:
    """A random-weight Llama (RANDOM_20M by default) saved as a HF checkpoint with the tokenizer."""
    import torch
    from tokenizers import Tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab = Tokenizer.from_file(str(tokenizer_json)).get_vocab_size()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, max_position_embeddings=max_positions, tie_word_embeddings=True,
                      bos_token_id=0, eos_token_id=0, pad_token_id=0, **{**RANDOM_20M, **dims})
    model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(out)
    shutil.copyfile(tokenizer_json, out / "tokenizer.json")
    return out


@dataclass(frozen=True)
class GgufArch:
    """How one Hugging Face model type is written as one of llama.cpp's architectures."""
    name: str  # llama.cpp's architecture
    layer_norm: bool = False  # LayerNorm with bias (layer_norm_epsilon), else RMSNorm (layer_norm_rms_epsilon)
    rope: bool = True  # else learned absolute positions (position_embd)
    # llama.cpp's llama rotates adjacent pairs; HF, and llama.cpp's NEOX-rope architectures, the halves
    permute_qk: bool = False
    # Gemma's RMSNorm scales by (1 + w), llama.cpp's by w: llama.cpp's converter adds 1 to every norm weight
    norm_shift: float = 0.0


GGUF_ARCHS = {
    "llama": GgufArch("llama", permute_qk=True),
    "mistral": GgufArch("llama", permute_qk=True),
    "qwen2": GgufArch("qwen2"),  # q/k/v biases
    "starcoder2": GgufArch("starcoder2", layer_norm=True),  # biases everywhere, GELU MLP
    "gpt_bigcode": GgufArch("starcoder", layer_norm=True, rope=False),  # fused multi-query c_attn, wpe
    "gemma": GgufArch("gemma", norm_shift=1.0),  # GeGLU, embeddings scaled by sqrt(hidden) in llama.cpp too
    "phi3": GgufArch("phi3"),  # fused qkv_proj and gate_up_proj (llama.cpp splits both as HF does)
}
# HF tensor names (without the layer prefix and the .weight/.bias suffix) to llama.cpp's, one table
# for every architecture: no HF name means two things across them.
_GLOBAL_NAMES = {"model.embed_tokens": "token_embd", "transformer.wte": "token_embd",
                 "transformer.wpe": "position_embd", "model.norm": "output_norm", "transformer.ln_f": "output_norm",
                 "lm_head": "output"}
_LAYER_NAMES = {
    "input_layernorm": "attn_norm", "ln_1": "attn_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.qkv_proj": "attn_qkv", "attn.c_attn": "attn_qkv",
    "self_attn.o_proj": "attn_output", "attn.c_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm", "ln_2": "ffn_norm",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.gate_up_proj": "ffn_up", "mlp.c_fc": "ffn_up",
    "mlp.down_proj": "ffn_down", "mlp.c_proj": "ffn_down"}
_LAYER_PREFIXES = ("model.layers.", "transformer.h.")


def _gguf_name(key: str) -> str | None:
    """llama.cpp's name for a HF tensor, or None for one it has no use for (rotary buffers...)."""
    stem, kind = key.rsplit(".", 1)
    for prefix in _LAYER_PREFIXES:
        if stem.startswith(prefix):
            i, rest = stem[len(prefix):].split(".", 1)
            return f"blk.{i}.{_LAYER_NAMES[rest]}.{kind}" if rest in _LAYER_NAMES else None
    return f"{_GLOBAL_NAMES[stem]}.{kind}" if stem in _GLOBAL_NAMES else None


def write_gguf(hf_dir: Path, out: Path, qtype: str, tokenizer_json: Path | None = None) -> dict:
    """Write a llama.cpp GGUF of a HF checkpoint of a type in GGUF_ARCHS, as llama.cpp's own
    architecture (its tensor names and metadata keys, as its convert_hf_to_gguf.py writes them),
    read a tensor at a time.

    qtype: "f32", "f16", "q8_0" or "q4_0". 2-D weights whose input dimension is not a multiple
    of the 32-value block fall back to f16 (as llama.cpp's own converter does); norms, biases and
    learned position embeddings stay f32. Returns {"fallback_f16": [tensor names]}.
    """
    import gguf
    from transformers import AutoConfig

    from ghost_lsp.tools.modelkit.weights import CheckpointReader

    cfg = AutoConfig.from_pretrained(hf_dir)
    arch = GGUF_ARCHS.get(cfg.model_type)
    if arch is None:
        raise ValueError(f"write_gguf writes {', '.join(GGUF_ARCHS)} checkpoints, not {cfg.model_type!r}")
    if cfg.model_type == "gpt_bigcode" and not cfg.multi_query:
        # Multi-head c_attn interleaves q, k, v per head; llama.cpp's starcoder (and its converter,
        # which writes one KV head) reads the multi-query layout [q | k | v] only.
        raise ValueError("write_gguf writes multi-query gpt_bigcode checkpoints only (multi_query=False given)")
    if cfg.model_type == "phi3" and cfg.rope_scaling:
        raise ValueError("write_gguf does not write Phi-3's long-context rope factors (rope_scaling is set)")
    reader = CheckpointReader(hf_dir)
    n_head = cfg.num_attention_heads
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_head
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_head
    kinds = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
             "q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0}
    if qtype not in kinds:
        raise ValueError(f"qtype must be one of {sorted(kinds)}")
    file_types = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                  "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}

    w = gguf.GGUFWriter(str(out), arch.name)
    w.add_name(hf_dir.name)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None)
                              or 4 * cfg.hidden_size)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    eps = next(float(v) for k in ("rms_norm_eps", "norm_epsilon", "layer_norm_epsilon")
               if (v := getattr(cfg, k, None)) is not None)
    (w.add_layer_norm_eps if arch.layer_norm else w.add_layer_norm_rms_eps)(eps)
    if arch.rope:
        w.add_rope_dimension_count(int(head_dim * (getattr(cfg, "partial_rotary_factor", None) or 1.0)))
        w.add_rope_freq_base(float(cfg.rope_theta))
    if arch.name == "phi3":  # as llama.cpp's converter writes them (sliding window 0: none)
        w.add_rope_scaling_orig_ctx_len(cfg.original_max_position_embeddings)
        w.add_sliding_window(cfg.sliding_window or 0)
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(file_types[qtype])
    _add_gguf_vocab(w, tokenizer_json or hf_dir / "tokenizer.json", cfg)

    def permute(x, heads):
        # HF rotates the two halves of each head (rotate_half); llama.cpp's llama architecture
        # rotates adjacent pairs: interleave the rows so both compute the same attention.
        return x.reshape(heads, 2, x.shape[0] // heads // 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)

    fallback = []
    for key in reader.names():
        if key == "lm_head.weight" and getattr(cfg, "tie_word_embeddings", False):
            continue  # llama.cpp reads token_embd for the output when output.weight is absent
        name = _gguf_name(key)
        if name is None:
            continue
        arr = reader.get(key)
        part = name.split(".")[-2]
        if arch.permute_qk and part in ("attn_q", "attn_k"):
            arr = permute(arr, n_head if part == "attn_q" else n_kv)
        if arch.norm_shift and name.endswith("_norm.weight"):
            arr = arr + arch.norm_shift
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if arr.ndim == 1 or qtype == "f32" or part == "position_embd":
            w.add_tensor(name, arr)
        elif qtype == "f16" or arr.shape[-1] % 32:
            if qtype != "f16":
                fallback.append(name)
            w.add_tensor(name, arr.astype(np.float16))
        else:
            w.add_tensor(name, gguf.quants.quantize(arr, kinds[qtype]), raw_dtype=kinds[qtype])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {"fallback_f16": fallback}


def _add_gguf_vocab(w, tokenizer_json: Path, cfg) -> None:
    """Byte-level BPE vocabulary as llama.cpp's "gpt2" tokenizer model (ids fed directly here,
    but llama.cpp refuses a model file without a vocabulary)."""
    data = json.loads(Path(tokenizer_json).read_text(encoding="utf-8"))
    vocab = dict(data["model"]["vocab"])
    special = set()
    for t in data.get("added_tokens", []):
        vocab[t["content"]] = t["id"]
        if t.get("special"):
            special.add(t["id"])
    tokens = [f"[PAD{i}]" for i in range(cfg.vocab_size)]
    types = [5] * cfg.vocab_size  # UNUSED for padding rows
    for tok, i in vocab.items():
        if i < cfg.vocab_size:
            tokens[i] = tok
            types[i] = 3 if i in special else 1  # CONTROL / NORMAL
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"].get("merges", [])]
    w.add_tokenizer_model("gpt2")
    # Our tokenizer is a byte-level BPE with GPT-2's pre-tokenizer: "gpt-2" makes llama.cpp split
    # text the same way ("default" gave 8 % more tokens and no held-out file tokenized identically).
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(int(getattr(cfg, "bos_token_id", 0) or 0))
    w.add_eos_token_id(int(getattr(cfg, "eos_token_id", 0) or 0))
    w.add_add_bos_token(False)


def genai_builder_python(explicit: str | None) -> tuple[str | None, str]:
    """The Python that runs onnxruntime-genai's model builder, or (None, why not)."""
    cand = explicit or os.environ.get(GENAI_BUILDER_ENV)
    if not cand:
        return None, (f"no model-builder Python (--genai-builder or ${GENAI_BUILDER_ENV}): the builder needs "
                      "transformers>=5 and onnx_ir beside onnxruntime-genai, which this environment's "
                      "transformers 4.57 pin (optimum-onnx) excludes; create one with `python -m venv VENV && "
                      "VENV/bin/pip install onnxruntime-genai onnx_ir 'transformers>=5' torch`")
    if not Path(cand).is_file():
        return None, f"model-builder Python {cand} does not exist"
    probe = subprocess.run([cand, "-c", "import onnxruntime_genai.models.builder"], capture_output=True,
                           text=True, timeout=120)
    if probe.returncode != 0:
        return None, f"{cand} cannot import onnxruntime_genai.models.builder: {probe.stderr.strip()[-300:]}"
    return cand, ""


def build_genai(python: str, hf_dir: Path, out: Path, precision: str, threads: int) -> Path:
    """Run onnxruntime-genai's model builder (cpu) and pin its session to `threads` threads."""
    proc = subprocess.run([python, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir), "-o", str(out),
                           "-p", precision, "-e", "cpu", "-c", str(out.parent / "genai-cache")],
                          capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0 or not (out / "genai_config.json").is_file():
        raise RuntimeError(f"model builder failed ({proc.returncode}): {(proc.stderr or proc.stdout)[-500:]}")
    cfg_path = out / "genai_config.json"
    cfg = json.loads(cfg_path.read_text())
    opts = cfg["model"]["decoder"].setdefault("session_options", {})
    opts.update({"intra_op_num_threads": threads, "inter_op_num_threads": 1})
    cfg_path.write_text(json.dumps(cfg, indent=2))
    return out
