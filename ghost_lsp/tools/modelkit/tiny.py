"""Tiny random-weight models for tests: a real model folder (manifest + ONNX + tokenizer) in seconds.

The tokenizer is trained on a fixed corpus embedded here (not on files on disk), so every
machine builds the same vocabulary. Weights are random but seeded: outputs are meaningless
text, yet every code path (export, quantization, KV cache, healing, sampling) is exercised.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from ghost_lsp.tools.modelkit.tokenizer import SPECIAL_TOKENS

# A few KB of ordinary Python: indentation runs, keywords, brackets, strings, comments.
TINY_CORPUS = '''\
import os
import sys
from pathlib import Path


def add(a, b):
    """Return the sum of a and b."""
    return a + b


def read_lines(path):
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\\n") for line in f]


class Stack:
    """A last-in, first-out container."""

    def __init__(self):
        self.items = []

    def push(self, item):
        self.items.append(item)

    def pop(self):
        if not self.items:
            raise IndexError("pop from empty stack")
        return self.items.pop()

    def __len__(self):
        return len(self.items)


def fibonacci(n):
    if n < 2:
        return n
    a, b = 0, 1
    for _ in range(n - 1):
        a, b = b, a + b
    return b


def count_words(text):
    counts = {}
    for word in text.split():
        word = word.lower()
        counts[word] = counts.get(word, 0) + 1
    return counts


def find_files(root, suffix=".py"):
    result = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames:
            if name.endswith(suffix):
                result.append(os.path.join(dirpath, name))
    return sorted(result)


class Config:
    def __init__(self, name, values=None):
        self.name = name
        self.values = dict(values or {})

    def get(self, key, default=None):
        return self.values.get(key, default)

    def set(self, key, value):
        self.values[key] = value
        return self

    def __repr__(self):
        return f"Config({self.name!r}, {self.values!r})"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print("usage: tool PATH", file=sys.stderr)
        return 2
    for path in argv:
        for line in read_lines(Path(path)):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
'''


def train_tiny_tokenizer(vocab_size: int = 400):
    """Byte-level BPE trained on TINY_CORPUS, with the special tokens first (ids 0..4)."""
    from ghost_lsp.tools.modelkit.tokenizer import train_tokenizer

    # Repeat so merges of indentation runs and keywords clear the frequency threshold.
    return train_tokenizer([TINY_CORPUS] * 4, vocab_size=vocab_size, min_frequency=0)


def build_tiny_hf(hf_dir: str | Path, arch: str = "llama", *, seed: int = 0,
                  hidden: int = 48, layers: int = 2, context_length: int = 256) -> Path:
    """Write a random tiny Hugging Face causal LM (+ tokenizer files) to hf_dir."""
    import torch
    from transformers import PreTrainedTokenizerFast

    hf_dir = Path(hf_dir)
    hf_dir.mkdir(parents=True, exist_ok=True)
    tok = train_tiny_tokenizer()
    vocab = tok.get_vocab_size()
    eos, pad = tok.token_to_id("<|endoftext|>"), tok.token_to_id("<|pad|>")
    # A wider init than the default 0.02 gives logits with clear margins, so int8 rounding
    # does not flip near-ties and greedy agreement measures the export, not the noise.
    init = 0.2
    if arch == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM
        cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 2,
                          num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=context_length, bos_token_id=eos,
                          eos_token_id=eos, pad_token_id=pad, initializer_range=init,
                          tie_word_embeddings=True)
        cls = LlamaForCausalLM
    elif arch == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel
        cfg = GPT2Config(vocab_size=vocab, n_embd=hidden, n_layer=layers, n_head=4,
                         n_positions=context_length, bos_token_id=eos, eos_token_id=eos,
                         pad_token_id=pad, initializer_range=init)
        cls = GPT2LMHeadModel
    else:
        raise ValueError(f"unknown tiny architecture {arch!r} (llama or gpt2)")
    torch.manual_seed(seed)
    model = cls(cfg).eval()
    model.save_pretrained(hf_dir)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                   pad_token="<|pad|>", bos_token="<|endoftext|>",
                                   model_input_names=["input_ids", "attention_mask"])
    fast.save_pretrained(hf_dir)
    return hf_dir


def build_tiny_model(out_dir: str | Path, arch: str = "llama", *, quantize: str | None = "int8",
                     seed: int = 0) -> Path:
    """Build a complete ghost-lsp model folder (manifest.json, model.onnx, tokenizer.json).

    Takes a few seconds (torch/transformers/optimum import dominates). Used by tests that
    need a real model when the shipped default is missing.
    """
    from ghost_lsp.tools.modelkit.export import export_onnx

    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="ghost-tiny-hf-") as tmp:
        build_tiny_hf(tmp, arch, seed=seed)
        export_onnx(tmp, out_dir, quantize=quantize,
                    manifest_fields={"name": f"tiny-{arch}",
                                     "info": {"note": "random weights, for tests only"}})
    return out_dir


__all__ = ["SPECIAL_TOKENS", "TINY_CORPUS", "train_tiny_tokenizer", "build_tiny_hf",
           "build_tiny_model"]
