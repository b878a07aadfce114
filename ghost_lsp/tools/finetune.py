"""`ghost-lsp finetune`: the feedback export → a fine-tuned, validated int8 model folder.

Closes the loop: the server logs what users took (`ghost-lsp export` writes it as JSONL), this
trains the model folder's Hugging Face checkpoint briefly on it and exports a new folder
through `modelkit.export.export_onnx` (fp32 parity and int8 greedy agreement checked, as for
every model we ship). The new manifest names its parent and the data it was tuned on.

What is learnt from which label:
- accepted, partially_accepted (the accepted part only) and typed_anyway are positives: the
  model is trained to produce that text after the logged prompt. When the survival check
  recorded what the user kept of an accepted text (`final_text`), that is the target: the
  user's edit of the suggestion is the better answer.
- The prompt tokens themselves (the user's code around the cursor) get a small weight
  (`prompt_weight`): it adapts the model to the project's names without letting thousands of
  overlapping windows outweigh the completions.
- rejected records are not trained on: a reject says "not this" (often just "not now": the
  user moved on, or typed faster), not what would have been right, and unlikelihood training
  on such noisy negatives is how small models get damaged. They are used as a check: the
  mean per-token log-prob of rejected completions is reported before and after, so a
  fine-tune that makes rejected text more likely shows it.
- Records without a prompt (logging with `feedbackPrompts` off) are skipped and counted.

Hyperparameters come as a `modelkit.train.TrainConfig` (lr, schedule, batch, steps or a time
budget, threads, seed): the same recipe format as the base training. The loop is its own
because it trains on (prompt, completion) pairs with a weighted loss, not on random windows
of a corpus as `modelkit.train.train` does. torch/transformers are imported inside functions
(the `train` extra).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import math
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

log = logging.getLogger(__name__)

POSITIVE = ("accepted", "partially_accepted", "typed_anyway")


@dataclass
class Example:
    prompt: str
    target: str
    label: str
    id: str = ""


@dataclass
class Dataset:
    train: list[Example] = field(default_factory=list)
    valid: list[Example] = field(default_factory=list)
    rejected: list[Example] = field(default_factory=list)
    counts: dict = field(default_factory=dict)  # records per label, and why some were skipped


def read_export(path: str | Path, *, valid_share: float = 0.1) -> Dataset:
    """Records of `ghost-lsp export` → positives (split train/valid by id hash) and rejects."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such export (write one with `ghost-lsp export --out FILE`)")
    ds = Dataset()
    counts: dict[str, int] = {}
    seen = set()
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                label, prompt = rec["label"], rec.get("prompt")
                completion, final = rec.get("completion") or "", rec.get("final_text")
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{n}: not an export record ({e})") from None
            counts[label] = counts.get(label, 0) + 1
            if not prompt:
                counts["skipped_no_prompt"] = counts.get("skipped_no_prompt", 0) + 1
                continue
            target = final if label != "rejected" and isinstance(final, str) and final.strip() else completion
            if not target.strip():
                counts["skipped_empty"] = counts.get("skipped_empty", 0) + 1
                continue
            if (prompt, target) in seen:
                counts["skipped_duplicate"] = counts.get("skipped_duplicate", 0) + 1
                continue
            seen.add((prompt, target))
            ex = Example(prompt, target, label, str(rec.get("id", n)))
            if label == "rejected":
                ds.rejected.append(ex)
            elif label in POSITIVE:
                h = int(hashlib.sha256(ex.id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
                (ds.valid if h < valid_share else ds.train).append(ex)
    if not ds.train and ds.valid:  # a tiny export: train on all, report on the same
        ds.train = list(ds.valid)
    ds.counts = counts
    return ds


def encode(tok, ex: Example, context: int) -> tuple[list[int], int]:
    """Token ids of prompt + target in one piece (the boundary tokenized as the model sees it)
    and the index of the first target token. Long prompts lose their start."""
    enc = tok.encode(ex.prompt + ex.target, add_special_tokens=False)
    cut = len(ex.prompt)
    first = next((i for i, (s, e) in enumerate(enc.offsets) if e > cut), len(enc.ids))
    ids = enc.ids
    keep_target = min(len(ids) - first, context // 2)
    ids = ids[:first + keep_target]
    drop = max(0, len(ids) - context)
    return ids[drop:], first - drop


def _batch(rows, pad: int, prompt_weight: float):
    """Right-padded inputs, targets and per-target weights."""
    import torch

    width = max(len(ids) for ids, _ in rows) - 1
    x = torch.full((len(rows), width), pad, dtype=torch.long)
    y = torch.full((len(rows), width), pad, dtype=torch.long)
    w = torch.zeros((len(rows), width))
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (ids, first) in enumerate(rows):
        n = len(ids) - 1
        x[r, :n] = torch.tensor(ids[:-1])
        y[r, :n] = torch.tensor(ids[1:])
        mask[r, :n] = 1
        w[r, :n] = prompt_weight
        w[r, max(0, first - 1):n] = 1.0  # target position t predicts ids[t+1]
    return x, y, w, mask


def _losses(model, rows, pad: int, batch: int = 16) -> tuple[float, float]:
    """(mean cross-entropy over target tokens, mean target log-prob) without gradients."""
    import torch

    if not rows:
        return float("nan"), float("nan")
    total = count = 0.0
    model.eval()
    with torch.no_grad():
        for i in range(0, len(rows), batch):
            x, y, w, mask = _batch(rows[i:i + batch], pad, 0.0)
            logits = model(input_ids=x, attention_mask=mask).logits.float()
            ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                                                   reduction="none").reshape(y.shape)
            total += float((ce * w).sum())
            count += float(w.sum())
    model.train()
    mean = total / count if count else float("nan")
    return mean, -mean


def finetune_hf(hf_dir: str | Path, tokenizer_json: str | Path, data: Dataset, out_hf: str | Path,
                cfg, *, prompt_weight: float = 0.1, progress: bool = False) -> dict:
    """Train `hf_dir` on `data.train`; save to `out_hf`; return a summary with before/after losses."""
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    if not data.train:
        raise ValueError("the export has no usable positive records (accepted, partially_accepted, "
                         "typed_anyway with a stored prompt): nothing to fine-tune on")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    tok = Tokenizer.from_file(str(tokenizer_json))
    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32)
    context = min(cfg.context_length, getattr(model.config, "max_position_embeddings", cfg.context_length))
    pad = tok.token_to_id("<|pad|>")
    pad = pad if pad is not None else (model.config.pad_token_id or 0)
    enc = lambda exs: [encode(tok, e, context) for e in exs]  # noqa: E731
    train_rows, valid_rows, rej_rows = enc(data.train), enc(data.valid or data.train), enc(data.rejected)
    train_rows = [r for r in train_rows if len(r[0]) >= 2]

    before = {"valid_target_loss": _losses(model, valid_rows, pad)[0],
              "rejected_logprob": _losses(model, rej_rows, pad)[1]}
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    budget_s = cfg.time_budget_min * 60
    t0 = time.monotonic()

    def frac(step: int) -> float:  # the schedule follows whichever budget ends first
        parts = [step / cfg.max_steps] if cfg.max_steps else []
        if budget_s > 0:
            parts.append((time.monotonic() - t0) / budget_s)
        return max(parts) if parts else 1.0

    step, order, losses = 0, [], []
    model.train()
    while frac(step) < 1.0:
        if len(order) < cfg.batch_size:
            order += rng.sample(range(len(train_rows)), len(train_rows))
        pick, order = order[:cfg.batch_size], order[cfg.batch_size:]
        lr = cfg.lr * (step + 1) / cfg.warmup_steps if step < cfg.warmup_steps else \
            cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, frac(step))))
        for g in opt.param_groups:
            g["lr"] = lr
        x, y, w, mask = _batch([train_rows[i] for i in pick], pad, prompt_weight)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            logits = model(input_ids=x, attention_mask=mask).logits.float()
        ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                                               reduction="none").reshape(y.shape)
        loss = (ce * w).sum() / w.sum().clamp(min=1e-6)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        losses.append(float(loss.detach()))
        if progress and step % 20 == 0:
            print(f"finetune step {step}: loss {sum(losses[-20:]) / 20:.3f}", file=sys.stderr)
    after = {"valid_target_loss": _losses(model, valid_rows, pad)[0],
             "rejected_logprob": _losses(model, rej_rows, pad)[1]}
    out_hf = Path(out_hf)
    model.save_pretrained(out_hf)
    if Path(tokenizer_json).resolve() != (out_hf / "tokenizer.json").resolve():
        (out_hf / "tokenizer.json").write_bytes(Path(tokenizer_json).read_bytes())
    return {"steps": step, "seconds": round(time.monotonic() - t0, 1), "prompt_weight": prompt_weight,
            "train_examples": len(train_rows), "valid_examples": len(data.valid) or len(data.train),
            "rejected_examples": len(rej_rows), "first_loss": losses[0] if losses else None,
            "last_loss": sum(losses[-10:]) / len(losses[-10:]) if losses else None,
            "before": before, "after": after}


