"""A Llama-like checkpoint written straight to one compact ONNX decoder graph (the "fused" format).

Architectures (each layout read in transformers' `models/<type>/modeling_<type>.py`, 4.57), one
code path with the per-architecture switches of `Layout` (LAYOUTS):
- llama (modeling_llama.py): the layer below, RMSNorm, SiLU-gated MLP.
- qwen2 (modeling_qwen2.py): Llama's layer with q/k/v biases, added after the packed QKV MatMul.
- mistral (modeling_mistral.py): Llama's layer; a sliding window wider than the context changes
  nothing, so the graph's positions stop at the window (`positions()`).
- phi3 (modeling_phi3.py): Llama's layer with the QKV weights already packed (`qkv_proj`, used
  as the packed MatMul's weight as it is) and gate/up in one tensor (`gate_up_proj`, split in
  two); `partial_rotary_factor` < 1 rotates the first part of each head only, and LongRoPE
  (`rope_scaling` type longrope: Phi-3.5-mini, Phi-3-mini-128k) is served with its short factors
  and attention factor up to `original_max_position_embeddings`, where PyTorch uses the same.
- gemma (modeling_gemma.py; CodeGemma, Gemma 1): RMSNorm scaling by 1 + weight (the +1 folded
  into the weights written), a GELU-gated MLP, the embeddings times sqrt(hidden_size) (folded into
  the embedding table, in fp32 like the PyTorch model the export check runs), head_dim from the
  config (256 at 2B, not hidden/heads), tied embeddings. The GELU is `hidden_act`'s, the field
  GemmaMLP reads in the pinned transformers: a Gemma 1 config.json says "gelu" (erf's) there and
  "gelu_pytorch_tanh" in `hidden_activation`, which that version ignores; the graph computes
  what the PyTorch model it is checked against computes. Gemma 2/3 are refused (REFUSED).
- starcoder2 (modeling_starcoder2.py): LayerNorm with bias (`norm_epsilon`) instead of RMSNorm,
  biases on q/k/v/o and the MLP (`use_bias`), a plain MLP c_fc → GELU → c_proj, a sliding
  window as Mistral's, tied embeddings.

Why not optimum's export: its graph runs hundreds of small Shape/Gather/Concat ops per decode
step, rebuilds the causal mask and the rotary tables every step, computes logits for every
prompt position, and ties the LM head to the embedding (so dynamic quantization leaves it an
fp32 MatMul over a dequantized table). Here each layer is: (Skip)(Simplified)LayerNormalization
→ one packed QKV MatMul (+ biases) → GroupQueryAttention (rotary inside, causal by sequence
lengths) → MatMul → SkipLayerNormalization (o's bias as its bias input) → gate/up/down MatMuls
(or fc/proj) → the next layer's SkipLayerNormalization (down's bias likewise); the LM head is its
own weight; `logits_to_keep` (0 = every position, k = the last k) slices the hidden states
before the LM head, so prefill can ask for the last position only.

The interface is optimum's (`input_ids`, `attention_mask`, `past_key_values.{i}.key/value` →
`logits`, `present.{i}.key/value`, KV laid out (batch, kv_heads, seq, head_dim)) plus
`logits_to_keep`; the metadata key KV_CAPACITY_KEY lets the engine keep the cache in
preallocated buffers that GroupQueryAttention appends to in place (engine/onnx.py Decoder).
Quantized graphs are written directly (fused_quant.py): each MatMul becomes `MatMulNBits` (int8
or int4 weights, int8 compute) or `DynamicQuantizeMatMul` as its weight is read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

OPSET = 17
KV_CAPACITY_KEY = "ghost_lsp.kv_capacity"  # model metadata: positions a shared KV buffer holds


class UnsupportedModel(ValueError):
    """The checkpoint uses a feature this writer does not implement (use the optimum format)."""


@dataclass(frozen=True)
class Layout:
    """Where an architecture's decoder layer differs from Llama's (names under model.layers.{i}.)."""

    norm: str = "rms"  # "rms": RMSNorm; "rms+1": Gemma's, scaling by 1 + weight; "layer": LayerNorm with bias
    eps: str = "rms_norm_eps"  # the config field of the norms' epsilon
    qkv: tuple[str, ...] = ("q_proj", "k_proj", "v_proj")  # self_attn weights packed, in this order
    mlp_in: tuple[str, ...] = ("gate_proj", "up_proj")  # one name and gated: gate and up in one tensor
    mlp_out: str = "down_proj"
    gated: bool = True  # act(gate) * up; False: act(fc)
    embed_scale: bool = False  # embeddings times sqrt(hidden_size) (Gemma)


LAYOUTS = {
    "llama": Layout(),
    "qwen2": Layout(),
    "mistral": Layout(),
    "phi3": Layout(qkv=("qkv_proj",), mlp_in=("gate_up_proj",)),
    "gemma": Layout(norm="rms+1", embed_scale=True),
    "starcoder2": Layout(norm="layer", eps="norm_epsilon", mlp_in=("c_fc",), mlp_out="c_proj", gated=False),
}
MODEL_TYPES = tuple(LAYOUTS)
# Near relatives that share a name with a supported type but not its layer.
REFUSED = {
    "gemma2": "Gemma 2 (attention and final logit soft-capping, sandwich norms, alternating local attention)",
    "gemma3": "Gemma 3 (sandwich norms, q/k norms, alternating local attention)",
    "gemma3_text": "Gemma 3 (sandwich norms, q/k norms, alternating local attention)",
}
# hidden_act values (the field transformers' MLPs read) → how the graph computes them.
ACTIVATIONS = {"silu": "silu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}


def refusal(model_type: str) -> str:
    """Why the fused format does not build `model_type` (empty when it does)."""
    if model_type in LAYOUTS:
        return ""
    if model_type in REFUSED:
        return f"{REFUSED[model_type]} is not supported by the fused format"
    return f"fused format supports model_type {', '.join(map(repr, MODEL_TYPES))}, not {model_type!r}"


def sliding_window(cfg) -> int | None:
    """The attention window of a Mistral/Qwen2/Phi-3/StarCoder2 config, None when attention is full."""
    window = getattr(cfg, "sliding_window", None)
    if not window or getattr(cfg, "use_sliding_window", True) is False:
        return None
    return int(window)


def _rope_type(cfg) -> str | None:
    scaling = getattr(cfg, "rope_scaling", None)
    if not scaling:
        return None
    return scaling.get("rope_type", scaling.get("type")) if isinstance(scaling, dict) else str(scaling)


def position_limit(cfg) -> int | None:
    """Positions beyond which the graph would not be the PyTorch model's, None when there is no
    such limit: a sliding window (within it sliding and full attention are the same), LongRoPE's
    original length (beyond it PyTorch switches every position to the long factors)."""
    limits = [sliding_window(cfg)]
    if _rope_type(cfg) == "longrope":
        limits.append(getattr(cfg, "original_max_position_embeddings", None) or cfg.max_position_embeddings)
    limits = [int(x) for x in limits if x]
    return min(limits) if limits else None


def positions(cfg) -> int:
    """Positions the graph serves: the model's, but no more than `position_limit`."""
    max_pos = int(cfg.max_position_embeddings)
    limit = position_limit(cfg)
    return min(max_pos, limit) if limit else max_pos


