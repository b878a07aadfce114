"""Train a small Llama-style code model, from scratch or distilled from a teacher.

Small enough to read in one sitting. A run is described by a `TrainConfig` (a recipe section in
`models/recipes/*.toml`); it trains for a wall-clock budget (the learning-rate schedule follows
elapsed time) or a fixed number of steps, checkpoints as a Hugging Face folder, and logs losses as JSON lines.

Data: the corpus is tokenized once into one flat uint16 array per split (documents separated by
end-of-text). A training sample is a random window; with probability `fim_rate` it is rearranged
into fill-in-the-middle order (prefix-suffix-middle, StarCoder's sentinel tokens) so the model
learns to use the text after the cursor.

Distillation: with `teacher` set, the loss is
    alpha * T² * KL(softmax(teacher/T) || softmax(student/T)) + (1 - alpha) * cross-entropy,
over the full vocabulary (small here: 8k).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from ghost_lsp.tools.modelkit.tokenizer import EOS, FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    name: str = "model"
    hidden_size: int = 256          # model width
    num_layers: int = 4             # transformer blocks
    num_heads: int = 4              # attention heads (head_dim = hidden/heads)
    num_kv_heads: int = 4           # < num_heads for grouped-query attention (smaller KV cache)
    intermediate_size: int = 688    # SwiGLU MLP width (~8/3 × hidden)
    context_length: int = 256       # training window, also the model's max positions
    batch_size: int = 16            # windows per step
    lr: float = 3e-3                # peak learning rate (small models like it high)
    min_lr: float = 3e-4            # end of the cosine schedule
    warmup_steps: int = 100
    weight_decay: float = 0.1
    time_budget_min: float = 30.0   # wall-clock budget; the step count is derived from it
    max_steps: int = 0              # >0: fixed number of steps instead of the time budget
    fim_rate: float = 0.5           # share of samples in fill-in-the-middle order
    seed: int = 1234
    eval_every: int = 200           # steps between validation-loss checks
    eval_windows: int = 64          # validation windows per check
    checkpoint_min: float = 5.0     # minutes between checkpoints
    threads: int = 0                # torch threads, 0 = all cores
    bf16: bool = True               # bf16 autocast on CPU (~2× faster here)
    teacher: str = ""               # HF folder of a teacher model: enables distillation
    init_from: str = ""             # HF folder to start from (continue training) instead of random weights
    distill_alpha: float = 0.7      # weight of the KL term
    distill_temperature: float = 2.0

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown training settings: {sorted(unknown)}")
        return cls(**d)


# ---------------------------------------------------------------- data


def tokenize_split(corpus_dir: str | Path, split: str, tokenizer_path: str | Path) -> np.ndarray:
    """Tokenize `<split>.jsonl` into one flat array (cached as tokens_<split>.npy next to it)."""
    from tokenizers import Tokenizer

    from ghost_lsp.tools.modelkit.corpus import read_documents

    corpus_dir = Path(corpus_dir)
    cache = corpus_dir / f"tokens_{split}.npy"
    tok_mtime = os.path.getmtime(tokenizer_path)
    if cache.exists() and os.path.getmtime(cache) > tok_mtime:
        return np.load(cache, mmap_mode="r")
    tok = Tokenizer.from_file(str(tokenizer_path))
    eos = tok.token_to_id(EOS)
    texts = [d.text for d in read_documents(corpus_dir / f"{split}.jsonl")]
    parts = []
    for i in range(0, len(texts), 256):
        for enc in tok.encode_batch(texts[i:i + 256]):
            parts.append(np.asarray(enc.ids, dtype=np.uint16))
            parts.append(np.asarray([eos], dtype=np.uint16))
    arr = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint16)
    np.save(cache, arr)
    return arr


class Batcher:
    """Random windows from a flat token array, some rearranged into FIM order."""

    def __init__(self, tokens: np.ndarray, context: int, special: dict[str, int], fim_rate: float, seed: int):
        if len(tokens) <= context + 1:
            raise ValueError(f"corpus too small: {len(tokens)} tokens for context {context}")
        self.tokens = tokens
        self.context = context
        self.sp = special
        self.fim_rate = fim_rate
        self.rng = np.random.default_rng(seed)

    def sample(self) -> np.ndarray:
        """One sequence of context+1 tokens (inputs are [:-1], targets [1:])."""
        n = self.context + 1
        if self.rng.random() >= self.fim_rate:
            start = self.rng.integers(0, len(self.tokens) - n)
            return np.asarray(self.tokens[start:start + n], dtype=np.int64)
        body = n - 4  # three sentinels + end-of-text
        start = self.rng.integers(0, len(self.tokens) - body)
        w = np.asarray(self.tokens[start:start + body], dtype=np.int64)
        # a FIM sample should not span two documents: cut at the first end-of-text
        eos_at = np.flatnonzero(w == self.sp["eos"])
        if len(eos_at) and eos_at[0] > 8:
            w = w[:eos_at[0]]
        i, j = sorted(self.rng.integers(0, len(w) + 1, 2))
        seq = np.concatenate([
            [self.sp["prefix"]], w[:i], [self.sp["suffix"]], w[j:], [self.sp["middle"]], w[i:j], [self.sp["eos"]],
        ])
        if len(seq) < n:  # pad with ordinary text after the end-of-text
            extra_start = self.rng.integers(0, len(self.tokens) - (n - len(seq)))
            seq = np.concatenate([seq, self.tokens[extra_start:extra_start + n - len(seq)]])
        return seq[:n].astype(np.int64)

    def batch(self, size: int) -> np.ndarray:
        return np.stack([self.sample() for _ in range(size)])


def fixed_windows(tokens: np.ndarray, context: int, count: int, seed: int = 0) -> np.ndarray:
    """Deterministic plain windows for validation loss (same windows for every model)."""
    rng = np.random.default_rng(seed)
    n = context + 1
    starts = rng.integers(0, max(1, len(tokens) - n), count)
    return np.stack([np.asarray(tokens[s:s + n], dtype=np.int64) for s in starts])


# ---------------------------------------------------------------- model


def make_model(cfg: TrainConfig, vocab_size: int, special: dict[str, int]):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.context_length,
        tie_word_embeddings=True,
        bos_token_id=special["eos"],
        eos_token_id=special["eos"],
        pad_token_id=special["pad"],
        rope_theta=10000.0,
    )
    return LlamaForCausalLM(config)


def special_ids(tok) -> dict[str, int]:
    ids = {
        "eos": tok.token_to_id(EOS), "prefix": tok.token_to_id(FIM_PREFIX),
        "suffix": tok.token_to_id(FIM_SUFFIX), "middle": tok.token_to_id(FIM_MIDDLE),
        "pad": tok.token_to_id("<|pad|>"),
    }
    missing = [k for k, v in ids.items() if v is None]
    if missing:
        raise ValueError(f"tokenizer lacks special tokens: {missing}")
    return ids


def eval_loss(model, windows: np.ndarray, bf16: bool, batch: int = 16) -> float:
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for i in range(0, len(windows), batch):
            x = torch.from_numpy(windows[i:i + batch])
            out = model(input_ids=x[:, :-1])
            loss = torch.nn.functional.cross_entropy(
                out.logits.float().reshape(-1, out.logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum")
            total += loss.item()
            count += x[:, 1:].numel()
    model.train()
    return total / count


def prepare_run(cfg: TrainConfig, out_dir: str | Path, tokenizer_path: str | Path):
    """What every training run sets up first: its output folder, torch threads and seed, the
    tokenizer and its special ids. Returns (out folder, tokenizer, special ids)."""
    import torch
    from tokenizers import Tokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    tok = Tokenizer.from_file(str(tokenizer_path))
    return out, tok, special_ids(tok)


def train(cfg: TrainConfig, corpus_dir: str | Path, tokenizer_path: str | Path, out_dir: str | Path,
          progress: bool = True) -> dict:
    """Train one model; returns a summary (also written to <out_dir>/train_summary.json)."""
    import torch

    out, tok, sp = prepare_run(cfg, out_dir, tokenizer_path)
    train_tokens = tokenize_split(corpus_dir, "train", tokenizer_path)
    valid_tokens = tokenize_split(corpus_dir, "valid", tokenizer_path)
    batcher = Batcher(train_tokens, cfg.context_length, sp, cfg.fim_rate, cfg.seed)
    windows = fixed_windows(valid_tokens, cfg.context_length, cfg.eval_windows)

    if cfg.init_from:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(cfg.init_from, dtype=torch.float32)
    else:
        model = make_model(cfg, tok.get_vocab_size(), sp)
    n_params = sum(p.numel() for p in model.parameters())
    teacher = None
    if cfg.teacher:
        from transformers import AutoModelForCausalLM

        teacher = AutoModelForCausalLM.from_pretrained(cfg.teacher).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))

    log_f = open(out / "train_log.jsonl", "a", encoding="utf-8")
    t0 = time.monotonic()
    last_ckpt = t0
    tokens_seen = 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=None, desc=cfg.name, unit="step", file=sys.stderr, mininterval=5)

    budget_s = cfg.time_budget_min * 60

    def progress_frac(step: int) -> float:
        # Budgeted by wall clock, the schedule follows elapsed time, so a machine slowed by other
        # work still ends on time with a fully decayed learning rate.
        if cfg.max_steps:
            return step / cfg.max_steps
        return (time.monotonic() - t0) / budget_s

    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        frac = min(1.0, progress_frac(step))
        return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * frac))

    def save(tag: str):
        model.save_pretrained(out)
        summary["checkpoint"] = tag
        (out / "train_summary.json").write_text(json.dumps(summary, indent=1))

    summary: dict = {"config": asdict(cfg), "params": n_params, "vocab_size": tok.get_vocab_size(),
                     "train_tokens_available": int(len(train_tokens)), "valid_tokens": int(len(valid_tokens))}
    step = 0
    val = float("nan")
    model.train()
    while progress_frac(step) < 1.0:
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        x = torch.from_numpy(batcher.batch(cfg.batch_size))
        inp, tgt = x[:, :-1], x[:, 1:]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            logits = model(input_ids=inp).logits.float()
            ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1))
            loss = ce
            if teacher is not None:
                with torch.no_grad():
                    t_logits = teacher(input_ids=inp).logits.float()
                T = cfg.distill_temperature
                kl = torch.nn.functional.kl_div(
                    torch.log_softmax(logits / T, -1).reshape(-1, logits.shape[-1]),
                    torch.log_softmax(t_logits / T, -1).reshape(-1, logits.shape[-1]),
                    log_target=True, reduction="batchmean") * T * T
                loss = cfg.distill_alpha * kl + (1 - cfg.distill_alpha) * ce
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        tokens_seen += inp.numel()
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{ce.item():.3f}", val=f"{val:.3f}")
        elapsed = time.monotonic() - t0
        if step % cfg.eval_every == 0:
            val = eval_loss(model, windows, cfg.bf16)
            rec = {"step": step, "elapsed_s": round(elapsed, 1), "tokens": tokens_seen,
                   "train_ce": round(ce.item(), 4), "val_loss": round(val, 4), "lr": lr_at(step)}
            log_f.write(json.dumps(rec) + "\n")
            log_f.flush()
        if time.monotonic() - last_ckpt > cfg.checkpoint_min * 60:
            summary.update(steps=step, tokens_seen=tokens_seen, val_loss=val)
            save(f"step {step}")
            last_ckpt = time.monotonic()
    if bar is not None:
        bar.close()
    summary.update(steps=step, tokens_seen=tokens_seen, val_loss=eval_loss(model, windows, cfg.bf16),
                   train_minutes=round((time.monotonic() - t0) / 60, 2),
                   tokens_per_s=round(tokens_seen / (time.monotonic() - t0)))
    save("final")
    log_f.close()
    return summary