def parent_checkpoint(model_dir: str | Path) -> Path:
    """The Hugging Face checkpoint a model folder was exported from (its manifest says)."""
    from ghost_lsp.engine.manifest import Manifest
    from ghost_lsp.tools.modelkit.checkpoint import source_checkpoint

    man = Manifest.load(model_dir)
    src = (man.info.get("source") or {}).get("hf_dir") if isinstance(man.info, dict) else None
    if not src:
        raise ValueError(f"{model_dir}: the manifest names no source checkpoint (info.source.hf_dir); "
                         "pass --checkpoint HF_DIR")
    path = source_checkpoint(model_dir)
    if path is None:
        raise FileNotFoundError(f"{src}: the model's source checkpoint is not here; pass --checkpoint HF_DIR")
    return path


def default_config(**overrides):
    """Brief by default: a fine-tune nudges the model, it does not retrain it."""
    from ghost_lsp.tools.modelkit.train import TrainConfig

    base = TrainConfig(name="finetune", lr=3e-4, min_lr=3e-5, warmup_steps=10, weight_decay=0.0,
                       batch_size=8, max_steps=200, time_budget_min=5.0, bf16=False, fim_rate=0.0)
    return replace(base, **overrides)


def finetune(export: str | Path, model_dir: str | Path, out_dir: str | Path, *, checkpoint: str | Path | None = None,
             cfg=None, prompt_weight: float = 0.1, name: str | None = None, min_agreement: float = 0.9,
             keep_hf: bool = True, progress: bool = False) -> dict:
    """Fine-tune the model folder's checkpoint on an export; write a new model folder. Returns
    the summary that also goes into the new manifest (info.finetune)."""
    from ghost_lsp.engine.manifest import Manifest
    from ghost_lsp.tools.modelkit.export import export_onnx

    model_dir, out_dir, export = Path(model_dir), Path(out_dir), Path(export)
    if out_dir.resolve() == model_dir.resolve():
        raise ValueError("the fine-tuned model needs its own folder (OUT_DIR is the parent)")
    parent = Manifest.load(model_dir)
    hf = Path(checkpoint) if checkpoint else parent_checkpoint(model_dir)
    cfg = cfg or default_config()
    data = read_export(export)
    tokenizer_json = model_dir / parent.tokenizer
    with tempfile.TemporaryDirectory(prefix="ghost-finetune-") as tmp:
        hf_out = out_dir / "hf" if keep_hf else Path(tmp) / "hf"
        summary = finetune_hf(hf, tokenizer_json, data, hf_out, cfg, prompt_weight=prompt_weight, progress=progress)
        summary.update(
            data={"path": str(export), "sha256": hashlib.sha256(export.read_bytes()).hexdigest(),
                  "records": data.counts},
            config={k: v for k, v in asdict(cfg).items()
                    if k in ("lr", "min_lr", "warmup_steps", "weight_decay", "batch_size", "max_steps",
                             "time_budget_min", "seed", "context_length", "bf16")})
        info = {"parent": {"name": parent.name, "model_id": parent.model_id, "path": str(model_dir),
                           "checkpoint": str(hf)},
                "finetune": summary}
        for k in ("recipe", "corpus"):  # what the parent was built from still describes the base
            if k in parent.info:
                info[f"parent_{k}"] = parent.info[k]
        with contextlib.redirect_stdout(sys.stderr):  # exporters chatter; stdout is for the report
            report = export_onnx(hf_out, out_dir, quantize="int8" if parent.quantization != "none" else None,
                                 tokenizer_json=tokenizer_json, min_agreement=min_agreement,
                                 manifest_fields={"name": name or f"{parent.name}-ft", "family": parent.family,
                                                  "info": info})
    summary["export"] = {k: report.get(k) for k in ("fp32_max_abs_logit_diff", "int8_greedy_agreement",
                                                     "model_bytes", "seconds")}
    summary["out_dir"] = str(out_dir)
    return summary