def head_dim(cfg) -> int:
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


def rotary_dim(cfg) -> int:
    """Dimensions of each head that rotate (Phi-3's partial_rotary_factor < 1: the first ones)."""
    return int(head_dim(cfg) * float(getattr(cfg, "partial_rotary_factor", None) or 1.0))


def rotary_tables(cfg) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of every position the graph serves, (positions, rotary_dim / 2), as transformers'
    default or LongRoPE (short factors, cos/sin times the attention factor) rope init computes."""
    dim = rotary_dim(cfg)
    inv_freq = 1.0 / (float(cfg.rope_theta) ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    scale = 1.0
    if _rope_type(cfg) == "longrope":
        rs = cfg.rope_scaling
        inv_freq = inv_freq / np.asarray(rs["short_factor"], dtype=np.float64)
        original = getattr(cfg, "original_max_position_embeddings", None)
        factor = cfg.max_position_embeddings / original if original else (rs.get("factor") or 1.0)
        original = original or cfg.max_position_embeddings
        scale = rs.get("attention_factor") or (
            1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original)))
    freqs = np.outer(np.arange(positions(cfg), dtype=np.float64), inv_freq)
    return (np.cos(freqs) * scale).astype(np.float32), (np.sin(freqs) * scale).astype(np.float32)


def _check_config(cfg) -> None:
    model_type = getattr(cfg, "model_type", None)
    if model_type not in LAYOUTS:
        raise UnsupportedModel(refusal(str(model_type)))
    if _rope_type(cfg) not in (None, "longrope"):
        raise UnsupportedModel(f"rope_scaling {cfg.rope_scaling!r} is not supported by the fused format")
    if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
        raise UnsupportedModel("attention/MLP biases are not supported by the fused format")
    act = getattr(cfg, "hidden_act", "silu")
    if act not in ACTIVATIONS:
        raise UnsupportedModel(f"activation {act!r} is not supported by the fused format")
    dim = head_dim(cfg)
    if dim % 16:  # onnxruntime's CPU GroupQueryAttention: "head_size shall be a multiple of 16"
        raise UnsupportedModel(f"head_dim {dim} is not a multiple of 16 (GroupQueryAttention)")
    rot = rotary_dim(cfg)
    if rot % 16:  # its rotary: "cos_cache dimension 1 must be <= head_size / 2 and a multiple of 8"
        raise UnsupportedModel(f"{rot} rotary dimensions (head_dim {dim} × partial_rotary_factor "
                               f"{getattr(cfg, 'partial_rotary_factor', 1.0)}) are not a multiple of 16 "
                               "(GroupQueryAttention)")


INLINE_MAX = 1 << 30  # fp32 weights above this go to an external data file (protobuf stops at 2 GB)


def build_llama_graph(hf_dir: str | Path, out_path: str | Path, quantize: str | None = None, *,
                      external: bool | None = None, progress: bool = False) -> Path:
    """Write the fused graph of a local checkpoint of a MODEL_TYPES architecture to out_path.

    Reads the checkpoint one tensor at a time (weights.CheckpointReader) and writes each weight
    as it goes, fp32 or quantized (`quantize`: a fused_quant.KINDS value), so memory holds a
    tensor or two, not the model. external: weights in `out_path.data` (None: when the fp32
    weights pass INLINE_MAX). progress: a tqdm bar over the layers on stderr."""
    from onnx import TensorProto, helper
    from tqdm import tqdm
    from transformers import AutoConfig

    from ghost_lsp.tools.modelkit.fused_quant import WeightEmitter
    from ghost_lsp.tools.modelkit.weights import CheckpointReader, ExternalData

    cfg = AutoConfig.from_pretrained(hf_dir)
    _check_config(cfg)
    lay = LAYOUTS[cfg.model_type]
    sd = CheckpointReader(hf_dir)
    out_path = Path(out_path)
    if external is None:
        external = sd.nbytes_fp32() > INLINE_MAX
    data = ExternalData(out_path, inline=not external)

    n_heads = cfg.num_attention_heads
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_heads
    head = head_dim(cfg)
    eps = float(getattr(cfg, lay.eps))
    act = ACTIVATIONS[getattr(cfg, "hidden_act", "silu")]
    n_layers = cfg.num_hidden_layers
    max_pos = positions(cfg)

    nodes = []

    def node(op, ins, outs, domain="", **attrs):
        nodes.append(helper.make_node(op, ins, outs, name=f"{op}_{len(nodes)}", domain=domain, **attrs))
        return outs[0] if len(outs) == 1 else outs

    w = WeightEmitter(data, node, quantize)
    init = w.plain

    def bias(names: list[str], name: str) -> str | None:
        """The biases of `names` (packed in their order) as one initializer, None without."""
        if names[0] not in sd:
            return None
        return init(np.concatenate([sd.get(n) for n in names]), name)

    def add_bias(x: str, names: list[str], name: str) -> str:
        b = bias(names, name + "_bias")
        return x if b is None else node("Add", [x, b], [name + "_biased"])

    def norm_weights(prefix: str, name: str) -> list[str]:
        """gamma (Gemma: 1 + weight, as GemmaRMSNorm scales), and LayerNorm's beta."""
        gamma = sd.get(prefix + ".weight")
        out = [init(gamma + 1.0 if lay.norm == "rms+1" else gamma, name)]
        if lay.norm == "layer":
            out.append(init(sd.get(prefix + ".bias"), name + "_beta"))
        return out

    def skip_norm(x: str, residual: str, prefix: str, x_bias: list[str], name: str) -> tuple[str, str]:
        """norm(x + residual + x's bias): the normed hidden states and the new residual stream."""
        b = bias(x_bias, name + "_xbias")
        op = "SkipLayerNormalization" if lay.norm == "layer" else "SkipSimplifiedLayerNormalization"
        h, _, _, res = node(op, [x, residual, *norm_weights(prefix, name)] + ([b] if b else []),
                            [f"h_{name}", "", "", f"res_{name}"], domain="com.microsoft", epsilon=eps)
        return h, res

    def activation(x: str, name: str) -> str:
        if act == "silu":
            return node("Mul", [x, node("Sigmoid", [x], [f"sig_{name}"])], [f"silu_{name}"])
        return node("Gelu" if act == "gelu" else "FastGelu", [x], [f"gelu_{name}"], domain="com.microsoft")

    # Rotary tables for every position the graph serves (GQA indexes them by position).
    cos, sin = rotary_tables(cfg)
    init(cos, "cos_cache")
    init(sin, "sin_cache")
    init(np.array(1, dtype=np.int64), "one_i64")
    init(np.array([1], dtype=np.int64), "axes_1")
    init(np.array([np.iinfo(np.int64).max], dtype=np.int64), "ends_max")

    # Sequence lengths for GroupQueryAttention, from the all-ones attention mask the engine feeds.
    node("ReduceSum", ["attention_mask", "axes_1"], ["mask_sum"], keepdims=0)
    node("Sub", ["mask_sum", "one_i64"], ["seqlens_i64"])
    node("Cast", ["seqlens_i64"], ["seqlens_k"], to=TensorProto.INT32)
    node("Shape", ["attention_mask"], ["mask_shape"])
    node("Gather", ["mask_shape", "one_i64"], ["total_len_i64"], axis=0)
    node("Cast", ["total_len_i64"], ["total_len"], to=TensorProto.INT32)

    table = sd.get("model.embed_tokens.weight")
    if lay.embed_scale:  # GemmaModel: embeddings * tensor(sqrt(hidden), model dtype); fp32 here
        table = table * np.float32(cfg.hidden_size ** 0.5)
    x = w.gather(table, "input_ids", "embed", "embeds")
    del table
    residual = x
    first = ["SimplifiedLayerNormalization", "LayerNormalization"][lay.norm == "layer"]
    extra = {} if lay.norm == "layer" else {"stash_type": 1}
    h = node(first, [x, *norm_weights("model.layers.0.input_layernorm", "ln_in_0")], ["h_in_0"],
             axis=-1, epsilon=eps, **extra)
    for i in tqdm(range(n_layers), desc=f"fused graph ({quantize or 'fp32'})", unit="layer",
                  disable=not progress):
        p = f"model.layers.{i}."
        attn_names = [p + f"self_attn.{n}." for n in lay.qkv]
        wqkv = np.concatenate([sd.get(n + "weight") for n in attn_names], axis=0).T
        qkv = w.matmul(h, wqkv, f"qkv_{i}", f"qkv_out_{i}")
        del wqkv
        qkv = add_bias(qkv, [n + "bias" for n in attn_names], f"qkv_{i}")  # before the rotary, as in PyTorch
        attn, pk, pv = node("GroupQueryAttention",
                            [qkv, "", "", f"past_key_values.{i}.key", f"past_key_values.{i}.value",
                             "seqlens_k", "total_len", "cos_cache", "sin_cache"],
                            [f"attn_{i}", f"present.{i}.key", f"present.{i}.value"], domain="com.microsoft",
                            num_heads=n_heads, kv_num_heads=n_kv, do_rotary=1, rotary_interleaved=0,
                            scale=float(head) ** -0.5)
        o = w.matmul(attn, sd.get(p + "self_attn.o_proj.weight").T, f"o_{i}", f"o_out_{i}")
        h2, residual = skip_norm(o, residual, p + "post_attention_layernorm", [p + "self_attn.o_proj.bias"],
                                 f"ln_post_{i}")
        mlp = [p + f"mlp.{n}." for n in lay.mlp_in]
        if lay.gated and len(mlp) == 1:  # Phi-3: gate and up stacked in one tensor
            ins = [(half, None) for half in np.split(sd.get(mlp[0] + "weight"), 2)]
        else:
            ins = [(sd.get(n + "weight"), n + "bias") for n in mlp]
        outs = []
        for j, (weight, bias_name) in enumerate(ins):
            y = w.matmul(h2, weight.T, f"mlp{j}_{i}", f"mlp{j}_out_{i}")
            outs.append(add_bias(y, [bias_name], f"mlp{j}_{i}") if bias_name else y)
        del ins, weight
        hidden = activation(outs[0], str(i))
        if lay.gated:
            hidden = node("Mul", [hidden, outs[1]], [f"act_{i}"])
        down = w.matmul(hidden, sd.get(p + f"mlp.{lay.mlp_out}.weight").T, f"down_{i}", f"down_out_{i}")
        h, residual = skip_norm(down, residual, f"model.layers.{i + 1}.input_layernorm" if i + 1 < n_layers
                                else "model.norm", [p + f"mlp.{lay.mlp_out}.bias"], f"ln_next_{i}")

    # Last positions only when asked (prefill needs one row, scoring needs all of them).
    node("Neg", ["logits_to_keep"], ["keep_start"])
    h = node("Slice", [h, "keep_start", "ends_max", "axes_1"], ["h_kept"])
    lm = "lm_head.weight" if "lm_head.weight" in sd else "model.embed_tokens.weight"  # untied: its own copy
    w.matmul(h, sd.get(lm).T, "lm_head", "logits")
    data.close()

    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    inputs = [helper.make_tensor_value_info("input_ids", i64, ["batch", "seq"]),
              helper.make_tensor_value_info("attention_mask", i64, ["batch", "total_seq"])]
    outputs = [helper.make_tensor_value_info("logits", f32, ["batch", "kept_seq", cfg.vocab_size])]
    for i in range(n_layers):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", f32,
                                                        ["batch", n_kv, "past_seq", head]))
            outputs.append(helper.make_tensor_value_info(f"present.{i}.{kind}", f32,
                                                         ["batch", n_kv, "total_seq", head]))
    # A plain input (not an overridable initializer): IO binding can only bind graph inputs.
    inputs.append(helper.make_tensor_value_info("logits_to_keep", i64, [1]))
    graph = helper.make_graph(nodes, f"ghost-lsp-{cfg.model_type}-fused", inputs, outputs, w.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                    helper.make_opsetid("com.microsoft", 1)],
                              producer_name="ghost-lsp")
    model.ir_version = 8
    # GroupQueryAttention can append to a KV buffer in place when past and present share it;
    # the engine sizes such buffers by this (the rotary tables cover as many positions).
    helper.set_model_props(model, {KV_CAPACITY_KEY: str(max_pos)})
    with open(out_path, "wb") as f:  # the proto holds offsets into out_path.data, not weights
        f.write(model.SerializeToString())
    return out_path
