"""A compact Llama for training on CPU: the same weights as Hugging Face's `LlamaForCausalLM`.

Hugging Face's implementation carries masks, caches, hooks and dispatch that a training step does
not need, and `torch.compile` traces it slowly. This is the layout and nothing else: token
embedding, blocks of RMSNorm → attention with rotary positions and grouped-query heads (one
`scaled_dot_product_attention` call, causal) → RMSNorm → SwiGLU MLP, a final RMSNorm and the LM
head tied to the embedding. Parameter names are HF's, so `to_hf()` gives a `LlamaForCausalLM`
whose outputs match (tested), and export, quantization and the fused graph work unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class CompactConfig:
    vocab_size: int
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 4
    intermediate_size: int = 688
    context_length: int = 1024
    rope_theta: float = 10000.0
    rms_eps: float = 1e-6

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        # in float32 like HF's LlamaRMSNorm, so bf16 autocast does not change the statistics
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


def rotate_half(x):
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


class Attention(nn.Module):
    def __init__(self, c: CompactConfig):
        super().__init__()
        self.h, self.kv, self.d = c.num_heads, c.num_kv_heads, c.head_dim
        self.q_proj = nn.Linear(c.hidden_size, self.h * self.d, bias=False)
        self.k_proj = nn.Linear(c.hidden_size, self.kv * self.d, bias=False)
        self.v_proj = nn.Linear(c.hidden_size, self.kv * self.d, bias=False)
        self.o_proj = nn.Linear(self.h * self.d, c.hidden_size, bias=False)

    def forward(self, x, cos, sin):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.h, self.d).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.kv, self.d).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.kv, self.d).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if self.kv != self.h:
            k = k.repeat_interleave(self.h // self.kv, dim=1)
            v = v.repeat_interleave(self.h // self.kv, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, self.h * self.d))


class MLP(nn.Module):
    def __init__(self, c: CompactConfig):
        super().__init__()
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, c: CompactConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_eps)
        self.self_attn = Attention(c)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_eps)
        self.mlp = MLP(c)

    def forward(self, x, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class Body(nn.Module):
    """HF's `model.` prefix: embed_tokens, layers, norm."""

    def __init__(self, c: CompactConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(Block(c) for _ in range(c.num_layers))
        self.norm = RMSNorm(c.hidden_size, c.rms_eps)


class CompactLlama(nn.Module):
    def __init__(self, c: CompactConfig):
        super().__init__()
        self.config = c
        self.model = Body(c)
        inv = 1.0 / (c.rope_theta ** (torch.arange(0, c.head_dim, 2, dtype=torch.float32) / c.head_dim))
        freqs = torch.outer(torch.arange(c.context_length, dtype=torch.float32), inv)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos", emb.cos()[None, None], persistent=False)
        self.register_buffer("sin", emb.sin()[None, None], persistent=False)
        self.apply(self._init)
        # GPT-2-style scaled init of the residual projections keeps deep stacks stable
        for name, p in self.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * c.num_layers))

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)

    def hidden(self, input_ids):
        t = input_ids.shape[1]
        cos, sin = self.cos[:, :, :t].to(self.model.embed_tokens.weight.dtype), self.sin[:, :, :t]
        x = self.model.embed_tokens(input_ids)
        for layer in self.model.layers:
            x = layer(x, cos, sin)
        return self.model.norm(x)

    def forward(self, input_ids):
        """Logits for every position (tied head)."""
        return F.linear(self.hidden(input_ids), self.model.embed_tokens.weight)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ------------------------------------------------------------ Hugging Face interchange

    def hf_config(self, special: dict[str, int]):
        from transformers import LlamaConfig

        c = self.config
        return LlamaConfig(
            vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
            num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads,
            num_key_value_heads=c.num_kv_heads, max_position_embeddings=c.context_length,
            tie_word_embeddings=True, rms_norm_eps=c.rms_eps, rope_theta=c.rope_theta,
            bos_token_id=special["eos"], eos_token_id=special["eos"], pad_token_id=special["pad"],
        )

    def to_hf(self, special: dict[str, int]):
        """A `LlamaForCausalLM` holding these weights (fp32)."""
        from transformers import LlamaForCausalLM

        hf = LlamaForCausalLM(self.hf_config(special))
        state = {k: v.detach().to("cpu", torch.float32) for k, v in self.state_dict().items()}
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
        missing, unexpected = hf.load_state_dict(state, strict=False)
        missing = [m for m in missing if "rotary_emb" not in m]
        if missing or unexpected:
            raise RuntimeError(f"weights do not map onto LlamaForCausalLM: missing {missing}, unexpected {unexpected}")
        hf.tie_weights()
        return hf

    @classmethod
    def from_hf_config(cls, cfg) -> "CompactLlama":
        return cls(CompactConfig(
            vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_layers=cfg.num_hidden_layers,
            num_heads=cfg.num_attention_heads, num_kv_heads=cfg.num_key_value_heads,
            intermediate_size=cfg.intermediate_size, context_length=cfg.max_position_embeddings,
            rope_theta=getattr(cfg, "rope_theta", 10000.0), rms_eps=cfg.rms_norm_eps,
        ))

    @classmethod
    def from_folder(cls, hf_dir) -> "CompactLlama":
        """A Hugging Face Llama folder (config.json + model.safetensors) as a compact model."""
        from safetensors.torch import load_file
        from transformers import AutoConfig

        m = cls.from_hf_config(AutoConfig.from_pretrained(hf_dir))
        m.load_weights(load_file(str(Path(hf_dir) / "model.safetensors")))
        return m

    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        """Load HF-named weights (lm_head dropped: it is the embedding)."""
        state = {k: v.float() for k, v in state.items() if k != "lm_head.weight" and "rotary_emb" not in k}
        self.load_state_dict(state, strict=True)