# -- next-line before/after (the eval harness's one metric) -----------------------------------

def nextline(model_dir: str | Path, positions, settings=None) -> dict:
    """Next-line exact match / edit similarity through the real Completer (evals/pipeline.py)."""
    from ghost_lsp.tools.evals.nextline import evaluate
    from ghost_lsp.tools.evals.pipeline import Pipeline

    pipe = Pipeline(model_dir, settings)
    try:
        def complete(p):
            c = pipe.complete(p.document, p.line, p.character, path=Path(p.path).name)
            return c.text if c else ""

        r = evaluate(positions, complete)
    finally:
        pipe.close()
    return {"positions": r.positions, "exact_match": r.exact_match, "edit_similarity": r.edit_similarity,
            "empty_rate": r.empty_rate}


# -- command line -------------------------------------------------------------------------------

def add_parser(sub) -> None:
    p = sub.add_parser("finetune", help="fine-tune a model folder on a feedback export into a new model folder "
                                        "(needs the [train] extra)")
    p.add_argument("export", metavar="EXPORT.jsonl", help="written by `ghost-lsp export`")
    p.add_argument("--model", required=True, metavar="DIR", help="the model folder to start from")
    p.add_argument("--out", required=True, metavar="DIR", help="the new model folder")
    p.add_argument("--checkpoint", metavar="HF_DIR",
                   help="Hugging Face checkpoint to train (default: the model manifest's info.source.hf_dir)")
    p.add_argument("--steps", type=int, default=200, help="optimizer steps at most (default 200)")
    p.add_argument("--minutes", type=float, default=5.0, help="wall-clock budget at most (default 5)")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--prompt-weight", type=float, default=0.1,
                   help="loss weight of prompt tokens relative to the accepted text (default 0.1)")
    p.add_argument("--name", help="model name in the new manifest (default: <parent>-ft)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = all cores)")
    p.add_argument("--min-agreement", type=float, default=0.9,
                   help="refuse the export if int8 greedy agreement with PyTorch is below this (default 0.9)")
    p.add_argument("--eval-project", metavar="DIR",
                   help="also run next-line accuracy on this project's .py files before and after")
    p.add_argument("--positions", type=int, default=100, help="next-line positions for --eval-project")
    p.set_defaults(func=cmd_finetune)


