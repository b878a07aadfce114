"""Train a small Llama-style code model, from scratch or distilled from a teacher.

Small enough to read in one sitting. A run is described by a `TrainConfig` (a recipe section in
`models/recipes/*.toml`); it trains for a wall-clock budget (the learning-rate schedule follows
elapsed time) or a fixed number of steps, checkpoints as a Hugging Face folder, and logs losses as JSON lines.

Data (data.py): the corpus tokenized once into a flat uint16 array per split; a sample is a
random window, with probability `fim_rate` in fill-in-the-middle order.

The model: Hugging Face's Llama (`impl = "hf"`) or the compact one (compact.py, same weights,
faster and compilable). The schedule: cosine, or warmup-stable-decay (`schedule = "wsd"`), whose
pre-decay weights (checkpoint.py) a later run continues with `resume_from`.

Distillation: with `teacher` set, the loss is
    alpha * T² * KL(softmax(teacher/T) || softmax(student/T)) + (1 - alpha) * cross-entropy,
over the full vocabulary (small here: 8k), the teacher run at every step. With `teacher_top_k`
set, the teacher runs once instead: its k best logits on a fixed set of windows are cached on disk
(teacher_cache.py) and the student trains on those windows (step.kl_topk).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from ghost_lsp.tools.modelkit.data import Batcher, fixed_windows, tokenize_split  # noqa: F401 (re-exported)
from ghost_lsp.tools.modelkit.checkpoint import load_resume_state, save_weights  # noqa: F401 (re-exported)
from ghost_lsp.tools.modelkit.step import kl_full, kl_topk, train_step
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
    teacher_top_k: int = 0          # >0: the teacher's top-k logits cached on disk once, not run per step
    teacher_cache: str = ""         # folder of that cache (default: <out_dir>/../teacher-topk)
    teacher_cache_windows: int = 2000  # windows the teacher reads (the student cycles through them)
    impl: str = "hf"                # "compact": modelkit/compact.py (same weights, ~1.5x faster step)
    schedule: str = "cosine"        # "wsd": warmup, stable, decay in the last `decay_frac` of the run
    decay_frac: float = 0.15        # wsd: share of the budget spent decaying to min_lr
    resume_from: str = ""           # folder with stable.safetensors + train_state.json: continue that run
    compile: bool = False           # torch.compile the compact model (pays off on runs over ~10 min)
    device: str = "cpu"             # "cuda": the same run on a GPU (bf16 autocast there too)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown training settings: {sorted(unknown)}")
        return cls(**d)


# ---------------------------------------------------------------- data


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
    device = next(model.parameters()).device
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        for i in range(0, len(windows), batch):
            x = torch.from_numpy(windows[i:i + batch]).to(device)
            out = model(input_ids=x[:, :-1])
            logits = getattr(out, "logits", out)  # a Hugging Face output, or the compact model's tensor
            loss = torch.nn.functional.cross_entropy(
                logits.float().reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum")
            total += loss.item()
            count += x[:, 1:].numel()
    model.train()
    return total / count


def lr_schedule(cfg: TrainConfig, step: int, frac: float) -> float:
    """Learning rate at `step` with `frac` of the run's budget spent.

    cosine: warmup then cosine to min_lr. wsd (warmup-stable-decay): warmup, the peak rate held
    constant, then a linear decay to min_lr over the last `decay_frac` of the run — so a later
    run can continue from the weights saved just before the decay, at the peak rate again.
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    frac = min(1.0, frac)
    if cfg.schedule == "wsd":
        start = 1.0 - cfg.decay_frac
        if frac <= start:
            return cfg.lr
        return cfg.lr + (cfg.min_lr - cfg.lr) * (frac - start) / cfg.decay_frac
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * frac))


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
          progress: bool = True, stop=None) -> dict:
    """Train one model; returns a summary (also written to <out_dir>/train_summary.json).
    `stop` (a callable, optional) ends the run early when it returns true (checked each step):
    the run then saves and returns as at the end of its budget (`ghost-lsp learn` on Ctrl-C)."""
    import torch

    out, tok, sp = prepare_run(cfg, out_dir, tokenizer_path)
    train_tokens = tokenize_split(corpus_dir, "train", tokenizer_path)
    valid_tokens = tokenize_split(corpus_dir, "valid", tokenizer_path)
    batcher = Batcher(train_tokens, cfg.context_length, sp, cfg.fim_rate, cfg.seed)
    windows = fixed_windows(valid_tokens, cfg.context_length, cfg.eval_windows)

    resume_state: dict = {}
    if cfg.impl == "compact":
        from ghost_lsp.tools.modelkit.compact import CompactConfig, CompactLlama

        if cfg.init_from:
            model = CompactLlama.from_folder(cfg.init_from)
        else:
            model = CompactLlama(CompactConfig(
                vocab_size=tok.get_vocab_size(), hidden_size=cfg.hidden_size, num_layers=cfg.num_layers,
                num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads,
                intermediate_size=cfg.intermediate_size, context_length=cfg.context_length))
        if cfg.resume_from:
            weights, resume_state = load_resume_state(cfg.resume_from)
            model.load_weights(weights)
        model.to(cfg.device)
        forward = torch.compile(model) if cfg.compile else model
    else:
        if cfg.resume_from:
            raise ValueError("resume_from needs impl = \"compact\"")
        if cfg.init_from:
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(cfg.init_from, dtype=torch.float32)
        else:
            model = make_model(cfg, tok.get_vocab_size(), sp)
        forward = lambda ids: model(input_ids=ids).logits  # noqa: E731
    n_params = sum(p.numel() for p in model.parameters())
    teacher = cached = None
    if cfg.teacher and cfg.teacher_top_k:
        from ghost_lsp.tools.modelkit.teacher_cache import CachedTeacher, build_teacher_cache

        cache_dir = Path(cfg.teacher_cache) if cfg.teacher_cache else out.parent / "teacher-topk"
        build_teacher_cache(cfg.teacher, train_tokens, sp, tokenizer_path, cache_dir,
                            windows=cfg.teacher_cache_windows, context=cfg.context_length, k=cfg.teacher_top_k,
                            temperature=cfg.distill_temperature, fim_rate=cfg.fim_rate, seed=cfg.seed,
                            bf16=cfg.bf16, device=cfg.device, progress=progress)
        cached = CachedTeacher(cache_dir, cfg.context_length, seed=cfg.seed)
    elif cfg.teacher:
        from transformers import AutoModelForCausalLM

        teacher = AutoModelForCausalLM.from_pretrained(cfg.teacher).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95),
                            fused=True)

    prior_log = Path(cfg.resume_from) / "train_log.jsonl" if cfg.resume_from else None
    if prior_log and prior_log.is_file() and not (out / "train_log.jsonl").exists():
        # continued in a new folder (a fresh clone continuing the shipped checkpoint): the log
        # keeps the runs before this one, so the packaged checkpoint and its plot still hold them
        shutil.copyfile(prior_log, out / "train_log.jsonl")
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
        return lr_schedule(cfg, step, progress_frac(step))

    prior_tokens = int(resume_state.get("tokens_seen", 0))
    prior_steps = int(resume_state.get("steps", 0))
    runs = list(resume_state.get("runs", []))

    def save(tag: str):
        if cfg.impl == "compact":
            model.to_hf(sp).save_pretrained(out)
        else:
            model.save_pretrained(out)
        summary["checkpoint"] = tag
        (out / "train_summary.json").write_text(json.dumps(summary, indent=1))

    def save_stable():
        """The weights before the decay, which a later run continues from (wsd, compact only)."""
        if cfg.impl != "compact":
            return
        digest = save_weights(model.state_dict(), out / "stable.safetensors")
        state = {"steps": prior_steps + step, "tokens_seen": prior_tokens + tokens_seen,
                 "stable_sha256": digest, "runs": runs + [this_run()], "config": asdict(cfg)}
        (out / "train_state.json").write_text(json.dumps(state, indent=1) + "\n", encoding="utf-8")

    def this_run() -> dict:
        return {"steps": step, "tokens": tokens_seen, "cumulative_tokens": prior_tokens + tokens_seen,
                "minutes": round((time.monotonic() - t0) / 60, 2), "val_loss": None if val != val else round(val, 4),
                "lr": cfg.lr, "resumed": bool(cfg.resume_from)}

    summary: dict = {"config": asdict(cfg), "params": n_params, "vocab_size": tok.get_vocab_size(),
                     "train_tokens_available": int(len(train_tokens)), "valid_tokens": int(len(valid_tokens))}
    step = 0
    val = float("nan")
    stable_saved = False
    model.train()
    while progress_frac(step) < 1.0 and not (stop is not None and stop()):
        if cfg.schedule == "wsd" and not stable_saved and step >= cfg.warmup_steps \
                and progress_frac(step) >= 1.0 - cfg.decay_frac:
            save_stable()
            stable_saved = True
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        distill = None
        if cached is not None:
            xb, *teacher_top = cached.batch(cfg.batch_size)
            x = torch.from_numpy(xb).to(cfg.device, non_blocking=True)
            t_ids, t_vals, t_lse = (torch.from_numpy(a).to(cfg.device) for a in teacher_top)
            distill = lambda logits: kl_topk(logits, t_ids, t_vals, t_lse, cfg.distill_temperature)  # noqa: E731
        else:
            x = torch.from_numpy(batcher.batch(cfg.batch_size)).to(cfg.device, non_blocking=True)
        inp, tgt = x[:, :-1], x[:, 1:]
        if teacher is not None:
            with torch.no_grad(), torch.autocast(torch.device(cfg.device).type, dtype=torch.bfloat16,
                                                 enabled=cfg.bf16):
                t_logits = teacher(input_ids=inp).logits.float()
            distill = lambda logits: kl_full(logits, t_logits, cfg.distill_temperature)  # noqa: E731
        loss, ce = train_step(model, forward, opt, inp, tgt, bf16=cfg.bf16, distill=distill,
                              alpha=cfg.distill_alpha)
        step += 1
        tokens_seen += inp.numel()
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{ce.item():.3f}", val=f"{val:.3f}")
        elapsed = time.monotonic() - t0
        if step % cfg.eval_every == 0:
            val = eval_loss(model, windows, cfg.bf16)
            rec = {"step": step, "elapsed_s": round(elapsed, 1), "tokens": tokens_seen,
                   "cumulative_tokens": prior_tokens + tokens_seen,
                   "train_ce": round(ce.item(), 4), "val_loss": round(val, 4), "lr": lr_at(step)}
            log_f.write(json.dumps(rec) + "\n")
            log_f.flush()
        if time.monotonic() - last_ckpt > cfg.checkpoint_min * 60:
            summary.update(steps=step, tokens_seen=tokens_seen, val_loss=val)
            save(f"step {step}")
            if cfg.schedule == "wsd" and not stable_saved:
                save_stable()  # an interrupted run resumes from here
            last_ckpt = time.monotonic()
    if bar is not None:
        bar.close()
    if cfg.schedule == "wsd" and not stable_saved:
        save_stable()
    val = eval_loss(model, windows, cfg.bf16)
    minutes = (time.monotonic() - t0) / 60
    # the end of the run (after the decay) is the point the shipped weights stand at
    log_f.write(json.dumps({"step": step, "elapsed_s": round(minutes * 60, 1), "tokens": tokens_seen,
                            "cumulative_tokens": prior_tokens + tokens_seen, "val_loss": round(val, 4),
                            "final": True}) + "\n")
    summary.update(steps=step, tokens_seen=tokens_seen, val_loss=val, train_minutes=round(minutes, 2),
                   tokens_per_s=round(tokens_seen / (minutes * 60)),
                   cumulative_tokens=prior_tokens + tokens_seen, cumulative_steps=prior_steps + step,
                   runs=runs + [this_run()],
                   gflops_per_s=round(6 * n_params * tokens_seen / (minutes * 60) / 1e9, 1))
    if cached is not None:
        summary["teacher_cache"] = {"windows": len(cached.inputs), "k": cfg.teacher_top_k,
                                    "passes": round(cached.passes + cached.pos / len(cached.order), 2)}
    save("final")
    if (out / "train_state.json").exists():
        # the record of every run (with cumulative tokens) travels with the resumable weights
        st = json.loads((out / "train_state.json").read_text(encoding="utf-8"))
        st["runs"] = summary["runs"]
        (out / "train_state.json").write_text(json.dumps(st, indent=1) + "\n", encoding="utf-8")
    log_f.close()
    return summary
