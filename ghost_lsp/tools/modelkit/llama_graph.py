"""A Llama checkpoint written straight to one compact ONNX decoder graph (the "fused" format).

Also Qwen2 (the same layer with q/k/v biases, added after the packed QKV MatMul) and Mistral
(the same layer; a sliding window wider than the context changes nothing, so the graph's
positions stop at the window: `positions()`).

Why not optimum's export: its graph runs hundreds of small Shape/Gather/Concat ops per decode
step, rebuilds the causal mask and the rotary tables every step, computes logits for every
prompt position, and ties the LM head to the embedding (so dynamic quantization leaves it an
fp32 MatMul over a dequantized table). Here each layer is: SkipSimplifiedLayerNormalization →
one packed QKV MatMul → GroupQueryAttention (rotary inside, causal by sequence lengths) →
MatMul → SkipSimplifiedLayerNormalization → gate/up/down MatMuls; the LM head is its own
weight; `logits_to_keep` (0 = every position, k = the last k) slices the hidden states before
the LM head, so prefill can ask for the last position only.

The interface is optimum's (`input_ids`, `attention_mask`, `past_key_values.{i}.key/value` →
`logits`, `present.{i}.key/value`, KV laid out (batch, kv_heads, seq, head_dim)) plus
`logits_to_keep`; the metadata key KV_CAPACITY_KEY lets the engine keep the cache in
preallocated buffers that GroupQueryAttention appends to in place (engine/onnx.py Decoder).
Quantized graphs are written directly (fused_quant.py): each MatMul becomes `MatMulNBits` (int8
or int4 weights, int8 compute) or `DynamicQuantizeMatMul` as its weight is read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

OPSET = 17
KV_CAPACITY_KEY = "ghost_lsp.kv_capacity"  # model metadata: positions a shared KV buffer holds


class UnsupportedModel(ValueError):
    """The checkpoint uses a feature this writer does not implement (use the optimum format)."""


MODEL_TYPES = ("llama", "qwen2", "mistral")  # one decoder layer, up to q/k/v biases (Qwen2)


def sliding_window(cfg) -> int | None:
    """The attention window of a Mistral/Qwen2 config, None when attention is full."""
    window = getattr(cfg, "sliding_window", None)
    if not window or getattr(cfg, "use_sliding_window", True) is False:
        return None
    return int(window)


def positions(cfg) -> int:
    """Positions the graph serves: the model's, but no more than its sliding window, within
    which sliding and full attention are the same."""
    max_pos = int(cfg.max_position_embeddings)
    window = sliding_window(cfg)
    return min(max_pos, window) if window else max_pos


def _check_config(cfg) -> None:
    if getattr(cfg, "model_type", None) not in MODEL_TYPES:
        raise UnsupportedModel(f"fused format supports model_type {', '.join(map(repr, MODEL_TYPES))}, "
                               f"not {cfg.model_type!r}")
    if getattr(cfg, "rope_scaling", None):
        raise UnsupportedModel(f"rope_scaling {cfg.rope_scaling!r} is not supported by the fused format")
    if (cfg.model_type == "llama" and getattr(cfg, "attention_bias", False)) or getattr(cfg, "mlp_bias", False):
        raise UnsupportedModel("attention/MLP biases are not supported by the fused format")
    if getattr(cfg, "hidden_act", "silu") != "silu":
        raise UnsupportedModel(f"activation {cfg.hidden_act!r} is not supported by the fused format")
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    if head_dim % 16:  # onnxruntime's CPU GroupQueryAttention: "head_size shall be a multiple of 16"
        raise UnsupportedModel(f"head_dim {head_dim} is not a multiple of 16 (GroupQueryAttention)")


INLINE_MAX = 1 << 30  # fp32 weights above this go to an external data file (protobuf stops at 2 GB)


def build_llama_graph(hf_dir: str | Path, out_path: str | Path, quantize: str | None = None, *,
                      external: bool | None = None, progress: bool = False) -> Path:
    """Write the fused graph of a local Llama/Qwen2/Mistral checkpoint to out_path.

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
    sd = CheckpointReader(hf_dir)
    out_path = Path(out_path)
    if external is None:
        external = sd.nbytes_fp32() > INLINE_MAX
    data = ExternalData(out_path, inline=not external)

    hidden = cfg.hidden_size
    n_heads = cfg.num_attention_heads
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_heads
    head_dim = getattr(cfg, "head_dim", None) or hidden // n_heads
    eps = float(cfg.rms_norm_eps)
    n_layers = cfg.num_hidden_layers
    max_pos = positions(cfg)

    nodes = []

    def node(op, ins, outs, domain="", **attrs):
        nodes.append(helper.make_node(op, ins, outs, name=f"{op}_{len(nodes)}", domain=domain, **attrs))
        return outs[0] if len(outs) == 1 else outs

    w = WeightEmitter(data, node, quantize)
    init = w.plain

    # Rotary tables for every position the model allows (GQA indexes them by position).
    inv_freq = 1.0 / (float(cfg.rope_theta) ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    freqs = np.outer(np.arange(max_pos, dtype=np.float64), inv_freq)
    init(np.cos(freqs).astype(np.float32), "cos_cache")
    init(np.sin(freqs).astype(np.float32), "sin_cache")
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

    x = w.gather(sd.get("model.embed_tokens.weight"), "input_ids", "embed", "embeds")
    residual = x
    h = node("SimplifiedLayerNormalization", [x, init(sd.get("model.layers.0.input_layernorm.weight"), "ln_in_0")],
             ["h_in_0"], axis=-1, epsilon=eps, stash_type=1)
    for i in tqdm(range(n_layers), desc=f"fused graph ({quantize or 'fp32'})", unit="layer",
                  disable=not progress):
        p = f"model.layers.{i}."
        wqkv = np.concatenate([sd.get(p + "self_attn.q_proj.weight"), sd.get(p + "self_attn.k_proj.weight"),
                               sd.get(p + "self_attn.v_proj.weight")], axis=0).T
        qkv = w.matmul(h, wqkv, f"qkv_{i}", f"qkv_out_{i}")
        del wqkv
        if p + "self_attn.q_proj.bias" in sd:  # Qwen2: biases before the rotary, as in PyTorch
            bqkv = np.concatenate([sd.get(p + "self_attn.q_proj.bias"), sd.get(p + "self_attn.k_proj.bias"),
                                   sd.get(p + "self_attn.v_proj.bias")])
            qkv = node("Add", [qkv, init(bqkv, f"qkv_bias_{i}")], [f"qkv_biased_{i}"])
        attn, pk, pv = node("GroupQueryAttention",
                            [qkv, "", "", f"past_key_values.{i}.key", f"past_key_values.{i}.value",
                             "seqlens_k", "total_len", "cos_cache", "sin_cache"],
                            [f"attn_{i}", f"present.{i}.key", f"present.{i}.value"], domain="com.microsoft",
                            num_heads=n_heads, kv_num_heads=n_kv, do_rotary=1, rotary_interleaved=0,
                            scale=float(head_dim) ** -0.5)
        o = w.matmul(attn, sd.get(p + "self_attn.o_proj.weight").T, f"o_{i}", f"o_out_{i}")
        h2, _, _, residual = node("SkipSimplifiedLayerNormalization",
                                  [o, residual, init(sd.get(p + "post_attention_layernorm.weight"), f"ln_post_{i}")],
                                  [f"h_post_{i}", "", "", f"res_attn_{i}"], domain="com.microsoft", epsilon=eps)
        gate = w.matmul(h2, sd.get(p + "mlp.gate_proj.weight").T, f"gate_{i}", f"gate_out_{i}")
        up = w.matmul(h2, sd.get(p + "mlp.up_proj.weight").T, f"up_{i}", f"up_out_{i}")
        sig = node("Sigmoid", [gate], [f"sig_{i}"])
        act = node("Mul", [node("Mul", [gate, sig], [f"silu_{i}"]), up], [f"act_{i}"])
        down = w.matmul(act, sd.get(p + "mlp.down_proj.weight").T, f"down_{i}", f"down_out_{i}")
        norm_w = sd.get(f"model.layers.{i + 1}.input_layernorm.weight" if i + 1 < n_layers else "model.norm.weight")
        h, _, _, residual = node("SkipSimplifiedLayerNormalization", [down, residual, init(norm_w, f"ln_next_{i}")],
                                 [f"h_next_{i}", "", "", f"res_mlp_{i}"], domain="com.microsoft", epsilon=eps)

    # Last positions only when asked (prefill needs one row, scoring needs all of them).
    node("Neg", ["logits_to_keep"], ["keep_start"])
    h = node("Slice", [h, "keep_start", "ends_max", "axes_1"], ["h_kept"])
    head = "lm_head.weight" if "lm_head.weight" in sd else "model.embed_tokens.weight"  # untied: its own copy
    w.matmul(h, sd.get(head).T, "lm_head", "logits")
    data.close()

    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    inputs = [helper.make_tensor_value_info("input_ids", i64, ["batch", "seq"]),
              helper.make_tensor_value_info("attention_mask", i64, ["batch", "total_seq"])]
    outputs = [helper.make_tensor_value_info("logits", f32, ["batch", "kept_seq", cfg.vocab_size])]
    for i in range(n_layers):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", f32,
                                                        ["batch", n_kv, "past_seq", head_dim]))
            outputs.append(helper.make_tensor_value_info(f"present.{i}.{kind}", f32,
                                                         ["batch", n_kv, "total_seq", head_dim]))
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