def cmd_finetune(args: argparse.Namespace) -> int:
    try:
        cfg = default_config(max_steps=args.steps, time_budget_min=args.minutes, lr=args.lr,
                             min_lr=args.lr / 10, batch_size=args.batch, threads=args.threads)
        summary = finetune(args.export, args.model, args.out, checkpoint=args.checkpoint, cfg=cfg,
                           prompt_weight=args.prompt_weight, name=args.name, progress=True,
                           min_agreement=args.min_agreement)
        if args.eval_project:
            from ghost_lsp.tools.evals.nextline import sample_positions
            from ghost_lsp.tools.evals.sources import read_tree

            files = read_tree(args.eval_project)
            if not files:
                raise ValueError(f"{args.eval_project}: no .py files")
            positions = sample_positions(files, args.positions)
            summary["nextline"] = {"before": nextline(args.model, positions), "after": nextline(args.out, positions)}
    except ImportError as e:
        print(f"ghost-lsp finetune needs the train extra (pip install 'ghost-lsp[train]'): {e}", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - one clear line: bad export, missing checkpoint, failed validation
        print(f"ghost-lsp finetune: {e}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=1))
    b, a = summary["before"], summary["after"]
    print(f"wrote {args.out}: {summary['steps']} steps in {summary['seconds']} s on {summary['train_examples']} "
          f"examples; held-out target loss {b['valid_target_loss']:.3f} -> {a['valid_target_loss']:.3f}",
          file=sys.stderr)
    return 0
